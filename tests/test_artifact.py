"""Hostile artifacts: every way the issue found to break the header reader, the model check and load.

Artifacts here are fakes written with safetensors.numpy (tests/s3server.py), edited as JSON and bytes;
the model they are checked against is described by hand (`LAYOUT`), as the runtime would build it.
"""

from __future__ import annotations

import json
import re
import struct
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from safetensors.numpy import save

from skillforge import artifact
from skillforge.artifact import ModelLayout, check_against, read_header
from skillforge.errors import ArtifactMismatch, CorruptBlob

from s3server import FP_A, FP_B, artifact_bytes, make_meta

LAYOUT = ModelLayout(fingerprint=FP_A, dtype="float32", layers=((1, 4, 4), (1, 4, 4)), max_positions=64, vocab_size=100)


def pack(header: Any, body: bytes = b"") -> bytes:
    """A safetensors file from a header (any JSON value, or raw text) and a data section."""
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + body


def unpack(data: bytes) -> tuple[dict, dict, bytes]:
    """(tensor table, metadata, data section) of a valid artifact."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header.pop("__metadata__")["skillforge"])
    return header, meta, data[8 + n :]


def edited(edit: Callable[[dict, dict], Any], data: bytes | None = None) -> bytes:
    """A valid fake artifact with `edit(table, meta)` applied (it may return a new data section)."""
    header, meta, body = unpack(data or artifact_bytes(make_meta()))
    new_body = edit(header, meta)
    header["__metadata__"] = {"skillforge": json.dumps(meta)}
    return pack(header, body if new_body is None else new_body)


def fake(tensors: dict[str, np.ndarray], **meta: Any) -> bytes:
    return save(tensors, metadata={"skillforge": make_meta(**meta).to_json()})


def kv(layers: int = 2, heads: int = 1, tokens: int = 5, dim: int = 4, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"{x}.{i}": rng.standard_normal((heads, tokens, dim)).astype(dtype) for i in range(layers) for x in "kv"}


def test_a_valid_artifact_passes_every_check(tmp_path: Path):
    data = artifact_bytes(make_meta(anchor_ids=(7, 8)))
    meta, table = read_header(data)
    assert meta.offset == 2 and sorted(table) == ["k.0", "k.1", "v.0", "v.1"]
    assert table["k.0"]["shape"] == [1, 5, 4] and table["k.0"]["dtype"] == "F32"
    check_against(meta, table, LAYOUT)
    path = tmp_path / "a.safetensors"
    path.write_bytes(data)
    loaded, layers = artifact.load(path, expect=LAYOUT)
    assert loaded == meta and [tuple(k.shape) for k, _ in layers] == [(1, 5, 4), (1, 5, 4)]


MALFORMED: dict[str, Callable[[], bytes]] = {
    # the header reader's crashes from the issue
    "header is a JSON list": lambda: pack([]),
    "data_offsets of one element": lambda: edited(lambda t, m: t["k.0"].update(data_offsets=[0])),
    "non-integer shape": lambda: edited(lambda t, m: t["k.0"].update(shape=[1, "5", 4])),
    "float shape": lambda: edited(lambda t, m: t["k.0"].update(shape=[1, 5.0, 4])),
    "tensor entry is a string": lambda: edited(lambda t, m: t.update({"k.0": "F32"})),
    "metadata is a list": lambda: pack({"__metadata__": []}),
    "metadata value not a string": lambda: pack({"__metadata__": {"skillforge": {"format": "x"}}}),
    "skillforge metadata is a list": lambda: pack({"__metadata__": {"skillforge": "[]"}}),
    # structure the reader used to accept
    "29 of 30 layers": lambda: edited(lambda t, m: m.update(num_layers=3)),
    "2-D tensors": lambda: fake({k: v[0] for k, v in kv().items()}),
    "4-D tensors": lambda: fake({k: v[None] for k, v in kv().items()}),
    "fp16 tensors labelled float32": lambda: fake(kv(dtype=np.float16)),
    "float64 tensors": lambda: fake(kv(dtype=np.float64)),
    "offset 1e15": lambda: edited(lambda t, m: m.update(offset=1e15)),
    "offset 10**15": lambda: edited(lambda t, m: m.update(offset=10**15)),
    "negative offset": lambda: edited(lambda t, m: m.update(offset=-1)),
    "offset not the anchor's length": lambda: edited(lambda t, m: m.update(offset=3)),
    "field span past the tokens": lambda: edited(lambda t, m: m["fields"][0].update(end=6)),
    "field span before the tokens": lambda: edited(lambda t, m: m["fields"][0].update(start=-1)),
    "empty field span": lambda: edited(lambda t, m: m["fields"][0].update(start=2, end=2)),
    "field span of an undeclared field": lambda: edited(lambda t, m: m["fields"][0].update(name="nope")),
    "field span with another value": lambda: edited(lambda t, m: m["fields"][0].update(value="other")),
    "token count differs from the tensors": lambda: edited(lambda t, m: m.update(token_ids=[1, 2, 3, 4])),
    "no tokens": lambda: edited(lambda t, m: m.update(token_ids=[], fields=[])),
    "token id not an int": lambda: edited(lambda t, m: m["token_ids"].__setitem__(0, "1")),
    "negative token id": lambda: edited(lambda t, m: m["token_ids"].__setitem__(0, -5)),
    "num_layers 1e9, float": lambda: edited(lambda t, m: m.update(num_layers=1e9)),
    "num_layers a bool": lambda: edited(lambda t, m: m.update(num_layers=True)),
    "num_layers 0": lambda: edited(lambda t, m: m.update(num_layers=0)),
    "text digest of other text": lambda: edited(lambda t, m: m.update(text="tampered")),
    "unknown metadata key": lambda: edited(lambda t, m: m.update(surprise=1)),
    "missing metadata key": lambda: edited(lambda t, m: m.pop("token_ids") and None),
    "unknown format": lambda: edited(lambda t, m: m.update(format="skillforge.kv/9")),
    "invalid skill name": lambda: edited(lambda t, m: m.update(skill="../etc")),
    "version with a trailing newline": lambda: edited(lambda t, m: m.update(version="1.0.0\n")),
    "fingerprint not fp:hex": lambda: edited(lambda t, m: m.update(fingerprint="fp:XYZ")),
    "unknown dtype": lambda: edited(lambda t, m: m.update(dtype="int8")),
    "keys and values with different heads": lambda: fake({**kv(), "v.1": np.zeros((2, 5, 2), np.float32)}),
    "unexpected tensor name": lambda: edited(lambda t, m: t.update({"x.0": t.pop("k.0")})),
    "overlapping tensors": lambda: edited(lambda t, m: t["k.1"].update(data_offsets=t["k.0"]["data_offsets"])),
    "data past the tensors": lambda: edited(lambda t, m: None, None) + b"\0" * 16,
    "truncated data": lambda: artifact_bytes(make_meta())[:-100],
    "header longer than the file": lambda: struct.pack("<Q", 4096) + b"{}",
    "header over the size limit": lambda: struct.pack("<Q", artifact.MAX_HEADER_BYTES + 1) + b"{}",
    "shorter than its length prefix": lambda: b"\x01\x02",
    "header not UTF-8": lambda: struct.pack("<Q", 4) + b"\xff\xfe{}",
    "header not JSON": lambda: pack("{nope"),
    "NaN in the header JSON": lambda: pack('{"__metadata__": {"skillforge": "x"}, "k.0": NaN}'),
    "duplicate tensor key": lambda: pack('{"k.0": {}, "k.0": {}}'),
    "header nested 100,000 deep": lambda: pack("[" * 100_000 + "]" * 100_000),
    "labels not text": lambda: edited(lambda t, m: m.update(extra={"labels": {"who": 3}})),
    "manifest of another skill": lambda: edited(lambda t, m: m.update(extra={"manifest": {
        "name": "other", "version": "1.0.0", "template": m["text"], "fields": {}}})),
    "manifest that is not a manifest": lambda: edited(lambda t, m: m.update(extra={"manifest": [1, 2]})),
    "sensitivity of another length": lambda: edited(lambda t, m: m.update(extra={"sensitivity": [0.5] * 4})),
    "negative sensitivity": lambda: edited(lambda t, m: m.update(extra={"sensitivity": [0.5, 0.1, -1, 0, 2]})),
    "sensitivity not numbers": lambda: edited(lambda t, m: m.update(extra={"sensitivity": [0.5, 0.1, "x", 0, 2]})),
    "sensitivity of bools": lambda: edited(lambda t, m: m.update(extra={"sensitivity": [True] * 5})),
    "sensitivity of an unknown kind": lambda: edited(lambda t, m: m.update(extra={"sensitivity": [0.5] * 5, "sensitivity_kind": "guessed"})),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_artifacts_are_corrupt_blobs(case: str, tmp_path: Path):
    data = MALFORMED[case]()
    with pytest.raises(CorruptBlob, match="invalid artifact"):
        read_header(data, source="blob")
    path = tmp_path / "a.safetensors"  # the same through a file, as stores and packs read it
    path.write_bytes(data)
    with pytest.raises(CorruptBlob, match=f"{path}: invalid artifact"):
        read_header(path)


def test_messages_say_what_is_wrong():
    def message(case: str) -> str:
        with pytest.raises(CorruptBlob) as info:
            read_header(MALFORMED[case](), source="blob")
        return str(info.value)

    assert message("2-D tensors").startswith("blob: invalid artifact: tensor 'k.0' has shape [5, 4]; expected "
                                             "[kv_heads, tokens, head_dim]; recompile the skill or pull it again")
    assert "tensor 'k.0' is 'F16', but the metadata says F32" in message("fp16 tensors labelled float32")
    assert "4 tensors for 3 layers; expected 6" in message("29 of 30 layers")
    assert "field span 'who' [1, 6) is outside the skill's 5 tokens" in message("field span past the tokens")
    assert "metadata 'offset' is float, expected int" in message("offset 1e15")
    assert "offset -1 is not the anchor's length 0" in message("negative offset")
    assert "num_layers 0 is not between 1 and 1024" in message("num_layers 0")
    assert "tensor 'k.0' holds 5 tokens, the metadata 4" in message("token count differs from the tensors")
    assert "the safetensors header is list, not an object" in message("header is a JSON list")
    assert "data_offsets [0] are not two byte offsets" in message("data_offsets of one element")
    assert "extra.sensitivity must be 5 finite non-negative numbers, one per token" in message("negative sensitivity")
    assert "extra.sensitivity_kind must be measured or estimate" in message("sensitivity of an unknown kind")
    assert "key 'k.0' appears twice" in message("duplicate tensor key")


def test_a_huge_num_layers_allocates_nothing(tmp_path: Path):
    # a 14 MB blob whose metadata claims a billion layers: refused before anything is sized by it
    path = tmp_path / "big.safetensors"
    path.write_bytes(edited(lambda t, m: m.update(num_layers=10**9), fake(kv(tokens=5, dim=4), tokens=5))
                     + b"\0" * 14_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptBlob, match="num_layers 1000000000 is not between 1 and 1024"):
            read_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def model_check(data: bytes, layout: ModelLayout = LAYOUT) -> None:
    meta, table = read_header(data)
    check_against(meta, table, layout, source="blob")


def test_another_models_artifact_is_a_mismatch():
    with pytest.raises(ArtifactMismatch, match=f"compiled for model {FP_B}, this model is {FP_A}; run skillforge compile"):
        model_check(artifact_bytes(make_meta(fingerprint=FP_B)))


@pytest.mark.parametrize("data, expected", [
    (edited(lambda t, m: m.update(num_layers=1), fake(kv(layers=1))), "has 1 layers; the model has 2"),
    (fake(kv(heads=2)), "layer 0 keys have 2 KV heads of 4 dims; the model has 1 of 4"),
    (fake(kv(dim=8)), "layer 0 keys have 1 KV heads of 8 dims; the model has 1 of 4"),
    (fake(kv(dtype=np.float16), dtype="float16"), "holds float16 values; the model computes in float32"),
    (fake(kv(), anchor_ids=tuple(range(60))), "positions 60..64; the model has 64"),
    (edited(lambda t, m: m["token_ids"].__setitem__(4, 100)), "past the model's vocabulary of 100"),
])
def test_an_artifact_that_does_not_fit_its_model_is_corrupt(data: bytes, expected: str):
    with pytest.raises(CorruptBlob, match=f"claims model {FP_A} but .*{re.escape(expected)}"):
        model_check(data)


def test_values_that_fit_only_the_other_layer_are_refused():
    tensors = kv()
    tensors["v.1"] = np.zeros((1, 5, 8), np.float32)  # value dim 8 where the model's layer 1 has 4
    with pytest.raises(CorruptBlob, match="layer 1 values have 1 KV heads of 8 dims"):
        model_check(fake(tensors))


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_load_refuses_values_that_are_not_finite(poison: float, tmp_path: Path):
    tensors = kv()
    tensors["v.1"][0, 3, 2] = poison
    path = tmp_path / "a.safetensors"
    path.write_bytes(fake(tensors))
    with pytest.raises(CorruptBlob, match="layer 1 holds NaN or infinite values"):
        artifact.load(path, expect=LAYOUT)
    all_nan = {k: np.full_like(v, np.nan) for k, v in kv().items()}
    path.write_bytes(fake(all_nan))
    with pytest.raises(CorruptBlob, match="layer 0 holds NaN"):
        artifact.load(path)


def test_load_runs_the_model_check_before_reading_tensors(tmp_path: Path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(fake(kv(heads=2)))
    with pytest.raises(CorruptBlob, match="KV heads"):
        artifact.load(path, expect=LAYOUT)
    with pytest.raises(ArtifactMismatch):
        artifact.load(path, expect=ModelLayout(FP_B, "float32", ((2, 4, 4),) * 2, 64, 100))
