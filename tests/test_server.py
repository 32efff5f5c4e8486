"""`skillforge serve` over real HTTP on loopback: the installed console script in a subprocess, the
official `openai` client, the demo model. Answers are compared token for token with the Python API
(Runtime.splice + Runtime.generate) and with a plain full-prefill greedy decode."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from skillforge.build import compile_manifests
from skillforge.manifest import discover
from skillforge.prompt import build_prompt
from skillforge.registry import Registry
from skillforge.runtime import Context, Runtime
from skillforge.server.errors import classify
from skillforge.store import LocalStore

from tiny_models import build

pytestmark = pytest.mark.demo
SKILLFORGE = Path(sys.executable).parent / "skillforge"
KEY = "sk-test-7f3a"
MODEL = "smollm2-135m"
SYSTEM = "Be brief."
N = 6  # max_tokens of most requests: enough to compare answers, short enough for a CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`skillforge serve` in a subprocess on a free loopback port, its log in a file."""

    def __init__(self, home: Path, log: Path, *args: str):
        self.port = free_port()
        self.log = log
        env = {**os.environ, "SKILLFORGE_HOME": str(home)}
        env.pop("SKILLFORGE_API_KEY", None)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([str(SKILLFORGE), "serve", "--model", MODEL, "--device", "cpu", "--dtype", "float32",
                                          "--port", str(self.port), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"skillforge serve exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"skillforge serve did not come up:\n{log.read_text()}")

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key or "none", max_retries=0, timeout=120)

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
        c = self.conn()
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def get(self, path: str) -> tuple[int, Any]:
        status, _, body = self.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})
        return status, (body.decode() if path == "/metrics" else json.loads(body))

    def metric(self, name: str, **labels: str) -> float:
        text = self.get("/metrics")[1]
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_lm, skills_dir: Path):
    """One home with pirate-voice and code-review compiled for the demo model (and pirate-voice for a
    tiny random model: an artifact of another model), one server with an API key, and a Runtime over
    the same registry and store for the expected answers."""
    home = tmp_path_factory.mktemp("serve-home")
    registry, store = Registry(f"sqlite:///{home / 'index.sqlite'}"), LocalStore(home)
    manifests = [m for m in discover(skills_dir) if m.name in ("pirate-voice", "code-review")]
    compile_manifests(demo_lm, manifests, registry, store)
    other = compile_manifests(build("llama"), [m for m in manifests if m.name == "pirate-voice"], registry, store)[0]
    server = Server(home, home / "server.log", "--api-key", KEY)
    try:
        yield server, Runtime(demo_lm, registry, store), other.digest, home
    finally:
        server.stop()


def python_api(rt: Runtime, ctx: Context, n: int = N, **kw: Any) -> dict[str, Any]:
    result = rt.splice(ctx, extra_capacity=n + 1, **kw)
    tokens, _ = rt.generate(result, n)
    out = {"text": rt.lm.tokenizer.decode(tokens, skip_special_tokens=True), "tokens": len(tokens),
           "reused": result.reused, "prompt": result.input_ids.shape[1], "artifacts": result.artifacts}
    rt.release(result)
    return out


def full_prefill(lm: Any, messages: list[dict], n: int = N) -> dict[str, Any]:
    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return greedy_after(lm, lm.tokenizer(text, add_special_tokens=False)["input_ids"], n)


def greedy_after(lm: Any, ids: list[int], n: int = N) -> dict[str, Any]:
    """A plain greedy decode of `n` tokens after a full prefill of `ids`."""
    with torch.no_grad():
        out = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=n, do_sample=False)
    new = out[0, len(ids):].tolist()
    return {"text": lm.tokenizer.decode(new, skip_special_tokens=True), "tokens": len(new), "prompt": len(ids)}


