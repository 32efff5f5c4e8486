"""Per-kind figures in the eval: the kind comes from the case note, and every kind gets its own
aggregates, so a shape of context that fails shows even when the average looks fine."""

from __future__ import annotations

from skillforge.cli.eval_cmd import format_eval
from skillforge.eval.cases import Case
from skillforge.eval.run import by_kind, case_kind


def _row(kind: str, top1: bool, kl: float, repaired: int = 2, skill_tokens: int = 20) -> dict:
    return {"id": f"case-{kl}", "kind": kind, "skills": ["a"], "prompt_tokens": 40, "reused": 30, "computed": 10,
            "repaired": repaired, "skill_tokens": skill_tokens, "logit_cosine": 0.99, "kl": kl, "top1": top1,
            "greedy16_match": top1, "greedy16_divergence": None if top1 else {"step": 0, "full_margin": 0.1},
            "ttft_full_ms": 1.0, "ttft_splice_ms": 1.0}


def test_kind_comes_from_the_note():
    assert case_kind(Case("a", ["s"], "u", note="kind=lone-system system=sentence")) == "lone-system"
    assert case_kind(Case("a", ["s"], "u", note="system=none kind=compose-2")) == "compose-2"
    assert case_kind(Case("a", ["s"], "u", note="a kind of note")) == "-"
    assert case_kind(Case("a", ["s"], "u")) == "-"


def test_by_kind_aggregates_each_kind_apart():
    rows = [_row("compose-2", False, 0.4), _row("compose-2", True, 0.0), _row("lone-empty", True, 0.0, repaired=0)]
    kinds = by_kind(rows)
    assert list(kinds) == ["compose-2", "lone-empty"]
    assert kinds["compose-2"]["cases"] == 2 and kinds["compose-2"]["top1_agreement"] == 0.5
    assert kinds["compose-2"]["kl_max"] == 0.4 and kinds["compose-2"]["skill_recompute_fraction"] == 0.1
    assert kinds["lone-empty"]["greedy16_match"] == 1.0 and kinds["lone-empty"]["skill_recompute_fraction"] == 0.0


def test_format_eval_prints_the_kind_table_only_for_tagged_cases():
    base = {"repair": "seam=16", "baseline": None, "cases": 2, "top1_agreement": 0.5, "greedy16_match": 0.5,
            "greedy16_divergence_margin_max": 0.1, "kl_mean": 0.2, "kl_max": 0.4, "logit_cosine_mean": 0.99,
            "logit_cosine_min": 0.99, "reused_fraction": 0.75, "skill_recompute_fraction": 0.1,
            "ttft_full_ms_median": 1.0, "ttft_splice_ms_median": 1.0}
    tagged = [_row("compose-2", False, 0.4), _row("lone-empty", True, 0.0)]
    text = format_eval({**base, "per_case": tagged, "by_kind": by_kind(tagged)})
    assert "kl_max" in text and text.count("compose-2") == 2  # its case row and its kind row
    untagged = [_row("-", True, 0.0)]
    assert "kl_max" not in format_eval({**base, "per_case": untagged, "by_kind": by_kind(untagged)})
