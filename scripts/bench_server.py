#!/usr/bin/env python
"""Serving benchmark: a long skill spliced against the same text prefilled, with N concurrent clients.

One `skillforge serve`; each request either names the skill (`skills`) or sends its text as a plain
system message (a full prefill), side by side.

    python scripts/bench_server.py                               # 1, 4 and 8 clients, 8 requests per arm and level
    python scripts/bench_server.py --clients 4 --requests 4 --skill-tokens 512    # a quick look
    python scripts/bench_server.py --threads 1       # the server on one torch thread (a busy, shared CPU)

Each request streams; time to first token is measured at the client, to the first server-sent
event (sent when the cache is built and the first token taken). At each client count the two arms
alternate round by round (skills, plain, then plain, skills, ...), every client sending one request
per round, so whatever else the machine does hits both alike. Requests per second is an arm's
requests over the wall time of its own rounds. Writes one JSON document (--out) and prints a table.
The home (registry, blobs) is a temporary folder unless --home is given.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SKILLFORGE = Path(sys.executable).parent / "skillforge"
SYSTEM = "You answer customer questions for Northwind Supply. Be brief."
SKILL = "bench-skill"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_skill(folder: Path, model: str, tokens: int) -> str:
    """A skill folder whose text tokenizes to about `tokens` tokens (bundled skill texts, cut)."""
    from transformers import AutoTokenizer

    from skillforge.eval.bench import synthetic_text
    from skillforge.model.loader import resolve_model_path

    text = synthetic_text(AutoTokenizer.from_pretrained(str(resolve_model_path(model))), tokens)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompt.md").write_text(text)
    (folder / "skill.toml").write_text(f'name = "{SKILL}"\nversion = "1.0.0"\n'
                                       f'description = "{tokens} tokens of policy text for the serving benchmark."\n'
                                       'prompt_file = "prompt.md"\n')
    return text


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))]


class Client:
    def __init__(self, port: int, model: str, max_tokens: int):
        self.port, self.model, self.max_tokens = port, model, max_tokens

    def stream(self, body: dict) -> tuple[float, float, int]:
        """One streaming completion -> (time to first event s, end to end s, completion tokens)."""
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, **body}
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3600)
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
            ttft, tokens = None, 0
            for line in resp:
                if not line.startswith(b"data: "):
                    continue
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                data = line[6:].strip()
                if data == b"[DONE]":
                    break
                usage = json.loads(data).get("usage")
                if usage:
                    tokens = usage["completion_tokens"]
            return ttft, time.perf_counter() - t0, tokens
        finally:
            conn.close()


def request_body(arm: str, text: str, i: int) -> dict:
    user = f"Order {4100 + i}: the parcel arrived damaged. What can I do?"
    if arm == "skills":
        return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], "skills": [SKILL]}
    return {"messages": [{"role": "system", "content": f"{SYSTEM}\n\n{text}"}, {"role": "user", "content": user}]}


def run_round(client: Client, arm: str, text: str, clients: int, first: int) -> tuple[list[tuple[float, float, int]], float]:
    """`clients` requests at once -> their (ttft, e2e, tokens) and the round's wall time."""
    out: list = [None] * clients
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            out[k] = client.stream(request_body(arm, text, first + k))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out, time.perf_counter() - t0


def summarize(samples: list[tuple[float, float, int]], wall: float) -> dict:
    ttft = [s[0] * 1000 for s in samples]
    e2e = [s[1] * 1000 for s in samples]
    return {"requests": len(samples), "ttft_ms_p50": round(percentile(ttft, 50), 1), "ttft_ms_p95": round(percentile(ttft, 95), 1),
            "e2e_ms_p50": round(percentile(e2e, 50), 1), "requests_per_s": round(len(samples) / wall, 3),
            "completion_tokens": sum(s[2] for s in samples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=8, help="per arm and client count (rounded up to a multiple of it)")
    ap.add_argument("--skill-tokens", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the server (OMP_NUM_THREADS); on a CPU shared with other work, 1 avoids "
                         "OpenMP threads spinning against each other")
    ap.add_argument("--home", default=None, help="SKILLFORGE_HOME to use (default: a temporary folder)")
    ap.add_argument("--out", default="bench_server.json")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="skillforge-bench-server-") as tmp:
        home = Path(args.home or tmp)
        env = {**os.environ, "SKILLFORGE_HOME": str(home)}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        text = write_skill(Path(tmp) / "skill", args.model, args.skill_tokens)
        log(f"compiling a {args.skill_tokens}-token skill ...")
        subprocess.run([str(SKILLFORGE), "compile", str(Path(tmp) / "skill"), "--model", args.model, "--device", args.device,
                        "--dtype", args.dtype], env=env, check=True, stdout=subprocess.DEVNULL)
        port = free_port()
        server = subprocess.Popen([str(SKILLFORGE), "serve", "--model", args.model, "--device", args.device, "--dtype", args.dtype,
                                   "--port", str(port), "--max-queue", "1024", "--log-level", "warning"], env=env)
        try:
            wait_for(port, server)
            client = Client(port, args.model, args.max_tokens)
            for arm in ("skills", "plain"):  # warm-up: page faults, the hot cache, first-call overheads
                client.stream(request_body(arm, text, 0))
            results: dict = {}
            for clients in levels:
                samples: dict[str, list] = {"skills": [], "plain": []}
                walls = {"skills": 0.0, "plain": 0.0}
                rounds = -(-args.requests // clients)
                for r in range(rounds):
                    for arm in (("skills", "plain") if r % 2 == 0 else ("plain", "skills")):
                        got, wall = run_round(client, arm, text, clients, 1 + r * clients)
                        samples[arm] += got
                        walls[arm] += wall
                row = {arm: summarize(samples[arm], walls[arm]) for arm in samples}
                row["ttft_p50_ratio"] = round(row["plain"]["ttft_ms_p50"] / row["skills"]["ttft_ms_p50"], 2)
                row["rps_ratio"] = round(row["skills"]["requests_per_s"] / row["plain"]["requests_per_s"], 2)
                results[str(clients)] = row
                log(f"{clients} clients: skills TTFT p50 {row['skills']['ttft_ms_p50']} ms, plain {row['plain']['ttft_ms_p50']} ms "
                    f"({row['ttft_p50_ratio']}x); rps {row['skills']['requests_per_s']} vs {row['plain']['requests_per_s']}")
        finally:
            server.terminate()
            server.wait(120)
    doc = {"machine": machine(), "model": args.model,
           "threads": args.threads or os.environ.get("OMP_NUM_THREADS") or "torch default", "skill_tokens": args.skill_tokens, "max_tokens": args.max_tokens, "requests_per_arm": args.requests,
           "load_average_before_after": [load_before[0], os.getloadavg()[0]], "levels": results}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(table(results))
    log(f"wrote {args.out}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def wait_for(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"skillforge serve exited with {server.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("skillforge serve did not come up in 300 s")


def table(results: dict) -> str:
    lines = ["| clients | TTFT p50 ms skills | TTFT p50 ms plain | TTFT p95 ms skills | TTFT p95 ms plain | p50 ratio | req/s skills | req/s plain | req/s ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c, r in results.items():
        s, p = r["skills"], r["plain"]
        lines.append(f"| {c} | {s['ttft_ms_p50']:.0f} | {p['ttft_ms_p50']:.0f} | {s['ttft_ms_p95']:.0f} | {p['ttft_ms_p95']:.0f} | "
                     f"{r['ttft_p50_ratio']}x | {s['requests_per_s']:.2f} | {p['requests_per_s']:.2f} | {r['rps_ratio']}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