def chat(client: openai.OpenAI, messages: list[dict], n: int = N, stream: bool = False, **extra: Any) -> dict[str, Any]:
    """One completion through the openai client -> text, usage, finish reason, the extension object."""
    kw = {k: extra.pop(k) for k in ("temperature", "top_p", "seed", "stop") if k in extra}
    kw.setdefault("temperature", 0)
    if not stream:
        r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=n, extra_body=extra, **kw)
        return {"text": r.choices[0].message.content, "usage": r.usage, "finish": r.choices[0].finish_reason,
                "ext": r.model_extra.get("skillforge")}
    parts, finish, usage, ext = [], None, None, None
    for c in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=n, stream=True,
                                            stream_options={"include_usage": True}, extra_body=extra, **kw):
        if c.choices:
            parts.append(c.choices[0].delta.content or "")
            finish = c.choices[0].finish_reason or finish
            ext = c.model_extra.get("skillforge") or ext
        if c.usage is not None:
            usage = c.usage
    return {"text": "".join(parts), "usage": usage, "finish": finish, "ext": ext}


def msgs(user: str, system: str = SYSTEM) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def test_skill_answers_equal_the_python_api_streamed_or_not(setup):
    server, rt, _, _ = setup
    want = python_api(rt, Context(skills=["pirate-voice", "code-review"], system=SYSTEM, user="What is 2+2?"))
    client = server.client()
    for stream in (False, True):
        got = chat(client, msgs("What is 2+2?"), stream=stream, skills=["pirate-voice", "code-review"])
        assert got["text"] == want["text"] and got["usage"].completion_tokens == want["tokens"]
        assert got["usage"].prompt_tokens == want["prompt"]
        assert got["usage"].prompt_tokens_details.cached_tokens == want["reused"] > 500
        assert got["ext"]["artifacts"] == want["artifacts"] and got["ext"]["tokens_reused"] == want["reused"]
        assert got["ext"]["tokens_computed"] == want["prompt"] - want["reused"] and got["ext"]["splice_ms"] > 0


def test_plain_requests_equal_a_full_prefill(setup, demo_lm):
    server, _, _, _ = setup
    history = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Nice to meet you, Ada!"},
               {"role": "user", "content": "What is my name?"}]
    for messages in (msgs("Name a color."), history):
        want = full_prefill(demo_lm, messages)
        for stream in (False, True):
            got = chat(server.client(), messages, stream=stream)
            assert got["text"] == want["text"] and got["usage"].completion_tokens == want["tokens"]
            assert got["usage"].prompt_tokens == want["prompt"] and got["usage"].prompt_tokens_details.cached_tokens == 0
            assert got["ext"]["artifacts"] == [] and got["ext"]["tokens_computed"] == want["prompt"]


