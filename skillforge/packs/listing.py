"""Listing packs: the versions published in a bucket (each verified), and those this index recorded."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

from skillforge import config
from skillforge.errors import BadReference, SkillforgeError
from skillforge.packs.bucket import TAG_KEY_RE, open_remote, packs_prefix, read_index, read_tag
from skillforge.refs import check_name, check_version, version_key
from skillforge.registry import Registry
from skillforge.registry.packs import list_recorded_packs
from skillforge.store.s3 import S3Store


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


def list_packs(url: str, *, endpoint_url: str | None = None, remote: S3Store | None = None,
               name: str | None = None) -> list[PackInfo]:
    """The pack versions published under bucket root `url`, sorted by name and semantic version.

    Each tag and index is read and verified; a damaged pack is listed with `error` set instead of
    failing the whole listing.
    """
    remote = open_remote(url, endpoint_url, remote)
    if name is not None:
        check_name(name)
    remote.check_bucket()
    base = packs_prefix(remote)
    found: list[tuple[str, str]] = []
    for obj in remote.list_keys(base + (f"{name}/" if name else "")):
        m = TAG_KEY_RE.match(obj["Key"][len(base):])
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
            tag = read_tag(remote, pname, pversion)
            if tag is None:
                continue  # deleted while listing
            info.index_digest, info.published = tag.index, tag.published
            index, _ = read_index(remote, pname, pversion, tag)
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
