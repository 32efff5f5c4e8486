"""Repair selection (runtime/repair.py) on a tiny random model: which reused tokens a splice recomputes.

What must hold whatever the selector: a skill behind the anchor it was compiled behind costs no repair;
every skill that follows unseen text gets its seam; blend stays inside its budget and only picks
reused tokens of skills that missed something."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from skillforge.artifact import anchor_digest
from skillforge.build import compile_manifests
from skillforge.manifest import discover
from skillforge.model.forward import run
from skillforge.registry import Registry
from skillforge.runtime import Context, Repair, Runtime
from skillforge.runtime.repair import missed_spans, unseen_tokens
from skillforge.store import LocalStore

from tiny_models import build


@pytest.fixture()
def rt(home: Path, demo_tokenizer, skills_dir: Path) -> Runtime:
    lm = build("llama", demo_tokenizer)
    registry, store = Registry(), LocalStore(home)
    compile_manifests(lm, [m for m in discover(skills_dir) if m.name in ("pirate-voice", "json-contract")], registry, store)
    return Runtime(lm, registry, store)


def _skill_positions(result) -> list[set[int]]:
    return [set(result.prompt.tokens_within(s, e)) for s, e in result.prompt.skill_spans]


def _repaired(result) -> set[int]:
    """Skill positions the splice computed (the repair set: every skill token here came from an artifact)."""
    computed = set(result.computed_positions.tolist())
    return {p for span in _skill_positions(result) for p in span} & computed


def test_a_skill_behind_its_own_anchor_costs_no_repair(rt: Runtime):
    result = rt.splice(Context(skills=["pirate-voice"], user="Ahoy?"), repair=Repair(blend=0.5))
    assert result.repaired == 0 and not _repaired(result)
    anchor = rt.resolve("pirate-voice").meta.anchor_ids
    assert unseen_tokens(result.prompt, 0, anchor) == 0


def test_every_skill_after_unseen_text_gets_its_seam_and_only_those(rt: Runtime):
    ctx = Context(skills=["json-contract", "pirate-voice"], user="Ahoy?")
    result = rt.splice(ctx, repair=Repair(seam=8, blend=0.0))
    first, second = _skill_positions(result)
    anchor = rt.resolve("json-contract").meta.anchor_ids
    assert unseen_tokens(result.prompt, 0, anchor) == 0 and unseen_tokens(result.prompt, 1, anchor) > len(first)
    # the first skill sits behind its anchor: exact; the second never saw the first: its first 8 tokens
    assert _repaired(result) == set(sorted(second)[:8]) and result.repaired == 8
    with_system = rt.splice(Context(skills=["json-contract", "pirate-voice"], system="Be brief.", user="Ahoy?"),
                            repair=Repair(seam=8, blend=0.0))
    a, b = _skill_positions(with_system)
    assert _repaired(with_system) == set(sorted(a)[:8]) | set(sorted(b)[:8])


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_blend_stays_inside_its_budget_and_the_skills_that_missed(rt: Runtime, ratio: float):
    ctx = Context(skills=["json-contract", "pirate-voice"], user="Ahoy?")
    result = rt.splice(ctx, repair=Repair(seam=4, blend=ratio, blend_per_unseen=math.inf, min_blend=1))
    first, second = _skill_positions(result)
    repaired = _repaired(result)
    assert repaired <= second and set(sorted(second)[:4]) <= repaired
    assert 4 < len(repaired) <= 4 + round(ratio * result.skill_tokens)


def test_a_repair_dearer_than_a_prefill_prefills_instead(rt: Runtime):
    # a long history after two skills is computed anyway; the probe and attention pass on top would cost
    # more than a full prefill (repair.plan), so the splice computes every token: exact
    ctx = Context(skills=["json-contract", "pirate-voice"],
                  user=" ".join(["The customer wrote again about the same order and asked for news."] * 60))
    result = rt.splice(ctx, repair=Repair(select="both"))
    assert result.reused == 0 and result.computed == len(result.prompt.ids)
    assert result.repaired == result.skill_tokens  # every skill token was covered, and computed anyway
    full = run(rt.lm.model, torch.tensor([result.prompt.ids]))
    torch.testing.assert_close(rt.next_logits(result), full, atol=1e-4, rtol=0)
    forced = rt.splice(ctx, repair=Repair(select="both", prefill_fallback=False))  # the repair it avoided
    assert forced.reused > 0 and forced.repaired > Repair().min_blend
    # the default's ranking (sensitivity times one attention pass, or sensitivity alone) costs less than a
    # prefill there: still a splice, of the same budget as sensitivity alone
    default = rt.splice(ctx)
    alone = rt.splice(ctx, repair=Repair(min_attend=10**9))
    assert default.reused > 0 and len(default.computed_positions) == len(alone.computed_positions)
    # a short turn: the attention pass fits under a prefill's cost, and ranks the budget
    short = Context(skills=["json-contract", "pirate-voice"], user="Ahoy?")
    assert rt.splice(short).reused > 0 and rt.splice(short, repair=Repair(select="both")).reused > 0


def test_the_attention_ranking_pass_is_recorded_and_computes_only_what_the_splice_computes(rt: Runtime):
    # the bench's floor replays the splice's passes over the assembled cache: the ranking pass (tokens
    # computed anyway, seams, the last token) and then the splice's own pass, which adds the budget
    ctx = Context(skills=["json-contract", "pirate-voice"], system="Be brief.", user="Ahoy?")
    result = rt.splice(ctx, repair=Repair(seam=4, blend=0.3, prefill_fallback=False))
    (ranking,) = result.ranking_passes
    ranked, computed = set(ranking.tolist()), set(result.computed_positions.tolist())
    assert ranked < computed and len(computed - ranked) == result.repaired - 2 * 4
    assert not rt.splice(ctx, repair=Repair(seam=4, blend=0.0)).ranking_passes  # seams alone rank nothing


def test_a_short_unseen_text_buys_the_most_sensitive_tokens_not_a_longer_seam(rt: Runtime):
    # a 5-token system text and the budget capped by it: under min_attend, spent on the skill's tokens
    # whose K/V moved most behind another text at compile time (sensitivity.py), after the seam
    ctx = Context(skills=["pirate-voice"], system="Be brief.", user="Ahoy?")
    result = rt.splice(ctx, repair=Repair(seam=4, blend_per_unseen=1.0))
    resolved = rt.resolve("pirate-voice")
    sens = resolved.meta.sensitivity
    assert sens is not None and len(sens) == resolved.meta.tokens and min(sens) >= 0 and max(sens) > 0
    unseen = unseen_tokens(result.prompt, 0, resolved.meta.anchor_ids)
    (span,) = _skill_positions(result)
    start = min(span)  # the skill's tokens sit in order from here: artifact token t at start + t
    ranked = sorted(range(4, len(sens)), key=lambda t: sens[t], reverse=True)
    assert _repaired(result) == set(range(start, start + 4)) | {start + t for t in ranked[:unseen]}
    # an artifact compiled before sensitivity was recorded: a seam longer by the budget, as before
    old = replace(resolved, meta=replace(resolved.meta, extra={k: v for k, v in resolved.meta.extra.items() if k != "sensitivity"}))
    result = rt.splice(ctx, skills=[old], repair=Repair(seam=4, blend_per_unseen=1.0))
    assert _repaired(result) == set(range(start, start + 4 + unseen))


def test_estimated_and_measured_sensitivity_mix_by_their_shape_not_their_scale(rt: Runtime):
    # `compile --sensitivity estimate` records another kind, on another scale; spliced beside a measured
    # artifact, each counts relative to its own mean
    ctx = Context(skills=["json-contract", "pirate-voice"], system="Be brief.", user="Ahoy?")
    contract, pirate = rt.resolve("json-contract"), rt.resolve("pirate-voice")
    assert contract.meta.sensitivity_kind == pirate.meta.sensitivity_kind == "measured"

    def estimated(scale: float):
        extra = {**pirate.meta.extra, "sensitivity": [x * scale for x in pirate.meta.sensitivity], "sensitivity_kind": "estimate"}
        return replace(pirate, meta=replace(pirate.meta, extra=extra))

    alone = Repair(seam=4, min_attend=10**9)  # sensitivity alone: no attention pass in the ranking
    as_is, scaled = (rt.splice(ctx, skills=[contract, estimated(k)], repair=alone) for k in (1.0, 30.0))
    assert _repaired(as_is) == _repaired(scaled)
    first, _ = _skill_positions(scaled)
    assert len(_repaired(scaled) & first) > 4  # the measured skill kept part of the budget beyond its seam


def test_the_default_budget_does_not_shrink_with_the_unseen_text(rt: Runtime):
    # the same 5-token system text: by default the skill still gets `blend` of its tokens recomputed
    ctx = Context(skills=["pirate-voice"], system="Be brief.", user="Ahoy?")
    result = rt.splice(ctx, repair=Repair(seam=4))
    unseen = unseen_tokens(result.prompt, 0, rt.resolve("pirate-voice").meta.anchor_ids)
    budget = round(Repair().blend * result.skill_tokens)
    assert budget > unseen and result.repaired == 4 + budget


def test_a_short_unseen_text_counts_only_a_skills_first_tokens_toward_the_budget(rt: Runtime):
    # a horizon shorter than either skill: after a 5-token system text each adds `blend` of its first
    # `horizon` tokens, however long it is; a longer unseen text reaches deeper (horizon_per_unseen)
    ctx = Context(skills=["json-contract", "pirate-voice"], system="Be brief.", user="Ahoy?")
    repair = Repair(seam=4, blend=0.5, blend_horizon=0, horizon_per_unseen=0.0, prefill_fallback=False)
    full = rt.splice(ctx, repair=repair)
    spans = _skill_positions(full)
    horizon = min(len(span) for span in spans) // 2
    short = rt.splice(ctx, repair=replace(repair, blend_horizon=horizon))
    assert full.repaired == 2 * 4 + round(0.5 * full.skill_tokens)
    assert short.repaired == 2 * 4 + round(0.5 * 2 * horizon) < full.repaired
    anchor = rt.resolve("pirate-voice").meta.anchor_ids
    unseen = [unseen_tokens(full.prompt, i, anchor) for i in range(2)]
    assert unseen[1] > len(spans[0]) > unseen[0] > 0
    deep = rt.splice(ctx, repair=replace(repair, blend_horizon=horizon, horizon_per_unseen=1.0))
    counted = sum(min(len(span), max(horizon, u)) for span, u in zip(spans, unseen))
    assert deep.repaired == 2 * 4 + round(0.5 * counted) and short.repaired < deep.repaired
    # no system text: the first skill sits behind its anchor, counts whole and buys nothing itself
    behind = rt.splice(Context(skills=["json-contract", "pirate-voice"], user="Ahoy?"),
                       repair=replace(repair, blend_horizon=horizon))
    first, second = _skill_positions(behind)
    assert _repaired(behind) <= second and behind.repaired == 4 + min(len(second) - 4, round(0.5 * (len(first) + horizon)))


def test_a_skill_behind_its_anchor_buys_nothing_however_long_the_turn(rt: Runtime):
    # no skill missed text: no budget, so no repair cost that could tip the splice into a prefill
    ctx = Context(skills=["pirate-voice"], user="Ahoy? " * 200)
    result = rt.splice(ctx)
    prompt, resolved = result.prompt, [rt.resolve("pirate-voice")]
    reuse = [(0, [(0, min(prompt.tokens_within(*prompt.skill_spans[0])), resolved[0].meta.tokens)])]
    assert missed_spans(Repair(), prompt, resolved, reuse) == ([], 0)
    assert result.repaired == 0 and result.reused == resolved[0].meta.tokens


def test_a_blend_cap_per_unseen_token_holds(rt: Runtime):
    ctx = Context(skills=["pirate-voice"], system="Be brief.", user="Ahoy?")
    result = rt.splice(ctx, repair=Repair(seam=4, blend=0.9, blend_per_unseen=1.0, min_blend=1))
    unseen = unseen_tokens(result.prompt, 0, rt.resolve("pirate-voice").meta.anchor_ids)
    assert 0 < unseen and 4 <= result.repaired <= 4 + unseen


def test_variants_compiled_behind_the_tokens_before_each_skill_make_a_composition_exact(rt: Runtime, skills_dir: Path):
    # what `serve --learn-after` compiles: each skill behind exactly the tokens a context puts before it
    ctx = Context(skills=["json-contract", "pirate-voice"], system="Be brief.", user="Ahoy?")
    first = rt.splice(ctx)
    assert first.repaired > 0 and [m.meta.skill for m in first.missed] == ["json-contract", "pirate-voice"]
    for (meta, before, digest), (start, _) in zip(first.missed, first.prompt.skill_spans):
        assert before == first.prompt.ids_before(start) != meta.anchor_ids and digest == anchor_digest(before)
        compile_manifests(rt.lm, [m for m in discover(skills_dir) if m.name == meta.skill], rt.registry, rt.store, anchor=before)
    stale = first.artifacts
    rt.release(first)
    exact = rt.splice(ctx)
    assert exact.repaired == 0 and not exact.missed and set(exact.artifacts).isdisjoint(stale)
    full = run(rt.lm.model, torch.tensor([exact.prompt.ids]))
    assert torch.allclose(rt.next_logits(exact), full, atol=1e-4)
    # a reference pinned to a digest keeps its artifact; other contexts keep the compiled ones
    pinned = rt.splice(replace(ctx, skills=[f"json-contract@{stale[0]}", "pirate-voice"]))
    assert pinned.artifacts == [stale[0], exact.artifacts[1]] and not pinned.missed
    other = rt.splice(replace(ctx, system="Be very brief."))
    assert other.artifacts == stale and len(other.missed) == 2
