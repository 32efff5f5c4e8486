"""Seeded fuzzing of everything skillforge reads from others: manifests, references, artifact files.

Each corpus is generated from a fixed seed (a few hundred cases each, seconds to run). The property:
every case is either accepted, and then really valid (checked by an independent oracle, not by the code
under test), or refused with the right SkillforgeError subclass — never another exception. Failures
list the case, so a regression names the input that broke it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from skillforge import artifact
from skillforge.artifact import ModelLayout, check_against, read_header
from skillforge.errors import ArtifactMismatch, BadReference, CorruptBlob, ManifestError
from skillforge.manifest import MAX_DESCRIPTION_CHARS, MAX_PROMPT_BYTES, load_manifest, validate_value
from skillforge.refs import PackRef, SkillRef, check_version, digest_hex, parse_field_assignment, version_key

from s3server import FP_A, FP_B, artifact_bytes, make_meta

SEED = 20240618
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)([-+][0-9A-Za-z.+-]*)?")


def run_corpus(cases: list[tuple[str, Any]], check: Callable[[Any], None]) -> list[str]:
    """Run `check` on every case; the cases it failed, with what went wrong."""
    failures = []
    for label, case in cases:
        try:
            check(case)
        except AssertionError as exc:
            failures.append(f"{label}: accepted but wrong: {exc}")
        except Exception as exc:  # noqa: BLE001 - the point: anything else is a finding
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
    return failures


# -- manifests ------------------------------------------------------------------------------------

GOOD = '''name = "refund-desk"
version = "2.1.0"
description = "Refund policy."
prompt = """
The role is {{account_role}}. Limit: {{max_usd}} dollars.
"""

[fields.account_role]
default = "verified_admin"
label = "The account role"

[fields.max_usd]
default = "500"
'''

HOSTILE_VALUES = [
    lambda r: "[" * r.randint(20, 5000) + "]" * 5000,
    lambda r: "{a=" * r.randint(20, 3000) + "1" + "}" * 3000,
    lambda r: "9" * r.randint(4290, 6000),
    lambda r: "0x" + "f" * r.randint(4000, 6000),
    lambda r: r.choice(["inf", "nan", "-inf", "true", "1979-05-27T07:32:00Z", "1.5", "[]", "{}", "[1, 2]"]),
    lambda r: json.dumps(r.choice(["1.0.0\n", "refund-desk\n", "-refund", "A", "١.٠.٠", "1.0.0 ", "", " "])),
    lambda r: json.dumps("x" * r.randint(60, 6000)),
    lambda r: '"a\\u0000b"',
    lambda r: '"1.0.' + "9" * r.randint(60, 5000) + '"',
    lambda r: '"""' + "\\" * r.randint(1, 5) + '"',
    lambda r: json.dumps("".join(r.choice("\n\r\u2028\x00\x7f{}é\t ") for _ in range(r.randint(1, 20)))),
]
ALPHABET = list('[]{}"\'=.\n\\\0#é\u2028٣ a-_') + ['"""', "'''", "{{", "}}", "[fields.x]", "x.y.z"]


def _manifest_case(r: random.Random) -> tuple[str, dict[str, Any]]:
    """(toml text, prompt-file setup) of one hostile manifest."""
    kind = r.randrange(7)
    text = GOOD
    files: dict[str, Any] = {}
    if kind == 0:  # byte-level edits
        for _ in range(r.randint(1, 10)):
            i = r.randrange(len(text) + 1)
            text = text[:i] + r.choice(ALPHABET) + text[i + r.randint(0, 2):]
    elif kind == 1:  # a value replaced
        key = r.choice(["name", "version", "description", "prompt", "default", "label"])
        lines = text.split("\n")
        at = [i for i, line in enumerate(lines) if line.startswith(f"{key} = ")]
        value = r.choice(HOSTILE_VALUES)(r)
        if key == "prompt":
            text = text.replace('"""\nThe role is {{account_role}}. Limit: {{max_usd}} dollars.\n"""', value)
        else:
            lines[r.choice(at)] = f"{key} = {value}"
            text = "\n".join(lines)
    elif kind == 2:  # dotted keys, unknown keys, odd field names
        parts = r.randint(2, 60_000)
        text += r.choice([".".join(["x"] * parts) + " = 1\n", "[" + ".".join(["fields"] * parts) + "]\n",
                          f"[fields.{r.choice(['A', '9x', 'a-b', 'x' * 70, 'ok'])}]\ndefault = \"v\"\n",
                          f"{r.choice(['nam', 'promt', 'k' * 5000])} = \"v\"\n"])
    elif kind == 3:  # truncation
        text = text[: r.randrange(len(text))]
    elif kind == 4:  # prompt files an attacker may plant
        files = r.choice([
            {"name": "a" * r.randint(256, 5000)}, {"name": "a\\u0000b"}, {"name": "../outside.md"},
            {"name": "/etc/hostname"}, {"name": "loop", "loop": True}, {"name": "dir", "dir": True},
            {"name": "fifo", "fifo": True}, {"name": "big.md", "bytes": b"x" * (MAX_PROMPT_BYTES + 1)},
            {"name": "latin1.md", "bytes": b"caf\xe9"}, {"name": "missing.md"}, {"name": ""},
            {"name": "ok.md", "bytes": b"Just text."},
        ])
        text = f'name = "refund-desk"\nversion = "2.1.0"\nprompt_file = "{files["name"]}"\n'
    elif kind == 5:  # a description or label too long
        text = text.replace('"Refund policy."', json.dumps("d" * r.randint(MAX_DESCRIPTION_CHARS - 5, 3000)))
    else:  # many random tokens appended
        text += "".join(r.choice(ALPHABET) for _ in range(r.randint(1, 200)))
    return text, files


