"""Blobs on a local filesystem, addressed by sha256: `<root>/blobs/sha256/<hex>`.

Why it is built this way:
- A blob's path comes from its digest alone (validated by `refs.digest_hex`), so the SQL index can be
  rebuilt by scanning the folder, and no caller-supplied string ever becomes a path unchecked.
- Writes go to a unique temporary file in `<root>/blobs/tmp/` (same filesystem), are fsynced and checked
  (size and digest), then `os.replace`d into place: a crash never leaves a half-written blob visible.
  Everything that becomes a blob is staged there, also by other layers (`staging()` hands out such a
  file and removes it on any exit; `put_staged` renames it into place), so a process killed mid-write
  leaves its bytes only in that one folder, where `clean_staging` (called by `gc` and at the start of
  the commands that stage) removes files older than a grace period.
- Splice reads artifacts of hundreds of MB on its hot path, so re-hashing on every read is too slow. A
  process-wide cache remembers which file *states* (size, mtime, ctime, inode, device) were verified;
  any change to the file changes its state and forces a re-hash. A file modified within RACY_WINDOW_NS
  of its verification is not cached, since a second write in the same timestamp tick would leave its
  state unchanged (git's "racy clean" problem). That includes blobs just written by `put`: the first
  read after a put hashes once more, later reads are cached.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from skillforge.errors import CorruptBlob, NotFound, StoreError
from skillforge.refs import digest_hex

CHUNK = 8 * 1024 * 1024
RACY_WINDOW_NS = 2_000_000_000
STAGING_GRACE_S = 3600.0  # a staging file untouched this long belongs to no running process
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")

_Signature = tuple[int, int, int, int, int]
_verified: dict[str, _Signature] = {}
_verified_lock = threading.Lock()


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _remember(path: Path, before: os.stat_result, after: os.stat_result, started_ns: int) -> None:
    """Cache `path` as verified if it did not change while hashing and was not modified racily."""
    sig = _signature(before)
    if sig != _signature(after):
        return
    if max(before.st_mtime_ns, before.st_ctime_ns) >= started_ns - RACY_WINDOW_NS:
        return
    with _verified_lock:
        _verified[str(path)] = sig


def _forget(path: Path) -> None:
    with _verified_lock:
        _verified.pop(str(path), None)


def _is_cached(path: Path, st: os.stat_result) -> bool:
    with _verified_lock:
        return _verified.get(str(path)) == _signature(st)


def clear_verified_cache() -> None:
    """Forget every verification (tests, or after repairing a store by hand)."""
    with _verified_lock:
        _verified.clear()


def hash_file(path: Path) -> tuple[str, int]:
    """(`sha256:<hex>`, size) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            h.update(view[:n])
            size += n
    return f"sha256:{h.hexdigest()}", size


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; not every platform can open a directory, which is fine to skip."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalStore:
    """A content-addressed blob folder. See the module docstring for the guarantees."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()
        self._blobs = self.root / "blobs" / "sha256"
        self._tmp = self.root / "blobs" / "tmp"

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------
    def _path(self, digest: str) -> Path:
        return self._blobs / digest_hex(digest)

    def _stat(self, digest: str) -> tuple[Path, os.stat_result]:
        path = self._path(digest)
        try:
            return path, os.stat(path)
        except FileNotFoundError:
            raise NotFound(
                f"blob {digest} is not in the store {self.url}; recompile the skill "
                "(`skillforge compile`) or pull its pack, and run `skillforge reindex` if the index is stale"
            ) from None

    def _corrupt(self, digest: str, actual: str) -> CorruptBlob:
        return CorruptBlob(
            f"blob {digest} in {self.url} is corrupt: its bytes hash to {actual}; run `skillforge verify` to "
            "find every damaged blob, then recompile (or pull again) the affected skills"
        )

    # -- writes --------------------------------------------------------------------------------
    def put_file(self, path: Path) -> tuple[str, int]:
        """Copy a file in under its digest. The source stays in place; an intact copy makes this a no-op.

        The source is hashed first and hashed again while copying, so a file that changes during the
        copy is refused instead of being stored under the wrong address.
        """
        path = Path(path)
        try:
            digest, size = hash_file(path)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        if self._present_and_intact(digest, size):
            return digest, size

        def write(out: BinaryIO) -> str:
            h = hashlib.sha256()
            with open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            return f"sha256:{h.hexdigest()}"

        self._commit(digest, size, write, source=str(path))
        return digest, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store bytes under their digest; no-op if an intact copy is present."""
        digest, size = f"sha256:{hashlib.sha256(data).hexdigest()}", len(data)
        if self._present_and_intact(digest, size):
            return digest, size

        def write(out: BinaryIO) -> str:
            out.write(data)
            return digest

        self._commit(digest, size, write, source="bytes")
        return digest, size

    def _present_and_intact(self, digest: str, size: int) -> bool:
        """True if the blob exists with the right bytes. Refreshes its mtime so `gc`'s grace period
        protects a blob that was just put again but not yet recorded. A damaged copy returns False
        so that the put repairs it."""
        path = self._path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        if st.st_size != size:
            return False
        if not _is_cached(path, st):
            actual, _ = hash_file(path)
            if actual != digest:
                _forget(path)
                return False
        try:
            os.utime(path)
        except OSError:
            pass
        return True

    @contextmanager
    def staging(self, suffix: str = ".tmp") -> Iterator[Path]:
        """A new empty file in `<root>/blobs/tmp/` for bytes that are to become a blob; removed on exit
        (normal or not) unless `put_staged` consumed it. Same filesystem as the blobs, so installing it
        is a rename, and a crash leaves it where `clean_staging` finds it."""
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(suffix=suffix, dir=self._tmp)
            os.close(fd)
        except OSError as exc:
            raise StoreError(f"cannot stage a file in {self._tmp}: {exc}; check permissions and free space") from exc
        path = Path(name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def put_staged(self, path: Path, digest: str | None = None) -> tuple[str, int]:
        """Make a file from `staging()` a blob, consuming it: renamed into place, not copied.

        `digest` is the sha256 the caller computed while writing the file (a verified download, a
        decoder); None hashes it here. A file from elsewhere is copied in (`put_file`) and removed.
        """
        path = Path(path)
        if path.parent != self._tmp:
            try:
                return self.put_file(path)
            finally:
                path.unlink(missing_ok=True)
        try:
            size = os.stat(path).st_size
            if digest is None:
                digest, size = hash_file(path)
        except OSError as exc:
            raise StoreError(f"cannot read the staged file {path}: {exc}") from exc
        if self._present_and_intact(digest, size):
            path.unlink(missing_ok=True)
            return digest, size
        final = self._path(digest)
        try:
            self._blobs.mkdir(parents=True, exist_ok=True)
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(path, 0o644)
            os.replace(path, final)
        except OSError as exc:
            raise StoreError(f"cannot write blob {digest} into {self.url}: {exc}; check permissions and free "
                             "space") from exc
        _fsync_dir(final.parent)
        return digest, size

    def _commit(self, digest: str, size: int, write: Callable[[BinaryIO], str], source: str) -> None:
        final = self._path(digest)
        with self.staging() as tmp:
            try:
                self._blobs.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as fh:
                    written = write(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                actual_size = os.stat(tmp).st_size
                if written != digest or actual_size != size:
                    raise StoreError(
                        f"{source} changed while it was being stored (expected {digest}, {size} bytes; got "
                        f"{written}, {actual_size} bytes); nothing was stored, retry once it is complete"
                    )
                os.chmod(tmp, 0o644)
                os.replace(tmp, final)
            except OSError as exc:
                raise StoreError(
                    f"cannot write blob {digest} into {self.url}: {exc}; check permissions and free space"
                ) from exc
        _fsync_dir(final.parent)

    # -- reads ---------------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def size(self, digest: str) -> int:
        return self._stat(digest)[1].st_size

    def age_s(self, digest: str) -> float:
        """Seconds since the blob was last written or put; `gc` spares young blobs (in-flight compiles)."""
        return max(0.0, time.time() - self._stat(digest)[1].st_mtime)

    def local_path(self, digest: str) -> Path:
        """The blob's own path, after checking its bytes (cached per file state, see module docstring)."""
        path, st = self._stat(digest)
        if _is_cached(path, st):
            return path
        started = time.time_ns()
        actual, _ = hash_file(path)
        if actual != digest:
            _forget(path)
            raise self._corrupt(digest, actual)
        _remember(path, st, os.stat(path), started)
        return path

    def read_bytes(self, digest: str) -> bytes:
        """The blob's bytes, checked: hashed in memory unless this exact file state was verified."""
        path, st = self._stat(digest)
        started = time.time_ns()
        data = path.read_bytes()
        after = os.stat(path)
        if _is_cached(path, st) and _signature(after) == _signature(st):
            return data
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != digest:
            _forget(path)
            raise self._corrupt(digest, actual)
        _remember(path, st, after, started)
        return data

    def verify(self, digest: str) -> bool:
        """Re-hash now (ignoring the cache); True if intact. NotFound if the blob is absent."""
        path, st = self._stat(digest)
        started = time.time_ns()
        actual, _ = hash_file(path)
        if actual != digest:
            _forget(path)
            return False
        _remember(path, st, os.stat(path), started)
        return True

    def delete(self, digest: str) -> int:
        """Remove a blob; returns the bytes freed (0 if it was absent)."""
        path = self._path(digest)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StoreError(f"cannot delete blob {digest} from {self.url}: {exc}") from exc
        _forget(path)
        return size

    def digests(self) -> Iterator[str]:
        """Every stored digest, sorted. Temporary files and stray names are not blobs."""
        try:
            names = sorted(os.listdir(self._blobs))
        except FileNotFoundError:
            return
        for name in names:
            if _HEX_RE.match(name):
                yield f"sha256:{name}"

    def clean_staging(self, older_than_s: float = STAGING_GRACE_S) -> tuple[int, int]:
        """Remove staging files untouched for `older_than_s` seconds, left by killed writes, downloads
        and compiles; younger ones may belong to a running process. Returns (files, bytes) removed."""
        cutoff = time.time() - older_than_s
        removed = freed = 0
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0, 0
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if entry.is_file(follow_symlinks=False) and st.st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
                    freed += st.st_size
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(f"cannot remove the staging file {entry.path}: {exc}") from exc
        return removed, freed
