"""Which reused tokens to recompute against the real prefix, to recover what splicing loses.

A skill's cached KV never attended to what precedes it in the new context (system text, earlier
skills). A skill right behind the anchor it was compiled behind is exact and gets no repair. For the
others, two repairs combine:
  seam K   recompute the first K tokens of each skill (EPIC's LegoLink, the paper's seam repair):
           they carry the most prefix-dependent state and act as false attention sinks.
  blend R  CacheBlend-style selective recompute, with attention in the choice. Two rankings, each
           given half the budget (`both`, the default before `sensitive`, below):
           `deviation`: of the reused tokens, those whose keys deviate most from a true prefill at a
           probe layer a quarter of the way down, weighted by the attention the user turn pays them
           there. It costs a forward of those layers over the whole prompt. Deviation alone (plain
           CacheBlend) spends the budget on tokens nobody reads (16 composed demo contexts: top-1
           0.88 against 1.00 with the weighting); the probe at a quarter of the depth beat layer 4
           (24 dev contexts, qwen2.5-coder-0.5b: top-1 0.83 -> 0.96, KL 0.084 -> 0.042).
           `attention`: the user turn's attention in the spliced cache, averaged over every layer,
           from one extra pass over the tokens the splice computes (the probe's picks included). No
           forward over the skills, but alone no better than the probe.
           The two miss different tokens: on one dev composition the probe alone left KL 0.65 and
           the attention choice 0.006. On dev compositions (never the test split) `both` against
           the probe alone: qwen2.5-coder-0.5b KL 0.052 -> 0.021 (39 contexts, lower in 21, top-1
           0.95 either way), qwen2.5-coder-1.5b 0.018 -> 0.009 (8; lower in 7, one tie), demo model
           0.0105 -> 0.0088 (39; top-1 0.95 -> 0.90 by two near-ties). The extra pass costs about
           as much as the splice's own (a 1,242-token composition on the demo model: 3.2 s against
           2.2 s with the probe alone). `Repair(select=...)` picks one alone.
The default (`auto`; `auto:R` sets R, else 0.15) spends R of the context's skill tokens on the
skills that missed text, however little they missed: on qwen2.5-coder-0.5b a system text of a few
words moves a skill's K/V as much as a paragraph does, and the earlier cap of one token per unseen
token (`blend_per_unseen=1`) left 17 dev lone-system contexts at KL 0.0171 against 0.0070 without it
(top-1 0.88 -> 0.94, at 13% -> 20% of their skill tokens recomputed; one at 0.099 -> 0.004). It
ranks it (`select="sensitive"`) by each token's compile-time sensitivity (how far its K/V moved when
the skill was prefilled behind a generic system text: sensitivity.py; ends of code blocks, paragraph
breaks and sentence ends, which gather their section like attention sinks) times the attention the
user turn pays it in the spliced cache, from the attention pass; no probe. On the 39 dev
compositions that matched the probe-and-attention split at about 0.6 of its splice time
(qwen2.5-coder-0.5b KL 0.0208 -> 0.0203, lower in 25; the demo model 0.0088 -> 0.0067, lower in 26,
top-1 and greedy-16 the same), and on 16 dev compositions of short skills, where the budget is too
small for the probe, it beat sensitivity alone (qwen2.5-coder-0.5b KL 0.032 -> 0.024 with two
skills, 0.072 -> 0.056 with three, top-1 4 -> 5 of 6; the demo model 0.0103 -> 0.0072, 0.0071 ->
0.0053). A budget under `min_attend` tokens, or an attention pass that would tip the splice over a
prefill's cost (`plan`), ranks by sensitivity alone: on 17 dev lone-system contexts that beat seams
longer by the budget (the earlier default) at the same tokens recomputed, qwen2.5-coder-0.5b KL
0.0318 -> 0.0148, the demo model 0.0066 -> 0.0037.
The budget counts a skill after unseen text only as deep as that text reaches: its first
max(`blend_horizon`, `horizon_per_unseen` x unseen tokens) tokens (1,024 and 8; a skill behind its
anchor counts whole, being unseen text to the skills after it). A share of every token made a long
skill's repair grow with its square (each recomputed token attends over the whole skill): behind a
one-sentence system text an 8,000-token skill recomputed 1,200 tokens, a splice of 13 s against a
51 s prefill on the demo model. Sensitivity sits in a skill's first few hundred tokens (of the top
15% of a 2,000-3,000-token skill, 98% on the demo model, 69% on qwen2.5-coder-0.5b and 448 of 450
on gemma-3-270m lie in its first 30%), while a long unseen text, another skill, moves tokens deep
into the next one: a flat horizon of 1,024 cost the compositions among 15 dev contexts with the
three long skills (qwen2.5-coder-0.5b KL 0.0024 -> 0.0068, a top-1 flip; the demo model 0.0004 ->
0.0026), the horizon that grows with the unseen text kept them (0.0026, top-1 15 of 15; the demo
model 0.0011, greedy-16 as before) at 11.5% of skill tokens recomputed instead of 15.6%.
Artifacts compiled before sensitivity was recorded keep the earlier rule: seams longer by a budget
under `min_blend`, the probe-and-attention split (`both`) above it.
Where even the cheapest ranking would cost more token-forwards than a full prefill (`plan`: most of
the prompt is computed anyway, e.g. a long history after the skills), the splice prefills instead
(`prefill_fallback`): exact, and no slower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

import torch

from skillforge.errors import BadReference
from skillforge.model.forward import AttentionFn, grouped_scores, run, wrapped_attention

if TYPE_CHECKING:
    from skillforge.prompt import Prompt

# the splice's pass over sorted positions, with an attention wrapper to observe it (Splicer.compute)
Compute = Callable[[torch.Tensor, Callable[[AttentionFn], AttentionFn] | None], Any]


@dataclass(frozen=True)
class Repair:
    seam: int = 16
    blend: float = 0.15
    blend_per_unseen: float = math.inf  # a cap per token of unseen text before the skill (1.0 before; docstring)
    blend_horizon: int = 1024  # a skill after unseen text counts its first max(N, horizon_per_unseen x unseen) tokens (0: all; docstring)
    horizon_per_unseen: float = 8.0
    min_blend: int = 64  # the smallest budget that pays for the probe (artifacts without sensitivity)
    min_attend: int = 16  # the smallest budget the attention pass ranks (artifacts with sensitivity)
    select: str = "sensitive"  # how blend ranks candidates: sensitive | both | deviation | attention (module docstring)
    probe_layer: int | None = None  # deviation's probe; None: a quarter of the model's layers down
    drift: bool = True  # carry the recomputed tokens' mean change to the skill's other tokens (runtime/drift.py)
    exact_skip: bool = True
    prefill_fallback: bool = True  # prefill instead where the repair would cost more (plan)

    def __post_init__(self) -> None:
        if self.select not in ("sensitive", "deviation", "attention", "both"):
            raise BadReference(f"unknown blend selection {self.select!r}: use sensitive, deviation, attention or both")

    @classmethod
    def parse(cls, seam: int | None = None, repair: str | None = None) -> "Repair":
        """`--seam K` and `--repair auto[:<ratio>]|none|seam|blend:<ratio>` -> Repair. `auto:0.3` spends
        twice the default's share on the skills that missed text, for lower KL at more compute."""
        base = cls() if seam is None else cls(seam=seam)
        kind, _, arg = (repair or "auto").partition(":")
        if kind == "auto":
            return replace(base, blend=_ratio(repair, arg, base.blend))
        if kind == "seam" and not arg:
            return replace(base, blend=0.0, drift=False)
        if kind == "none" and not arg:
            return replace(base, seam=seam or 0, blend=0.0, drift=False)
        if kind == "blend":
            # plain CacheBlend: a fixed fraction, whatever precedes the skills
            return replace(base, seam=seam or 0, blend=_ratio(repair, arg, 0.15), blend_per_unseen=math.inf, blend_horizon=0,
                           min_blend=1, select="deviation", drift=False)
        raise BadReference(f"invalid --repair {repair!r}: use auto[:<ratio>], seam, none or blend:<ratio>")

    def describe(self) -> str:
        parts = [f"seam={self.seam}"]
        if self.blend:
            cap = "" if math.isinf(self.blend_per_unseen) else f"(<={self.blend_per_unseen:g}/unseen token)"
            horizon = f"(horizon {self.blend_horizon}, {self.horizon_per_unseen:g}/unseen token)" if self.blend_horizon else ""
            parts.append(f"blend={self.blend:g}{cap}{horizon}")
        if self.drift:
            parts.append("drift")
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


