"""Every setting skillforge reads from the environment, read at call time (never at import), so a test
or a long-lived process that changes one sees the change.

Where things live:
  SKILLFORGE_HOME              data home (default: the per-user data dir), holding index.sqlite, blobs/, models/
  SKILLFORGE_DB_URL            the index, any SQLAlchemy URL (default: sqlite:///<home>/index.sqlite)
  SKILLFORGE_STORE             the blob store, file://PATH or s3://bucket/prefix (default: file://<home>)
  SKILLFORGE_MODELS            converted models (default: <home>/models); lets many homes share one model copy
Runtime memory (bytes; defaults of Runtime(hot_bytes=..., pool_bytes=...)):
  SKILLFORGE_HOT_CACHE_BYTES   loaded artifacts kept in memory, LRU (default 2 GiB)
  SKILLFORGE_CACHE_POOL_BYTES  released splice caches kept for the next splice (default 1 GiB)
S3 and tests:
  AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL   the S3 store's endpoint (s3_endpoint_url); credentials, region
                               and profile (AWS_ACCESS_KEY_ID, ...) are left to boto3's usual chain
  SKILLFORGE_CRASH_AT          a test hook: die at a named step, as kill -9 would (store/crashpoint.py)
Written, not read, by skillforge:
  TRANSFORMERS_SDPA_FORCE_GQA  transformers' own switch; skillforge.model.forward sets it to 1 at the
                               first forward unless it is already set (SDPA over the KV heads, no copy)
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from skillforge.errors import BadInput

HOT_CACHE_BYTES = 2 << 30
CACHE_POOL_BYTES = 1 << 30


def home() -> Path:
    """The data home, created on first use."""
    path = Path(os.environ.get("SKILLFORGE_HOME") or platformdirs.user_data_dir("skillforge"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_url() -> str:
    return os.environ.get("SKILLFORGE_DB_URL") or f"sqlite:///{home() / 'index.sqlite'}"


def store_url() -> str:
    return os.environ.get("SKILLFORGE_STORE") or f"file://{home()}"


def models_dir() -> Path:
    path = Path(os.environ["SKILLFORGE_MODELS"]) if os.environ.get("SKILLFORGE_MODELS") else home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def s3_endpoint_url() -> str | None:
    """The S3 endpoint boto3 users set (MinIO, R2, a loopback test server), or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def crash_at() -> str | None:
    """The step at which a test wants the process killed (store/crashpoint.py); None outside tests."""
    return os.environ.get("SKILLFORGE_CRASH_AT") or None


def hot_cache_bytes() -> int:
    """Bytes of loaded artifacts a Runtime keeps in memory (SKILLFORGE_HOT_CACHE_BYTES)."""
    return _bytes("SKILLFORGE_HOT_CACHE_BYTES", HOT_CACHE_BYTES)


def cache_pool_bytes() -> int:
    """Bytes of released splice caches a Runtime keeps for reuse (SKILLFORGE_CACHE_POOL_BYTES)."""
    return _bytes("SKILLFORGE_CACHE_POOL_BYTES", CACHE_POOL_BYTES)


def _bytes(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise BadInput(f"{name}={raw!r} is not a byte count; set it to a whole number of bytes (0 keeps nothing) or unset it")
    return value
