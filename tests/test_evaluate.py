"""Eval and bench: metric math on constructed inputs, the case-file parser, and both runners end to end
on a tiny random model (fast; the demo-model numbers come from `skillforge eval` / scripts/bench.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from skillforge.cli.eval_cmd import format_eval
from skillforge.eval import CaseError, EvalMemo, load_cases, parse_cases, run_eval
from skillforge.eval.arms import FullArm, divergence
from skillforge.eval.metrics import answer_logits, first_word, kl, logit_cosine, recovery, top1, word_token_ids
from skillforge.eval.run import gated_decision
from skillforge.manifest import Manifest

AGGREGATE_KEYS = {"cases", "logit_cosine_mean", "logit_cosine_min", "kl_mean", "top1_agreement", "greedy16_match",
                  "greedy16_divergence_margin_max", "reused_fraction", "skill_recompute_fraction", "ttft_full_ms_median", "ttft_splice_ms_median", "edits", "per_case"}
EDIT_KEYS = {"cases", "top1_agreement", "first_word_agreement", "kl_mean", "recovery_mean", "computed_fraction"}


# -- metrics -----------------------------------------------------------------------------------------

def test_identical_logits_agree_perfectly():
    a = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert logit_cosine(a, a.clone()) == pytest.approx(1.0, abs=1e-12)
    assert kl(a, a.clone()) == pytest.approx(0.0, abs=1e-12)
    assert top1(a, a.clone())


def test_perturbed_logits_diverge():
    a = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    b = a + 0.5 * torch.randn(1000, generator=torch.Generator().manual_seed(1))
    b[int(a.argmax())] -= 100.0  # the old favourite drops out
    assert kl(a, b) > 0
    assert logit_cosine(a, b) < 1
    assert not top1(a, b)


def test_kl_matches_the_definition_and_is_asymmetric():
    p = torch.tensor([2.0, 0.0, -1.0])
    q = torch.tensor([0.0, 1.0, 0.0])
    ps, qs = torch.softmax(p.double(), 0), torch.softmax(q.double(), 0)
    assert kl(p, q) == pytest.approx(float((ps * (ps / qs).log()).sum()), rel=1e-12)
    assert kl(p, q) != pytest.approx(kl(q, p))
    assert kl(p, p + 3.0) == pytest.approx(0.0, abs=1e-12)  # a shift of every logit changes nothing


def test_recovery_formula():
    assert recovery(0.1, 0.4) == pytest.approx(0.75)
    assert recovery(0.0, 0.4) == 1.0
    assert recovery(0.8, 0.4) == pytest.approx(-1.0)
    assert recovery(0.0, 0.0) == 1.0
    assert recovery(0.1, 0.0) == 0.0


def test_answer_logits_split_and_their_kl():
    logits = torch.full((6,), -30.0)
    logits[[1, 2, 4]] = torch.log(torch.tensor([0.3, 0.1, 0.2], dtype=torch.float32))
    # answer a = tokens 1 and 2 ("No", "no"), answer b = token 4: 0.4 against 0.2; token 0 etc. do not count
    assert float(torch.softmax(answer_logits(logits, [1, 2], [4]), 0)[0]) == pytest.approx(0.4 / 0.6, abs=1e-6)

    def split(p: float) -> torch.Tensor:  # a 2-answer split with P(a) = p, padded by a token of no answer
        return answer_logits(torch.tensor([p, 1 - p, 0.3]).log(), [0], [1])

    assert kl(split(0.5), split(0.5)) == 0.0
    assert kl(split(0.9), split(0.5)) == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    assert kl(split(0.5), split(0.9)) != kl(split(0.9), split(0.5))
    assert math.isfinite(kl(answer_logits(logits, [1], [0]), answer_logits(logits, [0], [1])))  # an answer at 1e-13


def test_word_token_ids_finds_every_single_token_form(tiny):
    tok = tiny.tokenizer
    ids = word_token_ids(tok, "no")
    assert ids and all(len(tok(tok.decode([i]), add_special_tokens=False)["input_ids"]) == 1 for i in ids)
    assert all(first_word(tok.decode([i])) == "no" for i in ids)
    assert word_token_ids(tok, "antidisestablishmentarianism") == []


def test_divergence_names_the_step_and_the_full_arms_margin_there():
    full = FullArm(torch.zeros(3), tokens=[5, 6, 7, 8], ttft_ms=1.0, margins=[2.0, 0.5, 0.03, 1.0])
    assert divergence(full, [5, 6, 7, 8]) is None
    assert divergence(full, [5, 6, 9, 9]) == {"step": 2, "full_margin": 0.03}
    assert divergence(full, [4, 6, 7, 8]) == {"step": 0, "full_margin": 2.0}
    assert divergence(full, [5, 6]) == {"step": 2, "full_margin": 0.03}  # stopped early
    assert divergence(FullArm(torch.zeros(3), [5], 1.0, [0.2]), [5, 1]) == {"step": 1, "full_margin": None}


def test_first_word():
    assert first_word("No.") == "no"
    assert first_word("  **Yes**, the passenger may travel") == "yes"
    assert first_word("") == ""


# -- case files --------------------------------------------------------------------------------------

def test_case_file_bad_json_names_file_and_line(tmp_path: Path):
    path = tmp_path / "cases.jsonl"
    path.write_text('{"id": "a", "skills": ["s"], "user": "hi"}\n\n{"id": "b", "skills": ["s"], \n')
    with pytest.raises(CaseError, match=rf"{path}:3: not valid JSON"):
        load_cases(path)


def test_case_file_unknown_key_names_file_line_and_key(tmp_path: Path):
    path = tmp_path / "cases.jsonl"
    path.write_text('{"id": "a", "skills": ["s"], "user": "hi"}\n{"id": "b", "skills": ["s"], "user": "hi", "sytem": "x"}\n')
    with pytest.raises(CaseError, match=rf"{path}:2: unknown key 'sytem'"):
        load_cases(path)


@pytest.mark.parametrize("line, message", [
    ('{"skills": ["s"], "user": "hi"}', "missing required key 'id'"),
    ('{"id": "a", "skills": [], "user": "hi"}', "'skills' must be a non-empty list"),
    ('{"id": "a", "skills": ["s"], "user": "hi", "set": {"t.f": "v"}}', "names skill 't'"),
    ('{"id": "a", "skills": ["s"], "user": "hi", "set": {"s": "v"}}', "skill.field"),
    ('[1, 2]', "expected a JSON object"),
])
def test_case_parser_rejects(line: str, message: str):
    with pytest.raises(CaseError, match=rf"cases.jsonl:1: .*{message}"):
        parse_cases([line], "cases.jsonl")


def test_case_parser_rejects_duplicate_ids():
    line = '{"id": "a", "skills": ["s"], "user": "hi"}'
    with pytest.raises(CaseError, match="x.jsonl:2: duplicate case id 'a' \\(first on line 1\\)"):
        parse_cases([line, line], "x.jsonl")


def test_bundled_case_files_parse():
    root = Path(__file__).resolve().parent.parent / "evals"
    cases = load_cases(root / "cases.jsonl")
    edits = load_cases(root / "edits.jsonl")
    assert len(cases) >= 30 and not any(c.set for c in cases)
    assert len(edits) >= 12 and all(c.set for c in edits)
    assert any(len(c.skills) == 1 for c in cases) and any(len(c.skills) >= 2 for c in cases)
    assert any(len(c.skills) == 3 for c in cases)
    assert any(not c.system for c in cases) and any(len(c.system) > 200 for c in cases)


# -- runners on a tiny random model -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(demo_tokenizer):
    try:
        import tiny_models
    except ImportError:
        tiny_models = None
    if tiny_models is not None:
        return tiny_models.build("llama", demo_tokenizer)
    from transformers import AutoModelForCausalLM, LlamaConfig

    from skillforge.model.loader import LoadedModel

    cfg = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    return LoadedModel.from_parts(model, demo_tokenizer, name="tiny-llama")


SKILLS = [
    Manifest.from_dict({"name": "gate", "version": "1.0.0", "template":
                        "The account role is: {{role}}.\nOnly verified_admin may approve a refund. Answer Yes or No first.\n"
                        "Reminder: the role is {{role}}.",
                        "fields": {"role": {"default": "verified_admin", "description": "role", "label": "The account role"}}},
                       source="test:gate"),
    Manifest.from_dict({"name": "tone", "version": "0.1.0", "template": "Answer briefly and politely. Never invent facts."},
                       source="test:tone"),
]
CASES = [
    {"id": "one", "skills": ["gate"], "user": "Can this account approve the refund?"},
    {"id": "two", "skills": ["tone", "gate"], "system": "You are a support agent.", "user": "Can I get a refund?"},
    {"id": "edit", "skills": ["tone", "gate"], "set": {"gate.role": "guest"}, "user": "Can this account approve the refund?"},
]


def test_eval_end_to_end_on_tiny_model(tiny):
    doc = run_eval(tiny, CASES, skills=SKILLS)
    assert AGGREGATE_KEYS <= set(doc) and EDIT_KEYS <= set(doc["edits"])
    assert doc["cases"] == 2 and doc["edits"]["cases"] == 1 and len(doc["per_case"]) == 3
    one = doc["per_case"][0]
    # a lone skill right behind its anchor is exact: the splice is a recompute of nothing but the user turn
    assert one["top1"] and one["greedy16_match"] and one["kl"] < 1e-6 and one["logit_cosine"] > 0.99999
    assert one["repaired"] == 0 and one["greedy16_divergence"] is None
    two = doc["per_case"][1]
    assert two["repaired"] > 0  # skills that follow other text get their seam recomputed
    assert 0 < doc["reused_fraction"] < 1 and 0 < doc["skill_recompute_fraction"] < 1
    edit = doc["per_case"][2]
    # the field's tokens and the erratum line (on this short test skill the erratum is about the skill's size)
    assert edit["tokens_computed"] > 0 and doc["edits"]["computed_fraction"] > 0
    assert math.isfinite(edit["recovery"]) and edit["kl_full"] >= 0 and "kl_full_mean" in doc["edits"]
    # a decision only where the oracle's first word differs from the stale splice's, and then only where
    # both words are single tokens of this tokenizer (a random model's words often are not)
    assert edit["oracle_flips"] or edit["decision"] is None
    assert edit["decision"] is None or set(edit["decision"]["answers"]) == {edit["first_word"]["oracle"], edit["first_word"]["stale"]}
    assert "decision_recovery_mean" in doc["edits"]
    json.dumps(doc)  # the contract is plain JSON
    assert "one" in format_eval(doc) and "edits (field+erratum)" in format_eval(doc)


def test_decision_compares_only_the_two_answers_of_a_gated_case(tiny):
    tok = tiny.tokenizer
    no, yes = word_token_ids(tok, "no"), word_token_ids(tok, "yes")
    vocab = len(tok)

    def arm(p_no: float, p_yes: float, p_other: float) -> torch.Tensor:
        probs = torch.full((vocab,), 1e-9, dtype=torch.float64)
        probs[no[0]], probs[yes[0]], probs[0] = p_no, p_yes, max(p_other, 1e-9)
        return probs.log()

    # the mode halves both answers' mass (an erratum pulling the opening elsewhere) but keeps their split
    logits = {"oracle": arm(0.6, 0.4, 0.0), "mode": arm(0.3, 0.2, 0.5), "stale": arm(0.4, 0.6, 0.0)}
    d = gated_decision(tiny, {"oracle": "no", "mode": "no", "stale": "yes"}, logits)
    assert d["answers"] == ["no", "yes"] and d["share_oracle"] == pytest.approx(0.6, abs=1e-4)
    assert d["share_mode"] == pytest.approx(0.6, abs=1e-4) and d["recovery"] == pytest.approx(1.0, abs=1e-6)
    assert kl(logits["oracle"], logits["mode"]) > kl(logits["oracle"], logits["stale"])  # full-distribution recovery < 0
    assert gated_decision(tiny, {"oracle": "no", "mode": "no", "stale": "no"}, logits) is None  # not gated


def test_eval_recompute_mode_is_the_oracle_and_baselines_run(tiny):
    lone = {"id": "edit-lone", "skills": ["gate"], "set": {"gate.role": "guest"}, "user": "Can this account approve the refund?"}
    doc = run_eval(tiny, CASES[:1] + CASES[2:] + [lone], skills=SKILLS, edit_mode="recompute")
    edit, alone = doc["per_case"][1], doc["per_case"][2]
    assert edit["computed_fraction"] == 1.0
    # the oracle is the recompute mode itself: measured against itself it agrees exactly
    assert edit["kl_mode"] == 0.0 and edit["recovery"] == 1.0 and edit["top1"] and edit["first_word_agreement"]
    # a lone re-prefilled skill behind its anchor splices exactly: the oracle equals a full prefill there
    assert alone["kl_full"] < 1e-6
    for baseline in ("plain", "no-rotation"):
        other = run_eval(tiny, CASES[1:2], skills=SKILLS, baseline=baseline)
        assert other["baseline"] == baseline and other["cases"] == 1
        assert other["skill_recompute_fraction"] == 0.0


def test_a_memo_shares_references_between_runs_and_is_the_only_state(tiny):
    from skillforge.runtime import Repair

    memo = EvalMemo()
    first = run_eval(tiny, CASES[:2], skills=SKILLS, memo=memo)
    full, compiled = dict(memo.full), dict(memo.compiled)
    assert len(full) == 2 and len(compiled) == 2  # one reference per case, one artifact per skill
    # another repair setting over the same cases: the references and artifacts are reused, not redone
    second = run_eval(tiny, CASES[:2], skills=SKILLS, memo=memo, repair=Repair(seam=0, blend=0.0))
    assert memo.full == full and all(memo.full[k] is full[k] for k in full) and memo.compiled == compiled
    assert [r["ttft_full_ms"] for r in second["per_case"]] == [r["ttft_full_ms"] for r in first["per_case"]]
    assert [r["text_full"] for r in second["per_case"]] == [r["text_full"] for r in first["per_case"]]
    # a run without a memo keeps nothing between calls, and leaves this memo alone
    run_eval(tiny, CASES[:1], skills=SKILLS)
    assert memo.full == full
