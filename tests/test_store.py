"""LocalStore and open_store: atomic writes, verification on read, the verified-state cache, URLs."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import pytest

from skillforge.errors import BadInput, BadReference, CorruptBlob, NotFound, StoreError
from skillforge.store import BlobStore, LocalStore, local, open_store


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    local.clear_verified_cache()
    return LocalStore(tmp_path / "blobstore")


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every file hash the store performs."""
    calls: list[Path] = []
    real = local.hash_file

    def counting(path: Path) -> tuple[str, int]:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(local, "hash_file", counting)
    return calls


def blob_path(store: LocalStore, digest: str) -> Path:
    return store.root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def tmp_files(store: LocalStore) -> list[str]:
    tmp = store.root / "blobs" / "tmp"
    return os.listdir(tmp) if tmp.exists() else []


def test_put_bytes_is_atomic_and_idempotent(store: LocalStore) -> None:
    data = b"hello kv" * 1000
    digest, size = store.put_bytes(data)
    assert (digest, size) == (sha(data), len(data))
    path = blob_path(store, digest)
    assert path.read_bytes() == data
    assert tmp_files(store) == []
    inode = path.stat().st_ino
    assert store.put_bytes(data) == (digest, size)
    assert path.stat().st_ino == inode  # no-op: not rewritten
    assert store.has(digest) and store.size(digest) == size
    assert list(store.digests()) == [digest]
    assert isinstance(store, BlobStore)


