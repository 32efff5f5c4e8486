"""Registry: migrations on open, lookups with semver and fingerprints, reindex, gc, concurrency.

Real SQLite files in tmp_path; artifacts are fake but well-formed safetensors files written with
safetensors.numpy, so nothing here needs torch.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from safetensors.numpy import save
from sqlalchemy import create_engine, func, select, text

from skillforge.artifact import ArtifactMeta, FieldSpan, anchor_digest
from skillforge.errors import ArtifactMismatch, ManifestError, NotFound
from skillforge.registry import ArtifactRow, Registry, gc, reindex, verify_all
from skillforge.registry.models import Base, Field
from skillforge.registry.engine import alembic_config
from skillforge.store import LocalStore
from skillforge.store import local as local_store

FP_A = "fp:" + "a" * 64
FP_B = "fp:" + "b" * 64


def make_meta(name: str = "greet", version: str = "1.0.0", fingerprint: str = FP_A, text_: str = "Hello {who}.",
              anchor_ids: tuple[int, ...] = (), created: str = "2025-01-01T00:00:00+00:00") -> ArtifactMeta:
    return ArtifactMeta(
        skill=name, version=version, text=text_, text_digest="sha256:" + hashlib.sha256(text_.encode()).hexdigest(),
        template=text_, field_values={"who": "world"}, token_ids=[1, 2, 3, 4, 5], anchor_ids=list(anchor_ids),
        offset=len(anchor_ids), fields=[FieldSpan("who", "world", 1, 3)], fingerprint=fingerprint,
        fingerprint_parts={"weights": "x"}, dtype="float32", rope={"type": "default"}, num_layers=2,
        created=created,
    )


def artifact_bytes(meta: ArtifactMeta) -> bytes:
    tensors = {f"{kv}.{i}": np.full((1, meta.tokens, 4), i, dtype=np.float32)
               for i in range(meta.num_layers) for kv in "kv"}
    return save(tensors, metadata={"skillforge": meta.to_json()})


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def record(reg: Registry, meta: ArtifactMeta, store: LocalStore | None = None) -> str:
    data = artifact_bytes(meta)
    digest, size = store.put_bytes(data) if store else (digest_of(data), len(data))
    assert reg.record_artifact(meta, digest, size)
    return digest


@pytest.fixture
def data_home(tmp_path: Path) -> Path:
    local_store.clear_verified_cache()
    return tmp_path / "data"


@pytest.fixture
def reg(data_home: Path) -> Iterator[Registry]:
    registry = Registry(f"sqlite:///{data_home / 'index.sqlite'}")
    yield registry
    registry.close()


@pytest.fixture
def store(data_home: Path) -> LocalStore:
    return LocalStore(data_home)


# -- migrations ----------------------------------------------------------------------------------

def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def test_single_head() -> None:
    assert len(script().get_heads()) == 1


def test_blank_database_reaches_head_and_matches_models(reg: Registry) -> None:
    with reg.engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert set(ctx.get_current_heads()) == set(script().get_heads())
        assert compare_metadata(ctx, Base.metadata) == []
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_old_database_is_upgraded_keeping_rows(data_home: Path) -> None:
    data_home.mkdir(parents=True)
    url = f"sqlite:///{data_home / 'index.sqlite'}"
    first = script().get_base()
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), first)
    meta = make_meta()
    digest = digest_of(artifact_bytes(meta))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO skills (name, created) VALUES ('greet', 'then')"))
        conn.execute(
            text("INSERT INTO artifacts (digest, name, version, fingerprint, anchor_digest, tokens, bytes, meta,"
                 " created) VALUES (:d, 'greet', '1.0.0', :fp, 'none', 5, 10, :meta, 'then')"),
            {"d": digest, "fp": FP_A, "meta": meta.to_json()},
        )
    engine.dispose()
    with Registry(url) as reg:
        row = reg.get_artifact(digest)
        assert row.dtype == "" and row.meta == meta
        with reg.engine.connect() as conn:
            assert set(MigrationContext.configure(conn).get_current_heads()) == set(script().get_heads())
        assert reg.find_artifact("greet", FP_A).digest == digest


def test_reopening_is_cheap_and_idempotent(data_home: Path) -> None:
    url = f"sqlite:///{data_home / 'index.sqlite'}"
    with Registry(url) as a:
        record(a, make_meta())
    with Registry(url) as b:
        assert len(b.list_artifacts()) == 1


# -- recording and lookups -----------------------------------------------------------------------

def test_record_find_list(reg: Registry) -> None:
    meta = make_meta()
    digest = record(reg, meta)
    row = reg.find_artifact("greet", FP_A)
    assert isinstance(row, ArtifactRow)
    assert (row.digest, row.version, row.tokens, row.dtype) == (digest, "1.0.0", 5, "float32")
    assert row.anchor_digest == "none"
    assert row.meta == meta and row.created == meta.created
    assert "meta_json" not in row.to_dict() and row.to_dict()["digest"] == digest
    assert reg.get_artifact(digest) == row
    assert reg.list_artifacts(fingerprint=FP_A) == [row]
    assert reg.list_artifacts(fingerprint=FP_B) == []
    assert reg.list_artifacts(name="other") == []
    assert reg.referenced_digests() == {digest}
    # duplicates are not errors
    assert reg.record_artifact(meta, digest, 1) is False
    other_bytes = digest_of(b"different bytes, same identity")
    assert reg.record_artifact(meta, other_bytes, 1) is False
    with reg.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Field)).scalar() == 1


def test_highest_semver_wins(reg: Registry) -> None:
    for version in ("1.9.0", "1.10.0", "1.2.0", "1.10.0-rc.1"):
        record(reg, make_meta(version=version, text_=f"v{version}"))
    record(reg, make_meta(version="3.0.0", fingerprint=FP_B, text_="v3"))  # another model's versions don't count
    assert reg.find_artifact("greet", FP_A).version == "1.10.0"
    assert reg.find_artifact("greet", FP_A, version="1.9.0").version == "1.9.0"
    assert [r.version for r in reg.list_artifacts(fingerprint=FP_A)] == ["1.2.0", "1.9.0", "1.10.0-rc.1", "1.10.0"]


def test_anchor_and_digest_lookup(reg: Registry) -> None:
    plain = record(reg, make_meta())
    anchored_meta = make_meta(anchor_ids=(7, 8))
    anchored = record(reg, anchored_meta)
    assert reg.find_artifact("greet", FP_A, anchor_digest="none").digest == plain
    assert reg.find_artifact("greet", FP_A, anchor_digest=anchor_digest([7, 8])).digest == anchored
    assert reg.find_artifact("greet", FP_A, digest=anchored).digest == anchored
    with pytest.raises(ArtifactMismatch, match="this model is fp"):
        reg.find_artifact("greet", FP_B, digest=anchored)
    with pytest.raises(NotFound, match="anchors"):
        reg.find_artifact("greet", FP_A, anchor_digest="0123456789abcdef")
    # the splice's per-request check: the exact variant or None, never an error
    version = reg.get_artifact(anchored).version
    assert reg.variant("greet", FP_A, version, anchor_digest([7, 8])).digest == anchored
    assert reg.variant("greet", FP_A, version, anchor_digest([7, 9])) is None
    assert reg.variant("greet", FP_B, version, anchor_digest([7, 8])) is None


def test_not_found_names_other_fingerprints(reg: Registry) -> None:
    record(reg, make_meta(fingerprint=FP_B))
    with pytest.raises(NotFound) as err:
        reg.find_artifact("greet", FP_A)
    message = str(err.value)
    assert "compiled only for fp fp:bbbb" in message
    assert "this model is fp fp:aaaa" in message
    assert "skillforge compile" in message
    with pytest.raises(NotFound, match="compiled only for other models: 1.0.0"):
        reg.find_artifact("greet", FP_A, version="2.0.0")
    with pytest.raises(NotFound, match="skillforge compile"):
        reg.find_artifact("missing", FP_A)
    reg.record_skill_version("solo", "0.1.0", "sha256:" + "0" * 64, "", {})
    with pytest.raises(NotFound, match=r"registered versions: 0\.1\.0"):
        reg.find_artifact("solo", FP_A)
    with pytest.raises(NotFound):
        reg.get_artifact("sha256:" + "f" * 64)


def test_skill_version_text_is_immutable(reg: Registry) -> None:
    reg.record_skill_version("greet", "1.0.0", "sha256:" + "1" * 64, "says hi", {"fields": ["who"]})
    reg.record_skill_version("greet", "1.0.0", "sha256:" + "1" * 64, "says hi", {"fields": ["who"]})
    with pytest.raises(ManifestError, match="greet@1.0.0 is already registered with different text.*bump the version"):
        reg.record_skill_version("greet", "1.0.0", "sha256:" + "2" * 64, "says hi", {})
    with pytest.raises(ManifestError, match="bump the version"):
        record(reg, make_meta())  # the artifact's text digest differs from the registered one


def test_remove_artifact_drops_fields(reg: Registry) -> None:
    digest = record(reg, make_meta())
    reg.remove_artifact(digest)
    assert reg.list_artifacts() == [] and reg.referenced_digests() == set()
    with reg.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Field)).scalar() == 0
    with pytest.raises(NotFound):
        reg.remove_artifact(digest)


# -- blobs: reindex, gc, verify ------------------------------------------------------------------

def test_reindex_rebuilds_from_blobs(data_home: Path, store: LocalStore) -> None:
    url = f"sqlite:///{data_home / 'index.sqlite'}"
    metas = [make_meta(version=v, text_=v) for v in ("1.0.0", "1.1.0")] + [make_meta(name="bye", fingerprint=FP_B)]
    with Registry(url) as reg:
        digests = [record(reg, m, store) for m in metas]
        broken = record(reg, make_meta(name="broken"), store)
        before = reg.list_artifacts()
    junk, _ = store.put_bytes(b"not an artifact")
    blob = data_home / "blobs" / "sha256" / broken.removeprefix("sha256:")
    blob.write_bytes(blob.read_bytes()[:-1] + b"\xff")
    for suffix in ("", "-wal", "-shm"):
        (data_home / f"index.sqlite{suffix}").unlink(missing_ok=True)

    with Registry(url) as reg:
        assert reg.list_artifacts() == []
        report = reindex(reg, store)
        assert {k: report[k] for k in ("indexed", "skipped", "invalid", "removed")} == \
            {"indexed": 3, "skipped": 0, "invalid": 2, "removed": 0}
        assert sorted(p["digest"] for p in report["problems"]) == sorted([junk, broken])
        assert all(p["error"].startswith("CorruptBlob: ") for p in report["problems"])
        assert reg.list_artifacts() == [r for r in before if r.digest != broken]
        assert reg.find_artifact("greet", FP_A).digest == digests[1]
        assert reg.get_artifact(digests[2]).meta.fields == [FieldSpan("who", "world", 1, 3)]
        with reg.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Field)).scalar() == 3
        store.delete(digests[0])
        assert {k: v for k, v in reindex(reg, store).items() if k != "problems"} == \
            {"indexed": 2, "skipped": 0, "invalid": 2, "removed": 1}
        assert junk not in reg.referenced_digests()


def test_gc_frees_only_unreferenced_blobs(reg: Registry, store: LocalStore) -> None:
    kept = record(reg, make_meta(), store)
    dropped = record(reg, make_meta(version="2.0.0", text_="two"), store)
    stray, stray_size = store.put_bytes(b"stray")
    reg.remove_artifact(dropped)
    dropped_size = store.size(dropped)
    assert gc(reg, store) == {"removed": 0, "freed_bytes": 0, "kept_recent": 2,  # young blobs are spared
                              "staging_removed": 0, "staging_freed_bytes": 0}
    assert gc(reg, store, grace_s=0) == {"removed": 2, "freed_bytes": stray_size + dropped_size, "kept_recent": 0,
                                         "staging_removed": 0, "staging_freed_bytes": 0}
    assert list(store.digests()) == [kept]
    assert store.verify(kept) and not store.has(stray)


def test_verify_all_reports_corrupt_and_missing(reg: Registry, store: LocalStore, data_home: Path) -> None:
    good = record(reg, make_meta(), store)
    bad = record(reg, make_meta(version="1.1.0", text_="b"), store)
    gone = record(reg, make_meta(version="1.2.0", text_="c"), store)
    path = data_home / "blobs" / "sha256" / bad.removeprefix("sha256:")
    path.write_bytes(b"\x00" + path.read_bytes()[1:])
    store.delete(gone)
    assert verify_all(reg, store) == {"checked": 2, "corrupt": [bad], "missing": [gone]}
    assert good in reg.referenced_digests()


# -- concurrency ---------------------------------------------------------------------------------

def _worker(url: str, worker: int, count: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()  # everyone opens (and migrates) the blank database at the same moment
    reg = Registry(url)
    for i in range(count):
        meta = make_meta(name=f"skill-{i % 3}", version=f"{worker}.{i}.0", text_=f"{worker}/{i}")
        data = artifact_bytes(meta)
        if not reg.record_artifact(meta, digest_of(data), len(data)):
            sys.exit(1)
        reg.record_skill_version(meta.skill, meta.version, meta.text_digest, "", {})
    reg.close()


def test_concurrent_processes_lose_nothing(data_home: Path) -> None:
    data_home.mkdir(parents=True)
    url = f"sqlite:///{data_home / 'index.sqlite'}"
    ctx = multiprocessing.get_context("spawn")
    workers, count = 3, 15
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_worker, args=(url, w, count, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers
    with Registry(url) as reg:
        rows = reg.list_artifacts()
        assert len(rows) == workers * count
        assert {r.version for r in rows} == {f"{w}.{i}.0" for w in range(workers) for i in range(count)}


def _adder(url: str, home: str, worker: int, barrier: multiprocessing.synchronize.Barrier,
           results: multiprocessing.Queue) -> None:
    """One compile of greet@1.0.0 for FP_A: its own bytes (its own compile time), put, then add."""
    meta = make_meta(created=f"2025-01-01T00:00:{worker:02d}+00:00")
    reg, store = Registry(url), LocalStore(home)
    digest, size = store.put_bytes(artifact_bytes(meta))
    barrier.wait()
    row, added = reg.add_artifact(meta, digest, size)
    if row.digest != digest:
        reg.release(store, digest)  # lost the race: report the winner, leave no blob behind
    results.put((digest, row.digest, added))
    reg.close()


def test_concurrent_adds_of_one_artifact_have_one_winner(data_home: Path) -> None:
    data_home.mkdir(parents=True)
    url = f"sqlite:///{data_home / 'index.sqlite'}"
    Registry(url).close()
    ctx = multiprocessing.get_context("spawn")
    workers = 4
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_adder, args=(url, str(data_home), w, barrier, results)) for w in range(workers)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers
    assert len({own for own, _, _ in outcomes}) == workers  # four different blobs were compiled
    winners = {winner for _, winner, _ in outcomes}
    assert len(winners) == 1 and sum(added for _, _, added in outcomes) == 1
    [winner] = winners
    with Registry(url) as reg:
        assert [r.digest for r in reg.list_artifacts()] == [winner]
    assert list(LocalStore(data_home).digests()) == [winner]


def test_add_returns_the_row_in_the_index_and_release_keeps_referenced_blobs(reg: Registry, store: LocalStore) -> None:
    first = make_meta()
    data = artifact_bytes(first)
    digest, size = store.put_bytes(data)
    row, added = reg.add_artifact(first, digest, size)
    assert added and row == reg.get_artifact(digest)
    assert reg.add_artifact(first, digest, size) == (row, False)  # the same blob again
    later = make_meta(created="2025-02-02T00:00:00+00:00")
    other, other_size = store.put_bytes(artifact_bytes(later))
    assert reg.add_artifact(later, other, other_size) == (row, False)  # same identity, other bytes: the winner
    assert reg.release(store, digest) == 0 and store.has(digest)  # indexed: kept
    assert reg.release(store, other) == other_size and not store.has(other)


def test_gc_removes_stale_staging_files_and_keeps_fresh_ones(reg: Registry, store: LocalStore) -> None:
    with store.staging(".part") as fresh:
        fresh.write_bytes(b"a download in progress")
        stale = store.root / "blobs" / "tmp" / "killed.part"
        stale.write_bytes(b"x" * 1000)
        old = time.time() - 7200
        os.utime(stale, (old, old))
        report = gc(reg, store)
        assert (report["staging_removed"], report["staging_freed_bytes"]) == (1, 1000)
        assert fresh.exists() and not stale.exists()
        assert gc(reg, store, staging_grace_s=0)["staging_removed"] == 1 and not fresh.exists()
    assert list((store.root / "blobs" / "tmp").iterdir()) == []


def test_reindex_skips_malformed_and_hostile_blobs(reg: Registry, store: LocalStore) -> None:
    """Each blob on its own: whatever one holds, the others are indexed and it is reported."""
    import json
    import struct

    good = [store.put_bytes(artifact_bytes(make_meta(version=v, text_=v)))[0] for v in ("1.0.0", "2.0.0")]

    def safetensors(header: object, body: bytes = b"") -> bytes:
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + body

    meta = json.loads(make_meta(name="hostile").to_json())
    hostile = {"num_layers": 10**9, "offset": -1, "token_ids": "many"}
    bad = [
        safetensors([]),  # a header that is a list
        safetensors({"__metadata__": {"skillforge": "{not json"}}),
        safetensors({"__metadata__": {"skillforge": json.dumps({**meta, "num_layers": 10**9})}}, bytes(64)),
        safetensors({"__metadata__": {"skillforge": json.dumps({**meta, "num_layers": 1e9})}}),
        safetensors({"__metadata__": {"skillforge": json.dumps({**meta, **hostile})}}),
        struct.pack("<Q", 10**12) + b"{}",  # a header longer than the file
        b"",
    ]
    bad_digests = {store.put_bytes(data)[0] for data in bad}
    report = reindex(reg, store)
    assert (report["indexed"], report["invalid"], report["removed"]) == (2, len(bad_digests), 0)
    assert {p["digest"] for p in report["problems"]} == bad_digests
    assert all(p["error"].startswith("CorruptBlob") for p in report["problems"]), report["problems"]
    assert reg.artifact_digests() == set(good)


def test_bad_database_url_is_bad_input_naming_the_variable(tmp_path: Path) -> None:
    """Through the installed console script, as users meet it: exit 2, no traceback."""
    import subprocess

    exe = Path(sys.executable).parent / "skillforge"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLFORGE_")}
    env["SKILLFORGE_HOME"] = str(tmp_path / "h")
    for url in ("notaurl", "nosuchdb://x/y", "mssql+pymssql://user:hunter2@localhost/db"):
        res = subprocess.run([str(exe), "ls"], env={**env, "SKILLFORGE_DB_URL": url}, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        assert "SKILLFORGE_DB_URL" in res.stderr and "Traceback" not in res.stderr and "hunter2" not in res.stderr
    res = subprocess.run([str(exe), "gc"], env={**env, "SKILLFORGE_STORE": "ftp://host/x"}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "SKILLFORGE_STORE" in res.stderr and "Traceback" not in res.stderr


def test_no_torch_needed() -> None:
    import subprocess

    code = ("import sys, skillforge.registry, skillforge.store; "
            "sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_default_url_and_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKILLFORGE_HOME", str(tmp_path / "sfhome"))
    monkeypatch.delenv("SKILLFORGE_DB_URL", raising=False)
    with Registry() as reg:
        assert reg.url == f"sqlite:///{tmp_path / 'sfhome' / 'index.sqlite'}"
        record(reg, make_meta())
    assert (tmp_path / "sfhome" / "index.sqlite").is_file()
    with Registry("sqlite://") as mem:
        record(mem, make_meta())
        assert len(mem.list_artifacts()) == 1


@pytest.mark.postgres
def test_postgres_concurrent_open_and_record() -> None:
    """Same guarantees on PostgreSQL; needs SKILLFORGE_TEST_POSTGRES_URL (a database we may create in)."""
    import os
    import uuid

    base = os.environ.get("SKILLFORGE_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("set SKILLFORGE_TEST_POSTGRES_URL to run the PostgreSQL registry test")
    from sqlalchemy.engine import make_url

    name = f"sf_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        ctx = multiprocessing.get_context("spawn")
        workers, count = 3, 10
        barrier = ctx.Barrier(workers)
        procs = [ctx.Process(target=_worker, args=(url, w, count, barrier)) for w in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0] * workers
        with Registry(url) as reg:
            assert len(reg.list_artifacts()) == workers * count
            with reg.engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_newer_or_unreadable_database_is_refused_clearly(data_home: Path) -> None:
    from skillforge.errors import SkillforgeError

    url = f"sqlite:///{data_home / 'index.sqlite'}"
    Registry(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SkillforgeError, match="newer skillforge"):
        Registry(url)
    junk = data_home / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SkillforgeError, match="cannot open the index"):
        Registry(f"sqlite:///{junk}")
