"""The bench: interleaved rounds whose ratios are taken within a round, edit arms next to a re-prefill,
and the README writer that touches only its own block."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from skillforge.cli.bench_cmd import format_bench
from skillforge.eval import run_bench
from skillforge.eval.bench import ARMS, _LengthBench, round_ratios
from skillforge.registry import Registry
from skillforge.store import LocalStore, local

from tiny_models import build

ROW_KEYS = {"tokens", "full_ms", "splice_cold_ms", "splice_store_ms", "splice_hot_ms", "floor_ms", "edit_full_ms", "edit_inplace_ms",
            "edit_erratum_ms", "speedup_store", "speedup_hot", "bytes_per_token"}


def load_script():
    spec = importlib.util.spec_from_file_location("bench_script", Path(__file__).resolve().parent.parent / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratios_are_medians_of_per_round_ratios_not_ratios_of_medians():
    # the machine slowed down in round 2: both arms took 10x longer, and their ratio did not move
    rounds = [{"full": 100.0, "store": 10.0}, {"full": 1000.0, "store": 100.0}, {"full": 120.0, "store": 10.0}]
    r = round_ratios(rounds)["speedup_store"]
    assert (r["median"], r["min"], r["max"]) == (10.0, 10.0, 12.0)
    assert "speedup_hot" not in round_ratios(rounds)  # an arm that never ran gives no ratio


def test_bench_on_tiny_model_runs_every_arm_in_every_round(demo_tokenizer):
    doc = run_bench(build("llama", demo_tokenizer), [32, 64], rounds=2)
    assert [r["tokens"] for r in doc["rows"]] == [32, 64]
    for row in doc["rows"]:
        assert ROW_KEYS <= set(row) and all(row[k] > 0 for k in ROW_KEYS)
        assert len(row["rounds"]) == 2 and all(set(ARMS) <= set(rd) and "load_before" in rd for rd in row["rounds"])
        for d in row["ratios"].values():
            assert d["min"] <= d["median"] <= d["max"]
        # one-token values keep the edited prompt's length: its re-prefill is the full arm's computation
        assert row["edit_full_timed_by"].startswith("full") and all(rd["edit_full"] == rd["full"] for rd in row["rounds"])
        # the edit computes its field (and for field+erratum the erratum), not the skill
        assert 0 < row["edit_computed_inplace"] < min(row["edit_computed_erratum"], row["prompt_tokens"])
    assert doc["compile_over_bare"]["median"] > 0 and {"start", "end"} == set(doc["load"])
    # compile runs two prefills (behind the anchor, behind the sensitivity lead): about twice one forward
    assert doc["compile_over_one_forward"]["median"] > doc["compile_over_bare"]["median"]
    est = doc["compile_estimate_over_one_forward"]  # `--sensitivity estimate`, timed in the same rounds
    assert 0 < est["min"] <= est["median"] <= est["max"]
    text = format_bench(doc)
    assert "edit_speedup_erratum" in text and "compile / its two bare forwards" in text and "--sensitivity estimate / one forward" in text


def test_no_timed_arm_hashes_the_just_compiled_skill(demo_tokenizer, tmp_path: Path, monkeypatch):
    # a blob younger than the store's racy window is hashed on its next read: the bench waits that out
    # in its set-up, so the arms time splices of a served skill, not one hash of the whole KV
    registry, store = Registry(f"sqlite:///{tmp_path / 'index.sqlite'}"), LocalStore(tmp_path)
    b = _LengthBench(build("llama", demo_tokenizer), registry, store, 32, lambda s: None)
    hashed, real = [], local.hash_file
    monkeypatch.setattr(local, "hash_file", lambda path: hashed.append(path) or real(path))
    for arm in ("cold", "store", "hot", "edit_erratum"):
        assert b.arm(arm) > 0
    assert hashed == []
    registry.close()


def bench_doc() -> dict:
    ratio = {"median": 2.0, "min": 1.5, "max": 2.5}
    row = {"tokens": 512, "full_ms": 900.0, "splice_store_ms": 200.0, "splice_hot_ms": 190.0, "floor_ms": 150.0,
           "edit_full_ms": 910.0, "edit_inplace_ms": 180.0, "edit_erratum_ms": 220.0, "edit_computed_inplace": 40,
           "edit_computed_erratum": 80, "ratios": {n: ratio for n in ("speedup_store", "speedup_hot", "store_over_floor",
                                                                       "hot_over_floor", "edit_speedup_inplace", "edit_speedup_erratum")},
           "rounds": [{"load_before": 1.0, "load_after": 2.0}]}
    return {"model": "m", "dtype": "float32", "device": "cpu", "rounds": 1, "rows": [row], "cpu_count": 2, "threads": 2,
            "wall_s": 60, "compile_tokens": 512, "compile_tokens_per_s": 100.0, "bare_forward_tokens_per_s": 102.0,
            "compile_over_bare": {"median": 1.02, "min": 1.0, "max": 1.04},
            "compile_over_one_forward": {"median": 2.04, "min": 2.0, "max": 2.08},
            "compile_estimate_over_one_forward": {"median": 1.02, "min": 1.01, "max": 1.03}}


def test_readme_writer_touches_only_its_block(tmp_path: Path):
    script = load_script()
    readme = tmp_path / "README.md"
    old_ttft = "### Time to first token by skill length (medians of 5)\n\n| old table |\n"
    readme.write_text(f"# intro\n\n{script.START}\n\nEVAL TABLES\n\n{old_ttft}{script.END}\n\n## after\n")
    bench = script.render_bench([bench_doc()], "a machine", None)
    script.update_readme(readme, None, bench)  # the legacy TTFT part is replaced, the eval part kept
    text = readme.read_text()
    assert "EVAL TABLES" in text and "old table" not in text and "2.00 (1.50-2.50)" in text
    assert "compile / one forward 2.040, 2.000-2.080; `--sensitivity estimate` / one forward 1.020, 1.010-1.030)." in text
    assert text.startswith("# intro") and text.endswith("## after\n") and text.count(script.BENCH_START) == 1
    script.update_readme(readme, ["NEW EVAL"], None)  # the eval part rewritten, the bench block kept
    text = readme.read_text()
    assert "EVAL TABLES" not in text and "NEW EVAL" in text and "2.00 (1.50-2.50)" in text
    script.update_readme(readme, None, [script.BENCH_START, "NEW BENCH", script.BENCH_END])
    text = readme.read_text()
    assert "NEW EVAL" in text and "NEW BENCH" in text and "2.00 (1.50-2.50)" not in text
    script.update_readme(readme, None, None, [script.MODELS_START, "MODEL TABLES", script.MODELS_END])
    text = readme.read_text()  # the per-model block goes in before the bench block, the rest kept
    assert text.index("NEW EVAL") < text.index("MODEL TABLES") < text.index("NEW BENCH") and text.count(script.MODELS_START) == 1
    script.update_readme(readme, ["NEWER EVAL"], None)
    text = readme.read_text()
    assert "NEW EVAL" not in text and text.index("NEWER EVAL") < text.index("MODEL TABLES") < text.index("NEW BENCH")
    script.update_readme(readme, None, None, [script.MODELS_START, "OTHER MODELS", script.MODELS_END])
    text = readme.read_text()
    assert "MODEL TABLES" not in text and text.count("OTHER MODELS") == 1 and text.endswith("## after\n")
