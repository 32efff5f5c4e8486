"""GGUF -> a plain safetensors folder, once, so later loads take seconds instead of a dequantization.

transformers dequantizes a GGUF checkpoint to float32 on load; we save that with the tokenizer the GGUF
carries. The folder appears atomically (converted in a temporary folder beside it, then `os.replace`),
so a crash mid-conversion never leaves a folder that looks like a model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from skillforge import config
from skillforge.errors import ModelUnavailable


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF checkpoint with transformers and save it as a safetensors folder at `out`.

    A GGUF without a chat template (base models such as gemma-3-270m) yields a tokenizer without one;
    prompts for it are raw text. Nothing invents a template the model was not trained on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelUnavailable(f"transformers could not read {gguf.name} as a GGUF model: {str(exc).splitlines()[0]}") from exc
    # A GGUF-loaded model carries quantization markers and refuses save_pretrained; the weights are
    # already dequantized, so drop the markers.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


Converter = Callable[[Path, Path], Path]  # (gguf file, output folder) -> output folder


def convert_into(gguf: Path, target: Path, scratch: Path, convert: Converter = convert_gguf) -> Path:
    """Convert `gguf` into `target`, staged in a temporary folder under `scratch` (same file system) and
    moved into place in one step; a failed conversion leaves neither a partial folder nor the stage."""
    scratch.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=scratch, prefix=".convert-"))
    try:
        convert(gguf, staged / "model")
        if target.exists():  # an unusable leftover (no weights): make room
            shutil.rmtree(target)
        os.replace(staged / "model", target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return target


def gguf_folder(gguf: Path) -> Path:
    """The converted folder for a user's own .gguf file, keyed by its path, size and mtime (converted on first use)."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = config.models_dir() / f"gguf-{gguf.stem}-{key}"
    if not (folder / "config.json").is_file():
        convert_into(gguf, folder, config.models_dir())
    return folder
