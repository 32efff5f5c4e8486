"""The pack index document and the tag: their schema, canonical bytes, and strict parsing.

A pack version is two JSON documents on the bucket: the index (which skills, which artifact blobs for
which model fingerprints) and the tag that names the index by digest. Both come from a bucket, which
is a trust boundary, so parsing here is strict: size limits, exact key sets, names, versions, digests,
fingerprints and manifests validated, manifests checked against their text digests. Writing is
canonical (sorted, no timestamps; the publish time lives in the tag), so the same pack content always
gives the same index digest, which is what "same content" means for an immutable version.

Format 2 adds one key per artifact, `encoding`: how its blob travels on the bucket ("zstd-planes",
see codec.py, or "none"). Format 1 indexes, whose blobs are all plain, are still read; a reader that
only knows format 1 refuses format 2 with "a newer skillforge may be needed" rather than misreading it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

from skillforge.errors import BadReference, ManifestError, PackError, SkillforgeError
from skillforge.refs import DIGEST_RE, check_name, check_version, version_key

INDEX_FORMAT = "skillforge.pack/2"  # what this skillforge writes
INDEX_FORMAT_V1 = "skillforge.pack/1"  # still read: every blob plain, no `encoding` key
PLAIN = "none"
ZSTD_PLANES = "zstd-planes"
ENCODINGS = (PLAIN, ZSTD_PLANES)
TAG_FORMAT = "skillforge.pack-tag/1"
MAX_TAG_BYTES = 64 * 1024
MAX_INDEX_BYTES = 16 * 1024 * 1024
MAX_BLOB_BYTES = 64 * 1024 ** 3
MAX_ENTRIES = 100_000
MAX_TEXT_CHARS = 10_000
FINGERPRINT_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
ANCHOR_RE = re.compile(r"^(none|[0-9a-f]{16})$")
DTYPE_RE = re.compile(r"^[a-z0-9_]{0,32}$")


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
    encoding: str = PLAIN  # how the blob is stored on the bucket; its digest and size are of the plain bytes


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

    def same_content(self, other: PackIndex) -> bool:
        """True if both describe the same skills and blobs, however the blobs travel (`encoding`): a
        republish of a version first published plain (format 1) is the same content, not a conflict."""
        def content(index: PackIndex) -> tuple:
            skills = sorted(index.skills, key=lambda s: (s.name, s.version))
            blobs = sorted((replace(a, encoding=PLAIN) for a in index.artifacts), key=lambda a: a.digest)
            return index.name, index.version, skills, blobs

        return content(self) == content(other)

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
        if doc.get("format") not in (INDEX_FORMAT, INDEX_FORMAT_V1):
            raise bad(f"unknown format {doc.get('format')!r} (expected {INDEX_FORMAT}; a newer skillforge may be needed)")
        if set(doc) != {"format", "name", "version", "skills", "artifacts"}:
            raise bad(f"unexpected keys {sorted(set(doc) ^ {'format', 'name', 'version', 'skills', 'artifacts'})}")
        try:
            name = check_name(_str(doc["name"], "name"))
            version = check_version(_str(doc["version"], "version"))
            skills = _parse_skills(doc["skills"], source)
            artifacts = _parse_artifacts(doc["artifacts"], skills, encoded=doc["format"] == INDEX_FORMAT)
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


def _parse_artifacts(raw: Any, skills: dict[tuple[str, str], PackSkill], encoded: bool) -> list[PackEntry]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError("artifacts must be a non-empty object keyed by model fingerprint")
    keys = ("skill", "version", "digest", "size", "anchor_digest", "tokens", "dtype") + (("encoding",) if encoded else ())
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
            encoding = item["encoding"] if encoded else PLAIN
            if encoding not in ENCODINGS:
                raise ValueError(f"unknown blob encoding {str(encoding)[:40]!r} (known: {', '.join(ENCODINGS)}; a newer "
                                 "skillforge may be needed)")
            if digest in digests:
                raise ValueError(f"blob {digest} is listed twice")
            identity = (skill, version, fp, anchor)
            if identity in identities:
                raise ValueError(f"two artifacts of {skill}@{version} for fingerprint {fp} and anchor {anchor}")
            digests.add(digest)
            identities.add(identity)
            entries.append(PackEntry(skill, version, fp, digest, size, anchor, tokens, dtype, encoding))
            if len(entries) > MAX_ENTRIES:
                raise ValueError(f"more than {MAX_ENTRIES} artifacts")
    return entries


@dataclass(frozen=True)
class Tag:
    """The tag object `packs/<name>/<version>.json`: its existence publishes the version."""

    index: str
    size: int
    published: str

    def to_bytes(self, name: str, version: str) -> bytes:
        return json.dumps({"format": TAG_FORMAT, "name": name, "version": version, "index": self.index,
                           "size": self.size, "published": self.published}, sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes, name: str, version: str, where: str) -> Tag:
        """Validate an untrusted tag of name@version; PackError names `where` and the problem."""
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != TAG_FORMAT:
                raise ValueError(f"unknown tag format {doc.get('format') if isinstance(doc, dict) else None!r}")
            if doc.get("name") != name or doc.get("version") != version:
                raise ValueError(f"it names {doc.get('name')!r}@{doc.get('version')!r}")
            return cls(_digest(doc.get("index"), "index"), _int(doc.get("size"), "size", 1, MAX_INDEX_BYTES),
                       _str(doc.get("published", ""), "published", 64))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise PackError(f"{where}: invalid pack tag ({exc}); the pack is damaged or was tampered with") from None


def sha(data: bytes) -> str:
    """The `sha256:<hex>` digest of bytes (index documents are addressed by it)."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def parse_pack_spec(text: str) -> tuple[str, str]:
    """`support@1.0.0` -> ("support", "1.0.0"); a pack version is required."""
    name, sep, version = text.strip().partition("@")
    if not sep:
        raise BadReference(f"invalid pack {text!r}: give name@version, e.g. support@1.0.0")
    return check_name(name), check_version(version)
