"""Skill packs: publish compiled skills to an S3-compatible bucket, list them, pull them elsewhere.

One machine compiles and publishes; every serving machine pulls. The bucket is the shared registry,
each machine's SQL index a view of what it has. Layout under `s3://bucket/prefix`:

    blobs/sha256/<hex>                  artifact blobs (the S3Store layout, so SKILLFORGE_STORE can share it)
    packs/<name>/<version>/<hex>.json   the pack's index document, content-addressed by its sha256
    packs/<name>/<version>.json         the tag: names the index digest; its existence publishes the version

Why it is built this way:
- Publishing uploads missing blobs first (HEAD each; a blob of the wrong size or without skillforge's
  sha256 metadata counts as missing, so republishing repairs an overwritten one), then the index, and writes the tag last with a
  conditional put (`If-None-Match: *`). A reader that sees a tag therefore finds everything it names,
  and of two racing publishers exactly one creates the tag; the other gets PackError. The endpoint
  is probed once per process to make sure it honours the condition; one that ignores it is refused.
- A published version is immutable: another index under an existing tag is refused before anything is
  uploaded; the same content again is a no-op (missing blobs are re-uploaded, repairing the pack).
- The index is deterministic (sorted, no timestamps; the publish time lives in the tag), so the same
  skills give the same index digest, which is what "same content" means.
- A pack from a bucket is data, never code: the tag and index have size limits and a strict schema
  (names, versions, digests, fingerprints validated; manifests validated and checked against their
  text digests); every blob is size-checked before and hashed after download, its safetensors header
  validated by `artifact.read_header` and matched against the index, all before it becomes visible
  locally. A tampered pack is refused (CorruptBlob / PackError) and what this pull fetched is dropped.
- Pulls are resumable: each verified blob is renamed into the local store as soon as it is complete,
  and a later pull skips blobs already there (re-verified locally, not re-downloaded). The SQL index
  is written only once every selected blob is present and verified, so a failed pull changes nothing
  there; `gc`'s grace period protects the blobs of an interrupted pull until it is resumed.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from skillforge import config
from skillforge.artifact import ArtifactMeta, read_header
from skillforge.errors import BadReference, CorruptBlob, ManifestError, NotFound, PackError, SkillforgeError
from skillforge.refs import DIGEST_RE, PackRef, SkillRef, check_name, check_version, digest_hex, version_key
from skillforge.registry import Registry
from skillforge.registry.packs import (PackArtifactRow, check_pack_unchanged, list_recorded_packs, record_pack,
                                       skill_version)
from skillforge.store import BlobStore, open_store
from skillforge.store.s3 import ObjectTooLarge, S3Store, install_verified, tmp_dir_for

INDEX_FORMAT = "skillforge.pack/1"
TAG_FORMAT = "skillforge.pack-tag/1"
MAX_TAG_BYTES = 64 * 1024
MAX_INDEX_BYTES = 16 * 1024 * 1024
MAX_BLOB_BYTES = 64 * 1024 ** 3
MAX_ENTRIES = 100_000
MAX_TEXT_CHARS = 10_000
FINGERPRINT_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
ANCHOR_RE = re.compile(r"^(none|[0-9a-f]{16})$")
DTYPE_RE = re.compile(r"^[a-z0-9_]{0,32}$")
_TAG_KEY_RE = re.compile(r"^([a-z0-9][a-z0-9-]{0,63})/([^/]+)\.json$")

__all__ = ["PackEntry", "PackIndex", "PackInfo", "PackSkill", "PublishResult", "PullResult", "list_packs",
           "local_packs", "parse_pack_spec", "publish", "pull"]


# --------------------------------------------------------------------------------------------------
# The index document


@dataclass(frozen=True)
class PackSkill:
    name: str
    version: str
    text_digest: str
    description: str
    manifest: dict[str, Any] | None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class PackEntry:
    """One artifact blob of a pack: which skill version, for which model fingerprint and anchor."""

    skill: str
    version: str
    fingerprint: str
    digest: str
    size: int
    anchor_digest: str
    tokens: int
    dtype: str


@dataclass(frozen=True)
class PackIndex:
    name: str
    version: str
    skills: tuple[PackSkill, ...]
    artifacts: tuple[PackEntry, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def fingerprints(self) -> list[str]:
        return sorted({a.fingerprint for a in self.artifacts})

    @property
    def bytes(self) -> int:
        return sum(a.size for a in self.artifacts)

    def skill(self, name: str, version: str) -> PackSkill:
        for s in self.skills:
            if (s.name, s.version) == (name, version):
                return s
        raise KeyError((name, version))

    def to_dict(self) -> dict[str, Any]:
        by_fp: dict[str, list[dict[str, Any]]] = {}
        for a in sorted(self.artifacts, key=lambda a: (a.fingerprint, a.skill, version_key(a.version),
                                                       a.anchor_digest, a.digest)):
            entry = asdict(a)
            del entry["fingerprint"]
            by_fp.setdefault(a.fingerprint, []).append(entry)
        skills = sorted(self.skills, key=lambda s: (s.name, version_key(s.version)))
        return {"format": INDEX_FORMAT, "name": self.name, "version": self.version,
                "skills": [asdict(s) for s in skills], "artifacts": by_fp}

    def to_bytes(self) -> bytes:
        """Canonical JSON: the same pack content always gives the same bytes, hence the same digest."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def parse(cls, data: bytes, source: str) -> PackIndex:
        """Validate an untrusted index document strictly; PackError names `source` and the problem."""
        def bad(message: str) -> PackError:
            return PackError(f"{source}: invalid pack index: {message}; the pack is damaged or was tampered with")

        if len(data) > MAX_INDEX_BYTES:
            raise bad(f"{len(data)} bytes exceed the {MAX_INDEX_BYTES} byte limit")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad(f"not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        if doc.get("format") != INDEX_FORMAT:
            raise bad(f"unknown format {doc.get('format')!r} (expected {INDEX_FORMAT}; a newer skillforge may be needed)")
        if set(doc) != {"format", "name", "version", "skills", "artifacts"}:
            raise bad(f"unexpected keys {sorted(set(doc) ^ {'format', 'name', 'version', 'skills', 'artifacts'})}")
        try:
            name = check_name(_str(doc["name"], "name"))
            version = check_version(_str(doc["version"], "version"))
            skills = _parse_skills(doc["skills"], source)
            artifacts = _parse_artifacts(doc["artifacts"], skills)
        except (BadReference, ValueError, TypeError) as exc:
            raise bad(str(exc)) from None
        return cls(name, version, tuple(skills.values()), tuple(artifacts))


def _str(value: Any, what: str, limit: int = 255) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    if len(value) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")
    return value


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}]")
    return value


