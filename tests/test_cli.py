"""The command line end to end, on a tiny model saved as a real model folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skillforge.cli.main import app

from tiny_models import build_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, demo_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    build_model("llama").save_pretrained(path)
    demo_tokenizer.save_pretrained(path)
    return path


def cli(*args: str) -> dict | list:
    result = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def sf(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SKILLFORGE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "skillforge.cli", *args], capture_output=True, text=True, env=env, timeout=300)


def test_compile_ls_show_splice(tiny_dir: Path, skills_dir: Path):
    out = cli("compile", str(skills_dir / "refund-desk"), "--model", str(tiny_dir))
    assert [a["name"] for a in out["artifacts"]] == ["refund-desk"] and out["artifacts"][0]["created"]
    again = cli("compile", str(skills_dir / "refund-desk"), "--model", str(tiny_dir))
    assert again["artifacts"][0]["created"] is False

    rows = cli("ls", "--model", str(tiny_dir))
    assert [(r["name"], r["version"]) for r in rows] == [("refund-desk", "2.1.0")]
    assert rows[0]["fingerprint"] == out["fingerprint"] and rows[0]["tokens"] > 1000

    shown = cli("show", "refund-desk@2.1.0")
    assert {f["name"] for f in shown["fields"]} == {"account_role", "max_refund_usd", "refund_window_days"}
    assert shown["digest"] == rows[0]["digest"]

    spliced = cli("splice", "--model", str(tiny_dir), "--skill", "refund-desk", "--system", "Be brief.",
                  "--user", "Can I get a refund?", "--max-new-tokens", "4")
    assert spliced["artifacts"] == [rows[0]["digest"]]
    # most of the skill is reused: all but its seam and the blend share (15% of its tokens)
    assert spliced["tokens_reused"] > 0.8 * rows[0]["tokens"] and spliced["tokens_computed"] >= spliced["seam_tokens"] > 0

    edited = cli("splice", "--model", str(tiny_dir), "--skill", "refund-desk", "--user", "Refund?", "--max-new-tokens", "2",
                 "--set", "refund-desk.account_role=suspended_user")
    assert edited["edits"][0]["new"] == "suspended_user" and edited["edits"][0]["tokens_computed"] > 0
    terse = cli("splice", "--model", str(tiny_dir), "--skill", "refund-desk", "--user", "Refund?", "--max-new-tokens", "2",
                "--set", "refund-desk.account_role=suspended_user", "--erratum", "Note: {label} is now {value}.")
    assert 0 < terse["edits"][0]["tokens_computed"] < edited["edits"][0]["tokens_computed"]  # the shorter line computed
    contrast = cli("splice", "--model", str(tiny_dir), "--skill", "refund-desk", "--user", "Refund?", "--max-new-tokens", "2",
                   "--set", "refund-desk.account_role=suspended_user", "--edit-mode", "contrast")
    assert contrast["edits"][0]["mode"] == "contrast" and contrast["tokens_computed"] == edited["tokens_computed"]
    assert contrast["guide_tokens_computed"] > 0 and "guide_tokens_computed" not in edited
    assert contrast["edits"][0]["tokens_computed"] > edited["edits"][0]["tokens_computed"]  # + the null erratum

    # compiled behind the deployment's system text, the same splice needs no seam and uses the new artifact
    behind = cli("compile", str(skills_dir / "refund-desk"), "--model", str(tiny_dir), "--system", "Be brief.")
    exact = cli("splice", "--model", str(tiny_dir), "--skill", "refund-desk", "--system", "Be brief.",
                "--user", "Can I get a refund?", "--max-new-tokens", "4")
    assert exact["artifacts"] == [behind["artifacts"][0]["digest"]] != spliced["artifacts"]
    assert exact["seam_tokens"] == 0 and exact["tokens_reused"] > spliced["tokens_reused"]


def test_model_fingerprint_lists_parts(tiny_dir: Path):
    out = cli("model", "fingerprint", str(tiny_dir))
    assert out["fingerprint"].startswith("fp:") and out["parts"]["dtype"] == "float32"
    assert out["parts"]["config"]["num_hidden_layers"] == 3


def test_verify_finds_corruption_and_gc_frees_orphans(tiny_dir: Path, skills_dir: Path, home: Path):
    out = cli("compile", str(skills_dir / "pirate-voice"), "--model", str(tiny_dir))
    digest = out["artifacts"][0]["digest"]
    assert cli("verify")["corrupt"] == []
    blob = home / "blobs" / "sha256" / digest.removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["corrupt"] == [digest]


def test_errors_are_clear_and_mapped_to_exit_codes(home: Path, tmp_path: Path):
    hub = sf("model", "fingerprint", "someorg/some-model", home=home)
    assert hub.returncode == 7 and "ModelUnavailable" in hub.stderr and "someorg/some-model" in hub.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "skill.toml").write_text('name = "bad"\nversion = "1.0"\nprompt = "x"\n')
    res = sf("compile", str(bad), "--model", "smollm2-135m", home=home)
    assert res.returncode == 2 and "skill.toml:2" in res.stderr


def test_two_compiles_at_once_lose_nothing(tiny_dir: Path, skills_dir: Path, home: Path):
    env = {**os.environ, "SKILLFORGE_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-m", "skillforge.cli", "compile", str(skills_dir), "--model", str(tiny_dir), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    rows = cli("ls")
    assert len(rows) == len(list(skills_dir.glob("*/skill.toml")))
    assert cli("verify")["corrupt"] == []
