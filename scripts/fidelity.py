"""Splice fidelity per kind of context, for several repair selectors side by side (issue 16).

    python scripts/fidelity.py --model smollm2-135m --cases evals/corpus/dev.jsonl evals/corpus/dev-multiturn.jsonl \
        --variants default,fill10,oracle10 [--no-long] [--sample 36 --seed 0] [--json out.json]

Every variant runs the same cases through `run_eval` with one shared EvalMemo (the full-prefill
references are computed once). A variant is a selector that replaces the runtime's repair choice
(skillforge.runtime.repair.select_repair) for the run, so selectors can be compared before one becomes
the default:
  default     today's Repair() (whatever repair.py's default is)
  seam16      the first 16 tokens of every skill that follows unseen text, nothing more
  both        Repair(select="both"), the default before select="sensitive": a budget under min_blend by
              sensitivity alone, a larger one half by the probe, half by the attention choice
  probeattn   half the budget by the probe's score, half by the user turn's true attention at the probe layer
  shallowattn  the same, the attention averaged over layers 1..probe layer (both without the extra pass)
  perskill    the default, but each skill gets its own blend budget (blend of its tokens, one per token it missed)
  longseam    the default on artifacts without sensitivity: a small budget lengthens the seams (the earlier default)
  halfsens    the default, but a budget under min_blend goes half to longer seams, half to sensitive tokens
  seammax     the default, but a budget under min_blend makes the seam max(seam, budget) long (no sensitive tokens)
  fillR       seam 16, then the probe's choice (repair._deviating) until R of the skill tokens
  massS[capC]  seam 16, then the fewest probe-ranked candidates holding S% of the probe's total score,
              at most C% (default 15) of the skill tokens: a budget sized by measured deviation
  oracleR     seam 16, then the tokens whose K/V (all layers) deviate most from a full prefill, until R:
              an upper bound for any selector at that budget (REFERENCE.md's cheap check)
  oraclenosR  the same oracle, no seam: R of the skill tokens by deviation alone
  probeN      the default repair with its probe at layer index N (where deviation and attention are read)
  k=v/k=v     the default repair with these Repair fields changed, e.g. min_blend=16/blend=0.1, or
              select=attention (blend by the user turn's attention in the spliced cache, no probe)
  NAME+k=v    variant NAME with these Repair fields changed, e.g. sensattn+select=attention/min_blend=16
  learned     each skill compiled behind exactly the tokens the case puts before it (what `serve
              --learn-after` compiles once a context recurs; `compile --system` for a lone skill),
              spliced with the default repair: how often that makes a splice exact
  sysall      the cases with a system text, each skill compiled behind that text alone (`compile
              --system` for a deployment's fixed system text), the default repair
  leadN       every skill that does not open the system turn compiled behind LEADS[N], a generic system
              text, instead of the bare anchor (Cache-Craft-style prefix variants), the default repair
  meanlead    the same with the mean of the K/V compiled behind every lead (keys rotated to one place)
  sens        where the budget is under min_blend, seam 16 then the tokens whose K/V move most between the
              bare anchor and the leads (compile-time sensitivity) instead of a longer seam; sensN: from
              LEADS[N] alone (`sens3` is what compile records); sensattn: every budget by the recorded
              sensitivity times the user turn's attention from the attention pass, no probe
  bothsens    the default's split, its attention half weighted by the recorded sensitivity
  sensdN      the default, every artifact's sensitivity from its first N layers only: what a compile
              whose second forward stopped at layer N would record (compile cost, issue 20)
  estimated   the default, every artifact's sensitivity estimated from its compile forward alone
              (what `compile --sensitivity estimate` records; sensitivity.prefill_with_sensitivity)
  combined    the default, every artifact's measured sensitivity and its estimate, each over its mean, summed
  apeT_S      the default repair, then APE's query-side correction (Yang et al., ICLR 2025) at the user
              turn's queries and every decoded token: over the stale keys (reused, not recomputed, of
              skills that missed text) scores / T and the block's mass x S (e.g. ape1_0.8); apecT_S:
              only in skills that follow another skill
  shiftMODE[+k=v]  the default repair with the drift (runtime/drift.py) replaced by one of the ways it was
              chosen among: oracle (each skill's true mean K/V change, from a full prefill; oraclek /
              oraclev: keys / values only; oraclelocal_W: the true mean over the stale tokens within W
              positions of each), chosen (the mean of what the last pass changed at the
              recomputed tokens, seams as refreshed by the ranking pass; chosenv, chosennoseam), true
              (the mean against the spliced K/V), ratio (that mean scaled by the sensitivity ratio: the
              default drift), prop (scaled per token by its sensitivity), sample_P (the mean over a
              uniform P% sample of the skill, recomputed for it), local_W (ratio, each stale token taking the
              mean change of the recomputed tokens within W positions of it), lsample_P (each stale token
              the mean change of the tokens of a uniform P% sample within two sample spacings), hybrid_P (ratio,
              plus the local mean of what ratio leaves at the sampled tokens, from a P% sample), lsamplem_P
              (lsample_P where a skill has 8 sampled tokens or more, else ratio), affine_A (ratio plus A x a per-dim
              slope on each token's spliced value)
  roundsT     the default, and a second budget where the repair moved the last token's logits by more
              than T (KL) from the seams-only attention pass: repair until it settles
Subsets: --kinds keeps the named kinds; --no-long drops cases with the three long skills (over 2,000
tokens); --sample N draws N cases stratified by kind with --seed. The subset is printed with the results, by case id.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from skillforge import compile as compile_mod, sensitivity as sens_mod
from skillforge.sensitivity import SENSITIVITY_LEAD
from skillforge.eval import EvalMemo, load_cases, run_eval
from skillforge.eval.run import by_kind, case_kind
from skillforge.model.forward import grouped_scores, prefill, wrapped_attention
from skillforge.model.loader import load_model
from skillforge.rope import rope_spec
from skillforge.runtime import Repair, decode as decode_mod, repair as repair_mod, splice as splice_mod

LONG = {"employee-handbook", "payments-api", "product-catalog"}
Selector = Callable[..., set[int]]


def _seam_and_candidates(prompt: Any, resolved: list, reuse: list, seam: int) -> tuple[set[int], list[int]]:
    chosen: set[int] = set()
    candidates: list[int] = []
    for i, blocks in reuse:
        if repair_mod.unseen_tokens(prompt, i, resolved[i].meta.anchor_ids) == 0:
            continue
        positions = repair_mod.block_positions(blocks)
        chosen.update(positions[:seam])
        candidates.extend(positions[seam:])
    return chosen, candidates


def mass(share: float, cap: float = 0.15, seam: int = 16) -> Selector:
    """Seam, then the fewest probe-ranked candidates holding `share` of the probe's total score, at most
    `cap` of the skill tokens: a budget sized by measured deviation."""
    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        chosen, candidates = _seam_and_candidates(prompt, resolved, reuse, seam)
        if not candidates:
            return chosen
        skill_tokens = sum(n for _, blocks in reuse for _, _, n in blocks)
        idx, score = repair_mod._scores(model, repair.probe_layer, prompt, candidates, cache)
        ranked = score.sort(descending=True)
        need = int((ranked.values.cumsum(0) < share * ranked.values.sum()).sum()) + 1
        budget = min(need, round(cap * skill_tokens), len(candidates))
        chosen.update(idx[ranked.indices[:budget]].tolist())
        return chosen
    return select


def blend_variant(pick: Callable[..., None]) -> Selector:
    """A selector that changes only how the blend budget is spent: under min_blend it is the default
    (seams and the most sensitive tokens); otherwise the seams, then `pick(model, repair, prompt, resolved,
    reuse, cache, chosen, candidates, budget)` adds its choice to `chosen`."""
    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        spans, budget = repair_mod.missed_spans(repair, prompt, resolved, reuse)
        if budget < repair.min_blend:
            return repair_mod.select_repair(model, replace(repair, select="both"), prompt, resolved, reuse, cache, compute)
        chosen = {p for positions in spans for p in positions[: repair.seam]}
        candidates = [p for positions in spans for p in positions[repair.seam :]]
        pick(model, repair, prompt, resolved, reuse, cache, chosen, candidates, min(budget, len(candidates)))
        return chosen
    return select


def probe_both(shallow: bool) -> Selector:
    """`both` without the extra pass: half the budget by the probe's score (deviation x attention at
    the probe layer), the rest by the user turn's true attention in the probe's own forward, at the
    probe layer (`probeattn`) or averaged over layers 1..probe layer (`shallowattn`)."""
    def pick(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any,
             chosen: set[int], candidates: list[int], budget: int) -> None:
        layer = repair_mod.probe_layer(repair.probe_layer, len(cache.layers))
        ids = torch.tensor([prompt.ids], device=model.device)
        t0 = repair_mod._user_turn(prompt)
        read = torch.zeros(len(prompt.ids))
        seen: dict[str, Any] = {}

        def record(original):
            def attention(module, query, key, value, attention_mask, **kwargs):
                i = getattr(module, "layer_idx", None)
                q, k = query[0].float(), key[0].float()
                att = repair_mod.user_turn_attention(q, k, kwargs.get("scaling") or q.shape[-1] ** -0.5, t0)
                if i is not None and i >= 1 and (shallow or i == layer):
                    read.add_(att)
                if i == layer:
                    seen.update(key=k, att=att)
                    raise repair_mod._Stop
                return original(module, query, key, value, attention_mask, **kwargs)
            return attention

        with repair_mod.wrapped_attention(model, record):
            try:
                repair_mod.run(model, ids, mask=torch.ones_like(ids))
            except repair_mod._Stop:
                pass
        idx = torch.tensor(candidates)
        deviation = (seen["key"][:, idx] - cache.layers[layer].keys[0][:, idx].float()).norm(dim=-1).sum(0)
        score = deviation * seen["att"][idx]
        by_probe = repair_mod._probe_share("both", budget)
        chosen.update(idx[score.topk(by_probe).indices].tolist())
        rest = torch.tensor([p for p in candidates if p not in chosen])
        chosen.update(rest[read[rest].topk(budget - by_probe).indices].tolist())
    return blend_variant(pick)


def per_skill() -> Selector:
    """The default, but the blend budget is split per skill: each skill that missed text gets at most
    `blend` of its own tokens and one per token it missed, ranked by the probe within the skill (the
    default ranks one pool over all skills)."""
    def pick(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any,
             chosen: set[int], candidates: list[int], budget: int) -> None:
        idx, score = repair_mod._scores(model, repair.probe_layer, prompt, candidates, cache)
        rank = dict(zip(idx.tolist(), score.tolist()))
        for i, blocks in reuse:
            missed = repair_mod.unseen_tokens(prompt, i, resolved[i].meta.anchor_ids)
            positions = repair_mod.block_positions(blocks)
            own = [p for p in positions[repair.seam :] if p in rank]
            if not missed or not own:
                continue
            share = int(min(round(repair.blend * len(positions)), repair.blend_per_unseen * missed))
            chosen.update(sorted(own, key=rank.__getitem__, reverse=True)[:share])
    return blend_variant(pick)


def seam_within_budget() -> Selector:
    """The default, except that a budget under min_blend makes the seam max(seam, budget/skills)
    tokens long rather than seam + budget/skills: the same choice, fewer tokens."""
    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        spans, budget = repair_mod.missed_spans(repair, prompt, resolved, reuse)
        if not spans or budget >= repair.min_blend:
            return repair_mod.select_repair(model, replace(repair, select="both"), prompt, resolved, reuse, cache, compute)
        seam = max(repair.seam, budget // len(spans))
        return {p for positions in spans for p in positions[:seam]}
    return select


def fill(ratio: float, oracle: bool, seam: int = 16) -> Selector:
    """Seam, then the best candidates by the probe (or the oracle) until `ratio` of the skill tokens."""
    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        chosen, candidates = _seam_and_candidates(prompt, resolved, reuse, seam)
        skill_tokens = sum(n for _, blocks in reuse for _, _, n in blocks)
        budget = min(round(ratio * skill_tokens) - len(chosen), len(candidates))
        if budget <= 0 or not candidates:
            return chosen
        if oracle:
            chosen.update(_oracle(model, prompt, candidates, cache, budget))
        else:
            chosen.update(repair_mod._deviating(model, repair.probe_layer, prompt, candidates, cache, budget))
        return chosen
    return select


@torch.no_grad()
def _oracle(model: Any, prompt: Any, candidates: list[int], cache: Any, budget: int) -> list[int]:
    """Top `budget` candidates by relative K and V deviation from a full prefill, summed over layers."""
    kv = prefill(model, prompt.ids)
    idx = torch.tensor(candidates)
    score = torch.zeros(len(candidates))
    for layer, (k, v) in enumerate(kv):
        ck = cache.layers[layer].keys[0][:, idx].float().cpu()
        cv = cache.layers[layer].values[0][:, idx].float().cpu()
        k, v = k[:, idx].float().cpu(), v[:, idx].float().cpu()
        score += ((k - ck).norm(dim=-1) / k.norm(dim=-1).clamp_min(1e-6)).sum(0)
        score += ((v - cv).norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-6)).sum(0)
    return idx[score.topk(budget).indices].tolist()


def sensitivity(lm: Any, resolved: Any, memo: dict, leads: list[str] | None = None, depth: int | None = None,
                estimated: bool = False) -> torch.Tensor:
    """[artifact tokens]: sensitivity.sensitivity (how much each token's K/V changes when the skill is
    prefilled behind a lead text instead of its bare anchor) averaged over `leads`; without leads,
    what compile recorded in the artifact; with `depth`, behind SENSITIVITY_LEAD from the first
    `depth` layers only (what a compile that stops its second forward there would record); with
    `estimated`, what `compile --sensitivity estimate` records."""
    meta = resolved.meta
    if estimated:
        key = (meta.skill, meta.version, "estimated")
        if key not in memo:
            memo[key] = torch.tensor(sens_mod.prefill_with_sensitivity(lm, rope_spec(lm.model), meta.text, meta.token_ids, meta.anchor_ids)[1])
        return memo[key]
    if depth is not None:
        key = (meta.skill, meta.version, "depth", depth)
        if key not in memo:  # sens_mod.sensitivity sums over the layers of the KV it is given
            memo[key] = torch.tensor(sens_mod.sensitivity(lm, rope_spec(lm.model), meta.text, meta.token_ids, meta.offset,
                                                          resolved.kv[:depth]))
        return memo[key]
    if leads is None:
        return torch.tensor(meta.sensitivity)
    key = (meta.skill, meta.version)
    if key not in memo:
        spec = rope_spec(lm.model)
        memo[key] = sum(torch.tensor(sens_mod.sensitivity(lm, spec, meta.text, meta.token_ids, meta.offset, resolved.kv, lead))
                        for lead in leads) / len(leads)
    return memo[key]


def _sensitive_scores(lm: Any, prompt: Any, resolved: list, reuse: list, chosen: set[int], memo: dict,
                      leads: list[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, sensitivity) of the reused tokens not in `chosen` of every skill that missed text."""
    score: dict[int, float] = {}
    for i, blocks in reuse:
        if repair_mod.unseen_tokens(prompt, i, resolved[i].meta.anchor_ids) == 0:
            continue
        sens = sensitivity(lm, resolved[i], memo, leads)
        score.update((c + k, float(sens[a + k])) for a, c, n in blocks for k in range(n) if c + k not in chosen)
    return torch.tensor(list(score), dtype=torch.long), torch.tensor(list(score.values()))