def _digest(value: Any, what: str) -> str:
    if not isinstance(value, str) or not DIGEST_RE.match(value):
        raise ValueError(f"{what} must be sha256: and 64 hex digits")
    return value


def _parse_skills(raw: Any, source: str) -> dict[tuple[str, str], PackSkill]:
    from skillforge.manifest import Manifest

    if not isinstance(raw, list) or not raw or len(raw) > MAX_ENTRIES:
        raise ValueError(f"skills must be a non-empty list of at most {MAX_ENTRIES}")
    skills: dict[tuple[str, str], PackSkill] = {}
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"name", "version", "text_digest", "description", "manifest"}:
            raise ValueError("each skill needs exactly name, version, text_digest, description, manifest")
        name = check_name(_str(item["name"], "skill name"))
        version = check_version(_str(item["version"], "skill version"))
        text_digest = _digest(item["text_digest"], f"text_digest of {name}@{version}")
        description = _str(item["description"], f"description of {name}@{version}", MAX_TEXT_CHARS)
        manifest = item["manifest"]
        if manifest is not None:
            if not isinstance(manifest, dict):
                raise ValueError(f"manifest of {name}@{version} must be an object or null")
            try:
                m = Manifest.from_dict(manifest, source=f"{source} (manifest of {name}@{version})")
                rendered = m.render().digest
            except (ManifestError, SkillforgeError) as exc:
                raise ValueError(str(exc)) from None
            if (m.name, m.version) != (name, version):
                raise ValueError(f"the manifest listed as {name}@{version} is {m.ref}")
            if rendered != text_digest:
                raise ValueError(f"the manifest of {name}@{version} renders to {rendered}, not its text_digest {text_digest}")
        if (name, version) in skills:
            raise ValueError(f"{name}@{version} is listed twice")
        skills[(name, version)] = PackSkill(name, version, text_digest, description, manifest)
    return skills


