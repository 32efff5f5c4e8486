#!/usr/bin/env python
"""Publish and pull throughput of a ~200 MB pack over loopback S3 (moto's server), no torch needed.

    .venv/bin/python scripts/bench_packs.py [--mb 200] [--artifacts 8] [--in-process]

Builds valid fake artifacts (random float32 KV, the metadata artifact.py expects) in a temporary home,
publishes them as one pack to a moto server on 127.0.0.1 (in its own process unless --in-process, so
the server does not compete with the client for the GIL), pulls the pack into a second, empty home,
and prints MB/s for each step, plus the no-op republish and the already-present pull. The numbers
measure skillforge plus moto on this machine; a real S3, MinIO or R2 endpoint has different limits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

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


def fake_artifact(name: str, nbytes: int, seed: int) -> tuple[object, bytes]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=210, help="total pack size in MB (default 210)")
    parser.add_argument("--artifacts", type=int, default=8, help="number of artifacts (default 8)")
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
    per = int(args.mb * 1e6 / args.artifacts)
    names = []
    t0 = time.perf_counter()
    for i in range(args.artifacts):
        name = f"bench-{i}"
        meta, data = fake_artifact(name, per, seed=i)
        pub_reg.record_skill_version(name, "1.0.0", meta.text_digest, "bench", {})
        digest, size = pub_store.put_bytes(data)
        pub_reg.record_artifact(meta, digest, size)
        names.append(name)
    total = sum(r.bytes for r in pub_reg.list_artifacts())
    print(f"built {args.artifacts} artifacts, {total / 1e6:.1f} MB, in {time.perf_counter() - t0:.1f}s "
          f"(moto server {'in process' if args.in_process else 'in its own process'} at {endpoint})", file=sys.stderr)

    results = {"bytes": total, "artifacts": args.artifacts, "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    res = publish(names, "bench@1.0.0", root, registry=pub_reg, store=pub_store)
    dt = time.perf_counter() - t0
    results["publish_s"], results["publish_MBps"] = round(dt, 2), round(res.uploaded_bytes / 1e6 / dt, 1)
    t0 = time.perf_counter()
    again = publish(names, "bench@1.0.0", root, registry=pub_reg, store=pub_store)
    assert not again.created and again.uploaded == 0
    results["republish_noop_s"] = round(time.perf_counter() - t0, 2)

    pull_reg, pull_store = Registry(f"sqlite:///{work / 'b' / 'index.sqlite'}"), LocalStore(work / "b")
    t0 = time.perf_counter()
    got = pull(f"{root}/bench@1.0.0", registry=pull_reg, store=pull_store)
    dt = time.perf_counter() - t0
    assert got.downloaded_bytes == total and got.recorded == args.artifacts
    results["pull_s"], results["pull_MBps"] = round(dt, 2), round(total / 1e6 / dt, 1)
    t0 = time.perf_counter()
    again_pull = pull(f"{root}/bench@1.0.0", registry=pull_reg, store=pull_store)
    assert again_pull.downloaded == []
    results["repull_present_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(results))
    print(f"publish {results['publish_MBps']} MB/s, pull {results['pull_MBps']} MB/s "
          f"({total / 1e6:.0f} MB over loopback)", file=sys.stderr)
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