def _write_manifest(folder: Path, text: str, files: dict[str, Any]) -> None:
    folder.mkdir()
    (folder / "skill.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    name = files.get("name", "")
    if files.get("loop"):
        os.symlink("loop2", folder / "loop")
        os.symlink("loop", folder / "loop2")
    if files.get("dir"):
        (folder / name).mkdir()
    if files.get("fifo"):
        os.mkfifo(folder / name)
    if "bytes" in files:
        (folder / name).write_bytes(files["bytes"])


def _check_manifest(folder: Path) -> None:
    try:
        m = load_manifest(folder)
    except ManifestError as exc:
        assert str(exc).startswith(str(folder / "skill.toml")), f"the error does not name the file: {exc}"
        return
    assert NAME.fullmatch(m.name), f"name {m.name!r}"
    assert len(m.version) <= 64 and VERSION.fullmatch(m.version) and check_version(m.version), f"version {m.version!r}"
    assert len(m.description) <= MAX_DESCRIPTION_CHARS
    assert len(m.template.encode("utf-8", "surrogatepass")) <= MAX_PROMPT_BYTES
    for f in m.fields.values():
        assert validate_value(m.name, f.name, f.default) and "\n" not in f.label
    rendered = m.render()
    assert all(rendered.text[s:e] == rendered.values[n] for n, s, e in rendered.spans)


def test_hostile_manifests_parse_or_raise_manifest_errors(tmp_path: Path):
    r = random.Random(SEED)
    cases = []
    for i in range(300):
        text, files = _manifest_case(r)
        folder = tmp_path / f"m{i}"
        _write_manifest(folder, text, files)
        cases.append((f"manifest {i} ({text[:60]!r}..., files {files.get('name', '')[:40]!r})", folder))
    failures = run_corpus(cases, _check_manifest)
    assert not failures, "\n".join(failures[:10])


# -- references -----------------------------------------------------------------------------------

REF_TOKENS = ["a", "z", "0", "9", "-", "@", ".", "sha256:", "f" * 64, "1.0.0", "1.0.0-rc.1", "+build.5", "\n", " ",
              "\t", "٣", "A", "_", "s3://bucket/prefix/", "/", "=", "x" * 70, "9" * 5000, "\0", "é", "refund-desk",
              ".field=", "--"]


def _ref_case(r: random.Random) -> str:
    return "".join(r.choice(REF_TOKENS) for _ in range(r.randint(1, 8)))


def _check_ref(text: str) -> None:
    for parse in (SkillRef.parse, PackRef.parse, parse_field_assignment, version_key, digest_hex):
        try:
            parsed = parse(text)
        except BadReference:
            continue
        if isinstance(parsed, SkillRef):
            assert NAME.fullmatch(parsed.name), parsed
            assert parsed.version is None or (len(parsed.version) <= 64 and VERSION.fullmatch(parsed.version)), parsed
            assert SkillRef.parse(str(parsed)) == parsed
        if isinstance(parsed, PackRef):
            assert NAME.fullmatch(parsed.name) and VERSION.fullmatch(parsed.version), parsed
        if parse is parse_field_assignment:
            assert NAME.fullmatch(parsed[0]) and re.fullmatch(r"[a-z_][a-z0-9_]{0,63}", parsed[1]), parsed


def test_hostile_references_parse_or_raise_bad_reference():
    r = random.Random(SEED)
    cases = [(f"reference {i}", _ref_case(r)) for i in range(400)]
    cases += [(f"reference {t!r}", t) for t in ("-refund", "a\n", "a@1.0.0\n", "a@١.٠.٠", "a@" + "1" * 5000 + ".0.0")]
    failures = run_corpus([(f"{label}: {text[:60]!r}", text) for label, text in cases], _check_ref)
    assert not failures, "\n".join(failures[:10])


# -- artifacts ------------------------------------------------------------------------------------

LAYOUT = ModelLayout(fingerprint=FP_A, dtype="float32", layers=((2, 4, 4),) * 2, max_positions=64, vocab_size=100)
HOSTILE_JSON = [-1, 0, 1, 3, 2**31, 10**15, 1e15, 1.5, "x", "", [], {}, None, True, [0], [0, 1, 2], [2, 5, 4],
                "F16", "F64", "BF16", [[[[[]]]]], "sha256:" + "0" * 64, "fp:" + "b" * 16]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:6]):
            out += _paths(v, prefix + (i,))
    return out