def _parse_artifacts(raw: Any, skills: dict[tuple[str, str], PackSkill]) -> list[PackEntry]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError("artifacts must be a non-empty object keyed by model fingerprint")
    keys = ("skill", "version", "digest", "size", "anchor_digest", "tokens", "dtype")
    entries: list[PackEntry] = []
    digests: set[str] = set()
    identities: set[tuple[str, str, str, str]] = set()
    for fp, items in raw.items():
        if not isinstance(fp, str) or not FINGERPRINT_RE.match(fp):
            raise ValueError(f"invalid model fingerprint {str(fp)[:80]!r}")
        if not isinstance(items, list) or not items:
            raise ValueError(f"artifacts of fingerprint {fp} must be a non-empty list")
        for item in items:
            if not isinstance(item, dict) or set(item) != set(keys):
                raise ValueError(f"each artifact needs exactly {', '.join(keys)}")
            skill = check_name(_str(item["skill"], "artifact skill"))
            version = check_version(_str(item["version"], "artifact version"))
            if (skill, version) not in skills:
                raise ValueError(f"an artifact of {skill}@{version}, which the pack's skills do not list")
            digest = _digest(item["digest"], "artifact digest")
            size = _int(item["size"], f"size of {digest}", 1, MAX_BLOB_BYTES)
            anchor = _str(item["anchor_digest"], "anchor_digest")
            if not ANCHOR_RE.match(anchor):
                raise ValueError(f"invalid anchor_digest {anchor[:40]!r}")
            tokens = _int(item["tokens"], f"tokens of {digest}", 0, 1 << 31)
            dtype = _str(item["dtype"], "dtype")
            if not DTYPE_RE.match(dtype):
                raise ValueError(f"invalid dtype {dtype[:40]!r}")
            if digest in digests:
                raise ValueError(f"blob {digest} is listed twice")
            identity = (skill, version, fp, anchor)
            if identity in identities:
                raise ValueError(f"two artifacts of {skill}@{version} for fingerprint {fp} and anchor {anchor}")
            digests.add(digest)
            identities.add(identity)
            entries.append(PackEntry(skill, version, fp, digest, size, anchor, tokens, dtype))
            if len(entries) > MAX_ENTRIES:
                raise ValueError(f"more than {MAX_ENTRIES} artifacts")
    return entries


@dataclass(frozen=True)
class _Tag:
    index: str
    size: int
    published: str

    def to_bytes(self, name: str, version: str) -> bytes:
        return json.dumps({"format": TAG_FORMAT, "name": name, "version": version, "index": self.index,
                           "size": self.size, "published": self.published}, sort_keys=True).encode()


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class PublishResult:
    ref: str
    name: str
    version: str
    index_digest: str
    skills: list[str]
    fingerprints: list[str]
    artifacts: int
    bytes: int
    uploaded: int
    uploaded_bytes: int
    created: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PullResult:
    ref: str
    name: str
    version: str
    index_digest: str
    fingerprints: list[str]
    artifacts: int
    bytes: int
    downloaded: list[str]
    downloaded_bytes: int
    skipped: int
    recorded: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PackInfo:
    ref: str
    name: str
    version: str
    index_digest: str | None = None
    published: str | None = None
    skills: list[str] = field(default_factory=list)
    fingerprints: dict[str, int] = field(default_factory=dict)
    artifacts: int = 0
    bytes: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Helpers


