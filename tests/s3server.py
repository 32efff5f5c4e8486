"""Helpers for the S3, pack and PostgreSQL tests (imported by them; not a test module).

- `s3_endpoint()`: one real S3 HTTP endpoint per test process, moto's server on 127.0.0.1 and a free
  port. Clients reach it the way users reach MinIO: AWS_ENDPOINT_URL plus credentials in the
  environment (`aws_env`), nothing patched or mocked inside boto3.
- `pg_base_url()`: the PostgreSQL URL scripts/postgres.sh exports; without it the PostgreSQL tests
  fail under CI (CI=true) and skip elsewhere. `pg_database` / `pg_schema` give fresh, isolated ones.
- Fake artifacts that `artifact.read_header` accepts, written with safetensors.numpy (no torch), and a
  stand-in for `skillforge compile` that stores and indexes them like the real one does.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from skillforge.artifact import ArtifactMeta, FieldSpan

FP_A = "fp:" + "a" * 16
FP_B = "fp:" + "b" * 16

_server: Any = None
_server_lock = threading.Lock()


def s3_endpoint() -> str:
    """`http://127.0.0.1:<port>` of the session's moto server (started on first use)."""
    global _server
    with _server_lock:
        if _server is None:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            atexit.register(server.stop)
            _server = server
        host, port = _server.get_host_and_port()
    return f"http://{host}:{port}"


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point boto3 at `endpoint` with dummy credentials, ignoring the user's AWS files and profile."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)


def new_bucket() -> str:
    """A fresh, empty bucket on the endpoint the environment names."""
    import boto3

    name = f"sf-{uuid.uuid4().hex[:16]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


# -- fake artifacts ------------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_meta(name: str = "greet", version: str = "1.0.0", fingerprint: str = FP_A, text: str = "Hello {who}.",
              tokens: int = 5, anchor_ids: tuple[int, ...] = (), created: str = "2025-01-01T00:00:00+00:00",
              dtype: str = "float32") -> ArtifactMeta:
    return ArtifactMeta(
        skill=name, version=version, text=text, text_digest=sha(text.encode()), template=text,
        field_values={"who": "world"}, token_ids=list(range(1, tokens + 1)), anchor_ids=list(anchor_ids),
        offset=len(anchor_ids), fields=[FieldSpan("who", "world", 1, 3)], fingerprint=fingerprint,
        fingerprint_parts={"weights": "x"}, dtype=dtype, rope={"type": "default"}, num_layers=2, created=created,
    )


def artifact_bytes(meta: ArtifactMeta, nbytes: int = 0, seed: int = 0) -> bytes:
    """A valid safetensors artifact for `meta`, padded with random KV to roughly `nbytes`."""
    layers = meta.num_layers
    head_dim = 4
    heads = max(1, nbytes // (2 * layers * meta.tokens * head_dim * 4))
    rng = np.random.default_rng(seed)
    tensors = {f"{kv}.{i}": rng.standard_normal((heads, meta.tokens, head_dim), dtype=np.float32)
               for i in range(layers) for kv in "kv"}
    return save(tensors, metadata={"skillforge": meta.to_json()})


def manifest_for(meta: ArtifactMeta, description: str = "") -> dict[str, Any]:
    """A manifest (as `Manifest.to_dict` writes it) whose default rendering is `meta.text`."""
    return {"name": meta.skill, "version": meta.version, "description": description, "template": meta.text,
            "fields": {}}


def fake_compile(registry: Any, store: Any, name: str, version: str = "1.0.0", fingerprint: str = FP_A,
                 text: str | None = None, nbytes: int = 0, seed: int | None = None, **meta_kwargs: Any) -> str:
    """What `skillforge compile` does for one skill and model, with a fake artifact: register the
    version (with its manifest), put the blob, index it. Returns the artifact digest."""
    meta = make_meta(name, version, fingerprint, text or f"{name} {version} says hello to {{who}}.", **meta_kwargs)
    if seed is None:
        seed = int.from_bytes(hashlib.sha256(f"{name}@{version}/{fingerprint}".encode()).digest()[:4], "big")
    data = artifact_bytes(meta, nbytes, seed)
    registry.record_skill_version(name, version, meta.text_digest, f"the {name} skill", manifest_for(meta, f"the {name} skill"))
    digest, size = store.put_bytes(data)
    registry.record_artifact(meta, digest, size)
    return digest


# -- a machine for the multi-process tests (spawned: a module-level function, light imports) --

def publishing_machine(url: str, root: str, worker: int, count: int, home: str, barrier: Any) -> None:
    """One machine: compiles `count` skills of its own and one shared skill, publishes its own pack and
    the shared pack, all into one PostgreSQL index and one bucket, racing the other machines."""
    import sys

    from skillforge.errors import PackError
    from skillforge.packs import publish
    from skillforge.registry import Registry
    from skillforge.store import LocalStore

    barrier.wait()  # everyone opens (and migrates) the blank schema at the same moment
    reg = Registry(url)
    store = LocalStore(home)
    for i in range(count):
        fake_compile(reg, store, f"skill-{worker}-{i % 2}", f"1.{i}.0", nbytes=5_000)
    fake_compile(reg, store, "common", "1.0.0", nbytes=5_000)  # identical bytes on every machine
    publish([f"skill-{worker}-{i % 2}@1.{i}.0" for i in range(count)], f"pack-{worker}@1.0.0", root, registry=reg,
            store=store)
    barrier.wait()
    try:
        publish(["common@1.0.0"], "common@1.0.0", root, registry=reg, store=store)  # same content: all succeed
    except PackError:
        sys.exit(3)
    reg.close()


# -- PostgreSQL ----------------------------------------------------------------------------------

def pg_base_url() -> str:
    """SKILLFORGE_TEST_PG_URL, or fail (under CI) / skip (elsewhere) saying how to get one."""
    url = os.environ.get("SKILLFORGE_TEST_PG_URL")
    if url:
        return url
    how = "run `source scripts/postgres.sh` (scripts/test.sh does) to start a PostgreSQL server on 127.0.0.1"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"SKILLFORGE_TEST_PG_URL is not set, and under CI the PostgreSQL tests must run: {how}")
    pytest.skip(f"SKILLFORGE_TEST_PG_URL is not set (skipped because CI is not set; under CI=true this fails): {how}")


@contextmanager
def pg_database(base_url: str) -> Iterator[str]:
    """A new, empty database on the server of `base_url` (dropped afterwards): its URL."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    name = f"sf_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def pg_schema(db_url: str) -> str:
    """A new schema in the database of `db_url`: a URL whose connections use only that schema."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    schema = f"s_{uuid.uuid4().hex[:12]}"
    engine = create_engine(db_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine.dispose()
    url = make_url(db_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)