def block_positions(blocks: list[tuple[int, int, int]]) -> list[int]:
    """The prompt positions a skill's reused blocks (art_start, ctx_start, n) cover, in order."""
    return [c + k for _, c, n in blocks for k in range(n)]


def reach(repair: Repair, missed: int) -> int | float:
    """How many of a skill's first tokens unseen text of `missed` tokens before it moves: max(blend_horizon,
    horizon_per_unseen x missed); all of them (inf) without a horizon."""
    return max(repair.blend_horizon, round(repair.horizon_per_unseen * missed)) if repair.blend_horizon else math.inf


def missed_spans(repair: Repair, prompt: "Prompt", resolved: list[Any], reuse: list) -> tuple[list[list[int]], int]:
    """The reused positions of every skill that missed something, and the blend budget: `blend` of the
    skill tokens, a skill after unseen text counted up to its horizon, at most `blend_per_unseen` per
    unseen token (no cap by default; module docstring)."""
    spans: list[list[int]] = []
    unseen = counted = 0
    for i, blocks in reuse:
        missed = unseen_tokens(prompt, i, resolved[i].meta.anchor_ids)
        n = sum(k for _, _, k in blocks)
        # a skill behind its anchor counts whole (it is unseen text to the skills after it); one after
        # unseen text counts as deep as that text reaches
        counted += n if missed == 0 else min(n, reach(repair, missed))
        if repair.exact_skip and missed == 0:
            continue
        unseen = max(unseen, missed)
        spans.append(block_positions(blocks))
    if not spans:  # every skill sits behind its anchor: exact, nothing to buy
        return spans, 0
    budget = round(repair.blend * counted)
    if not math.isinf(repair.blend_per_unseen):
        budget = min(budget, int(repair.blend_per_unseen * unseen))
    return spans, budget


