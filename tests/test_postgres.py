"""The index on PostgreSQL (SKILLFORGE_DB_URL=postgresql+psycopg://...): the same migrations and
registry behaviour as on SQLite, and concurrent compilers and publishers sharing one index losing
nothing. Needs SKILLFORGE_TEST_PG_URL (scripts/postgres.sh starts a server and exports it); without it
these tests fail under CI=true and skip elsewhere.

Every test gets a fresh schema in a database created for this module (dropped afterwards). The
registry tests of tests/test_registry.py that only need a `reg`/`store`/`data_home` are collected here
again with `reg` on PostgreSQL (suffix `_on_postgres`); the pack tests parametrize over both backends
in tests/test_packs.py.
"""

from __future__ import annotations

import inspect
import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_registry as _registry_tests
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from s3server import (aws_env, new_bucket, pg_base_url, pg_database, pg_schema, publishing_machine,
                      s3_endpoint)

from skillforge.registry import Registry
from skillforge.registry.models import Base
from skillforge.registry.engine import alembic_config
from skillforge.store import LocalStore
from skillforge.store import local as local_store


@pytest.fixture(scope="module")
def pg_db() -> Iterator[str]:
    with pg_database(pg_base_url()) as url:
        yield url


@pytest.fixture
def pg_url(pg_db: str) -> str:
    return pg_schema(pg_db)


# -- the registry tests, again on PostgreSQL -----------------------------------------------------

@pytest.fixture
def data_home(tmp_path: Path) -> Path:
    local_store.clear_verified_cache()
    return tmp_path / "data"


@pytest.fixture
def reg(pg_url: str) -> Iterator[Registry]:
    registry = Registry(pg_url)
    yield registry
    registry.close()


@pytest.fixture
def store(data_home: Path) -> LocalStore:
    return LocalStore(data_home)


def _reusable(name: str, fn: object) -> bool:
    if not name.startswith("test_") or not inspect.isfunction(fn) or getattr(fn, "pytestmark", None):
        return False
    params = set(inspect.signature(fn).parameters)
    if "reg" not in params or not params <= {"reg", "store", "data_home"}:
        return False
    source = inspect.getsource(fn)
    return "PRAGMA" not in source and "sqlite" not in source.lower()  # SQLite specifics stay there


for _name, _fn in list(vars(_registry_tests).items()):
    if _reusable(_name, _fn):
        globals()[f"{_name}_on_postgres"] = _fn
del _name, _fn


def test_registry_tests_were_collected() -> None:
    reused = [n for n in globals() if n.endswith("_on_postgres")]
    assert len(reused) >= 5, reused


def test_migrations_reach_head_and_match_models(reg: Registry) -> None:
    assert reg.engine.dialect.name == "postgresql"
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    with reg.engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert set(ctx.get_current_heads()) == heads
        assert compare_metadata(ctx, Base.metadata) == []
    Registry(reg.url).close()  # reopening is a no-op


# -- concurrency ---------------------------------------------------------------------------------

def test_concurrent_compilers_and_publishers_lose_nothing(pg_db: str, pg_url: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Three machines (processes) migrate a blank index at once, compile into it, publish their own
    packs and race to publish one shared pack with identical content: every row and pack is there."""
    from skillforge.packs import list_packs, pull
    from skillforge.registry.packs import list_recorded_packs

    aws_env(monkeypatch, s3_endpoint())
    root = f"s3://{new_bucket()}/shared"
    ctx = multiprocessing.get_context("spawn")
    workers, count = 3, 4
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=publishing_machine, args=(pg_url, root, w, count, str(tmp_path / f"m{w}"), barrier))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers

    with Registry(pg_url) as reg:
        rows = reg.list_artifacts()
        assert len(rows) == workers * count + 1
        assert {(r.name, r.version) for r in rows} == \
            {(f"skill-{w}-{i % 2}", f"1.{i}.0") for w in range(workers) for i in range(count)} | {("common", "1.0.0")}
        packs = list_recorded_packs(reg)
        assert sorted((p.name, p.version) for p in packs) == \
            sorted([(f"pack-{w}", "1.0.0") for w in range(workers)] + [("common", "1.0.0")])
        assert all(p.source == root for p in packs)
        assert {a.digest for p in packs for a in p.artifacts} <= reg.referenced_digests()
    listed = list_packs(root)
    assert sorted(i.name for i in listed) == sorted([f"pack-{w}" for w in range(workers)] + ["common"])
    assert all(i.error is None for i in listed)

    # a fresh machine on its own PostgreSQL schema pulls everything back, verified
    with Registry(pg_schema(pg_db)) as fresh:
        store = LocalStore(tmp_path / "fresh")
        for info in listed:
            pull(info.ref, registry=fresh, store=store)
        assert {r.digest for r in fresh.list_artifacts()} == {r.digest for r in rows}
