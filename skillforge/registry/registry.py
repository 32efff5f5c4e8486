"""The SQL index over the blob store: which artifact serves `name@version` for a model fingerprint.

Why it is built this way:
- Opening a Registry brings the database to the Alembic head (engine.py), so users never run
  migrations by hand; every write is one short transaction (`BEGIN IMMEDIATE` on SQLite).
- Adding an artifact is a race that exactly one writer wins, per digest and per (name, version,
  fingerprint, anchor): `add_artifact` returns the winner's row to everyone, and `release` lets a loser
  drop its own blob at once instead of leaving it to `gc`.
- The index is derived data: `reindex` rebuilds it from blobs, `gc` deletes blobs it does not
  reference (maintenance.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from skillforge import config as sf_config
from skillforge.artifact import ArtifactMeta
from skillforge.errors import ArtifactMismatch, ManifestError, NotFound, SkillforgeError
from skillforge.refs import check_name, check_version, digest_hex, version_key
from skillforge.registry.engine import masked, open_engine, upgrade_to_head, writer
from skillforge.registry.models import Artifact, Field, PackArtifact, Skill, SkillVersion

if TYPE_CHECKING:
    from skillforge.store import BlobStore


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _short(fingerprint: str) -> str:
    return fingerprint if len(fingerprint) <= 20 else fingerprint[:20] + "..."


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


class Registry:
    """The index. Opening it migrates the database to head; see the module docstring for concurrency."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or sf_config.db_url()
        self.engine, db_file = open_engine(self.url)
        self._writer = writer(self.engine)
        try:
            upgrade_to_head(self.engine, self.url, db_file)
        except DBAPIError as exc:
            self.engine.dispose()
            raise SkillforgeError(
                f"cannot open the index {masked(self.url)}: {exc.orig}; check the path, permissions and that no other "
                "program holds it locked, or point SKILLFORGE_DB_URL elsewhere"
            ) from exc

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
    def add_artifact(self, meta: ArtifactMeta, digest: str, size: int) -> tuple[ArtifactRow, bool]:
        """Index an artifact and its fields (adding the skill and skill version if missing), unless the
        index already has it; returns (the row that is in the index, whether this call added it).

        "Already has it" means the digest, or another artifact with the same (name, version,
        fingerprint, anchor). Of concurrent adds exactly one adds, and every caller gets that winner's
        row: a compile that lost the race reports the winner's digest and drops its own blob
        (`release`). Raises ManifestError if the skill version is registered with a different text.
        """
        digest_hex(digest)
        check_name(meta.skill)
        check_version(meta.version)
        retries = 2
        while True:
            try:
                with self._session(write=True) as s:
                    winner = s.get(Artifact, digest) or s.scalars(select(Artifact).where(
                        Artifact.name == meta.skill, Artifact.version == meta.version,
                        Artifact.fingerprint == meta.fingerprint, Artifact.anchor_digest == meta.anchor_digest,
                    )).first()
                    if winner is not None:
                        return ArtifactRow.from_model(winner), False
                    self._ensure_skill(s, meta.skill)
                    sv = s.scalars(select(SkillVersion).where(
                        SkillVersion.name == meta.skill, SkillVersion.version == meta.version)).first()
                    if sv is None:
                        s.add(SkillVersion(
                            name=meta.skill, version=meta.version, text_digest=meta.text_digest,
                            description=str(meta.extra.get("description", "")), manifest="{}", created=_now()))
                    else:
                        self._check_same_text(meta.skill, meta.version, sv.text_digest, meta.text_digest)
                    added = Artifact(
                        digest=digest, name=meta.skill, version=meta.version, fingerprint=meta.fingerprint,
                        anchor_digest=meta.anchor_digest, tokens=meta.tokens, bytes=size, dtype=meta.dtype,
                        meta=meta.to_json(), created=meta.created,
                        fields=[Field(name=f.name, value=f.value, start=f.start, end=f.end) for f in meta.fields],
                    )
                    s.add(added)
                    s.flush()
                    row = ArtifactRow.from_model(added)
                return row, True
            except IntegrityError:
                # A concurrent writer inserted the same skill or artifact first; look again for the winner.
                if not retries:
                    raise
                retries -= 1

    def record_artifact(self, meta: ArtifactMeta, digest: str, size: int) -> bool:
        """`add_artifact` for callers that only need to know whether this call indexed it."""
        return self.add_artifact(meta, digest, size)[1]

    def release(self, store: BlobStore, digest: str) -> int:
        """Delete `digest`'s blob from `store` unless the index references it; the bytes freed.

        For the loser of a race to index the same artifact (`add_artifact` returned another digest):
        its blob serves nothing, and `gc` would leave it for the grace period.
        """
        digest_hex(digest)
        with self._session() as s:
            if s.get(Artifact, digest) is not None or \
                    s.scalars(select(PackArtifact.id).where(PackArtifact.digest == digest)).first() is not None:
                return 0
        return store.delete(digest)

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
        hit = self._newest(name, fingerprint, version, anchor_digest)
        if hit is not None:
            return hit
        rows = self.list_artifacts(name=name)
        wanted = [r for r in rows if version is None or r.version == version]
        raise NotFound(self._not_found_message(ref, name, fingerprint, version, anchor_digest, rows, wanted))

    def variant(self, name: str, fingerprint: str, version: str, anchor_digest: str) -> ArtifactRow | None:
        """The artifact of name@version for this model compiled behind exactly this anchor, or None. For
        the splice's per-request check (runtime/lookup.py), where a miss is the common case: one query,
        no message built."""
        return self._newest(name, fingerprint, version, anchor_digest)

    def _newest(self, name: str, fingerprint: str, version: str | None, anchor_digest: str | None) -> ArtifactRow | None:
        query = select(Artifact).where(Artifact.name == name, Artifact.fingerprint == fingerprint)
        if version is not None:
            query = query.where(Artifact.version == version)
        if anchor_digest is not None:
            query = query.where(Artifact.anchor_digest == anchor_digest)
        with self._session() as s:
            hits = [ArtifactRow.from_model(a) for a in s.scalars(query)]
        return max(hits, key=lambda r: (version_key(r.version), r.created)) if hits else None

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

    def artifact_digests(self) -> set[str]:
        """Every indexed artifact's digest (what `reindex` compares with the store)."""
        with self._session() as s:
            return set(s.scalars(select(Artifact.digest)))

    def referenced_digests(self) -> set[str]:
        """Every blob the index needs (artifacts, and the blobs of recorded packs); `gc` deletes the rest."""
        with self._session() as s:
            return set(s.scalars(select(Artifact.digest))) | set(s.scalars(select(PackArtifact.digest)))


