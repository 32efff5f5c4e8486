"""Which reused tokens to recompute against the real prefix, to recover what splicing loses.

A skill's cached KV never attended to what precedes it in the new context (system text, earlier
skills). A skill right behind the anchor it was compiled behind is exact and gets no repair. For the
others, two repairs combine:
  seam K   recompute the first K tokens of each skill (EPIC's LegoLink, the paper's seam repair):
           they carry the most prefix-dependent state and act as false attention sinks.
  blend R  CacheBlend-style selective recompute, with attention in the choice: of the reused tokens,
           recompute those whose keys deviate most from a true prefill at the probe layer (a quarter
           of the way down), weighted by the attention the user turn pays them at that layer. Deviation alone (plain
           CacheBlend) spends the budget on tokens nobody reads: on the 16 composed demo contexts the
           weighting took top-1 from 0.88 to 1.00 and greedy-16 from 0.50 to 0.75 at the same budget
           (weighting by recency instead: 0.94 / 0.69; value instead of key deviation, weighting per
           head, or writing the probe's exact KV into its layers: KL within 0.0003 of this, on 26
           contexts). The probe sat at the 4th layer, tuned on the demo model; on qwen2.5-coder-0.5b
           that is too shallow: on 24 dev contexts (evals/corpus) a probe at layer 6 of 24 took top-1
           from 0.83 to 0.96, greedy-16 from 0.63 to 0.83 and KL from 0.084 to 0.042 at the same
           budget; on the demo model layer 7 of 30 gave top-1 0.92 -> 0.96, KL 0.0059 -> 0.0051. So
           the probe sits at a quarter of the model's depth.
           Measuring costs a forward of the layers down to the probe over the prompt (a quarter of
           a full prefill's layers), so it only runs when there is something to recover.
The default (`auto`; `auto:R` sets R, else 0.15) sizes blend by what the skills missed: at most R of
the context's skill tokens and at most one token per unseen token before the skill. A budget under
`min_blend` tokens does not pay for the probe's forward: it lengthens the seams instead (split evenly
over the skills that missed text), since the tokens right after unseen text are the ones it changed
most. A 40-token system text before a long skill then costs 56 seam tokens and no probe; a skill
spliced after a 1,000-token skill gets up to R of the skill tokens recomputed. Measured on the
demo model (evals/), composition is where the error is: KL 0.09 -> 0.004 for a style guide spliced
after a policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from skillforge.errors import BadReference
from skillforge.model.forward import run, wrapped_attention

if TYPE_CHECKING:
    from skillforge.prompt import Prompt


@dataclass(frozen=True)
class Repair:
    seam: int = 16
    blend: float = 0.15
    blend_per_unseen: float = 1.0
    min_blend: int = 64
    probe_layer: int | None = None  # None: a quarter of the model's layers down (see the module docstring)
    exact_skip: bool = True

    @classmethod
    def parse(cls, seam: int | None = None, repair: str | None = None) -> "Repair":
        """`--seam K` and `--repair auto[:<ratio>]|none|seam|blend:<ratio>` -> Repair. `auto:0.3` keeps
        the adaptive sizing with a higher ceiling: more recomputed where skills missed much, for lower KL."""
        base = cls() if seam is None else cls(seam=seam)
        kind, _, arg = (repair or "auto").partition(":")
        if kind == "auto":
            return replace(base, blend=_ratio(repair, arg, base.blend))
        if kind == "seam" and not arg:
            return replace(base, blend=0.0)
        if kind == "none" and not arg:
            return replace(base, seam=seam or 0, blend=0.0)
        if kind == "blend":
            # plain CacheBlend: a fixed fraction, whatever precedes the skills
            return replace(base, seam=seam or 0, blend=_ratio(repair, arg, 0.15), blend_per_unseen=math.inf, min_blend=1)
        raise BadReference(f"invalid --repair {repair!r}: use auto[:<ratio>], seam, none or blend:<ratio>")

    def describe(self) -> str:
        parts = [f"seam={self.seam}"]
        if self.blend:
            parts.append(f"blend={self.blend:g}" + ("" if math.isinf(self.blend_per_unseen) else "(adaptive)"))
        return ",".join(parts)


def _ratio(repair: str | None, arg: str, default: float) -> float:
    try:
        ratio = float(arg) if arg else default
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise BadReference(f"invalid --repair {repair!r}: the blend ratio must be between 0 and 1")
    return ratio


class _Stop(Exception):
    pass


def unseen_tokens(prompt: "Prompt", skill_index: int, anchor: list[int]) -> int:
    """Tokens before the skill that its artifact never attended to (0: it sits right behind its anchor)."""
    before = prompt.ids_before(prompt.skill_spans[skill_index][0])
    if before[: len(anchor)] != anchor:
        return len(before)
    return len(before) - len(anchor)


def select_repair(model: Any, repair: Repair, prompt: "Prompt", resolved: list[Any], reuse: list, cache: Any) -> set[int]:
    """Positions of reused tokens to recompute."""
    spans: list[list[int]] = []  # the reused positions of every skill that missed something
    unseen = 0
    for i, blocks in reuse:
        missed = unseen_tokens(prompt, i, resolved[i].meta.anchor_ids)
        if repair.exact_skip and missed == 0:
            continue
        unseen = max(unseen, missed)
        spans.append([c + k for _, c, n in blocks for k in range(n)])
    skill_tokens = sum(n for _, blocks in reuse for _, _, n in blocks)
    budget = int(min(round(repair.blend * skill_tokens), repair.blend_per_unseen * unseen))
    probe = budget >= repair.min_blend
    # a budget too small to pay for the probe's forward lengthens the seams instead: the tokens right
    # after the unseen text are the ones it changed most (on 7 dev lone-system contexts, qwen2.5-coder-0.5b:
    # KL 0.028 -> 0.011, top-1 0.86 -> 1.00)
    seam = repair.seam if probe else repair.seam + budget // max(1, len(spans))
    chosen = {p for positions in spans for p in positions[:seam]}
    candidates = [p for positions in spans for p in positions[seam:]]
    if probe and candidates:
        chosen.update(_deviating(model, repair.probe_layer, prompt, candidates, cache, min(budget, len(candidates))))
    return chosen


def _deviating(model: Any, layer: int | None, prompt: "Prompt", candidates: list[int], cache: Any, budget: int) -> list[int]:
    """The `budget` candidates that matter most (see `_scores`)."""
    idx, score = _scores(model, layer, prompt, candidates, cache)
    return idx[score.topk(min(budget, idx.numel())).indices].tolist()


@torch.no_grad()
def _scores(model: Any, layer: int | None, prompt: "Prompt", candidates: list[int], cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """How much each candidate matters: how far its spliced key at `layer` is from a fresh prefill's,
    times the attention the user turn pays it there (a deviating token nobody reads costs nothing).
    Measured by a forward of the first layers over the whole prompt. -> (positions, scores)."""
    # layer 0's keys never depend on the context (embeddings only): the probe reads layer 1 at the least
    layer = max(1, len(cache.layers) // 4) if layer is None else min(layer, len(cache.layers) - 1)
    ids = torch.tensor([prompt.ids], device=model.device)
    seen: dict[str, torch.Tensor] = {}

    def record(original):
        def attention(module, query, key, value, attention_mask, **kwargs):
            if getattr(module, "layer_idx", None) == layer:  # read this layer's queries and keys, stop
                seen.update(query=query, key=key, scaling=torch.tensor(kwargs.get("scaling") or query.shape[-1] ** -0.5))
                raise _Stop
            return original(module, query, key, value, attention_mask, **kwargs)
        return attention

    with wrapped_attention(model, record):
        try:
            run(model, ids, mask=torch.ones_like(ids))
        except _Stop:
            pass
    q, k = seen["query"][0].float(), seen["key"][0].float()  # [heads, L, dim], [kv_heads, L, dim]
    idx = torch.tensor(candidates, device=k.device)
    spliced = cache.layers[layer].keys[0][:, idx].float()
    deviation = (k[:, idx] - spliced).norm(dim=-1).sum(0)
    # the user turn: every token after the last skill or erratum (at least the last token)
    ends = [e for _, e in [*prompt.skill_spans, *prompt.errata_spans]]
    tail = [i for i, (a, b) in enumerate(prompt.offsets) if a >= max(ends, default=0) and b > a] or [len(prompt.ids) - 1]
    t0 = tail[0]
    groups = q.shape[0] // k.shape[0]
    scores = (q[:, t0:] @ k.repeat_interleave(groups, 0).transpose(-1, -2)) * seen["scaling"]
    causal = torch.ones(q.shape[1] - t0, k.shape[1], dtype=torch.bool, device=k.device).tril(t0)
    attention = scores.masked_fill(~causal, float("-inf")).softmax(-1).mean(dim=(0, 1))  # [L]
    return idx, deviation * attention[idx]
