"""Blob stores addressed by sha256 digest (`sha256:<64 hex>`): one protocol, chosen by URL.

Everything above this layer (registry, compile, splice, packs) talks to `BlobStore` only, so a home on
local disk and a bucket behave the same. `open_store` is the one place that maps URLs to stores.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from skillforge.errors import BadInput, StoreError
from skillforge.store.local import STAGING_GRACE_S, LocalStore

__all__ = ["STAGING_GRACE_S", "BlobStore", "LocalStore", "open_store"]


@runtime_checkable
class BlobStore(Protocol):
    """What every store offers. Reads are verified: bytes that do not hash to their digest raise
    CorruptBlob; a missing digest raises NotFound; malformed digests raise BadReference."""

    url: str

    def put_file(self, path: Path) -> tuple[str, int]:
        """Store a file under its digest (atomically; no-op if present); the source stays in place."""
        ...

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store bytes under their digest (atomically; no-op if present)."""
        ...

    def has(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int:
        """Size in bytes; NotFound if missing."""
        ...

    def local_path(self, digest: str) -> Path:
        """A local file holding the blob's verified bytes (for a local store, the blob itself)."""
        ...

    def read_bytes(self, digest: str) -> bytes:
        """The blob's verified bytes."""
        ...

    def verify(self, digest: str) -> bool:
        """Re-hash now, without any cache; True if intact."""
        ...

    def delete(self, digest: str) -> int:
        """Remove the blob; bytes freed (0 if absent)."""
        ...

    def age_s(self, digest: str) -> float:
        """Seconds since the blob was written; `gc` spares young blobs (a compile puts, then records)."""
        ...

    def staging(self, suffix: str = ".tmp") -> AbstractContextManager[Path]:
        """A new empty local file, inside the data home, for bytes that are to become a blob (a compile's
        output, a download); removed when the context exits unless `put_staged` consumed it."""
        ...

    def put_staged(self, path: Path, digest: str | None = None) -> tuple[str, int]:
        """Store a file from `staging()` under its digest, consuming it (a rename where possible).
        `digest`: the sha256 the caller already computed while writing it; None hashes it here."""
        ...

    def clean_staging(self, older_than_s: float = STAGING_GRACE_S) -> tuple[int, int]:
        """Remove staging files left by killed processes, untouched for `older_than_s`; (files, bytes)."""
        ...

    def digests(self) -> Iterator[str]:
        """Every stored digest."""
        ...


def open_store(url: str) -> BlobStore:
    """`file:///abs/path` (or a plain path) -> LocalStore; `s3://bucket/prefix` -> skillforge.store.s3.

    The S3 backend is imported lazily so that local use never needs boto3.
    """
    if "://" not in url:
        if not url:
            raise BadInput("empty store URL; set SKILLFORGE_STORE to file:///path or s3://bucket/prefix")
        return LocalStore(Path(url))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            # file://relative/path (e.g. a relative SKILLFORGE_HOME): keep the host part as a path.
            return LocalStore(Path(unquote(parts.netloc + parts.path)))
        if not parts.path:
            raise BadInput(f"store URL {url!r} has no path; set SKILLFORGE_STORE to file:///absolute/path")
        return LocalStore(Path(unquote(parts.path)))
    if scheme == "s3":
        try:
            module = importlib.import_module("skillforge.store.s3")
        except ModuleNotFoundError as exc:
            if exc.name == "skillforge.store.s3":
                raise StoreError(
                    f"cannot open {url}: S3 support comes from skillforge.store.s3, which this installation "
                    "does not have; use a file:// store or install a skillforge with S3 support"
                ) from exc
            raise StoreError(f"cannot open {url}: S3 support needs {exc.name!r}; pip install boto3") from exc
        cls = module.S3Store
        factory = getattr(cls, "from_url", cls)
        return factory(url)
    raise BadInput(f"unsupported store URL {url!r} (scheme {scheme!r}): set SKILLFORGE_STORE to file:///path or "
                   "s3://bucket/prefix")
