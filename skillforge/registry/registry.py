"""The SQL index over the blob store: which artifact serves `name@version` for a model fingerprint.

Why it is built this way:
- Opening a Registry brings the database to the Alembic head, so users never run migrations by hand.
  Two processes opening a blank SQLite home at once must not trip over each other: the upgrade runs
  under a file lock next to the database and inside a `BEGIN IMMEDIATE` transaction; other backends
  rely on transactional DDL (plus an advisory lock on PostgreSQL) and retry once.
- SQLite runs in WAL mode with a 30 s busy timeout, and every write transaction starts with
  `BEGIN IMMEDIATE`: a deferred transaction that reads first and writes later can fail at once with
  "database is locked" (SQLITE_BUSY_SNAPSHOT) instead of waiting, which would lose concurrent writes.
- The index is derived data: `reindex` rebuilds it from blobs, `gc` deletes blobs it does not reference.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, delete, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from skillforge import config as sf_config
from skillforge.artifact import ArtifactMeta, read_header
from skillforge.errors import ArtifactMismatch, ManifestError, NotFound, SkillforgeError
from skillforge.refs import check_name, check_version, digest_hex, version_key
from skillforge.registry.models import Artifact, Field, PackArtifact, Skill, SkillVersion

if TYPE_CHECKING:
    from skillforge.store import BlobStore

_PG_MIGRATION_LOCK = 0x5F6B11F0  # arbitrary constant key for pg_advisory_xact_lock


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _short(fingerprint: str) -> str:
    return fingerprint if len(fingerprint) <= 20 else fingerprint[:20] + "..."


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


@dataclass(frozen=True)
class ArtifactRow:
    """One indexed artifact, detached from the session (safe to keep and pass around)."""

    digest: str
    name: str
    version: str
    fingerprint: str
    anchor_digest: str
    tokens: int
    bytes: int
    dtype: str
    created: str
    meta_json: str

    @property
    def meta(self) -> ArtifactMeta:
        return ArtifactMeta.from_json(self.meta_json, source=self.digest)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the metadata JSON, for `--json` output."""
        data = asdict(self)
        del data["meta_json"]
        return data

    @classmethod
    def from_model(cls, a: Artifact) -> ArtifactRow:
        return cls(a.digest, a.name, a.version, a.fingerprint, a.anchor_digest, a.tokens, a.bytes, a.dtype,
                   a.created, a.meta)


def _sort_key(row: ArtifactRow) -> tuple:
    return (row.name, version_key(row.version), row.created)


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


