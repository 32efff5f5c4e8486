"""Where things live: the data home and its overrides, read from the environment once per call.

SKILLFORGE_HOME     data home (default: the per-user data dir), holding index.sqlite, blobs/, models/
SKILLFORGE_DB_URL   the index, any SQLAlchemy URL (default: sqlite:///<home>/index.sqlite)
SKILLFORGE_STORE    the blob store, file://PATH or s3://bucket/prefix (default: file://<home>)
SKILLFORGE_MODELS   converted models (default: <home>/models); lets many homes share one model copy
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


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
