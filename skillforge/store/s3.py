"""Blobs in an S3-compatible bucket: `s3://bucket/prefix` holds `<prefix>/blobs/sha256/<hex>`.

The same `BlobStore` protocol as `LocalStore`, so `SKILLFORGE_STORE=s3://bucket/prefix` makes compile
write straight to the bucket and splice read through a local copy. Packs (skillforge.packs) live under
the same prefix and share these blobs.

Why it is built this way:
- Endpoint, credentials and region come from boto3's usual sources (s3client.py: the client, bucket
  URLs, and boto errors turned into messages that say what to check). Nothing here hard-codes AWS.
- A bucket is not trusted: every byte read back is hashed against its digest before anyone sees it.
  `local_path` downloads into a staging file of a LocalStore cache (`<SKILLFORGE_HOME>/s3-cache`),
  verifies size and sha256, and only then renames it into place; a bad object never lands in the cache.
  The cache's staging folder is this store's `staging()` too, so nothing is staged outside the home.
- Objects are content-addressed, so a put is skipped when the object exists with the right size and
  the sha256 metadata skillforge writes (HEAD first); anything else is uploaded again, which repairs an
  overwritten object. Big files go up and down as multipart transfers (`TransferConfig`, 8 MiB parts).
- `put_if_absent` is a conditional put (`If-None-Match: *`): of two racing writers exactly one wins.
  `supports_conditional_writes` checks that an endpoint really honours it (some ignore the header).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from skillforge import config
from skillforge.errors import BadReference, CorruptBlob, NotFound, StoreError
from skillforge.refs import digest_hex
from skillforge.store.local import STAGING_GRACE_S, LocalStore, hash_file
from skillforge.store.s3client import BUCKET_RE, MAX_CONCURRENCY, error_code, make_client, parse_s3_url, s3_errors

MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNKSIZE = 8 * 1024 * 1024
CHUNK = 1024 * 1024
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


class ObjectTooLarge(StoreError):
    """An object is larger than the caller allows itself to read (untrusted input)."""


_conditional_support: dict[tuple[str, str], bool] = {}
_conditional_lock = threading.Lock()


class S3Store:
    """A content-addressed blob prefix in a bucket. See the module docstring for the guarantees."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client: Any = None,
                 cache_dir: str | os.PathLike[str] | None = None,
                 multipart_threshold: int = MULTIPART_THRESHOLD) -> None:
        if not BUCKET_RE.match(bucket):
            raise BadReference(f"invalid bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self._client = client
        self._client_lock = threading.Lock()
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=MULTIPART_CHUNKSIZE,
                                       max_concurrency=MAX_CONCURRENCY, use_threads=True)

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None, **kwargs: Any) -> S3Store:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, endpoint_url=endpoint_url, **kwargs)

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = make_client(self.endpoint_url)
        return self._client

    @property
    def cache(self) -> LocalStore:
        """The verified local copies (`<SKILLFORGE_HOME>/s3-cache` unless given), a LocalStore."""
        return LocalStore(self._cache_dir if self._cache_dir is not None else config.home() / "s3-cache")

    def key(self, *parts: str) -> str:
        """An object key under this store's prefix (callers pass validated names only)."""
        return "/".join([self.prefix, *parts]) if self.prefix else "/".join(parts)

    def blob_key(self, digest: str) -> str:
        return self.key("blobs", "sha256", digest_hex(digest))

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD response, or None if it does not exist."""
        try:
            with s3_errors("look up", self.where(key)):
                return self.client.head_object(Bucket=self.bucket, Key=key)
        except NotFound:
            return None

    @staticmethod
    def intact(head: dict[str, Any] | None, digest: str, size: int) -> bool:
        """True if a HEAD shows the blob as skillforge wrote it: the right size and our sha256 metadata.

        Anything else (absent, other size, written by another tool or overwritten) gets uploaded again,
        which for a content-addressed object is always safe. Readers still hash every byte they get.
        """
        if head is None or int(head.get("ContentLength", -1)) != size:
            return False
        return (head.get("Metadata") or {}).get("sha256") == digest_hex(digest)

    def check_bucket(self) -> None:
        """StoreError unless the bucket exists and is reachable with these credentials."""
        try:
            with s3_errors("open the bucket", self.url):
                self.client.head_bucket(Bucket=self.bucket)
        except NotFound:
            raise StoreError(f"the bucket {self.bucket!r} does not exist at this endpoint; create it, or check "
                             "the URL and AWS_ENDPOINT_URL / --endpoint-url") from None

    def upload_file(self, path: Path, key: str, callback: Callable[[int], None] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
        with s3_errors("upload", self.where(key)):
            self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra or None, Config=self.transfer,
                                    Callback=callback)

    def put_object(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with s3_errors("upload", self.where(key)):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get_object(self, key: str, max_bytes: int) -> bytes | None:
        """The object's bytes, or None if it does not exist; ObjectTooLarge if it exceeds `max_bytes`."""
        try:
            with s3_errors("download", self.where(key)):
                resp = self.client.get_object(Bucket=self.bucket, Key=key)
                length = int(resp.get("ContentLength", 0))
                body = resp["Body"]
                try:
                    if length > max_bytes:
                        raise ObjectTooLarge(f"{self.where(key)} is {length} bytes, more than the {max_bytes} allowed; "
                                         "refusing to read it")
                    data = body.read(max_bytes + 1)
                finally:
                    body.close()
        except NotFound:
            return None
        if len(data) > max_bytes:
            raise ObjectTooLarge(f"{self.where(key)} is more than {max_bytes} bytes; refusing to read it")
        return data

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> bool:
        """Create the object only if no object has that key (`If-None-Match: *`); False if one exists.

        A 409 (another conditional write to the key in flight) is retried; the retry then sees the
        winner's object and returns False.
        """
        for attempt in range(6):
            try:
                with s3_errors("write", self.where(key)):
                    try:
                        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                                               IfNoneMatch="*")
                        return True
                    except ClientError as exc:
                        code, status = error_code(exc)
                        if status == 412 or code == "PreconditionFailed":
                            return False
                        if (status == 409 or code == "ConditionalRequestConflict") and attempt < 5:
                            time.sleep(0.05 * (attempt + 1))
                            continue
                        if status == 501 or code == "NotImplemented":
                            raise StoreError(
                                f"the S3 endpoint of {self.url} does not implement conditional writes "
                                "(If-None-Match); publishing there could let two publishers overwrite each other"
                            ) from exc
                        raise
            except NotFound:  # a 404 here means the bucket is gone
                raise StoreError(f"cannot write {self.where(key)}: the bucket does not exist") from None
        return False

    def supports_conditional_writes(self) -> bool:
        """True if the endpoint refuses a second `If-None-Match: *` put of one key (probed once per process)."""
        endpoint = str(getattr(self.client.meta, "endpoint_url", ""))
        cache_key = (endpoint, self.bucket)
        with _conditional_lock:
            if cache_key in _conditional_support:
                return _conditional_support[cache_key]
        probe = self.key("packs", ".probe", uuid.uuid4().hex)
        try:
            first = self.put_if_absent(probe, b"probe", content_type="text/plain")
            second = self.put_if_absent(probe, b"probe", content_type="text/plain")
            ok = first and not second
        except StoreError as exc:
            if "does not implement conditional writes" not in str(exc):
                raise
            ok = False
        finally:
            try:
                with s3_errors("delete", self.where(probe)):
                    self.client.delete_object(Bucket=self.bucket, Key=probe)
            except (NotFound, StoreError):
                pass
        with _conditional_lock:
            _conditional_support[cache_key] = ok
        return ok

    def list_keys(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object under `prefix` (a key prefix), in key order, as ListObjectsV2 entries."""
        with s3_errors("list", self.where(prefix)):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", []) or []

    def download(self, key: str, dest: Path, *, size: int | None = None, max_size: int | None = None,
                 callback: Callable[[int], None] | None = None) -> int:
        """Download object `key` into the existing local file `dest` (overwritten), fsynced; its length.

        The size is checked before downloading (equal to `size`, at most `max_size`) and again after,
        so an untrusted object never fills the disk beyond what the caller expects. NotFound if absent;
        CorruptBlob on a size mismatch. Callers stage `dest` (see `staging`) and verify the content.
        """
        head = self.head(key)
        if head is None:
            raise NotFound(f"{self.where(key)} does not exist; republish it or compile the skill again")
        remote_size = int(head["ContentLength"])
        if (size is not None and remote_size != size) or (max_size is not None and remote_size > max_size):
            want = f"{size} were expected" if size is not None else f"at most {max_size} were expected"
            raise CorruptBlob(f"{self.where(key)} is {remote_size} bytes, but {want}; the object was tampered with "
                              "or damaged, so it was not downloaded; republish it")
        with s3_errors("download", self.where(key)):
            self.client.download_file(self.bucket, key, str(dest), Config=self.transfer, Callback=callback)
        try:
            with open(dest, "rb+") as fh:
                length = os.fstat(fh.fileno()).st_size
                os.fsync(fh.fileno())
        except OSError as exc:
            raise StoreError(f"cannot write the download of {self.where(key)} to {dest}: {exc}") from exc
        if length != remote_size:
            raise CorruptBlob(f"{self.where(key)} changed while it was downloaded ({length} bytes, not {remote_size}); "
                              "retry")
        return length

    def fetch(self, digest: str, dest: Path, size: int | None = None,
              callback: Callable[[int], None] | None = None) -> None:
        """Download blob `digest` into the local file `dest` and verify it (size, then sha256).

        A mismatch raises CorruptBlob; `dest` then holds unverified bytes, which the caller's staging
        context removes.
        """
        key = self.blob_key(digest)
        try:
            self.download(key, dest, size=size, callback=callback)
        except NotFound:
            raise NotFound(f"blob {digest} is not in {self.url} (no object {self.where(key)}); republish it or "
                           "compile the skill again") from None
        actual, length = hash_file(dest)
        if actual != digest:
            raise CorruptBlob(
                f"blob {digest} downloaded from {self.url} is corrupt: its {length} bytes hash to {actual}; "
                "it was not kept. The object in the bucket was tampered with or damaged; republish it"
            )

    # -- BlobStore: writes ---------------------------------------------------------------------
    def put_file(self, path: Path) -> tuple[str, int]:
        """Upload a file under its digest (multipart when large); no-op if the object is there (`intact`).

        The file is hashed first and checked unchanged after the upload; a file that changed is refused
        and its object removed, so no object ever sits under the wrong address.
        """
        path = Path(path)
        try:
            before = os.stat(path)
            digest, size = hash_file(path)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        key = self.blob_key(digest)
        if self.intact(self.head(key), digest, size):
            return digest, size
        self.upload_file(path, key, extra={"Metadata": {"sha256": digest_hex(digest)}})
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or after.st_size != size:
            self.delete_key(key)
            raise StoreError(f"{path} changed while it was being uploaded; nothing was stored, retry once it is complete")
        return digest, size

    def staging(self, suffix: str = ".tmp") -> AbstractContextManager[Path]:
        """A staging file in the local cache's `blobs/tmp/` (inside the data home); see LocalStore."""
        return self.cache.staging(suffix)

    def put_staged(self, path: Path, digest: str | None = None) -> tuple[str, int]:
        """Upload a staged file under its digest (hashed again while uploading) and remove it."""
        try:
            return self.put_file(path)
        finally:
            Path(path).unlink(missing_ok=True)

    def clean_staging(self, older_than_s: float = STAGING_GRACE_S) -> tuple[int, int]:
        """Remove the local cache's stale staging files (killed downloads); (files, bytes) removed."""
        return self.cache.clean_staging(older_than_s)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        digest, size = f"sha256:{hashlib.sha256(data).hexdigest()}", len(data)
        key = self.blob_key(digest)
        if self.intact(self.head(key), digest, size):
            return digest, size
        with s3_errors("upload", self.where(key)):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata={"sha256": digest_hex(digest)})
        return digest, size

    # -- BlobStore: reads ----------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return self.head(self.blob_key(digest)) is not None

    def _head_blob(self, digest: str) -> dict[str, Any]:
        head = self.head(self.blob_key(digest))
        if head is None:
            raise NotFound(f"blob {digest} is not in the store {self.url}; recompile the skill or pull its pack")
        return head

    def size(self, digest: str) -> int:
        return int(self._head_blob(digest)["ContentLength"])

    def age_s(self, digest: str) -> float:
        """Seconds since the object was written; `gc` spares young blobs (in-flight compiles)."""
        modified = self._head_blob(digest)["LastModified"]
        return max(0.0, time.time() - modified.timestamp())

    def local_path(self, digest: str) -> Path:
        """A verified local copy in the cache; downloaded (and hashed) once, then reused."""
        cache = self.cache
        try:
            return cache.local_path(digest)
        except NotFound:
            pass
        except CorruptBlob:
            cache.delete(digest)  # a damaged cached copy: fetch it again
        with cache.staging(".part") as tmp:
            self.fetch(digest, tmp)
            cache.put_staged(tmp, digest)
        return cache.local_path(digest)

    def read_bytes(self, digest: str) -> bytes:
        cache = self.cache
        if cache.has(digest):
            try:
                return cache.read_bytes(digest)
            except (CorruptBlob, NotFound):
                cache.delete(digest)
        key = self.blob_key(digest)
        try:
            with s3_errors("download", self.where(key)):
                data = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except NotFound:
            raise NotFound(f"blob {digest} is not in the store {self.url}; recompile the skill or pull its pack") from None
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != digest:
            raise CorruptBlob(f"blob {digest} in {self.url} is corrupt: its bytes hash to {actual}; recompile or "
                              "republish the affected skills")
        return data

    def verify(self, digest: str) -> bool:
        """Re-hash the object itself now (not the cache); True if intact. NotFound if absent."""
        key = self.blob_key(digest)
        h = hashlib.sha256()
        try:
            with s3_errors("download", self.where(key)):
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                try:
                    for chunk in body.iter_chunks(CHUNK):
                        h.update(chunk)
                finally:
                    body.close()
        except NotFound:
            raise NotFound(f"blob {digest} is not in the store {self.url}") from None
        return f"sha256:{h.hexdigest()}" == digest

    def delete_key(self, key: str) -> None:
        """Remove object `key` (any object under this prefix, e.g. a pack's index); absent is fine."""
        try:
            with s3_errors("delete", self.where(key)):
                self.client.delete_object(Bucket=self.bucket, Key=key)
        except NotFound:
            pass

    def delete(self, digest: str) -> int:
        """Remove the object (and any cached copy); bytes freed in the bucket (0 if absent)."""
        key = self.blob_key(digest)
        head = self.head(key)
        self.cache.delete(digest)
        if head is None:
            return 0
        self.delete_key(key)
        return int(head["ContentLength"])

    def digests(self) -> Iterator[str]:
        """Every stored digest, sorted (S3 lists keys in order). Stray names are not blobs."""
        base = self.key("blobs", "sha256") + "/"
        for entry in self.list_keys(base):
            name = entry["Key"][len(base):]
            if _HEX_RE.match(name):
                yield f"sha256:{name}"