@dataclass(frozen=True)
class Plan:
    """How a splice repairs: `how` ranks the budget (seams / longseam / sensitive / sensitive+attention /
    blend, the probe-and-attention split), `cost` in token-forwards (one token through every layer)."""

    how: str
    spans: list[list[int]]
    budget: int
    cost: float
    select: str = ""  # the blend's split (`both` for `sensitive` on artifacts without sensitivity)


def plan(repair: Repair, prompt: "Prompt", resolved: list[Any], reuse: list, layers: int) -> Plan:
    """The richest repair whose passes cost less than a full prefill (one token-forward per prompt
    token). The splice's own pass computes every token no artifact covers, the seams and the budget;
    ranking by sensitivity alone adds nothing; the attention pass adds one more pass over those tokens
    but the budget; the probe a forward over the whole prompt up to its layer. With every artifact
    carrying sensitivity (`select="sensitive"`) the attention pass runs where it fits under a prefill's
    cost and the budget is at least `min_attend`, else sensitivity alone; without, the budget lengthens
    the seams under `min_blend` and runs the probe/attention split above it. Where even that costs
    more than a prefill (a long history after the skills: 15 dev multi-turn contexts,
    qwen2.5-coder-0.5b, 5 splices 8-12% slower than a full prefill), the splice prefills instead."""
    spans, budget = missed_spans(repair, prompt, resolved, reuse)
    computed = len(prompt.ids) - sum(n for _, blocks in reuse for _, _, n in blocks)
    seams = sum(min(len(positions), repair.seam) for positions in spans)
    cost = computed + seams + budget
    if budget <= 0:
        return Plan("seams", spans, 0, cost)
    sensitive = all(resolved[i].meta.sensitivity is not None for i, _ in reuse)
    if sensitive and (repair.select == "sensitive" or budget < repair.min_blend):
        attend = cost + computed + seams
        if repair.select == "sensitive" and budget >= repair.min_attend and attend < len(prompt.ids):
            return Plan("sensitive+attention", spans, budget, attend)
        return Plan("sensitive", spans, budget, cost)
    if budget < repair.min_blend:
        return Plan("longseam", spans, budget, cost)
    select = "both" if repair.select == "sensitive" else repair.select
    by_probe = _probe_share(select, budget)
    if by_probe:  # it runs every layer below the probe layer (and stops inside that one)
        cost += len(prompt.ids) * probe_layer(repair.probe_layer, layers) / layers
    if budget > by_probe:
        cost += computed + seams + by_probe
    return Plan("blend", spans, budget, cost, select)


