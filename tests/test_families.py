"""Exactness of key re-rotation and splicing on tiny random models, one per RoPE family.

Each family (tests/tiny_models.py) is a seeded 2-3 layer float32 model built from a config with the
demo tokenizer's vocabulary, so the checks need no model hub and run in seconds:

  remap     keys prefilled at 0.. and rotated to p.. equal keys the model computes at p.. directly, in
            every layer (deeper layers only because RoPE attention is relative, windows included);
  splice    a skill spliced behind its anchor gives the logits of a plain full forward over the same
            prompt; with other text before a skill it is not exact, but recomputing the non-exact
            tokens through the scattered-position pass (custom masks, sliding windows) is again;
  dtype     rotating a bfloat16 cache runs in float32 and rounds once;
  refusals  dynamic and longrope RoPE are refused before any work.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from transformers import DynamicCache

import tiny_models as tm
from skillforge.compile import compile_skill
from skillforge.errors import UnsupportedModel
from skillforge.manifest import Manifest
from skillforge.model.forward import prefill
from skillforge.rope import rope_spec
from skillforge.runtime import Context, Repair, Resolved, Runtime
from skillforge.runtime.repair import unseen_tokens

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

# ~70 tokens each; long enough that the sliding window (16) matters everywhere.
SKILL_A = (
    "You are the refund desk of a small online shop. Check the order number, the purchase date and the "
    "reason for the refund. Refunds within thirty days are approved at once; later ones need a manager. "
    "Always answer politely and summarise the decision in one sentence at the end."
)
SKILL_B = (
    "Shipping policy: parcels leave the warehouse within two working days of the order. Express delivery "
    "costs extra and arrives the next working day when it is ordered before noon. A lost parcel is replaced "
    "free of charge after a search of ten days, and the customer is told about every step by mail."
)
SYSTEM = "You are a helpful assistant for an online shop."
QUESTION = "Can I still return my shoes after five weeks?"
LOGIT_ATOL = 1e-3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy 2-core machine OpenMP hand-offs make them
    ~100x slower; restored afterwards for the rest of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok(demo_tokenizer):
    return demo_tokenizer


def lm_for(family: str, tokenizer) -> object:
    return tm.build(family, tokenizer)


def manifest(name: str, text: str) -> Manifest:
    return Manifest.from_dict({"name": name, "version": "1.0.0", "description": "", "template": text, "fields": {}},
                              source="test")


_SKILLS: dict[tuple[str, str], Resolved] = {}


def skill(lm, name: str) -> Resolved:
    """The compiled skill `a` or `b` for this model (compiled once per family)."""
    key = (lm.name, name)
    if key not in _SKILLS:
        meta, kv = compile_skill(lm, manifest(name, SKILL_A if name == "a" else SKILL_B))
        _SKILLS[key] = Resolved(meta, kv, None)
    return _SKILLS[key]


@torch.no_grad()
def full_logits(lm, ids: list[int]) -> torch.Tensor:
    """Next-token logits of a plain forward over the whole prompt (the oracle)."""
    x = torch.tensor([ids])
    return lm.model(input_ids=x, attention_mask=torch.ones_like(x), logits_to_keep=1).logits[0, -1].float()


@torch.no_grad()
def full_kv(lm, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return prefill(lm.model, ids)


def chat_ids(tok, system: str, user: str) -> list[int]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if not isinstance(ids, list) else ids)


def sample_ids(tok, n: int = 40) -> list[int]:
    ids = tok(SKILL_A + " " + SKILL_B, add_special_tokens=False)["input_ids"]
    assert len(ids) >= n
    return ids[:n]


# -- the families are what they claim to be ------------------------------------------------------


def test_families_exercise_their_feature(tok):
    """Guard against a config option being silently ignored: each family has the layout it is here for."""
    specs = {f: rope_spec(lm_for(f, tok).model) for f in tm.SHIFTABLE}
    head = {f: lm_for(f, tok).model.config.get_text_config() for f in tm.SHIFTABLE}

    def head_dim(f):
        c = head[f]
        return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads

    default = specs["llama"].layers[0].inv_freq
    for f in ("llama3", "yarn"):
        scaled = specs[f].layers[0].inv_freq
        assert not torch.equal(scaled, default), f"{f} frequencies are not scaled"
        assert (scaled == default).any(), f"{f}: the high frequencies should stay as they are"
    yarn_rotary = next(m for n, m in lm_for("yarn", tok).model.named_modules() if n.endswith("rotary_emb"))
    assert yarn_rotary.attention_scaling > 1.0  # YaRN's attention factor is folded into cos/sin
    assert lm_for("gemma3_eager", tok).model.config._attn_implementation == "eager"
    assert lm_for("gemma3", tok).model.config._attn_implementation == "sdpa"
    assert specs["phi3"].layers[0].rotary_dim == head_dim("phi3") // 2
    assert specs["gpt_neox"].layers[0].rotary_dim == head_dim("gpt_neox") // 4
    assert specs["gptj"].layers[0].interleaved and specs["gptj"].layers[0].rotary_dim < head_dim("gptj")
    assert not specs["llama"].layers[0].interleaved
    g = specs["gemma3"].layers
    assert head["gemma3"].layer_types[0] == "sliding_attention" and head["gemma3"].layer_types[1] == "full_attention"
    assert not torch.equal(g[0].inv_freq, g[1].inv_freq) and torch.equal(g[0].inv_freq, g[2].inv_freq)
    for f in tm.SLIDING:
        assert head[f].sliding_window == tm.WINDOW < len(sample_ids(tok))
    for f in tm.SHIFTABLE:
        assert head[f].vocab_size == len(tok) or head[f].vocab_size == tok.vocab_size
        assert lm_for(f, tok).max_positions >= 2048


# -- remap: rotated keys equal directly computed keys, every layer ----------------------------------


@pytest.mark.parametrize("position", [37, 300], ids=lambda p: f"to{p}")
@pytest.mark.parametrize("family", tm.SHIFTABLE)
@torch.no_grad()
def test_remap_matches_direct_prefill(tok, family, position):
    lm = lm_for(family, tok)
    spec = rope_spec(lm.model)
    ids = sample_ids(tok)
    T = len(ids)
    at_zero = prefill(lm.model, ids)

    # The same tokens prefilled directly at position..position+T-1. An explicit all-ones mask and a fresh
    # cache keep transformers from reading the position jump as packed sequences: the causal mask is
    # built from cache offsets (0..T-1), the rotation from position_ids.
    x = torch.tensor([ids])
    cache = DynamicCache()
    lm.model(input_ids=x, position_ids=torch.arange(position, position + T)[None], attention_mask=torch.ones_like(x),
             past_key_values=cache, use_cache=True, logits_to_keep=1)
    direct = [(layer.keys[0], layer.values[0]) for layer in cache.layers]
    assert len(direct) == len(at_zero) == len(spec.layers)

    src, dst = torch.arange(T), torch.arange(position, position + T)
    for layer, ((k0, v0), (kd, vd)) in enumerate(zip(at_zero, direct)):
        cos, sin = spec.angle_delta(layer, src, dst)
        moved = spec.shift(layer, k0, cos, sin)
        # cos given over the full rotary width (what the splice passes) rotates to the very same bits
        assert torch.equal(spec.shift(layer, k0, *spec.angle_delta(layer, src, dst, wide=True)), moved)
        scale = max(1.0, float(kd.abs().max()))
        assert moved.dtype == kd.dtype and moved.shape == kd.shape
        torch.testing.assert_close(moved, kd, atol=1e-4 * scale, rtol=0, msg=lambda m: f"{family} layer {layer} keys: {m}")
        # values carry no position: equal without any rotation
        torch.testing.assert_close(v0, vd, atol=1e-4 * scale, rtol=0, msg=lambda m: f"{family} layer {layer} values: {m}")
        if layer == 0:
            # the jump really happened: unrotated keys are far off, and non-rotary dims are untouched
            assert float((k0 - kd).abs().max()) > 1e-2
            rd = spec.layers[layer].rotary_dim
            if rd < k0.shape[-1]:
                assert torch.equal(moved[..., rd:], k0[..., rd:])


# -- splice reproduces a full recompute -------------------------------------------------------------


@pytest.mark.parametrize("family", tm.SHIFTABLE)
def test_splice_behind_anchor_matches_full_forward(tok, family):
    """One skill right behind the template prefix: reused as compiled, everything else computed in one
    scattered pass (anchor before the gap, question and template after it)."""
    lm = lm_for(family, tok)
    a = skill(lm, "a")
    assert a.meta.anchor_ids and a.meta.offset == len(a.meta.anchor_ids)
    rt = Runtime(lm)
    result = rt.splice(Context(skills=["a"], system="", user=QUESTION), skills=[a], repair=Repair(seam=0, blend=0))

    ids = result.prompt.ids
    assert ids == chat_ids(tok, SKILL_A, QUESTION)
    assert result.input_ids[0].tolist() == ids
    assert result.reused == len(a.meta.token_ids) and result.repaired == 0
    assert result.computed == len(ids) - result.reused
    diff = float((rt.next_logits(result) - full_logits(lm, ids)).abs().max())
    assert diff < LOGIT_ATOL, f"{family}: spliced logits differ from a full forward by {diff}"


@pytest.mark.parametrize("family", tm.SHIFTABLE)
def test_splice_scattered_recompute_is_exact(tok, family):
    """Two skills, no system text: the first is exact behind its anchor and reused; the second follows
    other text, so seam repair covering all of it recomputes it -- in the same scattered pass as the
    anchor, the separator and the question, around the reused gap."""
    lm = lm_for(family, tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    rt = Runtime(lm)
    result = rt.splice(Context(skills=["a", "b"], user=QUESTION), skills=[a, b], repair=Repair(seam=10_000, blend=0))
    ids = result.prompt.ids
    assert ids == chat_ids(tok, SKILL_A + "\n\n" + SKILL_B, QUESTION)
    assert result.reused == len(a.meta.token_ids)
    assert result.repaired >= len(b.meta.token_ids) - 2  # b's boundary tokens may merge with the separator
    diff = float((rt.next_logits(result) - full_logits(lm, ids)).abs().max())
    assert diff < LOGIT_ATOL, f"{family}: scattered recompute differs from a full forward by {diff}"


@pytest.mark.parametrize("family", tm.SHIFTABLE)
def test_splice_after_other_text_with_seam_repair(tok, family):
    """System text + two skills: both skills moved to new positions (keys re-rotated). Not exact -- their
    KV never saw what now precedes them -- but most tokens are reused, layer 0 (which depends on nothing
    but token and position) is exact in every reused slot, and recomputing everything is exact again."""
    lm = lm_for(family, tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    rt = Runtime(lm)
    ctx = Context(skills=["a", "b"], system=SYSTEM, user=QUESTION)
    result = rt.splice(ctx, skills=[a, b], repair=Repair(seam=4, blend=0))
    ids = result.prompt.ids
    assert ids == chat_ids(tok, "\n\n".join([SYSTEM, SKILL_A, SKILL_B]), QUESTION)
    skill_tokens = len(a.meta.token_ids) + len(b.meta.token_ids)
    assert result.repaired == 8
    assert result.reused >= skill_tokens - 8 - 4 and result.reused > len(ids) / 2
    logits = rt.next_logits(result)
    assert torch.isfinite(logits).all()

    # Every reused slot holds keys rotated from the compile position: in layer 0 they equal a full prefill.
    oracle = full_kv(lm, ids)
    (k_full, v_full), layer0 = oracle[0], result.cache.layers[0]
    n = len(ids) - 1
    k_spliced, v_spliced = layer0.keys[0, :, :n], layer0.values[0, :, :n]
    scale = max(1.0, float(k_full.abs().max()))
    torch.testing.assert_close(k_spliced, k_full[:, :n], atol=1e-4 * scale, rtol=0)
    torch.testing.assert_close(v_spliced, v_full[:, :n], atol=1e-4 * scale, rtol=0)

    exact = rt.splice(ctx, skills=[a, b], repair=Repair(seam=10_000, blend=0))
    assert exact.reused == 0 and exact.prompt.ids == ids
    reference = full_logits(lm, ids)
    diff = float((rt.next_logits(exact) - reference).abs().max())
    assert diff < LOGIT_ATOL, f"{family}: full recompute through the splice path differs by {diff}"


def test_sliding_window_makes_a_moved_skill_exact(tok):
    """Mistral-style attention with every layer windowed: a token more than layers * (window - 1)
    positions into a skill cannot see what precedes the skill, so the moved, re-rotated tail of a skill
    is exact and so are the logits, without any repair. Exercises rotation + window masks end to end."""
    lm = lm_for("mistral", tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    cfg = lm.model.config
    assert len(b.meta.token_ids) > cfg.num_hidden_layers * (cfg.sliding_window - 1)
    rt = Runtime(lm)
    result = rt.splice(Context(skills=["a", "b"], system=SYSTEM, user=QUESTION), skills=[a, b], repair=Repair(seam=0, blend=0))
    assert result.repaired == 0 and result.reused >= len(a.meta.token_ids) + len(b.meta.token_ids) - 4
    diff = float((rt.next_logits(result) - full_logits(lm, result.prompt.ids)).abs().max())
    assert diff < LOGIT_ATOL


@pytest.mark.parametrize("family", ["llama", "gemma3", "gptj"])
def test_generate_continues_from_spliced_cache(tok, family):
    """The assembled cache behaves like an ordinary one in `model.generate`, growing past its capacity."""
    lm = lm_for(family, tok)
    rt = Runtime(lm)
    result = rt.splice(Context(skills=["a"], user=QUESTION), skills=[skill(lm, "a")], repair=Repair(seam=0, blend=0),
                       extra_capacity=2)
    x = result.input_ids
    kw = dict(attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False)
    spliced = lm.model.generate(x, past_key_values=result.cache, **kw)[0, x.shape[1]:].tolist()
    plain = lm.model.generate(x, **kw)[0, x.shape[1]:].tolist()
    assert spliced == plain
    assert result.cache.layers[0].keys.shape[2] >= x.shape[1] + 5


# -- dtype: bfloat16 caches rotate in float32 -------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_neox", "gptj"])
def test_bf16_rotation_computed_in_float32(tok, family):
    lm = lm_for(family, tok)
    spec = rope_spec(lm.model)
    ids = sample_ids(tok)
    T = len(ids)
    cos, sin = spec.angle_delta(1, torch.arange(T), torch.arange(1000, 1000 + T))
    assert cos.dtype == sin.dtype == torch.float32
    k32 = prefill(lm.model, ids)[1][0]
    k16 = k32.to(torch.bfloat16)
    moved16 = spec.shift(1, k16, cos, sin)
    assert moved16.dtype == torch.bfloat16 and moved16.shape == k16.shape
    # one rounding at the end: identical to rotating the upcast keys in float32, then rounding
    assert torch.equal(moved16, spec.shift(1, k16.float(), cos, sin).to(torch.bfloat16))
    # and close to the float32 result (bfloat16 keeps ~3 significant digits)
    moved32 = spec.shift(1, k32, cos, sin)
    torch.testing.assert_close(moved16.float(), moved32, atol=2e-2 * max(1.0, float(k32.abs().max())), rtol=0)
    # writing into a preallocated bfloat16 slot gives the same
    out = torch.zeros_like(k16)
    assert spec.shift(1, k16, cos, sin, out=out) is out and torch.equal(out, moved16)


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,kind", [("llama_dynamic", "dynamic"), ("phi3_longrope", "longrope")])
def test_unshiftable_rope_is_refused(tok, family, kind):
    lm = lm_for(family, tok)
    with pytest.raises(UnsupportedModel, match=kind):
        rope_spec(lm.model)
    with pytest.raises(UnsupportedModel, match=kind):
        compile_skill(lm, manifest("a", SKILL_A))
    with pytest.raises(UnsupportedModel, match=kind):
        Runtime(lm)


@pytest.mark.parametrize("family", tm.SHIFTABLE)
def test_grouped_attention_changes_nothing(tok, family, monkeypatch):
    """Attention split into position-ordered groups of queries (each over the cache up to its last
    token) gives the same cache and logits as one masked call over everything, windows included."""
    from skillforge.runtime import passes

    lm = lm_for(family, tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    rt = Runtime(lm)
    ctx = Context(skills=["a", "b"], system=SYSTEM, user=QUESTION)
    repair = Repair(seam=4, blend=0)
    monkeypatch.setitem(passes.PASS_COST, "cpu", 10**9)
    one = rt.splice(ctx, skills=[a, b], repair=repair)
    monkeypatch.setitem(passes.PASS_COST, "cpu", 0)
    split = rt.splice(ctx, skills=[a, b], repair=repair)
    assert len(passes.plan_passes(split.computed_positions, 0)) > 2  # prefix, each seam, the user turn
    assert torch.equal(one.computed_positions, split.computed_positions)
    n = one.input_ids.shape[1]
    for x, y in zip(one.cache.layers, split.cache.layers):
        torch.testing.assert_close(x.keys[:, :, :n], y.keys[:, :, :n], atol=1e-5, rtol=0)
        torch.testing.assert_close(x.values[:, :, :n], y.values[:, :, :n], atol=1e-5, rtol=0)
    torch.testing.assert_close(rt.next_logits(one), rt.next_logits(split), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", tm.SHIFTABLE)
def test_blend_of_every_reused_token_is_exact(tok, family):
    """Blend with a budget of every candidate: the probe (the model's own attention, recorded at the
    probe layer) runs on every architecture, every moved token is recomputed, and the result is exact.
    The attention registry is left as it was."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    lm = lm_for(family, tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    local_before = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    rt = Runtime(lm)
    # a blend of everything costs more than a prefill, which the splice would do instead: not here
    repair = Repair(seam=0, blend=1.0, blend_per_unseen=float("inf"), min_blend=1, prefill_fallback=False)
    result = rt.splice(Context(skills=["a", "b"], system=SYSTEM, user=QUESTION), skills=[a, b], repair=repair)
    assert ALL_ATTENTION_FUNCTIONS._local_mapping == local_before
    assert result.repaired >= len(a.meta.token_ids) + len(b.meta.token_ids) - 4
    diff = float((rt.next_logits(result) - full_logits(lm, result.prompt.ids)).abs().max())
    assert diff < LOGIT_ATOL, f"{family}: blend of everything differs from a full forward by {diff}"


