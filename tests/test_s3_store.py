"""S3Store against a real S3 HTTP endpoint on loopback (moto's server, reached through
AWS_ENDPOINT_URL): the BlobStore protocol, verified local copies, multipart transfers, tampering,
errors, and a bucket as SKILLFORGE_STORE under the registry (compile-like writes, reindex, gc)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pytest
from s3server import FP_A, aws_env, fake_compile, new_bucket, s3_endpoint

from skillforge import config
from skillforge.errors import BadReference, CorruptBlob, NotFound, StoreError
from skillforge.registry import Registry, gc, reindex, verify_all
from skillforge.store import BlobStore, open_store
from skillforge.store.s3 import S3Store, parse_s3_url


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> str:
    aws_env(monkeypatch, s3_endpoint())
    return new_bucket()


def count_calls(store: S3Store, operation: str) -> list[str]:
    keys: list[str] = []
    store.client.meta.events.register(f"provide-client-params.s3.{operation}",
                                      lambda params, **_: keys.append(params.get("Key", "")))
    return keys


def test_open_store_and_protocol(bucket: str, home: Path) -> None:
    store = open_store(f"s3://{bucket}/cache/")
    assert isinstance(store, S3Store) and isinstance(store, BlobStore)
    assert (store.bucket, store.prefix, store.url) == (bucket, "cache", f"s3://{bucket}/cache")
    puts = count_calls(store, "PutObject")
    data = b"kv bytes " * 1000
    digest, size = store.put_bytes(data)
    assert (digest, size) == (sha(data), len(data))
    assert store.put_bytes(data) == (digest, size) and len(puts) == 1  # HEAD first: no second upload
    assert store.has(digest) and store.size(digest) == size and list(store.digests()) == [digest]
    assert store.read_bytes(digest) == data and store.verify(digest)
    assert 0 <= store.age_s(digest) < 60
    path = store.local_path(digest)
    assert path == home / "s3-cache" / "blobs" / "sha256" / digest[7:] and path.read_bytes() == data
    gets = count_calls(store, "GetObject")
    assert store.local_path(digest) == path and gets == []  # the verified copy is reused
    assert not store.has(sha(b"other")) and store.delete(sha(b"other")) == 0
    with pytest.raises(NotFound):
        store.size(sha(b"other"))
    with pytest.raises(NotFound):
        store.local_path(sha(b"other"))
    with pytest.raises(BadReference):
        store.has("sha256:../../etc")
    assert store.delete(digest) == size
    assert not store.has(digest) and not path.exists() and list(store.digests()) == []


def test_put_file_multipart_and_round_trip(bucket: str, tmp_path: Path) -> None:
    store = S3Store(bucket, "big")
    src = tmp_path / "artifact.bin"
    src.write_bytes(os.urandom(9 * 1024 * 1024 + 123))  # above the 8 MiB multipart threshold
    digest, size = store.put_file(src)
    assert (digest, size) == (sha(src.read_bytes()), src.stat().st_size)
    head = store.client.head_object(Bucket=bucket, Key=f"big/blobs/sha256/{digest[7:]}")
    assert head["ETag"].strip('"').endswith("-2")  # two parts
    assert head["Metadata"]["sha256"] == digest[7:]
    uploads = count_calls(store, "CreateMultipartUpload")
    assert store.put_file(src) == (digest, size) and uploads == []
    assert store.local_path(digest).read_bytes() == src.read_bytes()


def test_tampered_object_is_never_served(bucket: str, home: Path) -> None:
    store = S3Store(bucket, "p")
    data = b"trusted " * 512
    digest, _ = store.put_bytes(data)
    boto3.client("s3").put_object(Bucket=bucket, Key=f"p/blobs/sha256/{digest[7:]}", Body=b"evil" + data[4:])
    assert store.verify(digest) is False
    with pytest.raises(CorruptBlob, match="corrupt"):
        store.local_path(digest)
    with pytest.raises(CorruptBlob):
        store.read_bytes(digest)
    cache = home / "s3-cache" / "blobs"
    assert not (cache / "sha256" / digest[7:]).exists()
    assert list((cache / "tmp").iterdir()) == []
    # an object of the wrong size is not "present": putting the blob again repairs it
    boto3.client("s3").put_object(Bucket=bucket, Key=f"p/blobs/sha256/{digest[7:]}", Body=b"short")
    store.put_bytes(data)
    assert store.verify(digest)
    # a damaged cached copy is replaced by a verified download
    path = store.local_path(digest)
    path.write_bytes(b"x" * len(data))
    from skillforge.store import local
    local.clear_verified_cache()
    assert store.local_path(digest).read_bytes() == data


def test_staging_download_and_delete_key(bucket: str, home: Path) -> None:
    store = S3Store(bucket, "p")
    with store.staging(".part") as path:
        assert path.parent == home / "s3-cache" / "blobs" / "tmp"  # inside the data home
    assert not path.exists()
    data = b"0123456789" * 100
    digest, _ = store.put_bytes(data)
    key = f"p/blobs/sha256/{digest[7:]}"
    with store.staging() as path:
        with pytest.raises(CorruptBlob, match="at most 999 were expected"):
            store.download(key, path, max_size=999)
        assert path.stat().st_size == 0  # refused before a byte was fetched
        assert store.download(key, path, max_size=1000) == 1000 and path.read_bytes() == data
        store.fetch(digest, path, size=1000)
        with pytest.raises(CorruptBlob, match="1001 were expected"):
            store.fetch(digest, path, size=1001)
    store.delete_key(key)
    store.delete_key(key)  # absent is fine
    assert not store.has(digest)
    with store.staging() as path, pytest.raises(NotFound):
        store.fetch(digest, path)
    assert list((home / "s3-cache" / "blobs" / "tmp").iterdir()) == []


def test_bad_urls_missing_bucket_and_credentials(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_s3_url("s3://team-skills/prod/") == ("team-skills", "prod")
    assert parse_s3_url("s3://team-skills") == ("team-skills", "")
    assert parse_s3_url("s3://ok-bucket/" + "/".join(["p" * 255, "q" * 254, "r"])) == ("ok-bucket", "p" * 255 + "/" + "q" * 254 + "/r")
    for url in ("s3://Bad_Bucket/x", "s3://ok-bucket/a/../b", "s3://ok-bucket/a//b", "s3://ok-bucket/x?y=1", "s3://x",
                "s3://ok-bucket/" + "/".join(["p" * 255, "q" * 254, "rr"])):  # keys add ~210 bytes; S3 keys end at 1,024
        with pytest.raises(BadReference):
            parse_s3_url(url)
    with pytest.raises(StoreError, match="does not exist"):
        S3Store("no-such-bucket-here").check_bucket()
    with pytest.raises(StoreError, match="does not exist"):
        S3Store("no-such-bucket-here").put_bytes(b"x")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    with pytest.raises(StoreError, match="no AWS credentials"):
        S3Store(bucket).has(sha(b"x"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(StoreError, match="unreachable"):
        S3Store(bucket, endpoint_url="http://127.0.0.1:9").has(sha(b"x"))


def test_bucket_as_skillforge_store(bucket: str, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """SKILLFORGE_STORE=s3://...: compile writes blobs to the bucket; the index, reindex, verify and gc work."""
    monkeypatch.setenv("SKILLFORGE_STORE", f"s3://{bucket}/cache")
    store = open_store(config.store_url())
    assert isinstance(store, S3Store)
    with Registry() as reg:
        digests = [fake_compile(reg, store, name) for name in ("alpha", "beta")]
        assert sorted(store.digests()) == sorted(digests)
        assert reg.find_artifact("alpha", FP_A).digest == digests[0]
        assert verify_all(reg, store) == {"checked": 2, "corrupt": [], "missing": []}
        reg.remove_artifact(digests[1])
        assert gc(reg, store)["kept_recent"] == 1  # young blobs are spared (LastModified)
        assert gc(reg, store, grace_s=0)["removed"] == 1 and list(store.digests()) == [digests[0]]
    for suffix in ("", "-wal", "-shm"):
        (home / f"index.sqlite{suffix}").unlink(missing_ok=True)
    with Registry() as reg:
        assert reindex(reg, store) == {"indexed": 1, "skipped": 0, "invalid": 0, "removed": 0, "problems": []}
        assert reg.find_artifact("alpha", FP_A).digest == digests[0]
        # packs work from and into a bucket store too (blobs staged through the verified cache)
        from skillforge.packs import publish, pull

        publish(["alpha"], "p@1.0.0", f"s3://{bucket}/packs-root", registry=reg, store=store)
        other = S3Store(bucket, "elsewhere")
        with Registry("sqlite://") as reg2:
            assert pull(f"s3://{bucket}/packs-root/p@1.0.0", registry=reg2, store=other).downloaded == [digests[0]]
        assert list(other.digests()) == [digests[0]] and other.verify(digests[0])


def test_no_torch_needed() -> None:
    import subprocess
    import sys

    code = ("import sys, skillforge.store.s3, skillforge.packs, skillforge.registry.packs, skillforge.cli.packs_cmd; "
            "sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
