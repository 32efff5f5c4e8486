"""Pulling: a pack version from a bucket -> this home's store and index, verified, resumable.

A pack from a bucket is data, never code: every blob is size-checked before and hashed after download
(after decoding, for encoded blobs, which never decode to more than the size the index records),
its safetensors header validated by `artifact.read_header` (the one parser of artifact headers) and
matched against the index, all in a staging file inside the data home before it becomes a blob. A
tampered pack is refused (CorruptBlob / PackError) and what this pull fetched is dropped. Pulls are
resumable: each verified blob is installed as soon as it is complete, and a later pull skips blobs
already there (re-verified locally, not re-downloaded). The SQL index is written only once every
selected blob is present and verified, so a failed pull changes nothing there; `gc`'s grace period
protects the blobs of an interrupted pull until it is resumed, and staging files that a killed pull
left behind are removed by the next pull and by `gc` once they are older than the staging grace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Any

from skillforge.artifact import ArtifactMeta, read_header
from skillforge.errors import CorruptBlob, ManifestError, NotFound, PackError
from skillforge.packs.bucket import download_object, open_remote, read_index, read_tag, verified_blob
from skillforge.packs.home import opened, progress_bar
from skillforge.packs.index import PackEntry, PackIndex, PackSkill
from skillforge.refs import PackRef
from skillforge.registry import Registry
from skillforge.registry.packs import PackArtifactRow, check_pack_unchanged, record_pack, skill_version
from skillforge.store import BlobStore
from skillforge.store.crashpoint import crash_point
from skillforge.store.s3 import S3Store


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
    downloaded_bytes: int  # the downloaded blobs' own (plain) bytes
    received_bytes: int  # what came over the wire: the downloaded blobs as encoded on the bucket
    skipped: int
    recorded: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _verify(entry: PackEntry, skill: PackSkill, part: Path, decoded: Path, where: str) -> tuple[Path, ArtifactMeta]:
    """Digest first (decoding if needed), then the header, then agreement with the index."""
    blob = verified_blob(entry, part, decoded, where)
    meta, _ = read_header(blob, source=f"{where}: blob {entry.digest}")
    _check_meta(meta, entry, skill, where)
    return blob, meta


def _fetch(remote: S3Store, store: BlobStore, index: PackIndex, todo: list[PackEntry], where: str,
           on_bytes: Callable[[int], None], installed: Callable[[PackEntry, ArtifactMeta], None]) -> int:
    """Download, verify and install `todo`, one blob after another; the bytes received. `on_bytes`
    counts blob bytes: received bytes as they arrive, and when an encoded blob is in, the bytes its
    encoding saved, so the count ends at the blobs' size.

    Verifying (decoding, hashing, parsing) blob i runs on a worker thread while blob i+1 downloads, so
    a pull costs about the larger of transfer and decoding, not their sum; at most two blobs are
    staged at once. A blob becomes visible (`put_staged`) only after its check passed; whatever is
    staged when anything fails is removed once the worker has let go of it.
    """
    received = 0
    with ExitStack() as staged, ThreadPoolExecutor(max_workers=1, thread_name_prefix="skillforge-verify") as verifier:
        pending: tuple[PackEntry, ExitStack, Future[tuple[Path, ArtifactMeta]]] | None = None

        def install(entry: PackEntry, files: ExitStack, checked: Future[tuple[Path, ArtifactMeta]]) -> None:
            blob, meta = checked.result()
            crash_point("pull:verified")
            store.put_staged(blob, entry.digest)
            files.close()
            crash_point("pull:installed")
            installed(entry, meta)

        for entry in todo:
            files = staged.enter_context(ExitStack())
            part = files.enter_context(store.staging(".part"))
            decoded = files.enter_context(store.staging(".tmp"))
            got = download_object(remote, entry, part, on_bytes)
            on_bytes(max(0, entry.size - got))
            received += got
            if pending is not None:
                install(*pending)
            skill = index.skill(entry.skill, entry.version)
            pending = (entry, files, verifier.submit(_verify, entry, skill, part, decoded, where))
        if pending is not None:
            install(*pending)
    return received


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
    remote = open_remote(pref.root, endpoint_url, remote)
    where = f"{remote.url}/{name}@{version}"
    with ExitStack() as stack:
        registry, store = opened(stack, registry, store)
        store.clean_staging()  # what killed pulls left behind, old enough that no running pull owns it
        tag = read_tag(remote, name, version)
        if tag is None:
            remote.check_bucket()
            raise NotFound(f"no pack {name}@{version} in {remote.url}; see `skillforge packs ls {remote.url}`")
        index, raw = read_index(remote, name, version, tag)
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

        def installed(entry: PackEntry, meta: ArtifactMeta) -> None:
            downloaded.append(entry.digest)
            metas[entry.digest] = meta
            if on_blob is not None:
                on_blob(entry.digest)

        try:
            with progress_bar(sum(e.size for e in todo), f"pull {name}@{version}", progress) as bar:
                received = _fetch(remote, store, index, todo, where, bar.update, installed)
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
            downloaded_bytes=sum(e.size for e in todo if e.digest in set(downloaded)), received_bytes=received,
            skipped=skipped,
            recorded=recorded, seconds=time.monotonic() - started,
        )
