"""Compile under crashes and races, through the installed console script as users run it.

A kill -9 at a named step (SKILLFORGE_CRASH_AT, skillforge/store/crashpoint.py; no sleeps) must leave the
home consistent: nothing indexed without its blob, staging files only inside the data home, the rerun
completes, and `gc --grace 0` leaves no staging bytes. Four compiles of the same skill into one home at
once must leave one index row and one blob, and every process must report the digest that is indexed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skillforge.registry import Registry
from skillforge.store import LocalStore

pytestmark = pytest.mark.demo

SCRIPT = Path(sys.executable).parent / "skillforge"


def sf(home: Path, *args: str, crash_at: str | None = None, tmpdir: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "SKILLFORGE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("SKILLFORGE_CRASH_AT", None)
    if crash_at:
        env["SKILLFORGE_CRASH_AT"] = crash_at
    if tmpdir:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def blob_names(home: Path) -> list[str]:
    """Blob files of the home's store, staging files excluded."""
    blobs = home / "blobs"
    return [p.name for p in files_under(blobs) if p.relative_to(blobs).parts[0] != "tmp"]


@pytest.mark.parametrize("step", ["compile:saved", "compile:stored"])
def test_a_compile_killed_at_a_step_leaves_the_home_consistent(home: Path, skills_dir: Path, tmp_path: Path, step: str):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    proc = sf(home, "compile", str(skills_dir / "pirate-voice"), crash_at=step, tmpdir=tmpdir)
    proc.communicate(timeout=600)
    assert proc.returncode == -9  # killed at the step, no cleanup ran
    assert files_under(tmpdir) == []  # nothing staged outside the data home
    with Registry() as registry:
        assert registry.list_artifacts() == []  # nothing indexed yet
    staged = files_under(home / "blobs" / "tmp")
    assert (len(staged) == 1) == (step == "compile:saved")

    rerun = sf(home, "compile", str(skills_dir / "pirate-voice"), "--json")
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    digest = json.loads(out)["artifacts"][0]["digest"]
    with Registry() as registry:
        assert [r.digest for r in registry.list_artifacts()] == [digest]
    assert LocalStore(home).local_path(digest).is_file()  # verifies the digest too

    gc = sf(home, "gc", "--grace", "0", "--json")
    out, err = gc.communicate(timeout=600)
    assert gc.returncode == 0, err
    assert files_under(home / "blobs" / "tmp") == []
    assert blob_names(home) == [digest.split(":")[1]]  # the killed run's unindexed blob is gone too


def test_four_concurrent_compiles_of_one_skill_leave_one_artifact_and_agree_on_it(home: Path, skills_dir: Path):
    procs = [sf(home, "compile", str(skills_dir / "pirate-voice"), "--json") for _ in range(4)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in results]
    reported = {json.loads(out)["artifacts"][0]["digest"] for out, _ in results}
    with Registry() as registry:
        rows = registry.list_artifacts()
    assert len(rows) == 1 and reported == {rows[0].digest}
    assert sum(json.loads(out)["artifacts"][0]["created"] for out, _ in results) == 1
    assert blob_names(home) == [rows[0].digest.split(":")[1]]
    assert files_under(home / "blobs" / "tmp") == []
