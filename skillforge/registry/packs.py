"""Queries on the packs tables (revision 0003): which pack versions this index pulled or published.

A pack row is `name@version` from one bucket root (`source`, e.g. `s3://team-skills/prod`) with the
digest and text of the index document it was verified against. Pack versions are immutable, so the
same source, name and version with another index digest is refused (PackError): the bucket changed a
published version under us. `pack_artifacts` lists the pack's blobs present here; a pull for one
model adds only that model's, a later pull for another model adds the rest.

Writes follow the Registry's concurrency rules: one short transaction (`BEGIN IMMEDIATE` on SQLite),
retried once when a concurrent writer inserted the same row first (unique constraints decide).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from skillforge.errors import PackError
from skillforge.refs import check_name, check_version, digest_hex, version_key
from skillforge.registry.models import Pack, PackArtifact, SkillVersion

if TYPE_CHECKING:
    from skillforge.registry.registry import Registry


@dataclass(frozen=True)
class PackArtifactRow:
    digest: str
    skill: str
    version: str
    fingerprint: str
    bytes: int


@dataclass(frozen=True)
class PackRow:
    """One recorded pack, detached from the session."""

    source: str
    name: str
    version: str
    index_digest: str
    index_json: str
    published: str
    recorded: str
    artifacts: tuple[PackArtifactRow, ...]

    @property
    def ref(self) -> str:
        return f"{self.source}/{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the index text, for `--json` output."""
        data = asdict(self)
        del data["index_json"]
        data["artifacts"] = [asdict(a) for a in self.artifacts]
        data["bytes"] = sum(a.bytes for a in self.artifacts)
        return data

    @classmethod
    def from_model(cls, p: Pack) -> PackRow:
        return cls(p.source, p.name, p.version, p.index_digest, p.index_json, p.published, p.recorded,
                   tuple(PackArtifactRow(a.digest, a.skill, a.version, a.fingerprint, a.bytes) for a in p.artifacts))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextmanager
def _session(registry: Registry, write: bool = False) -> Iterator[Session]:
    engine = registry.engine.execution_options(sqlite_begin="IMMEDIATE") if write else registry.engine
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            yield session


def skill_version(registry: Registry, name: str, version: str) -> dict[str, Any] | None:
    """The registered text digest, description and manifest (None when only `{}` was recorded) of
    name@version, or None if it is not registered."""
    check_name(name)
    check_version(version)
    with _session(registry) as s:
        row = s.scalars(select(SkillVersion).where(SkillVersion.name == name, SkillVersion.version == version)).first()
        if row is None:
            return None
        try:
            manifest = json.loads(row.manifest)
        except ValueError:
            manifest = None
        return {"text_digest": row.text_digest, "description": row.description,
                "manifest": manifest if isinstance(manifest, dict) and manifest else None}


def get_pack(registry: Registry, source: str, name: str, version: str) -> PackRow | None:
    with _session(registry) as s:
        row = s.scalars(select(Pack).where(Pack.source == source, Pack.name == name, Pack.version == version)).first()
        return PackRow.from_model(row) if row is not None else None


def list_recorded_packs(registry: Registry, name: str | None = None) -> list[PackRow]:
    """Recorded packs, sorted by name, semantic version, then source."""
    query = select(Pack)
    if name is not None:
        query = query.where(Pack.name == check_name(name))
    with _session(registry) as s:
        rows = [PackRow.from_model(p) for p in s.scalars(query)]
    return sorted(rows, key=lambda r: (r.name, version_key(r.version), r.source))


def pack_digests(registry: Registry) -> set[str]:
    """Every blob some recorded pack names (also counted by `Registry.referenced_digests`)."""
    with _session(registry) as s:
        return set(s.scalars(select(PackArtifact.digest)))


def _conflict(source: str, name: str, version: str, recorded: str, new: str) -> PackError:
    return PackError(
        f"{source}/{name}@{version} was recorded here with index {recorded}, but the bucket now serves index "
        f"{new}: a published pack version must never change, so this one is refused. Ask the publisher what "
        "happened; publish and pull a new version instead"
    )


def record_pack(registry: Registry, source: str, name: str, version: str, index_digest: str, index_json: str,
                published: str, artifacts: Iterable[PackArtifactRow]) -> bool:
    """Record a pack and the given artifacts of it. Idempotent; True if anything new was written.

    PackError if the same source, name and version is recorded with another index digest.
    """
    check_name(name)
    check_version(version)
    digest_hex(index_digest)
    items = {a.digest: a for a in artifacts}
    for digest in items:
        digest_hex(digest)
    for attempt in range(2):
        try:
            with _session(registry, write=True) as s:
                pack = s.scalars(select(Pack).where(Pack.source == source, Pack.name == name,
                                                    Pack.version == version)).first()
                changed = False
                if pack is None:
                    pack = Pack(source=source, name=name, version=version, index_digest=index_digest,
                                index_json=index_json, published=published, recorded=_now())
                    s.add(pack)
                    s.flush()
                    changed = True
                elif pack.index_digest != index_digest:
                    raise _conflict(source, name, version, pack.index_digest, index_digest)
                have = set(s.scalars(select(PackArtifact.digest).where(PackArtifact.pack_id == pack.id)))
                for digest, a in sorted(items.items()):
                    if digest in have:
                        continue
                    s.add(PackArtifact(pack_id=pack.id, digest=digest, skill=a.skill, version=a.version,
                                       fingerprint=a.fingerprint, bytes=a.bytes))
                    changed = True
            return changed
        except IntegrityError:
            # A concurrent writer recorded the same pack or artifact first; look again once.
            if attempt:
                raise
    return False


def check_pack_unchanged(registry: Registry, source: str, name: str, version: str, index_digest: str) -> None:
    """PackError if this index recorded source/name@version with another index digest."""
    row = get_pack(registry, source, name, version)
    if row is not None and row.index_digest != index_digest:
        raise _conflict(source, name, version, row.index_digest, index_digest)