def parse_pack_spec(text: str) -> tuple[str, str]:
    """`support@1.0.0` -> ("support", "1.0.0"); a pack version is required."""
    name, sep, version = text.strip().partition("@")
    if not sep:
        raise BadReference(f"invalid pack {text!r}: give name@version, e.g. support@1.0.0")
    return check_name(name), check_version(version)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _remote(root: str, endpoint_url: str | None, remote: S3Store | None) -> S3Store:
    if remote is not None:
        return remote
    if not root.lower().startswith("s3://"):
        raise BadReference(f"packs live in S3-compatible buckets: expected s3://bucket/prefix, got {root!r}")
    return S3Store.from_url(root, endpoint_url=endpoint_url)


def _tag_key(remote: S3Store, name: str, version: str) -> str:
    return remote.key("packs", name, f"{version}.json")


def _index_key(remote: S3Store, name: str, version: str, digest: str) -> str:
    return remote.key("packs", name, version, f"{digest_hex(digest)}.json")


def _read_tag(remote: S3Store, name: str, version: str) -> _Tag | None:
    where = f"{remote.url}/{name}@{version}"
    try:
        raw = remote.get_object(_tag_key(remote, name, version), MAX_TAG_BYTES)
    except ObjectTooLarge as exc:
        raise PackError(f"{where}: the pack's tag object is too large; the pack was tampered with") from exc
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != TAG_FORMAT:
            raise ValueError(f"unknown tag format {doc.get('format') if isinstance(doc, dict) else None!r}")
        if doc.get("name") != name or doc.get("version") != version:
            raise ValueError(f"it names {doc.get('name')!r}@{doc.get('version')!r}")
        tag = _Tag(_digest(doc.get("index"), "index"), _int(doc.get("size"), "size", 1, MAX_INDEX_BYTES),
                   _str(doc.get("published", ""), "published", 64))
    except (ValueError, TypeError) as exc:
        raise PackError(f"{where}: invalid pack tag ({exc}); the pack is damaged or was tampered with") from None
    return tag


def _read_index(remote: S3Store, name: str, version: str, tag: _Tag) -> tuple[PackIndex, bytes]:
    where = f"{remote.url}/{name}@{version}"
    try:
        raw = remote.get_object(_index_key(remote, name, version, tag.index), MAX_INDEX_BYTES)
    except ObjectTooLarge as exc:
        raise PackError(f"{where}: the index object is larger than the {MAX_INDEX_BYTES} byte limit; refusing the "
                        "pack") from exc
    if raw is None:
        raise PackError(f"{where}: the index {tag.index} named by the tag is missing from the bucket; republish the pack")
    actual = _sha(raw)
    if len(raw) != tag.size or actual != tag.index:
        raise PackError(f"{where}: the index was tampered with or damaged: it hashes to {actual} ({len(raw)} bytes), "
                        f"but the tag names {tag.index} ({tag.size} bytes); refusing the pack")
    index = PackIndex.parse(raw, where)
    if (index.name, index.version) != (name, version):
        raise PackError(f"{where}: the index describes {index.ref}; refusing the pack")
    return index, raw


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not enabled or total == 0, leave=False, dynamic_ncols=True)


def _opened(stack: ExitStack, registry: Registry | None, store: BlobStore | None) -> tuple[Registry, BlobStore]:
    if registry is None:
        registry = stack.enter_context(Registry(config.db_url()))
    if store is None:
        store = open_store(config.store_url())
    return registry, store