def test_put_file_leaves_source_and_checks_digest(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "artifact.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    digest, size = store.put_file(src)
    assert digest == sha(src.read_bytes()) and size == src.stat().st_size
    assert src.exists()
    assert store.read_bytes(digest) == src.read_bytes()
    assert store.local_path(digest) == blob_path(store, digest)
    assert store.put_file(src) == (digest, size)
    assert tmp_files(store) == []


def test_source_changing_during_put_stores_nothing(store: LocalStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    monkeypatch.setattr(local, "hash_file", lambda path: (sha(b"xyz"), 3))  # the "before" hash disagrees
    with pytest.raises(StoreError, match="changed while"):
        store.put_file(src)
    assert list(store.digests()) == [] and tmp_files(store) == []


def test_failed_write_leaves_no_blob_and_no_tmp(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local.os, "fsync", broken_fsync)
    with pytest.raises(StoreError, match="free space"):
        store.put_bytes(b"data")
    assert not store.has(sha(b"data"))
    assert list(store.digests()) == [] and tmp_files(store) == []


def test_tmp_leftovers_are_ignored_and_cleaned(store: LocalStore) -> None:
    digest, _ = store.put_bytes(b"real")
    tmp = store.root / "blobs" / "tmp"
    old, young = tmp / "dead.tmp", tmp / "live.tmp"
    old.write_bytes(b"half")
    young.write_bytes(b"half")
    past = time.time() - 7200
    os.utime(old, (past, past))
    (store.root / "blobs" / "sha256" / "not-a-digest").write_bytes(b"x")
    assert list(store.digests()) == [digest]
    assert store.clean_staging(older_than_s=3600) == (1, 4)
    assert sorted(os.listdir(tmp)) == ["live.tmp"]


def test_staging_lives_in_the_store_and_never_outlives_its_context(store: LocalStore) -> None:
    tmp = store.root / "blobs" / "tmp"
    with pytest.raises(RuntimeError):
        with store.staging(".part") as path:
            assert path.parent == tmp and path.name.endswith(".part") and path.exists()
            path.write_bytes(b"half a download")
            raise RuntimeError("killed mid-way")
    assert not path.exists()
    with store.staging() as path:
        path.write_bytes(b"whole")
        inode = path.stat().st_ino
        digest, size = store.put_staged(path)
    assert (digest, size) == (sha(b"whole"), 5) and not path.exists()
    assert blob_path(store, digest).stat().st_ino == inode  # renamed into place, not copied
    with store.staging() as path:
        path.write_bytes(b"whole")
        assert store.put_staged(path, digest) == (digest, 5) and not path.exists()  # already there: consumed
    assert tmp_files(store) == []


def test_put_staged_of_a_file_from_elsewhere_copies_and_consumes_it(store: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"from another filesystem")
    digest, _ = store.put_staged(outside)
    assert store.read_bytes(digest) == b"from another filesystem" and not outside.exists()


def test_corrupt_blob_is_detected_and_refused(store: LocalStore) -> None:
    data = b"A" * 4096
    digest, _ = store.put_bytes(data)
    assert store.verify(digest)
    path = blob_path(store, digest)
    bad = b"B" + data[1:]
    path.write_bytes(bad)
    assert store.verify(digest) is False
    with pytest.raises(CorruptBlob) as err:
        store.local_path(digest)
    message = str(err.value)
    assert digest in message and sha(bad) in message and "skillforge verify" in message
    with pytest.raises(CorruptBlob, match=sha(bad).removeprefix("sha256:")):
        store.read_bytes(digest)
    # put repairs a damaged copy
    store.put_bytes(data)
    assert store.verify(digest) and store.read_bytes(digest) == data


def test_verified_cache_skips_rehash_until_file_changes(store: LocalStore, hash_calls: list[Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "RACY_WINDOW_NS", 0)
    data = os.urandom(10_000)
    digest, _ = store.put_bytes(data)
    path = blob_path(store, digest)
    time.sleep(0.01)
    store.local_path(digest)
    n = len(hash_calls)
    store.local_path(digest)
    assert store.read_bytes(digest) == data
    assert len(hash_calls) == n  # cached: no re-hash on the hot path
    # Same size, same inode, changed content: a changed mtime must force a re-hash.
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.write(b"\x00" if data[:1] != b"\x00" else b"\x01")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(CorruptBlob):
        store.local_path(digest)
    with pytest.raises(CorruptBlob):
        store.read_bytes(digest)
    # A replaced file (new inode) is re-hashed too.
    store.delete(digest)
    store.put_bytes(data)
    assert store.local_path(digest) == path


def test_recently_modified_file_is_not_cached(store: LocalStore, hash_calls: list[Path]) -> None:
    digest, _ = store.put_bytes(b"fresh")
    store.local_path(digest)
    n = len(hash_calls)
    store.local_path(digest)
    assert len(hash_calls) == n + 1  # written within the racy window: verified again


def test_verify_always_rehashes(store: LocalStore, hash_calls: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "RACY_WINDOW_NS", 0)
    digest, _ = store.put_bytes(b"x" * 100)
    time.sleep(0.01)
    store.local_path(digest)
    n = len(hash_calls)
    assert store.verify(digest) and store.verify(digest)
    assert len(hash_calls) == n + 2


def test_missing_and_malformed_digests(store: LocalStore) -> None:
    missing = sha(b"nothing")
    assert not store.has(missing)
    for call in (store.size, store.local_path, store.read_bytes, store.verify):
        with pytest.raises(NotFound, match="skillforge compile"):
            call(missing)
    assert store.delete(missing) == 0
    for bad in ("sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64):
        with pytest.raises(BadReference):
            store.has(bad)


def test_delete_frees_bytes(store: LocalStore) -> None:
    digest, size = store.put_bytes(b"12345")
    assert store.delete(digest) == size
    assert not store.has(digest) and list(store.digests()) == []


def test_open_store_schemes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_store(tmp_path.as_uri())
    assert isinstance(s, LocalStore) and s.root == tmp_path
    assert open_store(s.url).root == tmp_path
    spaced = tmp_path / "with space"
    assert open_store(spaced.as_uri()).root == spaced
    assert open_store(f"file://localhost{tmp_path}").root == tmp_path
    assert open_store(str(tmp_path)).root == tmp_path
    with pytest.raises(BadInput, match="unsupported.*SKILLFORGE_STORE"):
        open_store("ftp://example.com/x")
    with pytest.raises(BadInput, match="SKILLFORGE_STORE"):
        open_store("")
    monkeypatch.setitem(sys.modules, "skillforge.store.s3", None)  # simulate a build without s3.py
    with pytest.raises(StoreError, match="skillforge.store.s3"):
        open_store("s3://bucket/prefix")
