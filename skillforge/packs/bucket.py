"""Where packs live in a bucket, and reading their documents back without trusting the bucket.

Layout under `s3://bucket/prefix`:

    blobs/sha256/<hex>                  plain artifact blobs (the S3Store layout: SKILLFORGE_STORE can share it)
    blobs/zstd-planes/sha256/<hex>      the same blobs encoded (codec.py), named by their plain digest
    packs/<name>/<version>/<hex>.json   the pack's index document, content-addressed by its sha256
    packs/<name>/<version>.json         the tag: names the index digest; its existence publishes the version

Every read is bounded (tag and index have size limits, checked before the body is read) and checked
(the index must hash to the digest the tag names, and describe the version it is stored under). Blobs
are sized before they are downloaded (exactly for plain ones, by zstd's worst case for encoded ones),
staged inside the data home, decoded without ever writing more than the index records, and hashed;
the caller gets a file whose bytes are the blob the index names, or an error and no file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from skillforge.errors import BadReference, CorruptBlob, NotFound, PackError
from skillforge.packs import codec
from skillforge.packs.index import MAX_INDEX_BYTES, MAX_TAG_BYTES, PLAIN, PackEntry, PackIndex, Tag, sha
from skillforge.refs import digest_hex
from skillforge.store import BlobStore
from skillforge.store.crashpoint import crash_point
from skillforge.store.local import hash_file
from skillforge.store.s3 import ObjectTooLarge, S3Store

TAG_KEY_RE = re.compile(r"^([a-z0-9][a-z0-9-]{0,63})/([^/]+)\.json$")


def open_remote(root: str, endpoint_url: str | None, remote: S3Store | None) -> S3Store:
    """The bucket root `s3://bucket/prefix` as an S3Store (or `remote` itself when given)."""
    if remote is not None:
        return remote
    if not root.lower().startswith("s3://"):
        raise BadReference(f"packs live in S3-compatible buckets: expected s3://bucket/prefix, got {root!r}")
    return S3Store.from_url(root, endpoint_url=endpoint_url)


def tag_key(remote: S3Store, name: str, version: str) -> str:
    return remote.key("packs", name, f"{version}.json")


def index_key(remote: S3Store, name: str, version: str, digest: str) -> str:
    return remote.key("packs", name, version, f"{digest_hex(digest)}.json")


def packs_prefix(remote: S3Store) -> str:
    """The key prefix under which every tag lives (`<prefix>/packs/`)."""
    return remote.key("packs") + "/"


def read_tag(remote: S3Store, name: str, version: str) -> Tag | None:
    """The verified tag of name@version, or None if the version is not published."""
    where = f"{remote.url}/{name}@{version}"
    try:
        raw = remote.get_object(tag_key(remote, name, version), MAX_TAG_BYTES)
    except ObjectTooLarge as exc:
        raise PackError(f"{where}: the pack's tag object is too large; the pack was tampered with") from exc
    if raw is None:
        return None
    return Tag.parse(raw, name, version, where)


def read_index(remote: S3Store, name: str, version: str, tag: Tag) -> tuple[PackIndex, bytes]:
    """The index the tag names, checked against the tag's digest and size, parsed strictly; and its bytes."""
    where = f"{remote.url}/{name}@{version}"
    try:
        raw = remote.get_object(index_key(remote, name, version, tag.index), MAX_INDEX_BYTES)
    except ObjectTooLarge as exc:
        raise PackError(f"{where}: the index object is larger than the {MAX_INDEX_BYTES} byte limit; refusing the "
                        "pack") from exc
    if raw is None:
        raise PackError(f"{where}: the index {tag.index} named by the tag is missing from the bucket; republish the pack")
    actual = sha(raw)
    if len(raw) != tag.size or actual != tag.index:
        raise PackError(f"{where}: the index was tampered with or damaged: it hashes to {actual} ({len(raw)} bytes), "
                        f"but the tag names {tag.index} ({tag.size} bytes); refusing the pack")
    index = PackIndex.parse(raw, where)
    if (index.name, index.version) != (name, version):
        raise PackError(f"{where}: the index describes {index.ref}; refusing the pack")
    return index, raw


# -- blobs -----------------------------------------------------------------------------------------