# --------------------------------------------------------------------------------------------------
# Publish


def build_index(registry: Registry, name: str, version: str, skills: Sequence[str],
                fingerprint: str | None = None) -> PackIndex:
    """The index of a pack of `skills` (`name`, `name@version`, `name@sha256:...`) as compiled here.

    `name@version` takes every artifact of that version (every model and anchor, or only
    `fingerprint`'s); a bare name takes the highest version that has artifacts.
    """
    from skillforge.manifest import Manifest

    if not skills:
        raise PackError(f"{name}@{version}: no skills given; name the skills to publish (name or name@version)")
    rows = {}
    for text in skills:
        ref = SkillRef.parse(text)
        if ref.digest:
            row = registry.get_artifact(ref.digest)
            if row.name != ref.name:
                raise NotFound(f"{ref.digest} is an artifact of {row.name}@{row.version}, not of {ref.name}")
            chosen = [row]
        else:
            cands = registry.list_artifacts(name=ref.name, fingerprint=fingerprint)
            if ref.version is not None:
                chosen = [r for r in cands if r.version == ref.version]
            elif cands:
                best = max(cands, key=lambda r: version_key(r.version)).version
                chosen = [r for r in cands if r.version == best]
            else:
                chosen = []
            if not chosen:
                model = f" for model fp {fingerprint}" if fingerprint else ""
                raise NotFound(f"{ref} has no compiled artifact{model} in this index; run `skillforge compile` for it "
                               "first (see `skillforge ls`)")
        for row in chosen:
            rows[row.digest] = row
    pack_skills = []
    for sname, sversion in sorted({(r.name, r.version) for r in rows.values()}):
        texts = {r.meta.text_digest for r in rows.values() if (r.name, r.version) == (sname, sversion)}
        if len(texts) != 1:
            raise PackError(f"the artifacts of {sname}@{sversion} were compiled from different texts; recompile it")
        text_digest = texts.pop()
        info = skill_version(registry, sname, sversion) or {}
        if info.get("text_digest", text_digest) != text_digest:
            raise PackError(f"{sname}@{sversion} is registered with text {info['text_digest']} but its artifacts with "
                            f"{text_digest}; recompile it")
        manifest = info.get("manifest")
        if manifest is not None:
            try:
                m = Manifest.from_dict(manifest, source=f"manifest of {sname}@{sversion} in {registry.url}")
                if m.render().digest != text_digest:
                    manifest = None  # registered without its final text; the artifacts still carry the text
            except SkillforgeError:
                manifest = None
        pack_skills.append(PackSkill(sname, sversion, text_digest, str(info.get("description", ""))[:MAX_TEXT_CHARS],
                                     manifest))
    entries = []
    for r in rows.values():
        meta = r.meta  # the blob's own metadata (rows from old index versions may lack a dtype)
        entries.append(PackEntry(r.name, r.version, r.fingerprint, r.digest, r.bytes, meta.anchor_digest, meta.tokens,
                                 meta.dtype))
    index = PackIndex(check_name(name), check_version(version), tuple(pack_skills), tuple(entries))
    # Whatever we publish must be pullable: run the reader's checks on it now.
    PackIndex.parse(index.to_bytes(), f"{name}@{version}")
    return index


