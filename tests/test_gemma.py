"""Splicing on a real gemma3 model, gemma-3-270m (pulled by scripts/setup.sh), against a full forward.

What the tiny random families cannot show: real weights with a 512-token sliding window on five of
every six layers, local and global RoPE bases (10k / 1M), q/k norms, and a base model's tokenizer with
no chat template, so every prompt here is raw (BOS, then the texts joined by blank lines) and skills
are compiled behind BOS. Three claims, each against the plain transformers forward of the same tokens:
  exact     a skill spliced right behind the anchor it was compiled behind gives the same logits, also
            when the prompt outgrows the sliding window (the windowed layers then see no BOS);
  repaired  a skill after other text is not exact as reused, and is again once every token that
            could not be reused exactly is recomputed (all-seam repair, or blend of everything);
  decoding  greedy generation from the spliced cache equals generation after a full prefill.
"""

from __future__ import annotations

import math

import pytest
import torch

from skillforge.compile import compile_skill
from skillforge.errors import BadInput
from skillforge.manifest import Manifest
from skillforge.runtime import Context, Repair, Resolved, Runtime

pytestmark = [pytest.mark.gemma, pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")]

SHORT = (
    "You are the refund desk of a small online shop. Check the order number, the purchase date and the "
    "reason for the refund. Refunds within thirty days are approved at once; later ones need a manager."
)
# ~550 tokens of distinct lines: longer than the 512-token window on its own
LONG = "Shipping table of the warehouse.\n" + "\n".join(
    f"Route {i}: parcels for zone {i % 7} leave dock {i % 5 + 1} at {6 + i % 12}:{15 * (i % 4):02d}, carrier "
    f"{['Alder', 'Birch', 'Cedar', 'Dogwood'][i % 4]}, {2 + i % 3} days, insurance up to {100 * (i % 9 + 1)} dollars."
    for i in range(1, 15)
)
SYSTEM = "Answer the customer briefly and name the rule you used."
QUESTION = "Which dock does a parcel for zone 3 leave from?"
LOGIT_ATOL = 2e-3  # float32 on CPU; logits are ~20 in magnitude, a wrong cache moves them by > 0.1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a busy 2-core machine OpenMP hand-offs between two threads cost more than they gain (measured:
    the short case took 21 s with two threads, under load); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def manifest(name: str, text: str) -> Manifest:
    return Manifest.from_dict({"name": name, "version": "1.0.0", "description": "", "template": text, "fields": {}}, source="test")


def skill(lm, name: str, text: str, cache: dict = {}) -> Resolved:  # noqa: B006 - one compile per session
    if name not in cache:
        meta, kv = compile_skill(lm, manifest(name, text))
        cache[name] = Resolved(meta, kv, None)
    return cache[name]


@torch.no_grad()
def full_logits(lm, ids: list[int], cache: dict = {}) -> torch.Tensor:  # noqa: B006 - the oracle, once per prompt
    """Next-token logits of the plain transformers forward over the whole prompt (the oracle)."""
    key = tuple(ids)
    if key not in cache:
        x = torch.tensor([ids])
        cache[key] = lm.model(input_ids=x, attention_mask=torch.ones_like(x), logits_to_keep=1).logits[0, -1].float()
    return cache[key]


def raw_ids(lm, *texts: str) -> list[int]:
    """What a plain transformers user feeds a base model: the texts joined by blank lines, with BOS."""
    return lm.tokenizer("\n\n".join(texts), add_special_tokens=True)["input_ids"]


def max_diff(rt: Runtime, result, lm) -> float:
    return float((rt.next_logits(result) - full_logits(lm, result.prompt.ids)).abs().max())


def test_gemma_is_what_the_tests_claim(gemma_lm):
    """Guards the premises: gemma3 with windowed and global layers, two RoPE bases, no chat template,
    skills anchored behind BOS, and a long prompt that outgrows the window."""
    cfg = gemma_lm.model.config.get_text_config()
    assert cfg.model_type == "gemma3_text" and {"sliding_attention", "full_attention"} == set(cfg.layer_types)
    assert cfg.sliding_window == 512 and getattr(cfg, "query_pre_attn_scalar", None) == 256
    bases = {t: p["rope_theta"] for t, p in cfg.rope_parameters.items()}
    assert bases == {"sliding_attention": 10_000.0, "full_attention": 1_000_000.0}
    assert not gemma_lm.tokenizer.chat_template
    assert skill(gemma_lm, "long", LONG).meta.anchor_ids == [gemma_lm.tokenizer.bos_token_id]
    assert len(raw_ids(gemma_lm, LONG, QUESTION)) > cfg.sliding_window + 30


@pytest.mark.parametrize("name,text", [("short", SHORT), ("long", LONG)])
def test_splice_behind_anchor_matches_full_forward(gemma_lm, name, text):
    a = skill(gemma_lm, name, text)
    rt = Runtime(gemma_lm)
    result = rt.splice(Context(skills=[name], user=QUESTION, raw=True), skills=[a], repair=Repair(seam=0, blend=0))
    assert result.prompt.ids == raw_ids(gemma_lm, text, QUESTION)
    assert result.reused >= len(a.meta.token_ids) - 1 and result.repaired == 0  # the last may merge with "\n\n"
    diff = max_diff(rt, result, gemma_lm)
    assert diff < LOGIT_ATOL, f"{name}: spliced logits differ from a full forward by {diff}"


