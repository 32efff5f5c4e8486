"""Exit codes of the installed `skillforge` console script, run as a subprocess the way users run it.

An in-process runner calls the typer app directly and would not see what `main()` does with exit codes
and usage errors (it once dropped `typer.Exit(1)` from `verify`, and printed tracebacks for usage
errors). So: usage errors exit 2 with click's usage line, SkillforgeErrors exit with their class's code
and one `error:` line, and nothing prints a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from skillforge import artifact
from skillforge.cli.common import open_registry, open_store
from skillforge.compile import compile_skill
from skillforge.manifest import load_manifest
from skillforge.model import load_model

from s3server import fake_compile
from tiny_models import build_model

SCRIPT = Path(sys.executable).parent / "skillforge"


def sf(*args: str, home: Path) -> subprocess.CompletedProcess:
    # COLUMNS: typer draws errors in a box as wide as the terminal; wide enough that no message wraps
    env = {**os.environ, "SKILLFORGE_HOME": str(home), "COLUMNS": "250"}
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("args, code, expected", [
    ([], 2, "Usage: skillforge [OPTIONS] COMMAND [ARGS]..."),  # click's rule: a command was required
    (["--help"], 0, "Usage: skillforge [OPTIONS] COMMAND [ARGS]..."),
    (["packs"], 2, "Usage: skillforge packs [OPTIONS] COMMAND [ARGS]..."),
    (["--bogus"], 2, "No such option: --bogus"),
    (["splice"], 2, "Missing option '--user'"),
    (["splice", "--user", "hi", "--max-new-tokens", "many"], 2, "Invalid value for '--max-new-tokens'"),
    (["pull", "s3://bucket/prefix/pack@1.0.0", "--model", "m", "--fingerprint", "fp:0123456789abcdef"], 2,
     "give --model or --fingerprint, not both"),
    (["show", "-refund"], 2, "No such option: -r"),
    (["show", "--", "-refund"], 2, "BadReference: invalid name '-refund': names cannot start with '-'"),
    (["show", "--", "refund-desk@1.0.0\n"], 3, "NotFound"),  # stripped, then looked up: nothing compiled here
    (["show", "refund-desk@1.0"], 2, "BadReference: invalid version '1.0'"),
    (["model", "pull", "one", "two"], 2, "unexpected extra argument"),
    (["serve", "--model", "m", "--learn-after", "-1"], 2, "--learn-after must be 0 or more"),  # before any model loads
])
def test_usage_and_reference_errors(args: list[str], code: int, expected: str, home: Path):
    done = sf(*args, home=home)
    assert done.returncode == code, done.stdout + done.stderr
    assert expected in done.stdout + done.stderr


def test_a_hostile_manifest_exits_2_naming_the_file(home: Path, tmp_path: Path):
    skill = tmp_path / "deep"
    skill.mkdir()
    (skill / "skill.toml").write_text('name = "deep"\nversion = "1.0.0"\nprompt = "x"\nz = ' + "[" * 5000 + "]" * 5000)
    done = sf("compile", str(skill), "--model", str(tmp_path / "no-model"), home=home)
    assert done.returncode == 2
    assert "error: ManifestError: " in done.stderr and "skill.toml:4: invalid TOML: arrays or tables nested" in done.stderr


def test_verify_exits_1_on_corrupt_and_missing_blobs(home: Path):
    registry, store = open_registry(), open_store()
    digests = [fake_compile(registry, store, name) for name in ("greet", "bye")]
    assert sf("verify", home=home).returncode == 0
    blob = home / "blobs" / "sha256" / digests[0].removeprefix("sha256:")
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    done = sf("verify", "--json", home=home)
    assert done.returncode == 1 and digests[0] in done.stdout
    (home / "blobs" / "sha256" / digests[1].removeprefix("sha256:")).unlink()
    done = sf("verify", home=home)
    assert done.returncode == 1 and f"missing: {digests[1]}" in done.stdout


# -- hostile artifacts through `skillforge splice` ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, demo_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    build_model("llama").save_pretrained(path)  # 3 layers, 2 KV heads of 32 dims
    demo_tokenizer.save_pretrained(path)
    return path


def _nan_values(meta, kv):
    k, v = kv[1]
    return meta, [*kv[:1], (k, torch.full_like(v, float("nan"))), *kv[2:]], meta


def _a_layer_missing(meta, kv):
    short = dataclasses.replace(meta, num_layers=len(kv) - 1)
    return short, kv[:-1], short


def _one_kv_head(meta, kv):
    return meta, [(k[:1].clone(), v[:1].clone()) for k, v in kv], meta


def _another_models_blob(meta, kv):  # the index says this model; the blob says another
    return dataclasses.replace(meta, fingerprint="fp:" + "0" * 16), kv, meta


@pytest.mark.parametrize("tamper, code, expected", [
    (_nan_values, 5, "CorruptBlob: .* layer 1 holds NaN or infinite values"),
    (_a_layer_missing, 5, "CorruptBlob: .* has 2 layers; the model has 3"),
    (_one_kv_head, 5, "CorruptBlob: .* layer 0 keys have 1 KV heads of 32 dims; the model has 2 of 32"),
    (_another_models_blob, 4, "ArtifactMismatch: .* was compiled for model fp:0000000000000000"),
], ids=["nan-values", "a-layer-missing", "one-kv-head", "another-models-blob"])
def test_splice_refuses_hostile_artifacts(tamper, code: int, expected: str, tiny_dir: Path, skills_dir: Path,
                                          home: Path, tmp_path: Path):
    """What a pull from a hostile bucket leaves behind: a well-formed blob, indexed, that must not splice."""
    lm = load_model(str(tiny_dir), device="cpu", dtype="float32")
    manifest = load_manifest(skills_dir / "pirate-voice")
    blob_meta, kv, indexed_meta = tamper(*compile_skill(lm, manifest))
    path = tmp_path / "hostile.safetensors"
    artifact.save(path, blob_meta, kv)
    registry, store = open_registry(), open_store()
    digest, size = store.put_bytes(path.read_bytes())
    registry.record_skill_version(manifest.name, manifest.version, indexed_meta.text_digest, manifest.description,
                                  manifest.to_dict())
    registry.record_artifact(indexed_meta, digest, size)
    done = sf("splice", "--model", str(tiny_dir), "--skill", "pirate-voice", "--user", "Hi", "--max-new-tokens", "1",
              home=home)
    assert done.returncode == code, done.stderr[-2000:]
    assert re.search(expected, done.stderr), done.stderr[-2000:]
