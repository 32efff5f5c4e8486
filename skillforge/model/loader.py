"""Resolve a model reference (alias, folder, .gguf file, hub id) and load it for prefill.

Accepted references:
  smollm2-135m          a catalogue alias (model/catalogue.py), after `skillforge model pull ALIAS`
  ./path/to/folder      a transformers checkpoint folder (config.json + weights + tokenizer)
  ./model.gguf          a GGUF file, dequantized and converted to a safetensors folder once
  org/name              a hub id, for machines that reach a model hub
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skillforge.errors import BadInput, ModelUnavailable
from skillforge.model import pull
from skillforge.model.catalogue import CATALOGUE, DEMO
from skillforge.model.convert import gguf_folder
from skillforge.model.fingerprint import WEIGHT_SUFFIXES, Fingerprint, fingerprint_model

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    """A model ready for prefill: the transformers model and tokenizer plus its identity."""

    name: str
    model: Any
    tokenizer: Any
    fingerprint: Fingerprint
    device: str
    dtype: str
    path: Path | None = None
    memo: dict = field(default_factory=dict, repr=False, compare=False)  # values derived from the weights alone, computed once (the sensitivity lead's K/V)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def max_positions(self) -> int:
        cfg = self.model.config.get_text_config()
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)

    @classmethod
    def from_parts(cls, model: Any, tokenizer: Any, name: str = "in-memory", weight_files: list[Path] | None = None) -> "LoadedModel":
        """Wrap an already built model (tests build tiny random ones from configs)."""
        model.eval()
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        device = str(next(model.parameters()).device)
        fp = fingerprint_model(model, tokenizer, weight_files or [], dtype)
        return cls(name, model, tokenizer, fp, device, dtype)


def resolve_model_path(ref: str) -> Path | str:
    """Model reference -> local folder, or the hub id unchanged when it is not a local path."""
    if ref in CATALOGUE:
        if not pull.is_pulled(ref):
            raise ModelUnavailable(f"model {ref} is not here yet; run: skillforge model pull {ref}")
        return pull.model_path(ref)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelUnavailable(f"GGUF file {path} does not exist")
        return gguf_folder(path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path} is not a transformers model folder (no config.json)")
        return path
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ModelUnavailable(f"model {ref!r} is neither an alias ({', '.join(CATALOGUE)}), a model folder, "
                               "a .gguf file nor a hub id (org/name)")
    return ref


def pick_device(device: str) -> str:
    """`auto` (cuda when there is one), `cpu`, `cuda` or `cuda:N`; anything else is bad input."""
    import torch

    kind, _, index = device.partition(":")
    if device not in DEVICES and not (kind == "cuda" and index.isdigit()):
        raise BadInput(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}, cuda:N")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def pick_dtype(dtype: str, device: str) -> str:
    if dtype not in DTYPES:
        raise BadInput(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        # float32 on CPU keeps splices numerically equal to a recompute; bfloat16 is the GPU norm.
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def load_model(ref: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a model reference for prefill (cached per process: loads take seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    key = (ref, device, dtype)
    if key in _LOADED:
        return _LOADED[key]
    source = resolve_model_path(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=getattr(torch, dtype), attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        where = "the hub" if isinstance(source, str) else str(source)
        raise ModelUnavailable(
            f"could not load model {ref!r} from {where}: {str(exc).splitlines()[0]}; "
            f"pass a local model folder, a .gguf file, or an alias such as {DEMO}"
        ) from exc
    model.to(device).eval()
    files = [p for p in Path(source).iterdir() if p.suffix in WEIGHT_SUFFIXES] if isinstance(source, Path) else []
    fp = fingerprint_model(model, tokenizer, files, dtype)
    loaded = LoadedModel(ref, model, tokenizer, fp, device, dtype, source if isinstance(source, Path) else None)
    _LOADED[key] = loaded
    return loaded


_LOADED: dict[tuple[str, str, str], LoadedModel] = {}
