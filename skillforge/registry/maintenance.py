"""The index against the blob store: rebuild it from blobs, collect unreferenced blobs, verify them.

The blobs are the truth and the index a view of them, so each of these walks the store. A store is
also where untrusted bytes land (pulled packs, a shared bucket), so a bad blob never stops a walk:
`reindex` reports it and goes on. Headers are parsed only by `artifact.read_header`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from skillforge.artifact import read_header
from skillforge.errors import NotFound, SkillforgeError
from skillforge.registry.registry import Registry
from skillforge.store import STAGING_GRACE_S

if TYPE_CHECKING:
    from skillforge.store import BlobStore

GC_GRACE_S = 600.0  # an unreferenced blob younger than this may be a compile between put and record


def reindex(registry: Registry, store: BlobStore) -> dict[str, Any]:
    """Rebuild the index from the store: index every artifact blob not yet indexed, drop rows whose
    blob is gone.

    Each blob stands on its own: one that is corrupt, not an artifact, or hostile (any
    SkillforgeError from the store or from `artifact.read_header`, the one header parser) is
    counted in `invalid` and listed in `problems` with the reason, and the others are still
    indexed. `skipped` counts valid artifacts another indexed blob already serves.
    """
    present = set(store.digests())
    known = registry.artifact_digests()  # not pack blobs: only artifact rows are rebuilt
    removed = 0
    for digest in sorted(known - present):
        registry.remove_artifact(digest)
        removed += 1
    indexed = len(known & present)
    skipped = 0
    problems: list[dict[str, str]] = []
    for digest in sorted(present - known):
        try:
            path = store.local_path(digest)
            meta, _ = read_header(path, source=digest)
            if registry.record_artifact(meta, digest, store.size(digest)):
                indexed += 1
            else:
                skipped += 1  # another blob already serves this (name, version, fingerprint, anchor)
        except SkillforgeError as exc:
            problems.append({"digest": digest, "error": f"{type(exc).__name__}: {exc}"})
    return {"indexed": indexed, "skipped": skipped, "invalid": len(problems), "removed": removed,
            "problems": problems}


def gc(registry: Registry, store: BlobStore, grace_s: float = GC_GRACE_S,
       staging_grace_s: float = STAGING_GRACE_S) -> dict[str, int]:
    """Delete blobs the index does not reference, and staging files that killed processes left.

    Blobs younger than `grace_s` are kept (reported as `kept_recent`): compile puts the blob first and
    records it second, and gc must not win that race. Staging files (half-written blobs, downloads,
    compiles) untouched for `staging_grace_s` belong to no running process and are removed.
    """
    candidates = list(store.digests())  # listed before reading references: newer blobs are not candidates
    referenced = registry.referenced_digests()
    removed = freed = kept = 0
    for digest in candidates:
        if digest in referenced:
            continue
        try:
            if grace_s > 0 and store.age_s(digest) < grace_s:
                kept += 1
                continue
        except NotFound:
            continue
        freed += store.delete(digest)
        removed += 1
    staged, staged_bytes = store.clean_staging(staging_grace_s)
    return {"removed": removed, "freed_bytes": freed, "kept_recent": kept, "staging_removed": staged,
            "staging_freed_bytes": staged_bytes}


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
