"""Where packs live in a bucket, and reading their documents back without trusting the bucket.

Layout under `s3://bucket/prefix`:

    blobs/sha256/<hex>                  artifact blobs (the S3Store layout, so SKILLFORGE_STORE can share it)
    packs/<name>/<version>/<hex>.json   the pack's index document, content-addressed by its sha256
    packs/<name>/<version>.json         the tag: names the index digest; its existence publishes the version

Every read is bounded (tag and index have size limits, checked before the body is read) and checked
(the index must hash to the digest the tag names, and describe the version it is stored under).
"""

from __future__ import annotations

import re

from skillforge.errors import BadReference, PackError
from skillforge.packs.index import MAX_INDEX_BYTES, MAX_TAG_BYTES, PackIndex, Tag, sha
from skillforge.refs import digest_hex
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