@pytest.mark.parametrize("repair", [Repair(seam=10_000, blend=0, prefill_fallback=False),
                                    Repair(seam=0, blend=1.0, blend_per_unseen=math.inf, min_blend=1, prefill_fallback=False)],
                         ids=["seam-all", "blend-all"])
def test_recomputing_what_cannot_be_reused_is_exact(gemma_lm, repair):
    """The long skill after system text: reused as is it never saw that text (not exact); recomputing
    every reused token through the splice path (not the prefill it would fall back to) is exact again."""
    a = skill(gemma_lm, "long", LONG)
    rt = Runtime(gemma_lm)
    ctx = Context(skills=["long"], system=SYSTEM, user=QUESTION, raw=True)
    stale = rt.splice(ctx, skills=[a], repair=Repair(seam=0, blend=0))
    assert stale.prompt.ids == raw_ids(gemma_lm, SYSTEM, LONG, QUESTION)
    assert max_diff(rt, stale, gemma_lm) > 20 * LOGIT_ATOL  # the system text matters: not exact as reused
    result = rt.splice(ctx, skills=[a], repair=repair)
    assert result.repaired >= len(a.meta.token_ids) - 2 and result.reused <= 2
    diff = max_diff(rt, result, gemma_lm)
    assert diff < LOGIT_ATOL, f"recomputed splice differs from a full forward by {diff}"


def test_a_skill_compiled_behind_exactly_what_precedes_it_in_a_raw_prompt_splices_exactly(gemma_lm):
    """The tokens before a skill in a raw prompt start with BOS, which has no characters (offsets (0, 0)):
    a variant compiled behind them (`serve --learn-after`; the sensitivity lead's prefill) must keep it."""
    a = skill(gemma_lm, "short", SHORT)
    rt = Runtime(gemma_lm)
    ctx = Context(skills=["short"], system=SYSTEM, user=QUESTION, raw=True)
    stale = rt.splice(ctx, skills=[a], repair=Repair(seam=0, blend=0))
    before = stale.prompt.ids_before(stale.prompt.skill_spans[0][0])
    assert before == raw_ids(gemma_lm, SYSTEM, SHORT)[: len(before)] and before[0] == gemma_lm.tokenizer.bos_token_id
    meta, kv = compile_skill(gemma_lm, manifest("short", SHORT), anchor=before)
    result = rt.splice(ctx, skills=[Resolved(meta, kv, None)], repair=Repair(seam=0, blend=0))
    assert result.repaired == 0 and max_diff(rt, result, gemma_lm) < LOGIT_ATOL < max_diff(rt, stale, gemma_lm)


def test_greedy_generation_from_spliced_cache_equals_full_prefill(gemma_lm):
    a = skill(gemma_lm, "long", LONG)
    rt = Runtime(gemma_lm)
    result = rt.splice(Context(skills=["long"], user=QUESTION, raw=True), skills=[a], repair=Repair(seam=0, blend=0))
    x = result.input_ids
    plain = gemma_lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False)[0, x.shape[1]:].tolist()
    spliced, _ = rt.generate(result, max_new_tokens=8)
    assert spliced == plain and len(plain) >= 2


def test_chat_prompt_on_a_base_model_says_to_use_raw(gemma_lm):
    with pytest.raises(BadInput, match="no chat template.*--raw"):
        Runtime(gemma_lm).splice(Context(skills=["short"], user=QUESTION), skills=[skill(gemma_lm, "short", SHORT)])


def test_anchor_none_is_what_a_raw_prompt_starts_with(gemma_lm):
    """A raw prompt starts with the tokenizer's prefix (BOS for gemma): `--anchor none` compiles behind
    exactly that, so the lookup's raw anchor and the compiled one agree and the splice is exact."""
    from skillforge.prompt import resolve_anchor

    assert resolve_anchor(gemma_lm.tokenizer, "none") == [gemma_lm.tokenizer.bos_token_id]
    assert raw_ids(gemma_lm, SHORT, QUESTION)[:1] == resolve_anchor(gemma_lm.tokenizer, "none")


def test_eval_on_a_base_model_runs_every_case_as_a_raw_prompt(gemma_lm):
    """Eval cases written for chat models run on a base model as raw prompts, and the document says so;
    run_eval itself checks that the spliced tokens equal transformers' tokenization of the raw prompt."""
    from skillforge.eval import run_eval

    manifest = Manifest.from_dict({"name": "refunds", "version": "1.0.0", "description": "", "template": SHORT, "fields": {}},
                                  source="test")
    cases = [{"id": "lone", "skills": ["refunds"], "user": QUESTION},
             {"id": "behind-system", "skills": ["refunds"], "system": SYSTEM, "user": QUESTION}]
    doc = run_eval(gemma_lm, cases, skills=[manifest])
    assert doc["raw_prompts"] == "all (no chat template)" and doc["cases"] == 2
    lone, behind = doc["per_case"]
    assert lone["kl"] < 1e-6 and lone["top1"] and lone["repaired"] == 0  # right behind BOS, as compiled: exact
    assert behind["repaired"] > 0  # after the system text: repaired


def test_bench_on_a_base_model_splices_raw_prompts(gemma_lm):
    from skillforge.eval import run_bench

    doc = run_bench(gemma_lm, [48], rounds=1)
    assert doc["raw_prompts"] is True
    row = doc["rows"][0]
    assert row["full_ms"] > 0 and row["splice_store_ms"] > 0 and 0 < row["edit_computed_inplace"] < row["prompt_tokens"]
