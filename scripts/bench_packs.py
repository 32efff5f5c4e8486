#!/usr/bin/env python
"""Pack transfer: zstd-planes ratio and throughput, and publish/pull over loopback S3 (moto), no torch.

    .venv/bin/python scripts/bench_packs.py [--from-home HOME] [--mb 210] [--artifacts 8]
                                            [--bandwidth 25 100 500] [--in-process]

Artifacts: with --from-home, every artifact compiled in that home (real KV: compile the skills with the
demo model first, once per dtype); otherwise fake ones (random float32 KV, the metadata artifact.py
expects) adding up to --mb. For each dtype it reports the encoding's ratio (plain bytes / bytes on the
bucket, and plain zstd without planes for comparison) and its compress and decompress throughput
(decode includes un-planing and the sha256 a pull needs anyway). Then it publishes all artifacts as
one pack to a moto server on 127.0.0.1 (in its own process unless --in-process), pulls it into an
empty home, and reports MB/s, plus the no-op republish and the already-present pull. Loopback has no
bandwidth limit, so it also models a pull at each --bandwidth (MB/s) from the measured rates, as pull
does it: blob i+1 downloads while blob i is verified (plain: sha256; zstd-planes: decode, which
hashes), so each step costs the larger of the two. The numbers measure this machine; a real endpoint
has other limits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _serve(queue: multiprocessing.Queue) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    queue.put(server.get_host_and_port()[1])
    while True:
        time.sleep(3600)


def start_server(in_process: bool) -> tuple[str, object]:
    if in_process:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        return f"http://127.0.0.1:{server.get_host_and_port()[1]}", server
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(queue,), daemon=True)
    proc.start()
    return f"http://127.0.0.1:{queue.get(timeout=60)}", proc


def fake_artifact(name: str, nbytes: int, seed: int) -> tuple[Any, bytes]:
    import numpy as np
    from safetensors.numpy import save

    from skillforge.artifact import ArtifactMeta, FieldSpan

    text = f"You are the {name} skill. Greet {{who}}."
    tokens, layers, head_dim = 64, 30, 64
    meta = ArtifactMeta(
        skill=name, version="1.0.0", text=text, text_digest="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        template=text, field_values={"who": "world"}, token_ids=list(range(tokens)), anchor_ids=[], offset=0,
        fields=[FieldSpan("who", "world", 5, 6)], fingerprint="fp:" + "b" * 16, fingerprint_parts={"weights": "bench"},
        dtype="float32", rope={"type": "default"}, num_layers=layers, created="2025-01-01T00:00:00+00:00",
    )
    heads = max(1, nbytes // (2 * layers * tokens * head_dim * 4))
    rng = np.random.default_rng(seed)
    tensors = {f"{kv}.{i}": rng.standard_normal((heads, tokens, head_dim), dtype=np.float32)
               for i in range(layers) for kv in "kv"}
    return meta, save(tensors, metadata={"skillforge": meta.to_json()})


def fill(reg: Any, store: Any, args: argparse.Namespace) -> list[str]:
    """Put the benchmark's artifacts into the publisher's home; the skill names to publish."""
    from skillforge.registry import Registry
    from skillforge.store import LocalStore

    names = set()
    if args.from_home:
        home = Path(args.from_home)
        with Registry(f"sqlite:///{home / 'index.sqlite'}") as src:
            rows = src.list_artifacts()
        if not rows:
            sys.exit(f"no artifacts in {home}; compile some there first (SKILLFORGE_HOME={home} skillforge compile ...)")
        source = LocalStore(home)
        for row in rows:
            meta = row.meta
            reg.record_skill_version(meta.skill, meta.version, meta.text_digest, "bench", {})
            digest, size = store.put_file(source.local_path(row.digest))
            reg.record_artifact(meta, digest, size)
            names.add(f"{meta.skill}@{meta.version}")
        return sorted(names)
    per = int(args.mb * 1e6 / args.artifacts)
    for i in range(args.artifacts):
        meta, data = fake_artifact(f"bench-{i}", per, seed=i)
        reg.record_skill_version(meta.skill, meta.version, meta.text_digest, "bench", {})
        digest, size = store.put_bytes(data)
        reg.record_artifact(meta, digest, size)
        names.add(meta.skill)
    return sorted(names)


def codec_figures(reg: Any, store: Any, work: Path) -> tuple[dict[str, dict[str, float]], list[tuple[str, int, int]]]:
    """Per dtype: bytes, encoded bytes, ratios, and compress / decompress / sha256 throughput; and
    (dtype, bytes, encoded bytes) of each blob."""
    from skillforge.packs import codec
    from skillforge.store.local import hash_file

    groups: dict[str, list[Any]] = {}
    for row in reg.list_artifacts():
        groups.setdefault(row.dtype, []).append(row)
    out = {}
    blobs = []
    for dtype, rows in sorted(groups.items()):
        plain = encoded = flat = 0
        t_enc = t_dec = t_sha = 0.0
        for row in rows:
            path = store.local_path(row.digest)
            width, head = codec.plane_layout(path)
            t0 = time.perf_counter()
            size = codec.encode(path, work / "enc", width, head)
            t_enc += time.perf_counter() - t0
            encoded += size
            blobs.append((dtype, row.bytes, size))
            t0 = time.perf_counter()
            assert codec.decode(work / "enc", work / "dec", row.bytes, row.digest) == row.digest
            t_dec += time.perf_counter() - t0
            t0 = time.perf_counter()
            hash_file(path)
            t_sha += time.perf_counter() - t0
            flat += codec.encode(path, work / "flat", 1, head)  # zstd alone, no planes
            plain += row.bytes
        out[dtype] = {"artifacts": len(rows), "bytes": plain, "encoded_bytes": encoded,
                      "ratio": round(plain / encoded, 3), "ratio_zstd_without_planes": round(plain / flat, 3),
                      "compress_MBps": round(plain / 1e6 / t_enc, 1), "decompress_MBps": round(plain / 1e6 / t_dec, 1),
                      "sha256_MBps": round(plain / 1e6 / t_sha, 1)}
    for name in ("enc", "dec", "flat"):
        (work / name).unlink(missing_ok=True)
    return out, blobs


def pipelined(steps: list[tuple[float, float]]) -> float:
    """Seconds to download and verify blobs in order when blob i+1 downloads while blob i is verified."""
    total = steps[0][0]
    for (_, verify), (download, _) in zip(steps, steps[1:]):
        total += max(download, verify)
    return total + steps[-1][1]


def modelled_pulls(codec_by_dtype: dict[str, dict[str, float]], blobs: list[tuple[str, int, int]],
                   bandwidths: list[float]) -> dict[str, dict[str, float]]:
    """Pull time of the whole pack at each bandwidth (MB/s), plain vs zstd-planes, from measured rates."""
    out = {}
    for bw in bandwidths:
        plain = pipelined([(n / 1e6 / bw, n / 1e6 / codec_by_dtype[d]["sha256_MBps"]) for d, n, _ in blobs])
        zstd = pipelined([(e / 1e6 / bw, n / 1e6 / codec_by_dtype[d]["decompress_MBps"]) for d, n, e in blobs])
        out[f"{bw:g}MBps"] = {"plain_s": round(plain, 2), "zstd_planes_s": round(zstd, 2),
                              "speedup": round(plain / zstd, 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-home", help="publish every artifact compiled in this SKILLFORGE_HOME (real KV)")
    parser.add_argument("--mb", type=float, default=210, help="without --from-home: total size in MB (default 210)")
    parser.add_argument("--artifacts", type=int, default=8, help="without --from-home: number of artifacts (default 8)")
    parser.add_argument("--bandwidth", type=float, nargs="+", default=[25.0, 100.0, 500.0],
                        help="bucket bandwidths in MB/s to model a pull at (default 25 100 500)")
    parser.add_argument("--in-process", action="store_true", help="run the moto server in this process")
    args = parser.parse_args()

    endpoint, _server = start_server(args.in_process)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    import boto3

    from skillforge.packs import publish, pull
    from skillforge.registry import Registry
    from skillforge.store import LocalStore

    work = Path(tempfile.mkdtemp(prefix="skillforge-bench-"))
    os.environ["SKILLFORGE_HOME"] = str(work / "home")
    bucket = "skillforge-bench"
    boto3.client("s3").create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/prod"

    pub_reg, pub_store = Registry(f"sqlite:///{work / 'a' / 'index.sqlite'}"), LocalStore(work / "a")
    t0 = time.perf_counter()
    names = fill(pub_reg, pub_store, args)
    rows = pub_reg.list_artifacts()
    total = sum(r.bytes for r in rows)
    print(f"{len(rows)} artifacts, {total / 1e6:.1f} MB ({args.from_home or 'fake float32 KV'}), ready in "
          f"{time.perf_counter() - t0:.1f}s; moto server {'in process' if args.in_process else 'in its own process'} "
          f"at {endpoint}", file=sys.stderr)

    results: dict[str, Any] = {"source": args.from_home or "fake", "bytes": total, "artifacts": len(rows),
                               "cpus": os.cpu_count()}
    results["codec"], blobs = codec_figures(pub_reg, pub_store, work)
    results["modelled_pull"] = modelled_pulls(results["codec"], blobs, args.bandwidth)

    t0 = time.perf_counter()
    res = publish(names, "bench@1.0.0", root, registry=pub_reg, store=pub_store)
    dt = time.perf_counter() - t0
    results["publish_s"], results["publish_MBps"] = round(dt, 2), round(res.uploaded_bytes / 1e6 / dt, 1)
    results["sent_bytes"] = res.sent_bytes
    t0 = time.perf_counter()
    again = publish(names, "bench@1.0.0", root, registry=pub_reg, store=pub_store)
    assert not again.created and again.uploaded == 0
    results["republish_noop_s"] = round(time.perf_counter() - t0, 2)

    pull_reg, pull_store = Registry(f"sqlite:///{work / 'b' / 'index.sqlite'}"), LocalStore(work / "b")
    t0 = time.perf_counter()
    got = pull(f"{root}/bench@1.0.0", registry=pull_reg, store=pull_store)
    dt = time.perf_counter() - t0
    assert got.downloaded_bytes == total and got.recorded == len(rows)
    results["pull_s"], results["pull_MBps"] = round(dt, 2), round(total / 1e6 / dt, 1)
    results["received_bytes"] = got.received_bytes
    t0 = time.perf_counter()
    again_pull = pull(f"{root}/bench@1.0.0", registry=pull_reg, store=pull_store)
    assert again_pull.downloaded == []
    results["repull_present_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(results, indent=2))
    for dtype, c in results["codec"].items():
        print(f"{dtype}: ratio {c['ratio']}x (zstd without planes {c['ratio_zstd_without_planes']}x), compress "
              f"{c['compress_MBps']} MB/s, decompress {c['decompress_MBps']} MB/s", file=sys.stderr)
    for bw, m in results["modelled_pull"].items():
        print(f"pull at {bw}: plain {m['plain_s']}s, zstd-planes {m['zstd_planes_s']}s", file=sys.stderr)
    print(f"loopback: publish {results['publish_MBps']} MB/s, pull {results['pull_MBps']} MB/s "
          f"({total / 1e6:.0f} MB as {got.received_bytes / 1e6:.0f} MB)", file=sys.stderr)
    pub_reg.close()
    pull_reg.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
