"""Talking to an S3-compatible endpoint: bucket URLs, the boto3 client, and errors users can act on.

Kept apart from the store (s3.py), which is about blobs: this is the plumbing any bucket user needs.
Endpoint, credentials and region come from boto3's usual sources (AWS_* variables, ~/.aws files,
instance roles); `AWS_ENDPOINT_URL` / `endpoint_url=` point at MinIO, R2 or Ceph, which get
path-style addressing. Nothing here hard-codes AWS.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from skillforge import config
from skillforge.errors import BadReference, NotFound, StoreError

MAX_CONCURRENCY = 8
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._@+=-]{1,255}$")


# S3 keys hold at most 1,024 bytes: the prefix, then up to ~210 bytes (name, version, 64-hex digest)
MAX_PREFIX_BYTES = 512


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"); refuses odd buckets and path tricks."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3":
        raise BadReference(f"invalid bucket URL {url!r}: expected s3://bucket/prefix")
    if parts.query or parts.fragment:
        raise BadReference(f"invalid bucket URL {url!r}: no ?query or #fragment allowed")
    bucket = parts.netloc
    if not BUCKET_RE.match(bucket) or ".." in bucket:
        raise BadReference(f"invalid bucket name {bucket!r} in {url!r}: use 3-63 lowercase letters, digits, '.' and '-'")
    prefix = parts.path.strip("/")
    if len(prefix.encode()) > MAX_PREFIX_BYTES:
        raise BadReference(f"the prefix in {url[:80]!r}... is {len(prefix.encode())} bytes; at most {MAX_PREFIX_BYTES} "
                           "(keys add about 210 bytes to it and S3 keys end at 1,024)")
    if prefix:
        for segment in prefix.split("/"):
            if not _SEGMENT_RE.match(segment) or segment in (".", ".."):
                raise BadReference(
                    f"invalid prefix {parts.path!r} in {url!r}: use segments of letters, digits and ._@+=- "
                    "separated by single '/'"
                )
    return bucket, prefix


_loader: Any = None
_loader_lock = threading.Lock()


def _session() -> boto3.session.Session:
    """A new boto3 session (credentials and settings read afresh) sharing one botocore data loader, so
    the S3 service model is parsed once per process, not once per client (a third of a second each)."""
    import botocore.session

    core = botocore.session.get_session()
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core)


def make_client(endpoint_url: str | None = None) -> Any:
    """An S3 client configured the way boto3 users expect; `endpoint_url` overrides AWS_ENDPOINT_URL.

    A custom endpoint (argument, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL) gets path-style addressing,
    which MinIO, Ceph and R2 all accept and which works with a bare IP address.
    """
    custom = endpoint_url or config.s3_endpoint_url()
    kwargs: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"},
                              "max_pool_connections": MAX_CONCURRENCY * 2}
    if custom:
        kwargs["s3"] = {"addressing_style": "path"}
    try:
        return _session().client("s3", endpoint_url=endpoint_url or None, config=BotoConfig(**kwargs))
    except (BotoCoreError, ValueError) as exc:
        raise StoreError(f"cannot create an S3 client ({exc}); check AWS_ENDPOINT_URL, AWS_REGION and ~/.aws/config") from exc


def error_code(exc: ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {}) or {}
    status = int((exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0)
    return str(err.get("Code", "")), status


@contextmanager
def s3_errors(what: str, where: str) -> Iterator[None]:
    """Turn boto errors into skillforge errors that say what to check. 404s become NotFound."""
    try:
        yield
    except ClientError as exc:
        code, status = error_code(exc)
        if code == "NoSuchBucket":
            raise StoreError(f"cannot {what}: the bucket of {where} does not exist at this endpoint; create it "
                             "or check the URL and AWS_ENDPOINT_URL") from exc
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            raise NotFound(f"cannot {what}: {where} does not exist") from exc
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            raise StoreError(f"cannot {what}: access to {where} was denied ({code}); check the AWS credentials "
                             "(AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket policy") from exc
        raise StoreError(f"cannot {what} ({where}): {code or status} {exc}") from exc
    except NoCredentialsError as exc:
        raise StoreError(f"cannot {what}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         "AWS_PROFILE, or ~/.aws/credentials") from exc
    except EndpointConnectionError as exc:
        raise StoreError(f"cannot {what}: the S3 endpoint is unreachable ({exc}); check AWS_ENDPOINT_URL or "
                         "--endpoint-url and the network") from exc
    except BotoCoreError as exc:
        raise StoreError(f"cannot {what} ({where}): {exc}") from exc