def test_multi_turn_with_skills_computes_everything_after_them(setup, demo_lm):
    """Earlier turns sit between the skills and the last user turn, tokenized as a full prefill of the same
    messages would be. Needs Context.history in the runtime."""
    server, rt, _, _ = setup
    history = [{"role": "user", "content": "Review: x=1"}, {"role": "assistant", "content": "Looks fine."}]
    messages = [{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": "And y=2?"}]
    got = chat(server.client(), messages, skills=["code-review"])
    want = python_api(rt, Context(skills=["code-review"], system=SYSTEM, user="And y=2?", history=history))
    skill_text = rt.resolve("code-review").meta.text
    as_prefill = full_prefill(demo_lm, [{"role": "system", "content": f"{SYSTEM}\n\n{skill_text}"}, *messages[1:]], n=1)
    assert got["usage"].prompt_tokens == want["prompt"] == as_prefill["prompt"]
    assert got["text"] == want["text"] and got["usage"].prompt_tokens_details.cached_tokens == want["reused"] > 300


def test_eight_concurrent_clients_get_the_answers_they_get_alone(setup):
    server, rt, _, _ = setup
    asks = [dict(skills=["pirate-voice"]), dict(skills=["code-review"]), dict(skills=["code-review", "pirate-voice"]),
            dict(skills=["code-review"], set={"code-review.language": "Rust"}),
            dict(skills=["code-review"], set={"code-review.language": "Go"}, edit_mode="in-place"),
            dict(skills=["code-review"], set={"code-review.language": "Haskell"}, edit_mode="erratum"),
            dict(skills=["pirate-voice"], repair="none"), dict()]
    jobs = [(f"Question {i}: what is {i} + {i}?", i % 2 == 1, ask) for i, ask in enumerate(asks)]
    client = server.client()
    run = lambda job: chat(client, msgs(job[0]), n=4, stream=job[1], **job[2])["text"]  # noqa: E731
    alone = [run(job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(run, jobs))
    assert together == alone
    edited = python_api(rt, Context(skills=["code-review"], system=SYSTEM, user=jobs[3][0], set={"code-review.language": "Rust"}), n=4)
    assert alone[3] == edited["text"]


def test_sampling_seed_top_p_and_stop_strings(setup):
    server, _, _, _ = setup
    client, messages = server.client(), msgs("Tell me about the sea.")
    greedy = chat(client, messages, n=16, skills=["pirate-voice"])
    sampled = [chat(client, messages, n=16, skills=["pirate-voice"], temperature=1.0, seed=7) for _ in range(2)]
    assert sampled[0]["text"] == sampled[1]["text"]
    assert chat(client, messages, n=16, skills=["pirate-voice"], temperature=1.0, top_p=1e-6, seed=3)["text"] == greedy["text"]
    words = greedy["text"].split(" ")
    assert len(words) > 3, greedy["text"]
    stop = " " + words[2]
    cut = greedy["text"][: greedy["text"].index(stop)]
    for stream in (False, True):
        got = chat(client, messages, n=16, stream=stream, skills=["pirate-voice"], stop=[stop, "\u2603"])
        assert got["text"] == cut and got["finish"] == "stop"


def error_of(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and "Traceback" not in info.value.response.text
    return info.value.status_code, body["error"]


def test_errors_have_openai_shape_and_status(setup):
    server, _, other_digest, _ = setup
    client = server.client()
    ask = lambda **kw: client.chat.completions.create(**{"model": MODEL, "messages": msgs("Hi"), "max_tokens": 2, **kw})  # noqa: E731
    status, err = error_of(lambda: ask(extra_body={"skills": ["no-such-skill"]}))
    assert (status, err["code"], err["param"]) == (404, "not_found", "skills") and "skillforge compile" in err["message"]
    status, err = error_of(lambda: ask(extra_body={"skills": [f"pirate-voice@{other_digest}"]}))
    assert (status, err["code"]) == (409, "artifact_mismatch") and "compiled for model" in err["message"]
    status, err = error_of(lambda: ask(extra_body={"skills": ["Not A Name"]}))
    assert (status, err["param"]) == (400, "skills")
    status, err = error_of(lambda: ask(extra_body={"skills": ["code-review"], "set": {"code-review.language": "Rust\nGo"}}))
    assert (status, err["code"], err["param"]) == (400, "invalid_edit", "set") and "line break" in err["message"]
    status, err = error_of(lambda: ask(extra_body={"skills": ["code-review"], "set": {"code-review.nope": "x"}}))
    assert (status, err["code"]) == (400, "invalid_edit")
    status, err = error_of(lambda: ask(extra_body={"skills": ["code-review"], "edit_mode": "sideways"}))
    assert (status, err["param"]) == (400, "edit_mode")
    for extra in ({"skills": ["pirate-voice"]}, {}):
        status, err = error_of(lambda: ask(max_tokens=10**6, extra_body=extra))
        assert (status, err["code"]) == (400, "context_length_exceeded")
    status, err = error_of(lambda: ask(n=2))
    assert (status, err["param"]) == (400, "n")
    status, err = error_of(lambda: ask(model="gpt-4o"))
    assert (status, err["code"]) == (404, "model_not_found")
    status, err = error_of(lambda: ask(messages=[{"role": "assistant", "content": "Hi"}]))
    assert (status, err["param"]) == (400, "messages")
    for key in (None, "wrong"):
        status, err = error_of(lambda: server.client(key).chat.completions.create(model=MODEL, messages=msgs("Hi"), max_tokens=2))
        assert (status, err["code"]) == (401, "invalid_api_key")
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body in (b"{not json", b'{"model": "smollm2-135m"}', b'{"model": "smollm2-135m", "messages": [], "max_tokens": 0}'):
        status, _, raw = server.request("POST", "/v1/chat/completions", body, headers)
        assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    assert chat(client, msgs("Still there?"), n=2)["usage"].completion_tokens > 0  # none of it hurt the server


def test_an_unexpected_error_never_reaches_the_client():
    status, body = classify(RuntimeError("secret path /etc/x"))
    assert status == 500 and "secret" not in json.dumps(body) and body["error"]["type"] == "server_error"


def test_models_skills_health_and_metrics(setup):
    server, rt, _, _ = setup
    assert server.get("/health") == (200, {"status": "ok", "model": MODEL, "queue_depth": 0, "active": 0})
    status, models = server.get("/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == [MODEL]
    status, skills = server.get("/v1/skills")
    by_id = {s["id"]: s for s in skills["data"]}
    assert set(by_id) == {"pirate-voice@0.3.0", "code-review@1.0.0"}  # not the tiny model's artifact
    assert by_id["code-review@1.0.0"]["fields"]["language"]["default"] == "Python"
    assert by_id["code-review@1.0.0"]["tokens"] == rt.resolve("code-review").meta.tokens
    assert server.request("GET", "/v1/skills")[0] == 401
    for _ in range(2):  # the second finds the artifact in memory
        chat(server.client(), msgs("Hello"), n=2, skills=["pirate-voice"])
    assert server.metric("skillforge_requests_total", route="/v1/chat/completions", status="200") >= 1
    assert server.metric("skillforge_requests_total", route="/v1/skills", status="401") >= 1
    assert server.metric("skillforge_prompt_tokens_total", source="reused") > 300
    assert server.metric("skillforge_prompt_tokens_total", source="computed") > 0
    assert server.metric("skillforge_hot_cache_hits_total") >= 1 and server.metric("skillforge_hot_cache_bytes") > 0
    assert server.metric("skillforge_time_to_first_token_seconds_count", kind="skills") >= 1
    assert server.metric("skillforge_request_seconds_count") >= 1
    assert "skillforge_queue_depth 0.0" in server.get("/metrics")[1]
    # repeated contexts compile nothing without --learn-after
    assert server.metric("skillforge_variants_compiled_total") == 0 and len(by_id["pirate-voice@0.3.0"]["artifacts"]) == 1


def open_stream(server: Server, n: int, **extra: Any) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A streaming completion read until its first content chunk (the request is being decoded)."""
    body = {"model": MODEL, "messages": msgs("Count to one thousand."), "max_tokens": n, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True, **extra}
    conn = server.conn()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    while b'{"content": "' not in resp.readline():  # the first chunk's delta is the role
        pass
    return conn, resp


def read_events(resp: http.client.HTTPResponse) -> list[Any]:
    events = []
    for line in resp:
        if line.startswith(b"data: "):
            data = line[6:].strip()
            events.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return events


def wait_until(check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_learn_after_compiles_the_contexts_a_deployment_repeats_and_then_splices_them_exactly(tmp_path: Path, demo_lm,
                                                                                             skills_dir: Path):
    """Two requests with the same system text and skills: each skill gets a variant behind exactly what
    precedes it, and the second skill one behind the system text alone. The third request is exact,
    and so is the second skill alone after that system text, which no request had sent."""
    home, system, user = tmp_path / "learn-home", "Talk like a sailor.", "What is 2+2?"
    registry, store = Registry(f"sqlite:///{home / 'index.sqlite'}"), LocalStore(home)
    manifests = [m for m in discover(skills_dir) if m.name in ("code-review", "pirate-voice")]
    compiled = {o.name: o.digest for o in compile_manifests(demo_lm, manifests, registry, store)}
    both = ["code-review", "pirate-voice"]
    server = Server(home, tmp_path / "learn.log", "--api-key", KEY, "--learn-after", "2")
    try:
        for _ in range(2):
            got = chat(server.client(), msgs(user, system), skills=both)
            assert got["ext"]["artifacts"] == [compiled[n] for n in both] and got["ext"]["tokens_repaired"] > 0
        wait_until(lambda: server.metric("skillforge_variants_compiled_total") == 3, timeout=120)
        exact = chat(server.client(), msgs(user, system), skills=both)
        alone = chat(server.client(), msgs(user, system), skills=["pirate-voice"])
        other = chat(server.client(), msgs(user, "Be brief."), skills=["pirate-voice"])
    finally:
        server.stop()
    variants = {(r.name, len(r.meta.anchor_ids)): r.digest for r in registry.list_artifacts(demo_lm.fingerprint.digest)
                if r.digest not in compiled.values()}
    assert len(variants) == 3
    texts = {m.name: m.render().text for m in manifests}
    prompt = build_prompt(demo_lm.tokenizer, system, [texts[n] for n in both], user)
    assert exact["ext"]["tokens_repaired"] == 0 and exact["text"] == greedy_after(demo_lm, prompt.ids)["text"]
    assert exact["ext"]["artifacts"] == [variants[(n, len(prompt.ids_before(s)))] for n, (s, _) in zip(both, prompt.skill_spans)]
    prompt = build_prompt(demo_lm.tokenizer, system, [texts["pirate-voice"]], user)
    assert alone["ext"]["artifacts"] == [variants[("pirate-voice", len(prompt.ids_before(prompt.skill_spans[0][0])))]]
    assert alone["ext"]["tokens_repaired"] == 0 and alone["text"] == greedy_after(demo_lm, prompt.ids)["text"]
    assert other["ext"]["artifacts"] == [compiled["pirate-voice"]] and other["ext"]["tokens_repaired"] > 0  # another system text


def test_a_client_that_disconnects_mid_stream_frees_its_place(setup):
    server, _, _, _ = setup
    cancelled = server.metric("skillforge_requests_cancelled_total")
    generated = server.metric("skillforge_completion_tokens_total")
    conn, _ = open_stream(server, 400, skills=["pirate-voice"])
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    wait_until(lambda: server.metric("skillforge_requests_cancelled_total") == cancelled + 1)
    assert server.get("/health")[1]["active"] == 0 and server.metric("skillforge_cache_pool_bytes") > 0
    assert server.metric("skillforge_completion_tokens_total") == generated  # it never finished its 400 tokens
    assert chat(server.client(), msgs("Hi"), n=2)["usage"].completion_tokens > 0


def test_queue_overflow_then_sigterm_loses_nothing(setup, tmp_path: Path):
    """One request decoding, one waiting, the next refused with 503; SIGTERM then lets both finish and exits."""
    _, _, _, home = setup
    server = Server(home, tmp_path / "tight.log", "--api-key", KEY, "--max-queue", "1", "--max-active", "1")
    try:
        conn, first = open_stream(server, 60)
        waiting: dict[str, Any] = {}
        t = threading.Thread(target=lambda: waiting.update(chat(server.client(), msgs("Name a fruit."), n=4)))
        t.start()
        wait_until(lambda: server.get("/health")[1]["queue_depth"] == 1)
        status, headers, raw = server.request("POST", "/v1/chat/completions", json.dumps(
            {"model": MODEL, "messages": msgs("One too many"), "max_tokens": 2}).encode(),
            {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        assert status == 503 and headers.get("retry-after") == "1"
        assert json.loads(raw)["error"]["code"] == "server_busy"

        server.proc.send_signal(signal.SIGTERM)
        events = read_events(first)  # the stream in flight runs to its end
        conn.close()
        t.join(120)
        assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 60
        assert events[-3]["choices"][0]["finish_reason"] == "length"
        assert waiting["usage"].completion_tokens > 0 and waiting["finish"] in ("stop", "length")
        # uvicorn re-raises the signal once its graceful shutdown is complete, so the exit is SIGTERM's
        assert server.proc.wait(60) == -signal.SIGTERM and "Application shutdown complete" in server.log.read_text()
        with pytest.raises(OSError):
            server.request("GET", "/health")
    finally:
        server.stop()


def test_stop_text_holds_back_what_may_become_a_stop_string(demo_tokenizer):
    from skillforge.server.decode import StopText

    ids = demo_tokenizer("Hello there, END of story", add_special_tokens=False)["input_ids"]
    text = StopText(demo_tokenizer, ["END", "XYZ"])
    sent = "".join(text.add(t) for t in ids if not text.stopped)
    assert text.stopped and sent == "Hello there, "
    plain = StopText(demo_tokenizer, ["END"])
    sent = "".join(plain.add(t) for t in demo_tokenizer("It ends at E", add_special_tokens=False)["input_ids"])
    assert sent == "It ends at " and plain.flush() == "E" and not plain.stopped  # "E" waited: it could have become END


class FakeTask:
    """A task of `steps` steps that records what the worker did with it."""

    def __init__(self, steps: int = 2, fail: bool = False, gate: threading.Event | None = None):
        self.cancelled = threading.Event()
        self.steps, self.fail_at_start, self.gate = steps, fail, gate
        self.done_steps, self.closed, self.failed = 0, 0, None

    def start(self) -> bool:
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail_at_start:
            raise RuntimeError("boom")
        return self.step()

    def step(self) -> bool:
        self.done_steps += 1
        return self.done_steps >= self.steps

    def fail(self, exc: BaseException) -> None:
        self.failed = exc

    def close(self) -> None:
        self.closed += 1


def test_scheduler_bounds_cancels_survives_failures_and_drains():
    from skillforge.server.errors import ServerBusy
    from skillforge.server.queue import Scheduler

    sched, gate = Scheduler(max_queue=1, max_active=1), threading.Event()
    sched.start()
    blocking, waiting, next_up = FakeTask(gate=gate), FakeTask(), FakeTask()
    sched.submit(blocking)
    wait_until(lambda: sched.depth == 0)  # the worker took it and is held in its start()
    sched.submit(waiting)
    with pytest.raises(ServerBusy):
        sched.submit(FakeTask())
    sched.cancel(waiting)  # leaves the queue at once, never started
    assert sched.depth == 0
    sched.submit(next_up)
    failing, after = FakeTask(fail=True), FakeTask(steps=3)
    gate.set()
    wait_until(lambda: sched.depth == 0)
    sched.submit(failing)
    sched.submit(after)
    sched.close()  # returns once every accepted task is done
    assert (blocking.done_steps, blocking.closed) == (2, 1) and (next_up.done_steps, next_up.closed) == (2, 1)
    assert waiting.done_steps == 0 and waiting.closed == 0
    assert isinstance(failing.failed, RuntimeError) and failing.closed == 1
    assert (after.done_steps, after.closed) == (3, 1)
    with pytest.raises(ServerBusy):
        sched.submit(FakeTask())


def test_scheduler_does_background_work_only_while_no_request_waits_or_runs():
    from skillforge.server.queue import Scheduler

    gate, log = threading.Event(), []
    chores = [lambda: log.append(("chore", sched.depth, sched.active)), lambda: 1 / 0, lambda: log.append(("last", 0, 0))]

    def idle() -> bool:
        if not chores:
            return False
        chores.pop(0)()
        return True

    sched = Scheduler(idle=idle)
    task = FakeTask(gate=gate)
    sched.submit(task)  # before the worker starts: the request goes first
    sched.start()
    wait_until(lambda: sched.depth == 0)
    assert log == []  # held in the request's start(): no background work meanwhile
    gate.set()
    wait_until(lambda: not chores)  # a failing piece is logged; the worker goes on to the next
    assert task.closed == 1 and log == [("chore", 0, 0), ("last", 0, 0)]
    after = FakeTask()
    sched.submit(after)
    sched.close()
    assert after.closed == 1