def _set(root: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    parent = root
    for p in path[:-1]:
        parent = parent[p]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return root


def _artifact_case(r: random.Random, base: bytes) -> bytes:
    (n,) = struct.unpack("<Q", base[:8])
    header, body = json.loads(base[8 : 8 + n]), base[8 + n :]
    meta = json.loads(header["__metadata__"]["skillforge"])
    kind = r.randrange(7)
    if kind == 6:  # consistent, but made for another model or shaped for another one
        return _other_layout(r)
    if kind in (0, 1):  # one node of the header or the metadata replaced or removed
        tree = meta if kind == 0 else header
        path = r.choice(_paths(tree))
        tree = _set(tree, path, r.choice(HOSTILE_JSON), delete=r.random() < 0.2)
        if kind == 0:
            header["__metadata__"]["skillforge"] = json.dumps(meta)
        else:
            header = tree
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + body
    if kind == 2:  # bytes of the header flipped
        data = bytearray(base)
        for _ in range(r.randint(1, 4)):
            data[r.randrange(8, 8 + n)] = r.randrange(256)
        return bytes(data)
    if kind == 3:  # truncated or extended
        return base[: r.randrange(len(base))] if r.random() < 0.5 else base + bytes(r.randrange(256) for _ in range(r.randint(1, 64)))
    if kind == 4:  # the length prefix lies
        return struct.pack("<Q", r.choice([0, 1, n - 1, n + 1, len(base), 2**63, r.randrange(2**64)])) + base[8:]
    data = bytearray(base)  # values poisoned: random bit patterns (some NaN or infinite), or NaN itself
    start = 8 + n + r.randrange(len(body) // 4) * 4
    data[start : start + 4] = np.float32(np.nan).tobytes() if r.random() < 0.5 else bytes(r.randrange(256) for _ in range(4))
    return bytes(data)


def _other_layout(r: random.Random) -> bytes:
    layers, heads, dim = r.choice([1, 2, 3]), r.choice([1, 2, 3]), r.choice([2, 4, 8])
    dtype = r.choice(["float32", "float16"])
    meta = make_meta(fingerprint=r.choice([FP_A, FP_A, FP_B]), dtype=dtype, anchor_ids=tuple(range(r.choice([0, 2, 59, 70]))))
    meta = dataclasses.replace(meta, num_layers=layers)
    values = np.random.default_rng(r.randrange(1000)).standard_normal((heads, meta.tokens, dim))
    tensors = {f"{kv}.{i}": values.astype(np.float32 if dtype == "float32" else np.float16) for i in range(layers) for kv in "kv"}
    return st_save(tensors, metadata={"skillforge": meta.to_json()})


def _oracle(data: bytes) -> None:
    """Independent of artifact.py: safetensors' own parser, numpy, and the layout written out by hand."""
    tensors = st_load(data)
    assert sorted(tensors) == ["k.0", "k.1", "v.0", "v.1"], sorted(tensors)
    meta = json.loads(json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]["skillforge"])
    tokens = len(meta["token_ids"])
    for name, t in tensors.items():
        assert t.dtype == np.float32 and t.shape == (2, tokens, 4), (name, t.dtype, t.shape)
        assert np.isfinite(t).all(), f"{name} is not finite"
    assert meta["offset"] == len(meta["anchor_ids"]) and meta["offset"] + tokens <= 64
    assert all(0 <= f["start"] < f["end"] <= tokens for f in meta["fields"])
    assert all(0 <= t < 100 for t in meta["token_ids"] + meta["anchor_ids"])


def _check_artifact(case: tuple[bytes, Path]) -> None:
    data, path = case
    try:
        meta, table = read_header(data)
    except CorruptBlob:
        try:
            read_header(path)
        except CorruptBlob:  # the file reader agrees with the bytes reader
            return
        raise AssertionError("the file reader accepts what the bytes reader refuses") from None
    try:
        check_against(meta, table, LAYOUT)
        artifact.load(path, expect=LAYOUT)
    except (CorruptBlob, ArtifactMismatch):
        return
    _oracle(data)


def test_hostile_artifacts_are_refused_before_use(tmp_path: Path):
    r = random.Random(SEED)
    base = artifact_bytes(make_meta(anchor_ids=(3, 4)), nbytes=2 * 2 * 5 * 4 * 4 * 2)
    _oracle(base)
    assert read_header(base)[1]["k.0"]["shape"] == [2, 5, 4]
    cases = []
    for i in range(300):
        data = _artifact_case(r, base)
        path = tmp_path / f"a{i}.safetensors"
        path.write_bytes(data)
        cases.append((f"artifact {i}", (data, path)))
    failures = run_corpus(cases, _check_artifact)
    assert not failures, "\n".join(failures[:10])
