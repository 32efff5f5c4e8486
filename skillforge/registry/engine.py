"""Opening the index: the database URL, the engine with SQLite's locking rules, and migrations to head.

Why it is built this way:
- A URL SQLAlchemy cannot read, a backend it does not know, or a driver that is not installed is the
  user's setting, not a crash: BadInput (exit 2) naming SKILLFORGE_DB_URL, with the password hidden.
- Opening brings the database to the Alembic head, so users never run migrations by hand. Two
  processes opening a blank SQLite home at once must not trip over each other: the upgrade runs under
  a file lock next to the database and inside a `BEGIN IMMEDIATE` transaction; other backends rely
  on transactional DDL (plus an advisory lock on PostgreSQL) and retry once.
- SQLite runs in WAL mode with a 30 s busy timeout, and every write transaction starts with
  `BEGIN IMMEDIATE`: a deferred transaction that reads first and writes later can fail at once with
  "database is locked" (SQLITE_BUSY_SNAPSHOT) instead of waiting, which would lose concurrent writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import StaticPool

from skillforge.errors import BadInput, SkillforgeError

_PG_MIGRATION_LOCK = 0x5F6B11F0  # arbitrary constant key for pg_advisory_xact_lock


def migrations_dir() -> Path:
    """The Alembic scripts: shipped as `skillforge._migrations`, or the checkout's `migrations/`."""
    try:
        path = Path(str(resources.files("skillforge._migrations")))
        if (path / "env.py").is_file():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(connection: Any = None) -> Config:
    """An Alembic Config built in code (no alembic.ini); `connection` is handed to env.py."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def masked(url: str) -> str:
    """`url` without its password, for messages (also when it does not parse)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def _checked_url(url: str) -> URL:
    """The parsed URL; BadInput naming SKILLFORGE_DB_URL when SQLAlchemy cannot read it or knows no
    such backend, instead of a traceback from deep inside create_engine."""
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except ArgumentError as exc:
        raise BadInput(f"SKILLFORGE_DB_URL {masked(url)!r} is not a database URL skillforge can open ({exc}); use "
                       "an SQLAlchemy URL such as sqlite:////path/index.sqlite or "
                       "postgresql+psycopg://user@host/db") from None
    return parsed


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL, or None (other backends, in-memory databases)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    db = u.database
    if not db or db == ":memory:" or db.startswith("file:") or u.query.get("mode") == "memory":
        return None
    return Path(db)


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive advisory lock on `path` (POSIX); elsewhere SQLite's own locking has to do."""
    if path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fh = open(path, "a+b")  # noqa: SIM115 - closed below
    except OSError:  # a read-only home: nobody can migrate it anyway, SQLite's locks still apply
        yield
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _install_sqlite_hooks(engine: Engine, in_memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below); pysqlite's implicit BEGIN cannot be made IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 30000")
        if not in_memory:
            cur.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL cannot corrupt the database; a power cut may lose the last commits, which
            # `skillforge reindex` recovers from the blobs. FULL made every record wait for an fsync.
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def _known_revision(scripts: ScriptDirectory, rev: str) -> bool:
    try:
        return scripts.get_revision(rev) is not None
    except CommandError:
        return False


def open_engine(url: str) -> tuple[Engine, Path | None]:
    """An engine for `url` with skillforge's SQLite settings, and the SQLite file (None otherwise)."""
    sqlite = _checked_url(url).get_backend_name() == "sqlite"
    db_file = _sqlite_file(url)
    kwargs: dict[str, Any] = {}
    if sqlite and db_file is None:
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    elif db_file is not None:
        try:
            db_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SkillforgeError(f"cannot create the folder for the index {masked(url)}: {exc}") from exc
        kwargs = {"connect_args": {"timeout": 30}}
    try:
        engine = create_engine(url, **kwargs)
    except ImportError as exc:
        raise BadInput(f"SKILLFORGE_DB_URL {masked(url)!r} needs the database driver {exc.name!r}, which is not "
                       "installed: install it (PostgreSQL: pip install 'skillforge[postgres]' and a "
                       "postgresql+psycopg:// URL), or point SKILLFORGE_DB_URL at sqlite:////path/index.sqlite") from exc
    except ArgumentError as exc:
        raise BadInput(f"SKILLFORGE_DB_URL {masked(url)!r} cannot be used: {exc}; use an SQLAlchemy URL such as "
                       "sqlite:////path/index.sqlite or postgresql+psycopg://user@host/db") from exc
    if sqlite:
        _install_sqlite_hooks(engine, in_memory=db_file is None)
    return engine, db_file


def writer(engine: Engine) -> Engine:
    """The engine for write transactions (`BEGIN IMMEDIATE` on SQLite; see the module docstring)."""
    return engine.execution_options(sqlite_begin="IMMEDIATE")


def upgrade_to_head(engine: Engine, url: str, db_file: Path | None) -> None:
    """Migrate the database to the Alembic head (a no-op when it is there); refuse a newer one."""
    scripts = ScriptDirectory.from_config(alembic_config())
    heads = set(scripts.get_heads())
    lock = Path(f"{db_file}.lock") if db_file is not None else None
    with _file_lock(lock):
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
            conn.rollback()
        if current == heads:
            return
        unknown = sorted(rev for rev in current if not _known_revision(scripts, rev))
        if unknown:
            raise SkillforgeError(
                f"the index {masked(url)} was migrated by a newer skillforge (revision {', '.join(unknown)}); "
                "upgrade skillforge, or point SKILLFORGE_DB_URL at another database"
            )
        try:
            _upgrade_once(engine)
        except DBAPIError:
            if engine.dialect.name == "sqlite":
                raise
            _upgrade_once(engine)  # another process migrated concurrently; now it is a no-op


def _upgrade_once(engine: Engine) -> None:
    dialect = engine.dialect.name
    with writer(engine).connect() as conn:
        raw = conn.connection.driver_connection if dialect == "sqlite" else None
        if raw is not None:
            # Batch migrations recreate tables; with foreign keys on, dropping the old table would
            # cascade-delete child rows. PRAGMA foreign_keys only works outside a transaction.
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                if dialect == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
                command.upgrade(alembic_config(conn), "head")
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys = ON")
