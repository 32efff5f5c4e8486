"""The KV artifact format: one safetensors file per (skill version, model fingerprint, anchor).

Tensors `k.<layer>` and `v.<layer>`, each [kv_heads, tokens, head_dim] in the compute dtype, keys
stored *after* RoPE at positions `offset .. offset+tokens-1`. All metadata lives in one JSON string
under the safetensors metadata key `skillforge`, so any safetensors reader can open the file and the
registry can rebuild its index from blobs without torch. The file is stored uncompressed so splice can
memory-map it: measured on the demo model, zstd saved only 9% (fp32) and its decode cost more than
the whole splice.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skillforge.errors import CorruptBlob

if TYPE_CHECKING:
    import torch

FORMAT = "skillforge.kv/1"
MAX_HEADER_BYTES = 64 * 1024 * 1024
_SAFETENSORS_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True)
class FieldSpan:
    """One occurrence of a field's value inside the skill's tokens: token span [start, end)."""

    name: str
    value: str
    start: int
    end: int


@dataclass(frozen=True)
class ArtifactMeta:
    """Everything an artifact is valid for, and everything splice and edits need besides tensors."""

    skill: str
    version: str
    text: str
    text_digest: str
    template: str
    field_values: dict[str, str]
    token_ids: list[int]
    anchor_ids: list[int]
    offset: int
    fields: list[FieldSpan]
    fingerprint: str
    fingerprint_parts: dict[str, Any]
    dtype: str
    rope: dict[str, Any]
    num_layers: int
    created: str
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    @property
    def anchor_digest(self) -> str:
        return anchor_digest(self.anchor_ids)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "artifact") -> "ArtifactMeta":
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise CorruptBlob(f"{source}: unknown artifact format {data.get('format')!r}, expected {FORMAT}")
            data["fields"] = [FieldSpan(**f) for f in data["fields"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptBlob(f"{source}: artifact metadata is invalid ({exc})") from exc


def anchor_digest(anchor_ids: list[int]) -> str:
    """Short stable identity of an anchor token sequence (empty anchor -> 'none')."""
    if not anchor_ids:
        return "none"
    return hashlib.sha256(json.dumps(anchor_ids).encode()).hexdigest()[:16]


def read_header(data: bytes | Path, source: str | None = None) -> tuple[ArtifactMeta, dict[str, Any]]:
    """Parse the safetensors header (pure Python) -> (metadata, tensor table). Checks structure.

    Accepts the file's bytes or a path; refuses oversized headers, unknown dtypes and tensor extents
    that run past the end of the file, so an untrusted blob never reaches a tensor library unchecked.
    """
    if isinstance(data, Path):
        source = source or str(data)
        with open(data, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CorruptBlob(f"{source}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise CorruptBlob(f"{source}: header of {n} bytes exceeds the {MAX_HEADER_BYTES} byte limit")
            header_bytes = fh.read(n)
            fh.seek(0, 2)
            total = fh.tell()
    else:
        source = source or "artifact"
        if len(data) < 8:
            raise CorruptBlob(f"{source}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", data[:8])
        if n > MAX_HEADER_BYTES:
            raise CorruptBlob(f"{source}: header of {n} bytes exceeds the {MAX_HEADER_BYTES} byte limit")
        header_bytes = data[8 : 8 + n]
        total = len(data)
    if len(header_bytes) != n:
        raise CorruptBlob(f"{source}: truncated safetensors header")
    try:
        header = json.loads(header_bytes)
    except ValueError as exc:
        raise CorruptBlob(f"{source}: safetensors header is not JSON ({exc})") from exc
    meta_raw = (header.pop("__metadata__", None) or {}).get("skillforge")
    if meta_raw is None:
        raise CorruptBlob(f"{source}: not a skillforge artifact (no 'skillforge' metadata)")
    meta = ArtifactMeta.from_json(meta_raw, source)
    body = total - 8 - n
    for name, info in header.items():
        dtype, shape, (start, end) = info.get("dtype"), info.get("shape"), info.get("data_offsets", (0, -1))
        width = _SAFETENSORS_DTYPES.get(dtype)
        count = 1
        for dim in shape or []:
            count *= int(dim)
        if width is None or not (0 <= start <= end <= body) or end - start != count * width:
            raise CorruptBlob(f"{source}: tensor {name!r} has an invalid dtype or extent")
    expected = {f"{kv}.{i}" for i in range(meta.num_layers) for kv in "kv"}
    if set(header) != expected:
        raise CorruptBlob(f"{source}: tensors {sorted(set(header) ^ expected)[:4]} missing or unexpected")
    return meta, header


def save(path: Path, meta: ArtifactMeta, layers: list[tuple["torch.Tensor", "torch.Tensor"]]) -> None:
    """Write an artifact file. `layers[i] = (K, V)`, each [kv_heads, tokens, head_dim]."""
    from safetensors.torch import save_file

    tensors = {}
    for i, (k, v) in enumerate(layers):
        tensors[f"k.{i}"] = k.contiguous()
        tensors[f"v.{i}"] = v.contiguous()
    save_file(tensors, str(path), metadata={"skillforge": meta.to_json()})


def load(path: Path, device: str = "cpu") -> tuple[ArtifactMeta, list[tuple["torch.Tensor", "torch.Tensor"]]]:
    """Memory-map an artifact (no decode step) -> (metadata, [(K, V)] per layer)."""
    from safetensors import safe_open

    meta, _ = read_header(path)
    layers = []
    with safe_open(str(path), framework="pt", device=device) as fh:
        for i in range(meta.num_layers):
            layers.append((fh.get_tensor(f"k.{i}"), fh.get_tensor(f"v.{i}")))
    return meta, layers