def publish(skills: Sequence[str], pack: str, to: str, *, registry: Registry | None = None,
            store: BlobStore | None = None, fingerprint: str | None = None, endpoint_url: str | None = None,
            remote: S3Store | None = None, progress: bool = False,
            before_visible: Callable[[], None] | None = None) -> PublishResult:
    """Publish `skills` as pack `pack` (`name@version`) to the bucket root `to` (`s3://bucket/prefix`).

    Uploads only blobs the bucket lacks, then the index, then makes the version visible with a
    conditional put. Refuses (PackError) a version that exists with other content, or that a racing
    publisher created first with other content; the same content again is a no-op (`created=False`).
    `registry`/`store` default to the current home's; `fingerprint` keeps one model's artifacts.
    `before_visible` runs just before the tag is written (tests use it to line up racing publishers).
    """
    started = time.monotonic()
    name, version = parse_pack_spec(pack)
    remote = _remote(to, endpoint_url, remote)
    with ExitStack() as stack:
        registry, store = _opened(stack, registry, store)
        index = build_index(registry, name, version, skills, fingerprint)
        data = index.to_bytes()
        index_digest = _sha(data)
        ref = f"{remote.url}/{name}@{version}"

        remote.check_bucket()
        existing = _read_tag(remote, name, version)
        if existing is not None and existing.index != index_digest:
            raise PackError(f"{ref} is already published with other content (index {existing.index}; yours is "
                            f"{index_digest}); published pack versions are immutable: publish a new version")
        if existing is None and not remote.supports_conditional_writes():
            raise PackError(f"the S3 endpoint of {remote.url} ignores conditional writes (If-None-Match), so two "
                            "publishers could overwrite each other's version; refusing to publish there")

        # 1. blobs the bucket lacks (HEAD first), 2. the index, 3. the tag.
        missing = []
        for entry in index.artifacts:
            if not remote.intact(remote.head(remote.blob_key(entry.digest)), entry.digest, entry.size):
                missing.append(entry)
        uploaded_bytes = 0
        with _progress(sum(e.size for e in missing), f"publish {name}@{version}", progress) as bar:
            for entry in missing:
                path = store.local_path(entry.digest)
                if path.stat().st_size != entry.size:
                    raise CorruptBlob(f"blob {entry.digest} in {store.url} is {path.stat().st_size} bytes, the index "
                                      f"says {entry.size}; run `skillforge verify` and recompile")
                remote.upload_file(path, remote.blob_key(entry.digest), callback=bar.update,
                                   extra={"Metadata": {"sha256": digest_hex(entry.digest)}})
                uploaded_bytes += entry.size
        index_key = _index_key(remote, name, version, index_digest)
        head = remote.head(index_key)
        if head is None or int(head["ContentLength"]) != len(data):
            remote.put_object(index_key, data, content_type="application/json")

        created = False
        tag = existing
        if tag is None:
            if before_visible is not None:
                before_visible()
            mine = _Tag(index_digest, len(data), _now())
            if remote.put_if_absent(_tag_key(remote, name, version), mine.to_bytes(name, version)):
                seen = _read_tag(remote, name, version)
                if seen is None or seen.index != index_digest:
                    raise PackError(f"{ref} was overwritten by another publisher right after this one created it; "
                                    "the endpoint does not honour conditional writes reliably")
                tag, created = mine, True
            else:
                tag = _read_tag(remote, name, version)
                if tag is None or tag.index != index_digest:
                    if tag is not None:
                        remote._delete_key(index_key)  # noqa: SLF001 - our index; no tag names it
                    raise PackError(f"{ref} was published concurrently by another publisher with other content "
                                    f"(index {tag.index if tag else 'unknown'}); nothing of this publish was made "
                                    "visible: publish a new version")

        record_pack(registry, remote.url, name, version, index_digest, data.decode(), tag.published,
                    [PackArtifactRow(e.digest, e.skill, e.version, e.fingerprint, e.size) for e in index.artifacts])
        return PublishResult(
            ref=ref, name=name, version=version, index_digest=index_digest,
            skills=[s.ref for s in index.skills], fingerprints=index.fingerprints, artifacts=len(index.artifacts),
            bytes=index.bytes, uploaded=len(missing), uploaded_bytes=uploaded_bytes, created=created,
            seconds=time.monotonic() - started,
        )


# --------------------------------------------------------------------------------------------------
# Pull


