"""The eval corpus under evals/corpus/: reproducible from scripts/make_corpus.py, loadable by today's
case loader and manifest parser, and split so that tuning on dev cannot leak into what test reports.

No model needed: these check the files, not any model's answers."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from skillforge.manifest import discover

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "evals" / "corpus"
KINDS = {"lone-empty", "lone-system", "compose-2", "compose-3", "compose-4", "multi-turn"}


def _load_cases(path: Path) -> list:
    """Today's case loader, wherever it lives: it is moving from skillforge.evaluate into the
    skillforge.eval package, and this test should keep checking the corpus through the move."""
    for module in ("skillforge.eval", "skillforge.eval.cases", "skillforge.evaluate"):
        try:
            return importlib.import_module(module).load_cases(path)
        except (ImportError, AttributeError):
            continue
    raise AssertionError("no load_cases in skillforge.eval, skillforge.eval.cases or skillforge.evaluate")


def _rows(part: str) -> list[dict]:
    """Every case of a part (dev or test), single- and multi-turn, as JSON objects."""
    rows = []
    for name in (f"{part}.jsonl", f"{part}-multiturn.jsonl"):
        rows += [json.loads(line) for line in (CORPUS / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def _kind(row: dict) -> str:
    return dict(pair.split("=", 1) for pair in row["note"].split())["kind"]


@pytest.fixture(scope="module")
def manifests() -> dict:
    return {m.name: m for m in discover(CORPUS / "skills")}


def test_generator_reproduces_the_committed_files():
    done = subprocess.run([sys.executable, "scripts/make_corpus.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_manifest_parses_and_renders(manifests):
    assert len(manifests) >= 15
    for m in manifests.values():
        assert m.render().text.strip()
    assert sum(bool(m.fields) for m in manifests.values()) >= 5  # some skills carry editable fields


def test_skills_vary_in_kind_opening_and_length(manifests):
    index = json.loads((CORPUS / "index.json").read_text(encoding="utf-8"))
    skills = {s["name"]: s for s in index["skills"]}
    assert set(skills) == set(manifests)
    assert {s["kind"] for s in skills.values()} == {"policy", "tool-doc", "style-guide", "examples", "data-table", "checklist"}
    openings = {"heading": "#", "list": "- ", "code": "```", "table": "|"}
    for name, s in skills.items():
        text = manifests[name].template
        if s["opening"] == "prose":
            assert not text.startswith(tuple(openings.values())), name
        else:
            assert text.startswith(openings[s["opening"]]), name
    assert {s["opening"] for s in skills.values()} == {*openings, "prose"}
    sizes = sorted(s["approx_tokens"] for s in skills.values())
    assert sizes[0] <= 80 and 2000 <= sizes[-1] <= 4200
    assert sum(n > 1500 for n in sizes) <= 3  # few long skills: the evals run on CPU


def test_every_case_loads_and_names_a_corpus_skill(manifests):
    total = 0
    for part in ("dev", "test"):
        cases = _load_cases(CORPUS / f"{part}.jsonl")
        total += len(cases)
        for row in _rows(part):
            assert set(row["skills"]) <= set(manifests), row["id"]
    multi = [row for part in ("dev", "test") for row in _rows(part) if "history" in row]
    for row in multi:
        roles = [turn["role"] for turn in row["history"]]
        assert roles and roles == ["user", "assistant"] * (len(roles) // 2), row["id"]
        assert all(turn["content"].strip() for turn in row["history"])
    assert total + len(multi) >= 160


def test_split_covers_every_kind_and_holds_out_skills():
    rows = {part: _rows(part) for part in ("dev", "test")}
    ids = [row["id"] for part in rows.values() for row in part]
    assert len(ids) == len(set(ids))
    for part, part_rows in rows.items():
        assert {_kind(row) for row in part_rows} == KINDS, part
        assert abs(len(part_rows) - len(ids) / 2) <= len(ids) * 0.1, part  # roughly half and half
    used = {part: {s for row in part_rows for s in row["skills"]} for part, part_rows in rows.items()}
    test_only = used["test"] - used["dev"]
    index = json.loads((CORPUS / "index.json").read_text(encoding="utf-8"))
    assert test_only == set(index["test_only"]) and len(test_only) >= 4
    assert len(used["test"] & used["dev"]) >= 10  # test also measures the skills tuned on


def test_compositions_come_in_different_orders_with_and_without_system_text():
    rows = _rows("dev") + _rows("test")
    orders = defaultdict(list)
    for row in rows:
        if _kind(row).startswith("compose-"):
            orders[dict(pair.split("=", 1) for pair in row["note"].split())["combo"]].append(row["skills"])
    assert orders and all(len(o) == 2 and o[0] != o[1] and sorted(o[0]) == sorted(o[1]) for o in orders.values())
    for kind in ("compose-2", "compose-3", "compose-4"):
        systems = [row.get("system", "") for row in rows if _kind(row) == kind]
        assert any(systems) and not all(systems), kind
    lone = [row["system"] for row in rows if _kind(row) == "lone-system"]
    assert min(len(s) for s in lone) < 40 and any(s.count("\n\n") >= 2 for s in lone)


def test_short_family_composes_short_skills_and_holds_out_its_own():
    """dev-short / test-short: skills of about 100-200 tokens alone and composed by two and three, split
    like the main family with two short skills held out for test, and never mixed into the main files."""
    index = json.loads((CORPUS / "index.json").read_text(encoding="utf-8"))
    sizes = {s["name"]: s["approx_tokens"] for s in index["skills"]}
    rows = {part: [json.loads(line) for line in (CORPUS / f"{part}-short.jsonl").read_text(encoding="utf-8").splitlines()]
            for part in ("dev", "test")}
    short = {s for part in rows.values() for row in part for s in row["skills"]}
    assert len(short) >= 8 and all(60 <= sizes[s] <= 250 for s in short)
    assert not short & {s for part in ("dev", "test") for row in _rows(part) for s in row["skills"]}
    kinds = {"short-lone-empty", "short-lone-system", "short-compose-2", "short-compose-3"}
    for part_rows in rows.values():
        assert {_kind(row) for row in part_rows} == kinds
        assert all(row["id"].startswith("short-") for row in part_rows)
    used = {part: {s for row in part_rows for s in row["skills"]} for part, part_rows in rows.items()}
    assert used["test"] - used["dev"] == set(index["short_test_only"]) and len(index["short_test_only"]) >= 2
    for part in ("dev", "test"):
        assert len(_load_cases(CORPUS / f"{part}-short.jsonl")) == len(rows[part])
