"""Which reused tokens to recompute against the real prefix, to recover what splicing loses.

A skill's cached KV never attended to what precedes it in the new context (system text, earlier
skills). A skill right behind the anchor it was compiled behind is exact and gets no repair. For the
others, two repairs combine:
  seam K   recompute the first K tokens of each skill (EPIC's LegoLink, the paper's seam repair):
           they carry the most prefix-dependent state and act as false attention sinks.
  blend R  CacheBlend-style: recompute the reused tokens whose keys deviate most from a true
           prefill at an early layer (the 4th: on the demo model it picked better tokens than the
           2nd and as good as the 7th). Measuring the deviation costs a forward of the first
           layers over the prompt up to the last candidate, so it only pays when there is
           something to recover.
The default (`auto`) sizes blend by what the skills missed: at most R of the context's skill tokens
and at most one token per unseen token before the skill, and skips it below `min_blend` tokens. A
short system text before a long skill then costs 16 seam tokens; a skill spliced after a 1,000-token
skill gets up to R of the skill tokens recomputed. Measured on the demo model (evals/), composition
is where the error is: KL 0.09 -> 0.004 for a style guide spliced after a policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from skillforge.errors import BadReference

if TYPE_CHECKING:
    from skillforge.runtime.layout import Prompt


@dataclass(frozen=True)
class Repair:
    seam: int = 16
    blend: float = 0.15
    blend_per_unseen: float = 1.0
    min_blend: int = 64
    probe_layer: int = 3
    exact_skip: bool = True

    @classmethod
    def parse(cls, seam: int | None = None, repair: str | None = None) -> "Repair":
        """`--seam K` and `--repair auto|none|seam|blend:<ratio>` -> Repair."""
        base = cls() if seam is None else cls(seam=seam)
        kind, _, arg = (repair or "auto").partition(":")
        if kind == "auto" and not arg:
            return base
        if kind == "seam" and not arg:
            return replace(base, blend=0.0)
        if kind == "none" and not arg:
            return replace(base, seam=seam or 0, blend=0.0)
        if kind == "blend":
            try:
                ratio = float(arg or 0.15)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise BadReference(f"invalid --repair {repair!r}: the blend ratio must be between 0 and 1")
            # plain CacheBlend: a fixed fraction, whatever precedes the skills
            return replace(base, seam=seam or 0, blend=ratio, blend_per_unseen=math.inf, min_blend=1)
        raise BadReference(f"invalid --repair {repair!r}: use auto, none, seam or blend:<ratio>")

    def describe(self) -> str:
        parts = [f"seam={self.seam}"]
        if self.blend:
            parts.append(f"blend={self.blend:g}" + ("" if math.isinf(self.blend_per_unseen) else "(adaptive)"))
        return ",".join(parts)


class _Stop(Exception):
    pass


class _ProbeCache(DynamicCache):
    """Records one layer's fresh keys during a forward, then stops it (the rest is not needed)."""

    def __init__(self, layer: int):
        super().__init__()
        self.target = layer
        self.keys: torch.Tensor | None = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx == self.target:
            self.keys = key_states
            raise _Stop
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


def unseen_tokens(prompt: "Prompt", skill_index: int, anchor: list[int]) -> int:
    """Tokens before the skill that its artifact never attended to (0: it sits right behind its anchor)."""
    cs = prompt.skill_spans[skill_index][0]
    before = [prompt.ids[p] for p, (a, b) in enumerate(prompt.offsets) if b <= cs and b > a]
    if before[: len(anchor)] != anchor:
        return len(before)
    return len(before) - len(anchor)


def select_repair(runtime: Any, repair: Repair, prompt: "Prompt", resolved: list[Any], reuse: list, cache: Any) -> set[int]:
    """Positions of reused tokens to recompute."""
    chosen: set[int] = set()
    candidates: list[int] = []
    unseen = 0
    for i, blocks in reuse:
        missed = unseen_tokens(prompt, i, resolved[i].meta.anchor_ids)
        if repair.exact_skip and missed == 0:
            continue
        unseen = max(unseen, missed)
        positions = [c + k for _, c, n in blocks for k in range(n)]
        chosen.update(positions[: repair.seam])
        candidates.extend(positions[repair.seam :])
    if repair.blend > 0 and candidates:
        skill_tokens = sum(n for _, blocks in reuse for _, _, n in blocks)
        budget = min(round(repair.blend * skill_tokens), repair.blend_per_unseen * unseen, len(candidates))
        if budget >= repair.min_blend:
            chosen.update(_deviating(runtime, repair.probe_layer, prompt, candidates, cache, int(budget)))
    return chosen


@torch.no_grad()
def _deviating(runtime: Any, layer: int, prompt: "Prompt", candidates: list[int], cache: Any, budget: int) -> list[int]:
    """The `budget` candidates whose spliced keys at `layer` differ most from a fresh prefill's."""
    model = runtime.lm.model
    layer = min(layer, len(cache.layers) - 1)  # shallow models: probe their last layer
    ids = torch.tensor([prompt.ids[: max(candidates) + 1]], device=model.device)
    probe = _ProbeCache(layer)
    try:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), cache=probe, use_cache=True, logits_to_keep=1)
    except _Stop:
        pass
    fresh = probe.keys[0]  # [heads, tokens, dim]
    idx = torch.tensor(candidates, device=fresh.device)
    spliced = cache.layers[layer].keys[0][:, idx]
    deviation = (fresh[:, idx].float() - spliced.float()).norm(dim=-1).sum(0)
    top = deviation.topk(min(budget, idx.numel())).indices
    return idx[top].tolist()