def _probe_share(select: str, budget: int) -> int:
    """How much of the blend budget the probe's ranking fills; the attention choice fills the rest."""
    return {"deviation": budget, "attention": 0, "both": budget // 2}[select]


def probe_layer(layer: int | None, layers: int) -> int:
    """The layer the probe reads: `layer`, else a quarter of the way down; never layer 0, whose keys
    never depend on the context (embeddings only)."""
    return max(1, layers // 4) if layer is None else min(layer, layers - 1)


def select_repair(model: Any, repair: Repair, prompt: "Prompt", resolved: list[Any], reuse: list, cache: Any,
                  compute: Compute) -> set[int]:
    """Positions of reused tokens to recompute, as `plan` decides. `compute(positions, observe)` is the
    splice's own pass over sorted positions against `cache`, with `observe` wrapped around its
    attention: the attention choice reads the user turn from it."""
    how = plan(repair, prompt, resolved, reuse, len(cache.layers))
    seam = repair.seam + (how.budget // max(1, len(how.spans)) if how.how == "longseam" else 0)
    chosen = {p for positions in how.spans for p in positions[:seam]}
    candidates = [p for positions in how.spans for p in positions[seam:]]
    if how.how in ("seams", "longseam") or not candidates:
        return chosen
    budget = min(how.budget, len(candidates))
    if how.how.startswith("sensitive"):
        idx = torch.tensor(candidates)
        score = sensitivity_at(resolved, reuse)[idx]
        if how.how == "sensitive+attention":
            score = score * _user_attention(compute, prompt, reuse, chosen)[idx]
        return chosen | set(idx[score.topk(budget).indices].tolist())
    by_probe = _probe_share(how.select, budget)
    if by_probe:
        chosen.update(_deviating(model, repair.probe_layer, prompt, candidates, cache, by_probe))
    if budget > by_probe:  # the rest by the user turn's attention, the probe's picks computed in its pass
        idx = torch.tensor([p for p in candidates if p not in chosen])
        read = _user_attention(compute, prompt, reuse, chosen)[idx]
        chosen.update(idx[read.topk(budget - by_probe).indices].tolist())
    return chosen


def sensitivity_at(resolved: list[Any], reuse: list) -> torch.Tensor:
    """[prompt positions]: each reused token's compile-time sensitivity (its artifact's), 0 elsewhere.
    Where the splice mixes measured and estimated sensitivity (`compile --sensitivity`: two scales),
    each artifact's is divided by its mean so neither kind takes the whole budget."""
    end = max((c + n for _, blocks in reuse for _, c, n in blocks), default=0)
    out = torch.zeros(end)
    mixed = len({resolved[i].meta.sensitivity_kind for i, _ in reuse}) > 1
    for i, blocks in reuse:
        sens = torch.tensor(resolved[i].meta.sensitivity)
        if mixed:
            sens = sens / sens.mean().clamp_min(1e-12)
        for a, c, n in blocks:
            out[c : c + n] = sens[a : a + n]
    return out


def _user_turn(prompt: "Prompt") -> int:
    """The first position of the user turn: every token after the last skill or erratum."""
    ends = [e for _, e in [*prompt.skill_spans, *prompt.errata_spans]]
    tail = [i for i, (a, b) in enumerate(prompt.offsets) if a >= max(ends, default=0) and b > a]
    return tail[0] if tail else len(prompt.ids) - 1


@torch.no_grad()
def _user_attention(compute: Compute, prompt: "Prompt", reuse: list, chosen: set[int]) -> torch.Tensor:
    """[prompt tokens]: the attention the user turn pays each position, averaged over heads, its
    tokens and every layer, in a pass over what the splice computes anyway (every position no
    artifact covers, `chosen`, the last token) against the spliced cache. The splice's own pass
    then overwrites what this one wrote."""
    L = len(prompt.ids)
    reused = torch.zeros(L, dtype=torch.bool)
    for _, blocks in reuse:
        for _, c, n in blocks:
            reused[c : c + n] = True
    reused[sorted(chosen)] = False
    positions = torch.cat([(~reused[: L - 1]).nonzero().flatten(), torch.tensor([L - 1])])
    rows = positions >= _user_turn(prompt)
    read = torch.zeros(L)

    def record(original: AttentionFn) -> AttentionFn:
        def attention(module, query, key, value, attention_mask, **kwargs):
            q, k = query[0][:, rows].float(), key[0].float()  # [heads, user tokens, dim], [kv_heads, L, dim]
            scores = grouped_scores(q, k)
            scores.mul_(kwargs.get("scaling") or q.shape[-1] ** -0.5)
            scores.add_(attention_mask[0, 0][rows, : k.shape[1]])  # this layer's causal (and window) mask
            read[: k.shape[1]] += scores.softmax(-1).mean(dim=(0, 1)).cpu()
            return original(module, query, key, value, attention_mask, **kwargs)
        return attention

    compute(positions, record)
    return read


def _deviating(model: Any, layer: int | None, prompt: "Prompt", candidates: list[int], cache: Any, budget: int) -> list[int]:
    """The `budget` candidates that matter most (see `_scores`)."""
    idx, score = _scores(model, layer, prompt, candidates, cache)
    return idx[score.topk(min(budget, idx.numel())).indices].tolist()


@torch.no_grad()
def _scores(model: Any, layer: int | None, prompt: "Prompt", candidates: list[int], cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """How much each candidate matters: how far its spliced key at `layer` is from a fresh prefill's,
    times the attention the user turn pays it there (a deviating token nobody reads costs nothing).
    Measured by a forward of the first layers over the whole prompt. -> (positions, scores)."""
    layer = probe_layer(layer, len(cache.layers))
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
    attention = user_turn_attention(q, k, seen["scaling"], _user_turn(prompt))
    return idx, deviation * attention[idx]


def user_turn_attention(q: torch.Tensor, k: torch.Tensor, scaling: Any, t0: int) -> torch.Tensor:
    """[prompt tokens]: the causal attention of the user turn (queries from position t0 on) over all
    keys, averaged over its heads and tokens. q [heads, L, dim], k [kv_heads, L, dim] of one layer of a
    full forward (grouped heads share their key head)."""
    scores = grouped_scores(q[:, t0:], k) * scaling
    causal = torch.ones(q.shape[1] - t0, k.shape[1], dtype=torch.bool, device=k.device).tril(t0)
    return scores.masked_fill(~causal, float("-inf")).softmax(-1).mean(dim=(0, 1))