def test_auto_ceiling_buys_blend_only_where_skills_missed_text(tok):
    """`auto:<ratio>` raises the blend share: a skill after another skill gets more tokens
    recomputed, one behind nothing but its anchor still gets none."""
    lm = lm_for("llama", tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    rt = Runtime(lm)
    composed = Context(skills=["a", "b"], system=SYSTEM, user=QUESTION)
    default = rt.splice(composed, skills=[a, b], repair=Repair.parse(None, "auto"))
    # 90% recomputed costs more than a prefill, which the splice would do instead: not here
    higher = rt.splice(composed, skills=[a, b], repair=replace(Repair.parse(None, "auto:0.9"), prefill_fallback=False))
    assert default.repaired < Repair().min_blend + 2 * Repair().seam  # 15% of ~117 skill tokens is under min_blend
    assert higher.repaired >= 2 * Repair().seam + Repair().min_blend  # the probe ran and picked its budget
    alone = rt.splice(Context(skills=["a"], user=QUESTION), skills=[a], repair=Repair.parse(None, "auto:0.9"))
    assert alone.repaired == 0


def test_budget_under_min_blend_buys_the_most_sensitive_tokens(tok):
    """A blend budget too small to pay for the probe's forward (`select="both"`; the default where the
    attention pass would cost more than a prefill): each skill that missed text gets its seam, and the
    budget goes to the tokens of either skill whose K/V moved most behind another text at compile time
    (their artifacts' sensitivity), and nothing else."""
    lm = lm_for("llama", tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    rt = Runtime(lm)
    repair = Repair(select="both")
    result = rt.splice(Context(skills=["a", "b"], system=SYSTEM, user=QUESTION), skills=[a, b], repair=repair)
    prompt = result.prompt
    spans = [prompt.tokens_within(*span) for span in prompt.skill_spans]
    skill_tokens = sum(len(s) for s in spans)
    unseen = max(unseen_tokens(prompt, i, r.meta.anchor_ids) for i, r in enumerate([a, b]))
    budget = int(min(round(repair.blend * skill_tokens), repair.blend_per_unseen * unseen))
    assert 0 < budget < repair.min_blend
    computed = set(result.computed_positions.tolist())
    seams = {p for positions in spans for p in positions[: repair.seam]}
    # every skill token here came from its artifact in order: artifact token t of skill i at spans[i][t]
    sensitivity = {p: r.meta.sensitivity[t] for positions, r in zip(spans, [a, b]) for t, p in enumerate(positions)}
    rest = sorted(set(sensitivity) - seams, key=sensitivity.__getitem__, reverse=True)
    assert {p for positions in spans for p in positions if p in computed} == seams | set(rest[:budget])
    assert result.repaired == 2 * repair.seam + budget


def _unrepaired(lm, a, b) -> tuple[Context, Any, list[int]]:
    """Skills a and b after a system text, spliced with no repair: (context, result, reused positions)."""
    context = Context(skills=["a", "b"], system=SYSTEM, user=QUESTION)
    stale = Runtime(lm).splice(context, skills=[a, b], repair=Repair(seam=0, blend=0))
    computed = set(stale.computed_positions.tolist())
    return context, stale, [p for p in range(len(stale.prompt.ids)) if p not in computed]


def test_sensitive_choice_weights_sensitivity_by_the_user_turns_attention(tok):
    """The default ranking (`select="sensitive"`), where the attention pass fits under a prefill's
    cost: each candidate's compile-time sensitivity times the attention the user turn pays it in the
    spliced cache; no probe forward."""
    from skillforge.runtime.repair import _user_attention

    lm = lm_for("llama", tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    context, stale, reused = _unrepaired(lm, a, b)
    repair = Repair(seam=0, blend=0.2, blend_per_unseen=float("inf"), min_attend=1, prefill_fallback=False)
    result = Runtime(lm).splice(context, skills=[a, b], repair=repair)
    budget = round(0.2 * result.skill_tokens)
    ids = torch.tensor(stale.prompt.ids)
    read = _user_attention(lambda positions, observe: Runtime(lm).core.compute(stale.cache, ids, positions, observe),
                           stale.prompt, [(0, [(0, p, 1) for p in reused])], set())
    spans = [stale.prompt.tokens_within(*span) for span in stale.prompt.skill_spans]
    sensitivity = {p: r.meta.sensitivity[t] for positions, r in zip(spans, [a, b]) for t, p in enumerate(positions)}
    score = {p: sensitivity[p] * float(read[p]) for p in reused}
    repaired = set(result.computed_positions.tolist()) & set(reused)
    assert result.repaired == len(repaired) == budget
    assert repaired == set(sorted(score, key=score.__getitem__, reverse=True)[:budget])
    by_attention = set(sorted(reused, key=lambda p: float(read[p]), reverse=True)[:budget])
    assert repaired != by_attention  # the sensitivity changed the choice


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_attention_choice_reads_the_user_turn_and_leaves_reused_slots_alone(tok, family):
    """Repair(select="attention") ranks reused tokens by the attention the user turn pays them, from
    one pass over the computed tokens: per layer a softmax over the prompt, so the scores sum to the
    number of layers; the reused keys and values stay as spliced; a splice recomputes the top ones."""
    from skillforge.runtime.repair import _user_attention

    lm = lm_for(family, tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    stale = Runtime(lm).splice(Context(skills=["a", "b"], system=SYSTEM, user=QUESTION), skills=[a, b],
                               repair=Repair(seam=0, blend=0))
    L = len(stale.prompt.ids)
    computed = set(stale.computed_positions.tolist())
    reused = [p for p in range(L) if p not in computed]
    cache = stale.cache
    before = [(layer.keys[0][:, reused].clone(), layer.values[0][:, reused].clone()) for layer in cache.layers]
    rt = Runtime(lm)
    ids = torch.tensor(stale.prompt.ids)
    read = _user_attention(lambda positions, observe: rt.core.compute(cache, ids, positions, observe),
                           stale.prompt, [(0, [(0, p, 1) for p in reused])], set())
    assert read.shape == (L,) and float(read.min()) >= 0
    assert abs(float(read.sum()) - len(cache.layers)) < 1e-3
    assert float(read[reused].sum()) > 0  # the user turn reads the skills
    for layer, (k, v) in zip(cache.layers, before):
        assert torch.equal(layer.keys[0][:, reused], k) and torch.equal(layer.values[0][:, reused], v)
    repair = Repair(seam=0, blend=0.2, blend_per_unseen=float("inf"), min_blend=1, select="attention")
    chosen = Runtime(lm).splice(Context(skills=["a", "b"], system=SYSTEM, user=QUESTION), skills=[a, b], repair=repair)
    assert chosen.repaired == round(0.2 * chosen.skill_tokens)
    top = torch.tensor(reused)[read[reused].topk(chosen.repaired).indices]
    assert set(chosen.computed_positions.tolist()) & set(reused) == set(top.tolist())


def test_both_choices_split_the_budget_between_probe_and_attention(tok):
    """Repair(select="both"): half the blend budget goes to the probe's top picks, the rest to the
    other tokens the user turn attends to most with the probe's picks recomputed."""
    from skillforge.runtime.repair import _deviating, _user_attention

    lm = lm_for("llama", tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    context, stale, reused = _unrepaired(lm, a, b)
    repair = Repair(seam=0, blend=0.2, blend_per_unseen=float("inf"), min_blend=1, select="both", prefill_fallback=False)
    result = Runtime(lm).splice(context, skills=[a, b], repair=repair)
    budget = round(0.2 * result.skill_tokens)
    probe = _deviating(lm.model, None, stale.prompt, reused, stale.cache, budget // 2)
    repaired = set(result.computed_positions.tolist()) & set(reused)
    assert result.repaired == len(repaired) == budget
    assert set(probe) <= repaired
    fresh = Runtime(lm).splice(context, skills=[a, b], repair=Repair(seam=0, blend=0))
    ids = torch.tensor(fresh.prompt.ids)
    read = _user_attention(lambda positions, observe: Runtime(lm).core.compute(fresh.cache, ids, positions, observe),
                           fresh.prompt, [(0, [(0, p, 1) for p in reused])], set(probe))
    rest = torch.tensor([p for p in reused if p not in probe])
    assert repaired - set(probe) == set(rest[read[rest].topk(budget - budget // 2).indices].tolist())


def test_blend_picks_only_tokens_that_deviate(tok):
    """Sliding windows make the tail of a moved skill exact, so its keys match a fresh prefill: a blend
    budget must go to tokens near the skill's start, whose keys (at the probe layer) really deviate."""
    from skillforge.runtime.repair import _deviating

    lm = lm_for("mistral", tok)
    a, b = skill(lm, "a"), skill(lm, "b")
    rt = Runtime(lm)
    stale = rt.splice(Context(skills=["a", "b"], system=SYSTEM, user=QUESTION), skills=[a, b], repair=Repair(seam=0, blend=0))
    positions = stale.prompt.tokens_within(*stale.prompt.skill_spans[1])[:-1]
    layer = 1
    fresh_keys = full_kv(lm, stale.prompt.ids)[layer][0]
    spliced = stale.cache.layers[layer].keys[0]
    deviates = {p for p in positions if float((fresh_keys[:, p] - spliced[:, p]).abs().max()) > 1e-4}
    assert 0 < len(deviates) < len(positions) / 2  # the window leaves most of b exact
    chosen = _deviating(lm.model, layer, stale.prompt, positions, stale.cache, budget=8)
    assert len(chosen) == 8 and set(chosen) <= deviates