def by_sensitivity(lm: Any, with_attention: bool, leads: list[str] | None = None) -> Selector:
    """Seam, then the budget by compile-time sensitivity (`sensitivity`) instead of a longer seam where
    the budget is under min_blend (`sens`); with `with_attention` (`sensattn`), a larger budget too,
    by sensitivity times the user turn's attention from the attention pass, no probe forward."""
    memo: dict = {}

    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        spans, budget = repair_mod.missed_spans(repair, prompt, resolved, reuse)
        if not spans or (budget >= repair.min_blend and not with_attention):
            return repair_mod.select_repair(model, replace(repair, select="both"), prompt, resolved, reuse, cache, compute)
        chosen = {p for positions in spans for p in positions[: repair.seam]}
        idx, val = _sensitive_scores(lm, prompt, resolved, reuse, chosen, memo, leads)
        if not idx.numel() or budget <= 0:
            return chosen
        if with_attention and budget >= repair.min_blend:
            val = val * repair_mod._user_attention(compute, prompt, reuse, chosen)[idx]
        chosen.update(idx[val.topk(min(budget, idx.numel())).indices].tolist())
        return chosen
    return select


def shallow_sensitivity(lm: Any, depth: int | None, estimated: bool = False) -> Selector:
    """`sensdN`: the default repair, but every artifact's sensitivity measured from its first N layers
    only (a compile whose second forward stops there costs ~N/layers of a forward, not a whole one);
    `estimated`: from the compile's forward alone (sensitivity.prefill_with_sensitivity)."""
    memo: dict = {}

    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        shallow = [replace(r, meta=replace(r.meta, extra={**r.meta.extra, "sensitivity": sensitivity(lm, r, memo, depth=depth, estimated=estimated).tolist()}))
                   for r in resolved]
        return repair_mod.select_repair(model, repair, prompt, shallow, reuse, cache, compute)
    return select