def _check_meta(meta: ArtifactMeta, entry: PackEntry, skill: PackSkill, where: str) -> None:
    got = (meta.skill, meta.version, meta.fingerprint, meta.anchor_digest, meta.tokens, meta.dtype, meta.text_digest)
    want = (entry.skill, entry.version, entry.fingerprint, entry.anchor_digest, entry.tokens, entry.dtype,
            skill.text_digest)
    if got != want:
        raise PackError(
            f"{where}: blob {entry.digest} is an artifact of {meta.skill}@{meta.version} for fp {meta.fingerprint} "
            f"(anchor {meta.anchor_digest}), but the index lists it as {entry.skill}@{entry.version} for fp "
            f"{entry.fingerprint} (anchor {entry.anchor_digest}) or with other tokens, dtype or text; the pack is "
            "inconsistent or was tampered with, refusing it"
        )


def _local_meta(store: BlobStore, digest: str) -> ArtifactMeta | None:
    """The metadata of a blob already in the local store (verified), or None if absent or damaged."""
    if not store.has(digest):
        return None
    try:
        return read_header(store.local_path(digest), source=digest)[0]
    except NotFound:
        return None
    except CorruptBlob:
        store.delete(digest)  # a damaged local copy: the pull replaces it
        return None


def pull(ref: str, *, fingerprint: str | None = None, registry: Registry | None = None,
         store: BlobStore | None = None, endpoint_url: str | None = None, remote: S3Store | None = None,
         progress: bool = False, on_blob: Callable[[str], None] | None = None) -> PullResult:
    """Pull pack `ref` (`s3://bucket/prefix/name@version`) into the local store and index.

    With `fingerprint`, only that model's artifacts. Every blob is verified (size, sha256, safetensors
    header, agreement with the index) before it becomes visible; blobs already present are not
    downloaded again, so an interrupted pull resumes. The index is written after all blobs are in.
    `on_blob(digest)` is called after each blob is in place (progress hooks, tests).
    """
    started = time.monotonic()
    pref = PackRef.parse(ref)
    assert pref.version is not None
    name, version = pref.name, pref.version
    remote = _remote(pref.root, endpoint_url, remote)
    where = f"{remote.url}/{name}@{version}"
    with ExitStack() as stack:
        registry, store = _opened(stack, registry, store)
        tag = _read_tag(remote, name, version)
        if tag is None:
            remote.check_bucket()
            raise NotFound(f"no pack {name}@{version} in {remote.url}; see `skillforge packs ls {remote.url}`")
        index, raw = _read_index(remote, name, version, tag)
        check_pack_unchanged(registry, remote.url, name, version, tag.index)

        entries = [a for a in index.artifacts if fingerprint is None or a.fingerprint == fingerprint]
        if not entries:
            raise NotFound(f"{where} has no artifacts for model fp {fingerprint}; it has artifacts for "
                           f"{', '.join(index.fingerprints)}; compile and publish for this model first")
        needed = sorted({(a.skill, a.version) for a in entries})
        for sname, sversion in needed:
            local = skill_version(registry, sname, sversion)
            theirs = index.skill(sname, sversion)
            if local is not None and local["text_digest"] != theirs.text_digest:
                raise PackError(f"{where}: {sname}@{sversion} in the pack has text {theirs.text_digest}, but this index "
                                f"registered {sname}@{sversion} with text {local['text_digest']}; one of them must "
                                "bump the version")

        metas: dict[str, ArtifactMeta] = {}
        todo = []
        skipped = 0
        for entry in entries:
            meta = _local_meta(store, entry.digest)
            if meta is None:
                todo.append(entry)
            else:
                _check_meta(meta, entry, index.skill(entry.skill, entry.version), where)
                metas[entry.digest] = meta
                skipped += 1
                if on_blob is not None:
                    on_blob(entry.digest)

        downloaded: list[str] = []
        staging = tmp_dir_for(store)
        try:
            with _progress(sum(e.size for e in todo), f"pull {name}@{version}", progress) as bar:
                for entry in todo:
                    tmp = remote.fetch(entry.digest, staging, size=entry.size, callback=bar.update)
                    try:
                        meta, _ = read_header(tmp, source=f"{where}: blob {entry.digest}")
                        _check_meta(meta, entry, index.skill(entry.skill, entry.version), where)
                        install_verified(store, tmp, entry.digest)
                    finally:
                        tmp.unlink(missing_ok=True)
                    downloaded.append(entry.digest)
                    metas[entry.digest] = meta
                    if on_blob is not None:
                        on_blob(entry.digest)
        except (PackError, CorruptBlob):
            # The pack is bad: keep nothing this pull brought in that the index does not already use.
            keep = registry.referenced_digests()
            for digest in downloaded:
                if digest not in keep:
                    store.delete(digest)
            raise

        try:
            for sname, sversion in needed:
                s = index.skill(sname, sversion)
                if s.manifest is not None:
                    registry.record_skill_version(sname, sversion, s.text_digest, s.description, s.manifest)
            recorded = sum(bool(registry.record_artifact(metas[e.digest], e.digest, e.size)) for e in entries)
        except ManifestError as exc:
            raise PackError(f"{where}: {exc}") from exc
        record_pack(registry, remote.url, name, version, tag.index, raw.decode(), tag.published,
                    [PackArtifactRow(e.digest, e.skill, e.version, e.fingerprint, e.size) for e in entries])
        return PullResult(
            ref=where, name=name, version=version, index_digest=tag.index,
            fingerprints=sorted({e.fingerprint for e in entries}), artifacts=len(entries),
            bytes=sum(e.size for e in entries), downloaded=downloaded,
            downloaded_bytes=sum(e.size for e in todo if e.digest in set(downloaded)), skipped=skipped,
            recorded=recorded, seconds=time.monotonic() - started,
        )


