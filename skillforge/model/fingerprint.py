"""Model identity: an artifact is valid only for the exact model that produced it.

The fingerprint digests every input that changes the KV a prefill writes: the weights (streamed sha256
of the weight files), the tokenizer and chat template (a different tokenization is a different token
sequence), the config fields that shape the cache (layers, heads, head dim, RoPE parameters, sliding
windows) and the compute dtype. Peers key caches by model name alone; a silent weight revision then
serves stale KV. Hashing weights is slow, so file digests are cached by (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skillforge import config

KV_CONFIG_KEYS = (
    "model_type", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size",
    "rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor", "rotary_pct", "rotary_dim",
    "rotary_emb_base", "sliding_window", "layer_types", "max_position_embeddings", "attention_bias",
    "query_pre_attn_scalar", "use_sliding_window", "max_window_layers",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass(frozen=True)
class Fingerprint:
    """`fp:<16 hex>` plus the parts it was computed from (shown by `skillforge model fingerprint`)."""

    digest: str
    parts: dict[str, Any]

    def __str__(self) -> str:
        return self.digest


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(files: list[Path]) -> str:
    """sha256 over the weight files' digests, each cached by path, size and mtime in the data home."""
    cache_path = config.home() / "weight-digests.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    combined = hashlib.sha256()
    changed = False
    for path in sorted(files):
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in cache:
            cache[key] = _sha256_file(path)
            changed = True
        combined.update(f"{path.name}:{cache[key]}\n".encode())
    if changed:
        tmp = cache_path.with_suffix(f".{id(cache)}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_path)
    return combined.hexdigest()


def state_dict_digest(model: Any) -> str:
    """Digest of in-memory weights, for models that have no files (built from a config in tests)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """Digest of the vocabulary, merges, special tokens and chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(getattr(tokenizer, "all_special_tokens", []), sort_keys=True).encode())
    h.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return h.hexdigest()


def kv_config(model_config: Any) -> dict[str, Any]:
    """The config fields that change what a prefill writes into the cache."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    data = cfg.to_dict()
    return {k: data[k] for k in KV_CONFIG_KEYS if data.get(k) is not None}


def fingerprint_model(model: Any, tokenizer: Any, weight_files: list[Path], dtype: str) -> Fingerprint:
    parts = {
        "weights": weights_digest(weight_files) if weight_files else state_dict_digest(model),
        "tokenizer": tokenizer_digest(tokenizer),
        "config": kv_config(model.config),
        "dtype": dtype,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return Fingerprint(f"fp:{digest[:16]}", parts)