def combined_sensitivity(lm: Any) -> Selector:
    """`combined`: the default repair ranking by each artifact's recorded (measured) sensitivity over
    its mean plus the estimate from its compile forward over its mean: the measured kind is best on
    lone skills after a system text, the estimate on compositions (README, fidelity section)."""
    memo: dict = {}

    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        both = []
        for r in resolved:
            m = torch.tensor(r.meta.sensitivity)
            e = sensitivity(lm, r, memo, estimated=True)
            both.append(replace(r, meta=replace(r.meta, extra={**r.meta.extra, "sensitivity": (m / m.mean() + e / e.mean()).tolist()})))
        return repair_mod.select_repair(model, repair, prompt, both, reuse, cache, compute)
    return select


def probe_and_sensitive_attention(lm: Any) -> Selector:
    """`bothsens`: the default's split, but its second half by the user turn's attention times the
    recorded sensitivity (the probe's half measured deviation; this half predicts it)."""
    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        spans, budget = repair_mod.missed_spans(repair, prompt, resolved, reuse)
        if not spans or budget < repair.min_blend:
            return repair_mod.select_repair(model, replace(repair, select="both"), prompt, resolved, reuse, cache, compute)
        chosen = {p for positions in spans for p in positions[: repair.seam]}
        candidates = [p for positions in spans for p in positions[repair.seam :]]
        budget = min(budget, len(candidates))
        chosen.update(repair_mod._deviating(model, repair.probe_layer, prompt, candidates, cache, budget // 2))
        idx, val = _sensitive_scores(lm, prompt, resolved, reuse, chosen, {}, None)
        val = val * repair_mod._user_attention(compute, prompt, reuse, chosen)[idx]
        chosen.update(idx[val.topk(min(budget - budget // 2, idx.numel())).indices].tolist())
        return chosen
    return select


def half_sensitive() -> Selector:
    """The default, but a budget under min_blend goes half to longer seams (split over the skills) and
    half to the most sensitive tokens: the tokens right after a long unseen text, and the section ends."""
    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        spans, budget = repair_mod.missed_spans(repair, prompt, resolved, reuse)
        both = replace(repair, select="both")
        if not spans or budget >= repair.min_blend:
            return repair_mod.select_repair(model, both, prompt, resolved, reuse, cache, compute)
        half = replace(both, seam=repair.seam + budget // 2 // len(spans), blend=repair.blend / 2,
                       blend_per_unseen=repair.blend_per_unseen / 2)
        return repair_mod.select_repair(model, half, prompt, resolved, reuse, cache, compute)
    return select


def without_sensitivity() -> Selector:
    """The default on artifacts without sensitivity, as compiled before it was recorded: a budget
    under min_blend lengthens the seams (the earlier default)."""
    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        bare = [replace(r, meta=replace(r.meta, extra={k: v for k, v in r.meta.extra.items() if k != "sensitivity"}))
                for r in resolved]
        return repair_mod.select_repair(model, repair, prompt, bare, reuse, cache, compute)
    return select


def second_round(threshold: float) -> Selector:
    """`roundsT`: the default, then a check. A pass over what the splice computes with the chosen
    tokens (the splice's own pass, run here once more) gives the last token's logits after the
    repair and the user turn's attention over the repaired cache; where the logits moved more than
    T (KL) from the attention pass's (seams only), the skills missed much, and a second budget of the
    same size goes to the next tokens by sensitivity times that attention."""
    def select(model: Any, repair: Repair, prompt: Any, resolved: list, reuse: list, cache: Any, compute: Any) -> set[int]:
        logits: list[torch.Tensor] = []

        def observed(positions: torch.Tensor, observe: Any) -> Any:
            logits.append(compute(positions, observe).float())
            return logits[-1]
        how = repair_mod.plan(repair, prompt, resolved, reuse, len(cache.layers))
        chosen = repair_mod.select_repair(model, repair, prompt, resolved, reuse, cache, observed)
        if how.how != "sensitive+attention":
            return chosen
        read = repair_mod._user_attention(observed, prompt, reuse, chosen)
        p0, p1 = logits[0].log_softmax(-1), logits[1].log_softmax(-1)
        if float((p1.exp() * (p1 - p0)).sum()) <= threshold:
            return chosen
        idx = torch.tensor([p for positions in how.spans for p in positions[repair.seam :] if p not in chosen])
        if not idx.numel():
            return chosen
        score = repair_mod.sensitivity_at(resolved, reuse)[idx] * read[idx]
        return chosen | set(idx[score.topk(min(how.budget, idx.numel())).indices].tolist())
    return select


@contextmanager
def ape_queries(temperature: float, scale: float, after_skills: bool = False) -> Iterator[None]:
    """APE's query-side correction on every splice: at the user turn's queries of the splice's last pass
    and at every decoded token, attention over the stale keys (reused, not recomputed) is sharpened
    by `temperature` within the block and the block's mass multiplied by `scale`; `after_skills`: only
    in skills that follow another skill (not a lone skill after a system text)."""
    state: dict[str, Any] = {}

    def wrap(original: Any) -> Any:
        def attention(module, query, key, value, mask, **kw):
            out, w = original(module, query, key, value, mask, **kw)
            rows = state["rows"]
            stale = state["stale"]
            L = key.shape[2]
            st = torch.zeros(L, dtype=torch.bool)
            st[: min(L, stale.numel())] = stale[:L]
            if not rows.any() or not st.any():
                return out, w
            q, k, v = query[0][:, rows].float(), key[0].float(), value[0].float()
            s = grouped_scores(q, k) * (kw.get("scaling") or q.shape[-1] ** -0.5)
            if mask is not None:
                m = mask[0, 0][rows, :L]
                s = s.masked_fill(~m, -torch.inf) if m.dtype == torch.bool else s + m
            ss = s[..., st] / temperature
            lse = ss.logsumexp(-1, keepdim=True)
            lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
            s[..., st] = ss + (temperature - 1) * lse + math.log(scale)
            o = grouped_scores(s.softmax(-1), v.transpose(1, 2))  # [heads, rows, dv]
            out = out.clone()
            out[0, rows] = o.transpose(0, 1).to(out.dtype)
            return out, w
        return attention

    assemble, compute, advance = splice_mod.Splicer.assemble, splice_mod.Splicer.compute, decode_mod.Decoder.advance

    def assemble_(self, prompt, skills, *a, **k):
        inexact = torch.zeros(len(prompt.ids), dtype=torch.bool)  # skills that missed text: not behind their anchor
        for i, (r, (cs, ce)) in enumerate(zip(skills, prompt.skill_spans)):
            if repair_mod.unseen_tokens(prompt, i, r.meta.anchor_ids) and (i > 0 or not after_skills):
                inexact[prompt.tokens_within(cs, ce)] = True
        state.update(turn=repair_mod._user_turn(prompt), inexact=inexact)
        return assemble(self, prompt, skills, *a, **k)

    def compute_(self, cache, ids, positions, observe=None):
        if observe is not None:
            return compute(self, cache, ids, positions, observe)
        stale = state["inexact"][: int(positions[-1]) + 1].clone()
        stale[positions] = False
        state.update(stale=stale, rows=positions >= state["turn"])
        return compute(self, cache, ids, positions, wrap)

    def advance_(self, token):
        state["rows"] = torch.ones(1, dtype=torch.bool)
        with wrapped_attention(self.model, wrap):
            return advance(self, token)

    splice_mod.Splicer.assemble, splice_mod.Splicer.compute, decode_mod.Decoder.advance = assemble_, compute_, advance_
    try:
        yield
    finally:
        splice_mod.Splicer.assemble, splice_mod.Splicer.compute, decode_mod.Decoder.advance = assemble, compute, advance


def near_mean(to: torch.Tensor, of: torch.Tensor, width: float) -> torch.Tensor:
    """[len(to), len(of)]: the weights that average, for each position of `to`, the positions of `of`
    within `width` of it (all of them where none is that close; math.inf: the plain mean)."""
    near = ((to[:, None] - of[None, :]).abs() <= width).float()
    near[near.sum(1) == 0] = 1.0
    return near / near.sum(1, keepdim=True)


@contextmanager
def shift_stale(mode: str) -> Iterator[None]:
    """The drift experiment (see the `shiftMODE` variants in the module docstring): every stale token
    (reused, not recomputed) of a skill that missed text gets its skill's mean K/V change added (keys
    un-rotated to position 0 to average, rotated back to each slot); `oracle*` before the splice's last
    pass from a full prefill, the others estimated inside it, layer by layer."""
    state: dict[str, Any] = {}
    assemble, compute = splice_mod.Splicer.assemble, splice_mod.Splicer.compute

    def assemble_(self, prompt, skills, *a, **k):
        spans = []
        for i, (r, (cs, ce)) in enumerate(zip(skills, prompt.skill_spans)):
            if repair_mod.unseen_tokens(prompt, i, r.meta.anchor_ids):
                spans.append(torch.tensor(prompt.tokens_within(cs, ce)))
        sens = torch.zeros(len(prompt.ids))
        for i, (r, (cs, ce)) in enumerate(zip(skills, prompt.skill_spans)):
            pos = prompt.tokens_within(cs, ce)
            if r.meta.sensitivity is None:
                continue
            for b in splice_mod.align(r.meta.token_ids, [prompt.ids[p] for p in pos]):
                sens[pos[0] + b.ctx_start : pos[0] + b.ctx_start + b.length] = torch.tensor(r.meta.sensitivity[b.art_start : b.art_start + b.length])
        state.update(prompt=prompt, spans=spans, sens=sens, pre=None)
        return assemble(self, prompt, skills, *a, **k)

    @torch.no_grad()
    def compute_(self, cache, ids, positions, observe=None):
        if state["pre"] is None and state["spans"]:  # the spliced (stale) K/V, before any pass writes
            allpos = torch.cat(state["spans"])
            state["pre"] = (allpos, [(l.keys[0][:, allpos].float().clone(), l.values[0][:, allpos].float().clone()) for l in cache.layers])
        if observe is None and state["spans"] and not mode.startswith("oracle"):
            return estimated(self, cache, ids, positions)
        if observe is None and state["spans"]:
            prompt = state["prompt"]
            kv = prefill(self.lm.model, prompt.ids)
            done = torch.zeros(len(prompt.ids), dtype=torch.bool)
            done[positions] = True
            for span in state["spans"]:
                stale = span[~done[span]]
                if not stale.numel():
                    continue
                zero = torch.zeros_like(stale)
                # oraclelocal_W: each stale token gets the mean change of the stale tokens within W
                # positions of it (is what the drift misses local?); else the skill's mean
                mean = near_mean(stale, stale, alpha if kind == "oraclelocal" else math.inf)
                for layer, (k, v) in enumerate(kv):
                    ck, cv = cache.layers[layer].keys[0], cache.layers[layer].values[0]
                    dk = k[:, stale].float() - ck[:, stale].float()
                    dv = v[:, stale].float() - cv[:, stale].float()
                    cos, sin = self.rope.angle_delta(layer, stale, zero, wide=True)
                    mk = torch.einsum("ij,hjd->hid", mean, self.rope.shift(layer, dk, cos, sin))
                    cos, sin = self.rope.angle_delta(layer, zero, stale, wide=True)
                    if mode != "oraclev":
                        ck[:, stale] += self.rope.shift(layer, mk.contiguous(), cos, sin).to(ck.dtype)
                    if mode != "oraclek":
                        cv[:, stale] += torch.einsum("ij,hjd->hid", mean, dv).to(cv.dtype)
        return compute(self, cache, ids, positions, observe)

    kind, _, factor = mode.partition("_")
    values_only = kind.endswith("v")
    kind = kind.removesuffix("v")
    alpha = float(factor or 1)
    step = max(1, round(100 / alpha)) if alpha else 1  # the sample kinds: every step-th stale token, alpha% of them

    def spliced(chosen):  # the K/V at `chosen` as spliced, captured before any pass wrote them
        allpos, pre = state["pre"]
        where = torch.tensor([(allpos == p).nonzero()[0, 0].item() for p in chosen.tolist()])
        return [(k[:, where], v[:, where]) for k, v in pre]

    def estimated(self, cache, ids, positions):
        done = torch.zeros(len(state["prompt"].ids), dtype=torch.bool)
        done[positions] = True
        groups = []
        extra = []
        hybrid = []
        for span in state["spans"]:
            body = span[16:] if kind == "chosennoseam" else span
            chosen, stale = body[done[body]], span[~done[span]]
            sk = kind  # lsamplem: lsample where the span has 8 sampled tokens or more, else ratio
            if kind == "lsamplem":
                sk = "lsample" if stale.numel() >= 8 * step else "ratio"
            if sk in ("sample", "lsample", "hybrid"):  # a uniform sample of the stale tokens, computed only to estimate the mean
                sample, stale = stale[step // 2 :: step], stale[[i for i in range(stale.numel()) if (i - step // 2) % step]]
                extra.append(sample)
                if sk == "hybrid":  # the ratio drift from the repair's tokens, plus the sample's local residual from it
                    sc = state["sens"][chosen].mean().clamp_min(1e-12)
                    if chosen.numel() and stale.numel() and sample.numel():
                        hybrid.append((chosen, stale, spliced(chosen), float(state["sens"][stale].mean() / sc), sample,
                                       (state["sens"][sample] / sc)[None, :, None], near_mean(stale, sample, 2 * step),
                                       [(l.keys[0][:, sample].float().clone(), l.values[0][:, sample].float().clone()) for l in cache.layers]))
                    continue
                chosen = sample
            if chosen.numel() and stale.numel():
                if sk in ("true", "ratio", "prop", "affine", "local"):
                    saved = spliced(chosen)
                else:
                    saved = [(l.keys[0][:, chosen].float().clone(), l.values[0][:, chosen].float().clone()) for l in cache.layers]
                sc, ss = state["sens"][chosen], state["sens"][stale]
                if sk in ("ratio", "affine", "local"):
                    weight = torch.full((stale.numel(),), float(ss.mean() / sc.mean().clamp_min(1e-12)))
                elif sk == "prop":
                    weight = ss * chosen.numel() / sc.sum().clamp_min(1e-12)
                else:
                    weight = torch.ones(stale.numel())
                # local / lsample: each stale token, the mean change of the recomputed ones near it (lsample:
                # ~4 sampled tokens); the others the skill's mean
                width = {"local": alpha, "lsample": 2 * step}.get(sk, math.inf)
                groups.append((chosen, stale, saved, weight[None, :, None], near_mean(stale, chosen, width)))

        if extra:
            positions = torch.cat([positions, *extra]).unique()
        scale = 1.0 if kind in ("sample", "local", "lsample", "lsamplem") else alpha

        def wrap(original):
            def attention(module, query, key, value, mask, **kw):
                layer = module.layer_idx
                ck, cv = cache.layers[layer].keys[0], cache.layers[layer].values[0]
                for chosen, stale, saved, ratio, sample, rj, mix, saved_s in hybrid:
                    (k0, v0), (sk0, sv0) = saved[layer], saved_s[layer]  # the repair's tokens, the sample, as spliced
                    to0 = self.rope.angle_delta(layer, chosen, torch.zeros_like(chosen), wide=True)
                    s0 = self.rope.angle_delta(layer, sample, torch.zeros_like(sample), wide=True)
                    back = self.rope.angle_delta(layer, torch.zeros_like(stale), stale, wide=True)
                    gk = self.rope.shift(layer, ck[:, chosen].float() - k0, *to0).mean(1, keepdim=True)
                    gv = (cv[:, chosen].float() - v0).mean(1, keepdim=True)
                    rk = self.rope.shift(layer, ck[:, sample].float() - sk0, *s0) - rj * gk
                    rv = (cv[:, sample].float() - sv0) - rj * gv
                    dk = ratio * gk + torch.einsum("ij,hjd->hid", mix, rk)
                    ck[:, stale] += self.rope.shift(layer, dk.contiguous(), *back).to(ck.dtype)
                    cv[:, stale] += (ratio * gv + torch.einsum("ij,hjd->hid", mix, rv)).to(cv.dtype)
                for chosen, stale, saved, weight, mix in groups:
                    sk, sv = saved[layer]
                    if kind == "affine":  # the mean change plus a per-dim slope on the stale value (x - mean x)
                        to0 = self.rope.angle_delta(layer, chosen, torch.zeros_like(chosen), wide=True)
                        st0 = self.rope.angle_delta(layer, stale, torch.zeros_like(stale), wide=True)
                        back = self.rope.angle_delta(layer, torch.zeros_like(stale), stale, wide=True)
                        for which, x_c, x_s, new_c in (("k", self.rope.shift(layer, sk.contiguous(), *to0), self.rope.shift(layer, ck[:, stale].float().contiguous(), *st0),
                                                        self.rope.shift(layer, ck[:, chosen].float().contiguous(), *to0)),
                                                       ("v", sv, cv[:, stale].float(), cv[:, chosen].float())):
                            d = new_c - x_c
                            xm, dm = x_c.mean(1, keepdim=True), d.mean(1, keepdim=True)
                            a = ((x_c - xm) * (d - dm)).mean(1, keepdim=True) / ((x_c - xm).pow(2).mean(1, keepdim=True) + 1e-6)
                            pred = weight * (dm + alpha * a * (x_s - xm))
                            if which == "k":
                                ck[:, stale] += self.rope.shift(layer, pred.contiguous(), *back).to(ck.dtype)
                            else:
                                cv[:, stale] += pred.to(cv.dtype)
                        continue
                    dk = ck[:, chosen].float() - sk
                    cos, sin = self.rope.angle_delta(layer, chosen, torch.zeros_like(chosen), wide=True)
                    mk = torch.einsum("ij,hjd->hid", mix, self.rope.shift(layer, dk, cos, sin)).contiguous()
                    cos, sin = self.rope.angle_delta(layer, torch.zeros_like(stale), stale, wide=True)
                    if not values_only:
                        ck[:, stale] += (scale * weight * self.rope.shift(layer, mk, cos, sin)).to(ck.dtype)
                    cv[:, stale] += (scale * weight * torch.einsum("ij,hjd->hid", mix, cv[:, chosen].float() - sv)).to(cv.dtype)
                return original(module, query, key, value, mask, **kw)
            return attention

        return compute(self, cache, ids, positions, wrap)

    splice_mod.Splicer.assemble, splice_mod.Splicer.compute = assemble_, compute_
    try:
        yield
    finally:
        splice_mod.Splicer.assemble, splice_mod.Splicer.compute = assemble, compute


def variant(name: str) -> tuple[Repair, Selector | None]:
    if "+" in name:  # a selector with Repair fields changed, e.g. sensattn+select=attention/min_blend=16
        name, fields = name.split("+", 1)
        (repair, select), (changed, _) = variant(name), variant(fields)
        diff = {k: getattr(changed, k) for k in repair.__dataclass_fields__ if getattr(changed, k) != getattr(Repair(), k)}
        return replace(repair, **diff), select
    if name == "default":
        return Repair(), None
    if name == "both":
        return Repair(select="both"), None
    if name in ("probeattn", "shallowattn"):
        return Repair(), probe_both(shallow=name == "shallowattn")
    if name == "perskill":
        return Repair(), per_skill()
    if name == "longseam":
        return Repair(), without_sensitivity()
    if name == "halfsens":
        return Repair(), half_sensitive()
    if name == "seammax":
        return Repair(), seam_within_budget()
    if name == "sens":
        return Repair(), by_sensitivity(LM[0], with_attention=False, leads=LEADS)
    if name == "sensattn":
        return Repair(), by_sensitivity(LM[0], with_attention=True)
    if name == "estimated":
        return Repair(), shallow_sensitivity(LM[0], None, estimated=True)
    if name == "combined":
        return Repair(), combined_sensitivity(LM[0])
    if name == "bothsens":
        return Repair(), probe_and_sensitive_attention(LM[0])
    m = re.fullmatch(r"rounds([\d.]+)", name)
    if m:
        return Repair(), second_round(float(m.group(1)))
    m = re.fullmatch(r"sensd(\d+)", name)
    if m:
        return Repair(), shallow_sensitivity(LM[0], int(m.group(1)))
    m = re.fullmatch(r"sens(\d)", name)
    if m:  # the sensitivity from one lead only
        return Repair(), by_sensitivity(LM[0], with_attention=False, leads=[LEADS[int(m.group(1))]])
    if name == "seam16":
        return Repair(blend=0.0), None
    if "=" in name:  # Repair fields, e.g. min_blend=16/blend=0.1
        fields = dict(part.split("=", 1) for part in name.split("/"))
        base = Repair()
        cast = {k: int if getattr(base, k) is None else type(getattr(base, k)) for k in fields}  # probe_layer: None -> int
        cast.update({k: lambda v: v.lower() in ("1", "true") for k in fields if cast[k] is bool})  # bool("False") is True
        return Repair(**{k: cast[k](v) for k, v in fields.items()}), None
    probe = re.fullmatch(r"probe(\d+)", name)
    if probe:
        return Repair(probe_layer=int(probe.group(1))), None
    m = re.fullmatch(r"mass(\d+)(?:cap(\d+))?", name)
    if m:
        return Repair(), mass(int(m.group(1)) / 100, int(m.group(2) or 15) / 100)
    m = re.fullmatch(r"(fill|oracle|oraclenos)(\d+)", name)
    if not m:
        raise SystemExit(f"unknown variant {name!r}")
    ratio = int(m.group(2)) / 100
    return Repair(), fill(ratio, oracle=m.group(1) != "fill", seam=0 if m.group(1) == "oraclenos" else 16)


@contextmanager
def selector(select: Selector | None) -> Iterator[None]:
    if select is None:
        yield
        return
    original = splice_mod.select_repair
    splice_mod.select_repair = select
    try:
        yield
    finally:
        splice_mod.select_repair = original


def compiled_behind_context(lm: Any, cases: list, skills: str, memo: EvalMemo, system_only: bool = False) -> dict:
    """Every case with each skill compiled behind exactly the tokens the case puts before it: what
    `serve --learn-after` compiles once a context recurs (and `compile --system` for a lone skill).
    `system_only`: the cases with a system text, each skill compiled behind that text alone (`compile
    --system` for a deployment's fixed system text), so a skill after others is repaired for those."""
    from skillforge.compile import compile_skill
    from skillforge.eval import arms
    from skillforge.manifest import discover
    from skillforge.prompt import build_prompt, has_chat_template, system_anchor
    from skillforge.runtime import Resolved

    found = discover(Path(skills))
    manifests = {m.name: m for m in found} | {m.ref: m for m in found}
    rows = []
    original = arms.compiled
    for case in [c for c in cases if c.system or not system_only]:
        texts = [manifests[ref].render().text for ref in case.skills]
        raw = case.raw or not has_chat_template(lm.tokenizer)  # run_eval's rule for a base model
        if system_only:
            before = {manifests[ref].name: system_anchor(lm.tokenizer, case.system, text, raw) for ref, text in zip(case.skills, texts)}
        else:
            prompt = build_prompt(lm.tokenizer, case.system, texts, case.user, raw, history=case.history)
            before = {manifests[ref].name: prompt.ids_before(start) for ref, (start, _) in zip(case.skills, prompt.skill_spans)}

        def behind(lm_: Any, manifest: Any, anchor: str, memo_: EvalMemo, before: dict = before) -> Resolved:
            meta, kv = compile_skill(lm_, manifest, anchor=before[manifest.name])
            return Resolved(meta, kv, None)
        arms.compiled = behind
        try:
            rows += run_eval(lm, [case], skills=found, memo=memo)["per_case"]
        finally:
            arms.compiled = original
    return {"cases": len(rows), "exact": sum(r["kl"] < 1e-4 for r in rows), "top1": sum(r["top1"] for r in rows),
            "greedy16": sum(r["greedy16_match"] for r in rows), "repaired": sum(r["repaired"] for r in rows),
            "kl_max": max((r["kl"] for r in rows), default=0.0), "per_case": rows}


# generic system texts for `leadN` / `meanlead` (written for this experiment, not taken from the corpus)
LM: list[Any] = []  # the loaded model, for selectors that compile (sensitivity)
LEADS = [
    "You are a helpful assistant. Use the reference material below when it applies to the user's request.",
    "Reference material for this conversation follows. Each section stands on its own; apply the one that fits.",
    "You are a helpful assistant.",
    SENSITIVITY_LEAD,  # the one compile measures sensitivity with
]


def behind_lead(lead: str) -> Callable[[Any, Any], Any]:
    """The skill compiled behind `lead` as the system text before it (`compile --system lead`)."""
    from skillforge.runtime import Resolved

    def make(lm: Any, manifest: Any) -> Any:
        anchor = sens_mod.lead_anchor(lm, manifest.render().text, lead)
        return Resolved(*compile_mod.compile_skill(lm, manifest, anchor=anchor), None)
    return make


def mean_behind_leads(lm: Any, manifest: Any) -> Any:
    """The skill compiled behind every lead text, keys rotated back to the template anchor's
    positions, K and V averaged: the expected KV over the leads, a guess at the state a skill is in
    after some text, whatever that text is. Its metadata is the template-anchored compile's."""
    from skillforge.runtime import Resolved

    meta, _ = compile_mod.compile_skill(lm, manifest)
    spec = rope_spec(lm.model)
    kvs = [sens_mod.kv_behind_lead(lm, spec, meta.text, meta.token_ids, meta.offset, lead) for lead in LEADS]
    return Resolved(meta, [(sum(kv[i][0] for kv in kvs) / len(kvs), sum(kv[i][1] for kv in kvs) / len(kvs))
                           for i in range(len(kvs[0]))], None)


def compiled_after_text(lm: Any, cases: list, make: Callable[[Any, Any], Any], skills: str, memo: EvalMemo) -> list:
    """Every skill that does not sit right behind the bare anchor made by `make(lm, manifest)`
    (compiled behind a lead, or the mean over the leads), spliced with the default repair: does a
    skill that has already seen some text deviate less after other text than one compiled at the
    start of the system turn? -> the per-case rows."""
    from skillforge.eval import arms
    from skillforge.manifest import discover

    manifests = discover(Path(skills))
    original = arms.compiled
    made: dict[tuple, Any] = {}
    rows = []
    for case in cases:
        first = case.skills[0].split("@")[0] if not case.system else None

        def behind(lm_: Any, manifest: Any, anchor: str, memo_: EvalMemo, first: str | None = first) -> Any:
            if manifest.name == first or anchor != "template":
                return original(lm_, manifest, anchor, memo_)
            key = (manifest.name, manifest.version)
            if key not in made:
                made[key] = make(lm_, manifest)
            return made[key]
        arms.compiled = behind
        try:
            rows += run_eval(lm, [case], skills=manifests, memo=memo)["per_case"]
        finally:
            arms.compiled = original
    return rows


def subset(cases: list, no_long: bool, sample: int | None, seed: int, kinds: str | None = None) -> list:
    if kinds:
        cases = [c for c in cases if case_kind(c) in kinds.split(",")]
    if no_long:
        cases = [c for c in cases if not LONG & {s.split("@")[0] for s in c.skills}]
    if sample:
        rng = random.Random(seed)
        kinds: dict[str, list] = {}
        for c in cases:
            kinds.setdefault(case_kind(c), []).append(c)
        share = {k: max(1, round(sample * len(v) / len(cases))) for k, v in kinds.items()}
        cases = [c for k, v in sorted(kinds.items()) for c in sorted(rng.sample(v, min(share[k], len(v))), key=lambda c: c.id)]
    return cases


def evaluate(lm: Any, cases: list, name: str, skills: str, memo: EvalMemo) -> dict:
    """One selector variant over the cases; prints its per-kind table."""
    m = re.fullmatch(r"ape(c?)([\d.]+)_([\d.]+)", name)
    shift = name.startswith("shift")
    mode, _, fields = name.partition("+")  # shiftMODE+k=v/k=v: Repair fields changed too
    rep, select = variant("/".join(["drift=False", fields] if fields else ["drift=False"]) if shift else "default" if m else name)
    with selector(select), (ape_queries(float(m.group(2)), float(m.group(3)), m.group(1) == "c") if m else nullcontext()), \
            (shift_stale(mode[5:]) if shift else nullcontext()):
        doc = run_eval(lm, cases, repair=rep, skills=skills, memo=memo, progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"\n== {name}: top1 {doc['top1_agreement']:.3f} greedy16 {doc['greedy16_match']:.3f} kl {doc['kl_mean']:.4f} "
          f"max {doc['kl_max']:.4f} recomputed {doc['skill_recompute_fraction']:.3f}", flush=True)
    print_kinds(doc["by_kind"])
    return doc


def print_kinds(groups: dict[str, dict]) -> None:
    """One line per kind of context (skillforge.eval.run.by_kind's aggregates)."""
    for k, g in groups.items():
        print(f"   {k:12s} n={g['cases']:3d} top1 {g['top1_agreement']:.3f} g16 {g['greedy16_match']:.3f} "
              f"kl {g['kl_mean']:.4f} max {g['kl_max']:.4f} rec {g['skill_recompute_fraction'] or 0:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cases", nargs="+", required=True)
    ap.add_argument("--skills", default="evals/corpus/skills")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--no-long", action="store_true")
    ap.add_argument("--sample", type=int)
    ap.add_argument("--kinds", help="only these kinds of context, comma-separated (e.g. lone-system,multi-turn)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = subset([c for f in args.cases for c in load_cases(f)], args.no_long, args.sample, args.seed, args.kinds)
    print(f"{len(cases)} cases: {' '.join(c.id for c in cases)}", file=sys.stderr, flush=True)
    lm = load_model(args.model)
    LM.append(lm)
    memo = EvalMemo()
    out: dict[str, Any] = {"model": args.model, "cases": [c.id for c in cases], "variants": {}}
    for name in args.variants.split(","):
        if name.startswith("lead") or name == "meanlead":
            make = mean_behind_leads if name == "meanlead" else behind_lead(LEADS[int(name[4:] or 0)])
            rows = compiled_after_text(lm, cases, make, args.skills, memo)
            doc = out["variants"][name] = {"per_case": rows}
            by: dict[str, list] = {}
            for r in rows:
                by.setdefault(r["kind"], []).append(r)
            for k, g in sorted(by.items()):
                n = len(g)
                print(f"   {name} {k:12s} n={n:3d} top1 {sum(r['top1'] for r in g)/n:.3f} g16 {sum(r['greedy16_match'] for r in g)/n:.3f} "
                      f"kl {sum(r['kl'] for r in g)/n:.4f} max {max(r['kl'] for r in g):.4f} "
                      f"rec {sum(r['repaired'] for r in g)/max(1, sum(r['skill_tokens'] for r in g)):.3f}", flush=True)
        elif name == "learned" or name == "sysall":
            doc = out["variants"][name] = compiled_behind_context(lm, cases, args.skills, memo, system_only=name == "sysall")
            print(f"\n== {name}: {doc['cases']} cases, exact (KL < 1e-4) {doc['exact']} (max KL {doc['kl_max']:.2e}), "
                  f"top1 {doc['top1']}, greedy16 {doc['greedy16']}, repaired tokens {doc['repaired']}", flush=True)
            print_kinds(by_kind(doc["per_case"]))
        else:
            doc = out["variants"][name] = evaluate(lm, cases, name, args.skills, memo)
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