def blob_key(remote: S3Store, entry: PackEntry) -> str:
    """Where `entry`'s blob lives: the plain S3Store key, or under its encoding, by its plain digest."""
    if entry.encoding == PLAIN:
        return remote.blob_key(entry.digest)
    return remote.key("blobs", entry.encoding, "sha256", digest_hex(entry.digest))


def blob_intact(remote: S3Store, entry: PackEntry) -> bool:
    """True if the bucket holds `entry`'s blob as skillforge wrote it (HEAD only: size and metadata).

    Anything else counts as missing and is uploaded again, which repairs an overwritten object;
    readers still verify every byte they get.
    """
    head = remote.head(blob_key(remote, entry))
    if entry.encoding == PLAIN:
        return remote.intact(head, entry.digest, entry.size)
    if head is None or int(head.get("ContentLength", -1)) > codec.max_encoded_size(entry.size):
        return False
    meta = head.get("Metadata") or {}
    return (meta.get("sha256"), meta.get("encoding"), meta.get("size")) == \
        (digest_hex(entry.digest), entry.encoding, str(entry.size))


def upload_blob(remote: S3Store, store: BlobStore, entry: PackEntry, on_bytes: Callable[[int], None]) -> int:
    """Upload `entry`'s blob from `store`, encoded as the entry says; the bytes sent.

    `on_bytes` is told progress in plain bytes (an encoded upload's progress is scaled to them).
    """
    path = store.local_path(entry.digest)
    if path.stat().st_size != entry.size:
        raise CorruptBlob(f"blob {entry.digest} in {store.url} is {path.stat().st_size} bytes, the index says "
                          f"{entry.size}; run `skillforge verify` and recompile")
    metadata = {"sha256": digest_hex(entry.digest)}
    if entry.encoding == PLAIN:
        remote.upload_file(path, blob_key(remote, entry), callback=on_bytes, extra={"Metadata": metadata})
        return entry.size
    with store.staging(f".{entry.encoding}") as encoded:
        width, head = codec.plane_layout(path)
        sent = codec.encode(path, encoded, width, head)
        scale = entry.size / sent
        remote.upload_file(encoded, blob_key(remote, entry), callback=lambda n: on_bytes(round(n * scale)),
                           extra={"Metadata": {**metadata, "encoding": entry.encoding, "size": str(entry.size)}})
    return sent


def download_object(remote: S3Store, entry: PackEntry, part: Path, on_bytes: Callable[[int], None]) -> int:
    """Download `entry`'s object as the bucket stores it into the staging file `part`; the bytes received.

    Its size is checked before a byte is fetched: exactly the recorded size for a plain blob, at most
    zstd's worst case of it for an encoded one. The content is not trusted yet: see `verified_blob`.
    """
    limit = {"size": entry.size} if entry.encoding == PLAIN else {"max_size": codec.max_encoded_size(entry.size)}
    key = blob_key(remote, entry)
    try:
        return remote.download(key, part, callback=_crashing(on_bytes), **limit)
    except NotFound:
        raise NotFound(f"blob {entry.digest} is not in {remote.url} (no object {remote.where(key)}); republish the "
                       "pack") from None


def verified_blob(entry: PackEntry, part: Path, decoded: Path, where: str) -> Path:
    """The staging file that holds `entry`'s blob, checked against its digest: `part` itself for a plain
    object, `decoded` (written here, never beyond the recorded size) for an encoded one.

    CorruptBlob if the bytes are not the blob the index names; nothing is installed by this.
    """
    if entry.encoding == PLAIN:
        actual, _ = hash_file(part)
        blob = part
    else:
        actual = codec.decode(part, decoded, entry.size, f"{where}: blob {entry.digest}")
        blob = decoded
    if actual != entry.digest:
        raise CorruptBlob(f"{where}: blob {entry.digest} is corrupt: the bytes of its object hash to {actual}; it was "
                          "not kept. The object in the bucket was tampered with or damaged; republish it")
    return blob


def _crashing(on_bytes: Callable[[int], None]) -> Callable[[int], None]:
    """`on_bytes`, plus the crash-test hook "pull:download" once bytes have arrived (see crashpoint)."""
    def callback(n: int) -> None:
        on_bytes(n)
        crash_point("pull:download")

    return callback
