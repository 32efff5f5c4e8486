"""Publishing: compiled skills of this home -> an immutable pack version in a bucket.

Publishing uploads missing blobs first (HEAD each; a blob of the wrong size or without skillforge's
sha256 metadata counts as missing, so republishing repairs an overwritten one), zstd-planes encoded
(codec.py; the index records each blob's encoding, digest and size stay those of the plain bytes,
and a version first published plain keeps its plain blobs when republished), then the index, and
writes the tag last with a conditional put (`If-None-Match: *`). A reader that sees a tag therefore
finds everything it names, and of two racing publishers exactly one creates the tag; the other gets
PackError and removes its own index. The endpoint is probed once per process to make sure it honours
the condition; one that ignores it is refused. A published version is immutable: another index under
an existing tag is refused before anything is uploaded; the same content again is a no-op (missing
blobs are re-uploaded, repairing the pack). Whatever is published is first parsed by the reader's own
checks, so it is pullable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from skillforge.errors import NotFound, PackError, SkillforgeError
from skillforge.packs.bucket import blob_intact, index_key, open_remote, read_index, read_tag, tag_key, upload_blob
from skillforge.packs.home import opened, progress_bar
from skillforge.packs.index import (MAX_TEXT_CHARS, ZSTD_PLANES, PackEntry, PackIndex, PackSkill, Tag, parse_pack_spec,
                                    sha)
from skillforge.refs import SkillRef, check_name, check_version, version_key
from skillforge.registry import Registry
from skillforge.registry.packs import PackArtifactRow, record_pack, skill_version
from skillforge.store import BlobStore
from skillforge.store.s3 import S3Store


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    uploaded_bytes: int  # the uploaded blobs' own (plain) bytes
    sent_bytes: int  # what went over the wire: the uploaded blobs as encoded on the bucket
    created: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_index(registry: Registry, name: str, version: str, skills: Sequence[str],
                fingerprint: str | None = None, encoding: str = ZSTD_PLANES) -> PackIndex:
    """The index of a pack of `skills` (`name`, `name@version`, `name@sha256:...`) as compiled here.

    `name@version` takes every artifact of that version (every model and anchor, or only
    `fingerprint`'s); a bare name takes the highest version that has artifacts. Every blob is to be
    stored with `encoding` (see index.ENCODINGS).
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
                                 meta.dtype, encoding))
    index = PackIndex(check_name(name), check_version(version), tuple(pack_skills), tuple(entries))
    # Whatever we publish must be pullable: run the reader's checks on it now.
    PackIndex.parse(index.to_bytes(), f"{name}@{version}")
    return index


def publish(skills: Sequence[str], pack: str, to: str, *, registry: Registry | None = None,
            store: BlobStore | None = None, fingerprint: str | None = None, endpoint_url: str | None = None,
            remote: S3Store | None = None, progress: bool = False, encoding: str = ZSTD_PLANES,
            before_visible: Callable[[], None] | None = None) -> PublishResult:
    """Publish `skills` as pack `pack` (`name@version`) to the bucket root `to` (`s3://bucket/prefix`).

    Uploads only blobs the bucket lacks, then the index, then makes the version visible with a
    conditional put. Refuses (PackError) a version that exists with other content, or that a racing
    publisher created first with other content; the same content again is a no-op (`created=False`).
    `registry`/`store` default to the current home's; `fingerprint` keeps one model's artifacts.
    `encoding` is how blobs travel: "zstd-planes" (default: fewer bytes, decoding costs CPU on pull)
    or "none" (for links faster than decoding; see scripts/bench_packs.py); it does not change what
    the pack contains, so republishing with the other encoding is the same content.
    `before_visible` runs just before the tag is written (tests use it to line up racing publishers).
    """
    started = time.monotonic()
    name, version = parse_pack_spec(pack)
    remote = open_remote(to, endpoint_url, remote)
    with ExitStack() as stack:
        registry, store = opened(stack, registry, store)
        index = build_index(registry, name, version, skills, fingerprint, encoding)
        data = index.to_bytes()
        index_digest = sha(data)
        ref = f"{remote.url}/{name}@{version}"

        remote.check_bucket()
        existing = read_tag(remote, name, version)
        if existing is not None and existing.index != index_digest:
            theirs, raw = read_index(remote, name, version, existing)
            if not theirs.same_content(index):
                raise PackError(f"{ref} is already published with other content (index {existing.index}; yours is "
                                f"{index_digest}); published pack versions are immutable: publish a new version")
            index, data, index_digest = theirs, raw, existing.index  # same content, stored as it was first published
        if existing is None and not remote.supports_conditional_writes():
            raise PackError(f"the S3 endpoint of {remote.url} ignores conditional writes (If-None-Match), so two "
                            "publishers could overwrite each other's version; refusing to publish there")

        # 1. blobs the bucket lacks (HEAD first), 2. the index, 3. the tag.
        missing = [entry for entry in index.artifacts if not blob_intact(remote, entry)]
        sent_bytes = 0
        with progress_bar(sum(e.size for e in missing), f"publish {name}@{version}", progress) as bar:
            for entry in missing:
                sent_bytes += upload_blob(remote, store, entry, bar.update)
        key = index_key(remote, name, version, index_digest)
        head = remote.head(key)
        if head is None or int(head["ContentLength"]) != len(data):
            remote.put_object(key, data, content_type="application/json")

        created = False
        tag = existing
        if tag is None:
            if before_visible is not None:
                before_visible()
            mine = Tag(index_digest, len(data), _now())
            if remote.put_if_absent(tag_key(remote, name, version), mine.to_bytes(name, version)):
                seen = read_tag(remote, name, version)
                if seen is None or seen.index != index_digest:
                    raise PackError(f"{ref} was overwritten by another publisher right after this one created it; "
                                    "the endpoint does not honour conditional writes reliably")
                tag, created = mine, True
            else:
                tag = read_tag(remote, name, version)
                if tag is None or tag.index != index_digest:
                    if tag is not None:
                        remote.delete_key(key)  # our index; no tag names it
                    raise PackError(f"{ref} was published concurrently by another publisher with other content "
                                    f"(index {tag.index if tag else 'unknown'}); nothing of this publish was made "
                                    "visible: publish a new version")

        record_pack(registry, remote.url, name, version, index_digest, data.decode(), tag.published,
                    [PackArtifactRow(e.digest, e.skill, e.version, e.fingerprint, e.size) for e in index.artifacts])
        return PublishResult(
            ref=ref, name=name, version=version, index_digest=index_digest,
            skills=[s.ref for s in index.skills], fingerprints=index.fingerprints, artifacts=len(index.artifacts),
            bytes=index.bytes, uploaded=len(missing), uploaded_bytes=sum(e.size for e in missing),
            sent_bytes=sent_bytes, created=created,
            seconds=time.monotonic() - started,
        )