class Registry:
    """The index. Opening it migrates the database to head; see the module docstring for concurrency."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or sf_config.db_url()
        self._db_file = _sqlite_file(self.url)
        sqlite = make_url(self.url).get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if sqlite and self._db_file is None:
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        elif self._db_file is not None:
            try:
                self._db_file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SkillforgeError(f"cannot create the folder for the index {self.url}: {exc}") from exc
            kwargs = {"connect_args": {"timeout": 30}}
        self.engine: Engine = create_engine(self.url, **kwargs)
        if sqlite:
            _install_sqlite_hooks(self.engine, in_memory=self._db_file is None)
        self._writer = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        try:
            self._upgrade()
        except DBAPIError as exc:
            self.engine.dispose()
            raise SkillforgeError(
                f"cannot open the index {self.url}: {exc.orig}; check the path, permissions and that no other "
                "program holds it locked, or point SKILLFORGE_DB_URL elsewhere"
            ) from exc

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- migrations ----------------------------------------------------------------------------
    def _upgrade(self) -> None:
        scripts = ScriptDirectory.from_config(alembic_config())
        heads = set(scripts.get_heads())
        lock = Path(f"{self._db_file}.lock") if self._db_file is not None else None
        with _file_lock(lock):
            with self.engine.connect() as conn:
                current = set(MigrationContext.configure(conn).get_current_heads())
                conn.rollback()
            if current == heads:
                return
            unknown = sorted(rev for rev in current if not _known_revision(scripts, rev))
            if unknown:
                raise SkillforgeError(
                    f"the index {self.url} was migrated by a newer skillforge (revision {', '.join(unknown)}); "
                    "upgrade skillforge, or point SKILLFORGE_DB_URL at another database"
                )
            try:
                self._upgrade_once()
            except DBAPIError:
                if self.engine.dialect.name == "sqlite":
                    raise
                self._upgrade_once()  # another process migrated concurrently; now it is a no-op

    def _upgrade_once(self) -> None:
        dialect = self.engine.dialect.name
        with self._writer.connect() as conn:
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

    # -- sessions ------------------------------------------------------------------------------
    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        with Session(self._writer if write else self.engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    @staticmethod
    def _ensure_skill(session: Session, name: str) -> None:
        if session.get(Skill, name) is None:
            session.add(Skill(name=name, created=_now()))
            session.flush()

    # -- skills --------------------------------------------------------------------------------
    def record_skill_version(self, name: str, version: str, text_digest: str, description: str,
                             manifest: dict) -> None:
        """Register name@version's text. Idempotent for the same text; different text is refused,
        because artifacts compiled from the old text would silently stop matching their version."""
        check_name(name)
        check_version(version)
        manifest_json = json.dumps(manifest, sort_keys=True, default=str)
        for attempt in range(2):
            try:
                with self._session(write=True) as s:
                    row = s.scalars(
                        select(SkillVersion).where(SkillVersion.name == name, SkillVersion.version == version)
                    ).first()
                    if row is not None:
                        self._check_same_text(name, version, row.text_digest, text_digest)
                        return
                    self._ensure_skill(s, name)
                    s.add(SkillVersion(name=name, version=version, text_digest=text_digest,
                                       description=description, manifest=manifest_json, created=_now()))
                return
            except IntegrityError:
                if attempt:
                    raise

    @staticmethod
    def _check_same_text(name: str, version: str, registered: str, new: str) -> None:
        if registered != new:
            raise ManifestError(
                f"{name}@{version} is already registered with different text (digest {registered[:19]}.. vs "
                f"{new[:19]}..); bump the version"
            )

    # -- artifacts -----------------------------------------------------------------------------
    def record_artifact(self, meta: ArtifactMeta, digest: str, size: int) -> bool:
        """Index an artifact and its fields (adding the skill and skill version if missing).

        Returns False, without error, if the digest or an artifact with the same (name, version,
        fingerprint, anchor) is already indexed, including when a concurrent writer won the race.
        Raises ManifestError if the skill version is registered with a different text.
        """
        digest_hex(digest)
        check_name(meta.skill)
        check_version(meta.version)
        for attempt in range(2):
            try:
                with self._session(write=True) as s:
                    if s.get(Artifact, digest) is not None:
                        return False
                    clash = s.scalars(select(Artifact.digest).where(
                        Artifact.name == meta.skill, Artifact.version == meta.version,
                        Artifact.fingerprint == meta.fingerprint, Artifact.anchor_digest == meta.anchor_digest,
                    )).first()
                    if clash is not None:
                        return False
                    self._ensure_skill(s, meta.skill)
                    sv = s.scalars(select(SkillVersion).where(
                        SkillVersion.name == meta.skill, SkillVersion.version == meta.version)).first()
                    if sv is None:
                        s.add(SkillVersion(
                            name=meta.skill, version=meta.version, text_digest=meta.text_digest,
                            description=str(meta.extra.get("description", "")), manifest="{}", created=_now()))
                    else:
                        self._check_same_text(meta.skill, meta.version, sv.text_digest, meta.text_digest)
                    s.add(Artifact(
                        digest=digest, name=meta.skill, version=meta.version, fingerprint=meta.fingerprint,
                        anchor_digest=meta.anchor_digest, tokens=meta.tokens, bytes=size, dtype=meta.dtype,
                        meta=meta.to_json(), created=meta.created,
                        fields=[Field(name=f.name, value=f.value, start=f.start, end=f.end) for f in meta.fields],
                    ))
                return True
            except IntegrityError:
                # A concurrent writer inserted the same skill or artifact first; look again once.
                if attempt:
                    return False
        return False

    def get_artifact(self, digest: str) -> ArtifactRow:
        digest_hex(digest)
        with self._session() as s:
            row = s.get(Artifact, digest)
            if row is None:
                raise NotFound(
                    f"no artifact {digest} in the index {self.url}; see `skillforge ls`, or run "
                    "`skillforge reindex` if the blob store has it"
                )
            return ArtifactRow.from_model(row)

    def list_artifacts(self, fingerprint: str | None = None, name: str | None = None) -> list[ArtifactRow]:
        """Artifacts, sorted by name, semantic version, then creation time."""
        query = select(Artifact)
        if fingerprint is not None:
            query = query.where(Artifact.fingerprint == fingerprint)
        if name is not None:
            query = query.where(Artifact.name == name)
        with self._session() as s:
            rows = [ArtifactRow.from_model(a) for a in s.scalars(query)]
        return sorted(rows, key=_sort_key)

    def find_artifact(self, name: str, fingerprint: str, version: str | None = None, digest: str | None = None,
                      anchor_digest: str | None = None) -> ArtifactRow:
        """The artifact serving name[@version] for this model fingerprint (highest version if None).

        With `digest`, that exact artifact; ArtifactMismatch if it was compiled for another model.
        NotFound messages say what does exist and what to run.
        """
        check_name(name)
        ref = f"{name}@{version}" if version else name
        if version is not None:
            check_version(version)
        if digest is not None:
            row = self.get_artifact(digest)
            if row.name != name:
                raise NotFound(f"{digest} is an artifact of {row.name}@{row.version}, not of {name}")
            if row.fingerprint != fingerprint:
                raise ArtifactMismatch(
                    f"{name}@{digest} was compiled for model fp {_short(row.fingerprint)}, this model is fp "
                    f"{_short(fingerprint)}; run `skillforge compile {name}@{row.version}` for this model"
                )
            return row
        query = select(Artifact).where(Artifact.name == name, Artifact.fingerprint == fingerprint)
        if version is not None:
            query = query.where(Artifact.version == version)
        if anchor_digest is not None:
            query = query.where(Artifact.anchor_digest == anchor_digest)
        with self._session() as s:
            hits = [ArtifactRow.from_model(a) for a in s.scalars(query)]
        if hits:
            return max(hits, key=lambda r: (version_key(r.version), r.created))
        rows = self.list_artifacts(name=name)
        wanted = [r for r in rows if version is None or r.version == version]
        raise NotFound(self._not_found_message(ref, name, fingerprint, version, anchor_digest, rows, wanted))

    def _not_found_message(self, ref: str, name: str, fingerprint: str, version: str | None,
                           anchor_digest: str | None, rows: list[ArtifactRow], wanted: list[ArtifactRow]) -> str:
        run = f"run `skillforge compile {ref}` with this model"
        if not rows:
            with self._session() as s:
                versions = sorted(s.scalars(select(SkillVersion.version).where(SkillVersion.name == name)),
                                  key=version_key)
            if versions:
                return f"{ref} has no compiled artifact (registered versions: {', '.join(versions)}); {run}"
            return (f"no skill {name!r} is registered or compiled here; run `skillforge compile` on its skill "
                    "folder (see `skillforge ls` for what exists)")
        if not wanted:
            own = sorted({r.version for r in rows if r.fingerprint == fingerprint}, key=version_key)
            other = sorted({r.version for r in rows if r.fingerprint != fingerprint}, key=version_key)
            parts = []
            if own:
                parts.append(f"compiled for this model: {', '.join(own)}")
            if other:
                parts.append(f"compiled only for other models: {', '.join(other)}")
            return f"{ref} is not compiled ({'; '.join(parts)}); {run}"
        if all(r.fingerprint != fingerprint for r in wanted):
            fps = ", ".join(sorted({_short(r.fingerprint) for r in wanted}))
            return f"{ref} is compiled only for fp {fps}; this model is fp {_short(fingerprint)}; {run}"
        anchors = ", ".join(sorted({r.anchor_digest for r in wanted if r.fingerprint == fingerprint}))
        return (f"{ref} is compiled for this model only with anchors {anchors}, not {anchor_digest}; "
                f"{run} and the same prefix")

    def remove_artifact(self, digest: str) -> None:
        """Drop an artifact and its fields from the index (the blob stays until `gc`)."""
        digest_hex(digest)
        with self._session(write=True) as s:
            if s.get(Artifact, digest) is None:
                raise NotFound(f"no artifact {digest} in the index {self.url}; see `skillforge ls`")
            s.execute(delete(Field).where(Field.artifact_digest == digest))
            s.execute(delete(Artifact).where(Artifact.digest == digest))

    def referenced_digests(self) -> set[str]:
        """Every blob the index needs (artifacts, and the blobs of recorded packs); `gc` deletes the rest."""
        with self._session() as s:
            return set(s.scalars(select(Artifact.digest))) | set(s.scalars(select(PackArtifact.digest)))

    def reindex(self, store: BlobStore) -> dict[str, int]:
        """Rebuild the index from the store: index every artifact blob not yet indexed, drop rows whose
        blob is gone. Blobs that are corrupt, not artifacts, or conflict with the index are skipped."""
        present = set(store.digests())
        with self._session() as s:
            known = set(s.scalars(select(Artifact.digest)))  # not pack blobs: only artifact rows are rebuilt
        removed = 0
        for digest in sorted(known - present):
            self.remove_artifact(digest)
            removed += 1
        indexed = len(known & present)
        skipped = 0
        for digest in sorted(present - known):
            try:
                path = store.local_path(digest)
                meta, _ = read_header(path, source=digest)
                if self.record_artifact(meta, digest, store.size(digest)):
                    indexed += 1
                else:
                    skipped += 1  # another blob already serves this (name, version, fingerprint, anchor)
            except SkillforgeError:
                skipped += 1
        return {"indexed": indexed, "skipped": skipped, "removed": removed}


def gc(registry: Registry, store: BlobStore, grace_s: float = 600) -> dict[str, int]:
    """Delete blobs the index does not reference.

    Blobs younger than `grace_s` are kept (reported as `kept_recent`) when the store can tell a blob's
    age: compile puts the blob first and records it second, and gc must not win that race.
    """
    candidates = list(store.digests())  # listed before reading references: newer blobs are not candidates
    referenced = registry.referenced_digests()
    age = getattr(store, "age_s", None)
    removed = freed = kept = 0
    for digest in candidates:
        if digest in referenced:
            continue
        try:
            if age is not None and grace_s > 0 and age(digest) < grace_s:
                kept += 1
                continue
        except NotFound:
            continue
        freed += store.delete(digest)
        removed += 1
    return {"removed": removed, "freed_bytes": freed, "kept_recent": kept}


def verify_all(registry: Registry, store: BlobStore) -> dict[str, Any]:
    """Re-hash every blob the index refers to: {"checked", "corrupt": [...], "missing": [...]}."""
    corrupt: list[str] = []
    missing: list[str] = []
    checked = 0
    for digest in sorted(registry.referenced_digests()):
        if not store.has(digest):
            missing.append(digest)
            continue
        checked += 1
        try:
            if not store.verify(digest):
                corrupt.append(digest)
        except NotFound:
            missing.append(digest)
            checked -= 1
    return {"checked": checked, "corrupt": corrupt, "missing": missing}