# --------------------------------------------------------------------------------------------------
# Listing


def list_packs(url: str, *, endpoint_url: str | None = None, remote: S3Store | None = None,
               name: str | None = None) -> list[PackInfo]:
    """The pack versions published under bucket root `url`, sorted by name and semantic version.

    Each tag and index is read and verified; a damaged pack is listed with `error` set instead of
    failing the whole listing.
    """
    remote = _remote(url, endpoint_url, remote)
    if name is not None:
        check_name(name)
    remote.check_bucket()
    base = remote.key("packs") + "/"
    found: list[tuple[str, str]] = []
    for obj in remote.list_keys(base + (f"{name}/" if name else "")):
        m = _TAG_KEY_RE.match(obj["Key"][len(base):])
        if not m:
            continue
        try:
            found.append((check_name(m[1]), check_version(m[2])))
        except BadReference:
            continue
    infos = []
    for pname, pversion in sorted(found, key=lambda p: (p[0], version_key(p[1]))):
        info = PackInfo(ref=f"{remote.url}/{pname}@{pversion}", name=pname, version=pversion)
        try:
            tag = _read_tag(remote, pname, pversion)
            if tag is None:
                continue  # deleted while listing
            info.index_digest, info.published = tag.index, tag.published
            index, _ = _read_index(remote, pname, pversion, tag)
        except SkillforgeError as exc:
            info.error = str(exc)
            infos.append(info)
            continue
        info.skills = [s.ref for s in index.skills]
        for a in index.artifacts:
            info.fingerprints[a.fingerprint] = info.fingerprints.get(a.fingerprint, 0) + 1
        info.artifacts, info.bytes = len(index.artifacts), index.bytes
        infos.append(info)
    return infos


def local_packs(registry: Registry | None = None) -> list[dict[str, Any]]:
    """The packs this index pulled or published, as dicts (source, name, version, artifacts, bytes)."""
    with ExitStack() as stack:
        if registry is None:
            registry = stack.enter_context(Registry(config.db_url()))
        return [row.to_dict() for row in list_recorded_packs(registry)]
