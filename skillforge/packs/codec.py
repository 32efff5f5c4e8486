"""The `zstd-planes` encoding of pack blobs on a bucket: byte planes, then zstd, streamed both ways.

Transfer is what a pack costs, so blobs travel compressed; the local store keeps them plain, since
splice memory-maps them. KV values compress poorly as they are (measured on the demo model's KV,
scripts/bench_packs.py: fp32 1.09x, bf16 1.29x) but better once the bytes of each value are split
into planes, all first bytes, then all second bytes... (fp32 1.19x, bf16 1.47x): sign and exponent
bytes repeat, mantissa bytes do not, and planes keep the two apart. The split is done per 1 MiB block, so encoding and decoding run
in bounded memory whatever the blob's size.

Encoded stream, before zstd (one frame):

    b"SFZP" | 0x01 | width (1 byte: 1, 2, 4 or 8) | head length (8 bytes, little-endian)
    head bytes verbatim (the safetensors header)
    the rest in blocks of BLOCK bytes: the first len - len % width bytes as `width` planes, then the
    remaining len % width bytes verbatim

A bucket is a trust boundary, so `decode` never trusts what it reads: it writes at most the size the
pack index records (refusing a stream that holds more or less), keeps zstd's window bounded, and
returns the sha256 of what it wrote for the caller to compare with the blob's content address.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zstandard

from skillforge.artifact import read_header
from skillforge.errors import CorruptBlob, StoreError

MAGIC = b"SFZP\x01"
PREAMBLE = struct.Struct("<5sBQ")
BLOCK = 1024 * 1024  # a multiple of every width, so blocks keep values aligned
LEVEL = 1  # on demo-model KV level 1 beat 3: 1.19x vs 1.18x (fp32), 1.47x vs 1.42x (bf16), 2-3x faster
MAX_WINDOW = 1 << 27  # zstd's own default limit (128 MiB): a hostile frame cannot ask for more memory
_WIDTHS = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def max_encoded_size(size: int) -> int:
    """The largest encoded object a blob of `size` bytes can honestly become: zstd's worst case
    (ZSTD_COMPRESSBOUND of the stream, our preamble included) plus a frame header and checksum.
    Anything bigger is refused before it is downloaded."""
    n = size + PREAMBLE.size
    return n + (n >> 8) + ((128 * 1024 - n) >> 11 if n < 128 * 1024 else 0) + 64


def plane_layout(path: Path) -> tuple[int, int]:
    """(width, head length) of an artifact file: the byte width of its tensors' values (1 if they do
    not share one) and where their data starts. Read with `artifact.read_header`, the one parser."""
    size = path.stat().st_size
    _, tensors = read_header(path)
    widths = {_WIDTHS.get(str(info.get("dtype")), 1) for info in tensors.values()}
    data = max((int(info["data_offsets"][1]) for info in tensors.values()), default=0)
    return (widths.pop() if len(widths) == 1 else 1), size - data


def _planes(block: bytes, width: int) -> bytes:
    cut = len(block) - len(block) % width
    if width == 1 or cut == 0:
        return block
    return np.frombuffer(block, np.uint8, count=cut).reshape(-1, width).T.tobytes() + block[cut:]


def _unplanes(block: bytes, width: int) -> list[Any]:
    """The values back from their planes, as buffers to write in order. Built as little-endian integers
    (value = plane[w-1] << 8(w-1) | ... | plane[0]): several times faster than a byte transpose."""
    cut = len(block) - len(block) % width
    if width == 1 or cut == 0:
        return [block]
    planes = np.frombuffer(block, np.uint8, count=cut).reshape(width, -1)
    values = planes[width - 1].astype(f"<u{width}")
    for plane in planes[width - 2::-1]:
        values <<= 8
        values |= plane
    return [values, block[cut:]]


def encode(src: Path, dst: Path, width: int, head: int, level: int = LEVEL) -> int:
    """Encode the file `src` into `dst` (overwritten, fsynced); the encoded size in bytes."""
    if width not in (1, 2, 4, 8) or head < 0:
        raise ValueError(f"invalid plane layout: width {width}, head {head}")
    size = src.stat().st_size
    head = min(head, size)
    cctx = zstandard.ZstdCompressor(level=level)
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            with cctx.stream_writer(fout, size=PREAMBLE.size + size, closefd=False) as writer:
                writer.write(PREAMBLE.pack(MAGIC, width, head))
                left = head
                while left:
                    chunk = fin.read(min(BLOCK, left))
                    if not chunk:
                        raise StoreError(f"{src} shrank while it was being encoded; retry")
                    writer.write(chunk)
                    left -= len(chunk)
                while block := fin.read(BLOCK):
                    writer.write(_planes(block, width))
            fout.flush()
            os.fsync(fout.fileno())
            return fout.tell()
    except OSError as exc:
        raise StoreError(f"cannot encode {src} into {dst}: {exc}; check free space") from exc


def _read_exact(reader: BinaryIO, n: int, source: str) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = reader.read(n - got)
        if not chunk:
            raise CorruptBlob(f"{source}: the encoded blob ends after fewer bytes than the pack index records; "
                              "it was not kept, republish the pack")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def decode(src: Path, dst: Path, size: int, source: str) -> str:
    """Decode the untrusted encoded file `src` into `dst`, writing exactly `size` bytes; their sha256.

    CorruptBlob when the stream is not ours, is damaged, or decodes to more or fewer than `size` bytes.
    The caller compares the returned digest with the blob's address before using `dst`.
    """
    h = hashlib.sha256()
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout, dctx.stream_reader(fin, read_size=1 << 20) as reader:
            magic, width, head = PREAMBLE.unpack(_read_exact(reader, PREAMBLE.size, source))
            if magic != MAGIC or width not in (1, 2, 4, 8) or head > size:
                raise CorruptBlob(f"{source}: not a zstd-planes blob this skillforge can read (magic {magic!r}, width "
                                  f"{width}, head {head} of {size} bytes); it was not kept")
            for length, planes in [(head, False), (size - head, True)]:
                while length:
                    block = _read_exact(reader, min(BLOCK, length), source)
                    for out in _unplanes(block, width) if planes else [block]:
                        h.update(out)
                        fout.write(out)
                    length -= len(block)
            if reader.read(1):
                raise CorruptBlob(f"{source}: the encoded blob decompresses beyond the {size} bytes the pack index "
                                  "records; it was refused and not kept")
            fout.flush()
            os.fsync(fout.fileno())
    except zstandard.ZstdError as exc:
        raise CorruptBlob(f"{source}: the encoded blob is damaged ({exc}); it was not kept, republish the pack") from exc
    except OSError as exc:
        raise StoreError(f"cannot decode {source} into {dst}: {exc}; check free space") from exc
    return f"sha256:{h.hexdigest()}"
