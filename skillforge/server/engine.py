"""The model side of the server: one loaded model and its Runtime, and one Generation per request.

Everything here runs on the scheduler's worker thread (server/queue.py), the only thread that calls
the model. A Generation builds its prompt's cache (a splice when the request names skills, else a
full prefill of exactly the tokens `apply_chat_template` gives for its messages), then decodes one
token per step and posts what happened as events, which the event loop turns into HTTP.

With `learn_after` N > 0 (`serve --learn-after N`) the engine learns the contexts a deployment
repeats: once N requests have spliced a skill behind the same tokens (a system text, the skills
before it) other than those it was compiled behind, it compiles the skill behind exactly those
tokens (build.compile_manifests) while the worker is idle, and indexes the variant in the registry.
Every later splice there uses it (runtime/lookup.py: ArtifactLookup.behind) and is exact, with no
repair. Once N requests have put a skill after the same system text, at any place, it also compiles
it behind that text alone (`compile --system`), which the lookup takes in any composition after it:
only the skills before it are then unseen (16 qwen2.5-coder-0.5b test compositions and multi-turn
contexts with a system text: KL 0.028 -> 0.010, README). A variant costs one compile of the skill
and an artifact as large as the skill's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from skillforge.artifact import ArtifactMeta
from skillforge.build import compile_manifests
from skillforge.errors import ContextTooLong
from skillforge.manifest import Manifest
from skillforge.model.forward import eos_ids, new_cache, run
from skillforge.model.loader import LoadedModel
from skillforge.prompt import system_anchor
from skillforge.runtime import Context, Missed, Repair, Runtime, SpliceResult
from skillforge.runtime.decode import Decoder, Stream, streams_of
from skillforge.server.decode import Sampler, StopText
from skillforge.server.metrics import Metrics
from skillforge.server.schemas import ChatRequest, Turns


@dataclass
class Started:
    """The prompt's cache is built: its size, how much came from artifacts, and the extension object."""

    prompt_tokens: int
    cached_tokens: int
    extension: dict[str, Any]


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"
    completion_tokens: int


@dataclass
class Failed:
    error: BaseException


Event = Started | Delta | Finished | Failed

log = logging.getLogger("skillforge.server")
SEEN_MAX = 4096  # contexts counted before the counts start over; variants queued at most


class Engine:
    """Loaded once per process: the model, registry, store, hot cache and cache pool live as long as it."""

    def __init__(self, lm: LoadedModel, registry: Any, store: Any, name: str, metrics: Metrics | None = None,
                 erratum: str | None = None, learn_after: int = 0):
        self.lm = lm
        self.name = name
        self.registry = registry
        self.rt = Runtime(lm, registry, store, erratum=erratum)
        self.metrics = metrics or Metrics()
        self.eos = eos_ids(lm.model, lm.tokenizer)
        self.learn_after = learn_after
        # (skill, version, "tokens", anchor digest) or (skill, version, "system", text) -> splices there
        self._seen: dict[tuple[str, str, str, str], int] = {}
        self._to_learn: dict[tuple[str, str, str, str], tuple[ArtifactMeta, list[int] | str]] = {}  # -> behind what

    def note_missed(self, missed: list[Missed], system: str) -> None:
        """Count the skills a splice placed behind other tokens than their artifact's, by those tokens
        and by the `system` text before them; the N-th time queues a variant compiled behind them
        (module docstring). Nothing is tokenized here: this runs on every request."""
        if self.learn_after <= 0:
            return
        if len(self._seen) >= SEEN_MAX:
            self._seen.clear()
        for meta, before, digest in missed:
            self._count((meta.skill, meta.version, "tokens", digest), meta, before)
            if system:
                self._count((meta.skill, meta.version, "system", system), meta, system)

    def _count(self, key: tuple[str, str, str, str], meta: ArtifactMeta, behind: list[int] | str) -> None:
        self._seen[key] = self._seen.get(key, 0) + 1
        if self._seen[key] == self.learn_after and len(self._to_learn) < SEEN_MAX:
            self._to_learn[key] = (meta, behind)

    def learn(self) -> bool:
        """Compile one queued variant (the scheduler's idle work), behind the tokens or the system text
        queued; False when none is queued. One that exists already (a skill first after the system
        text has its exact variant behind that text's tokens) is found, not compiled again."""
        if not self._to_learn:
            return False
        meta, behind = self._to_learn.pop(next(iter(self._to_learn)))
        manifest = Manifest.from_dict(meta.extra["manifest"], source=f"{meta.skill}@{meta.version}")
        if manifest.render().digest != meta.text_digest:  # compiled with other field values: not this text
            log.warning("not learning %s@%s: its artifact holds other field values than the manifest's", meta.skill, meta.version)
            return True
        anchor = system_anchor(self.lm.tokenizer, behind, meta.text) if isinstance(behind, str) else behind
        outcome = compile_manifests(self.lm, [manifest], self.registry, self.rt.store, anchor=anchor)[0]
        if outcome.created:  # else it existed (compiled here or by another process)
            self.metrics.variants.inc()
            log.info("learned %s@%s behind the %d tokens it followed %d times: %s", meta.skill, meta.version,
                     len(anchor), self.learn_after, outcome.digest)
        return True

    def skills(self) -> list[dict[str, Any]]:
        """What this model can splice: one entry per name@version, with its fields and artifacts."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for row in self.registry.list_artifacts(self.lm.fingerprint.digest):
            entry = out.get((row.name, row.version))
            if entry is None:
                fields = row.meta.extra.get("manifest", {}).get("fields", {})
                entry = out[(row.name, row.version)] = {
                    "id": f"{row.name}@{row.version}", "object": "skill", "name": row.name, "version": row.version,
                    "tokens": row.tokens, "fields": fields, "artifacts": []}
            entry["artifacts"].append(row.digest)
        return list(out.values())

    def generation(self, req: ChatRequest, turns: Turns, post: Callable[[Event], None], arrived: float) -> "Generation":
        return Generation(self, req, turns, post, arrived)


class Generation:
    """One request on the worker thread: start() builds the cache and takes the first token, each
    step() one more; close() hands the cache back (also after a cancel or a failure)."""

    def __init__(self, engine: Engine, req: ChatRequest, turns: Turns, post: Callable[[Event], None], arrived: float):
        self.engine = engine
        self.req = req
        self.turns = turns
        self.post = post
        self.arrived = arrived
        self.cancelled = threading.Event()
        self.result: SpliceResult | None = None
        self.decoder: Decoder | None = None
        self.sampler: Sampler | None = None
        self.text = StopText(engine.lm.tokenizer, req.stops)
        self.tokens = 0
        self.last = -1
        self.max_tokens = 0
        self.finished = False

    # -- the scheduler's Task protocol -------------------------------------------------------------
    def start(self) -> bool:
        lm, t0 = self.engine.lm, time.perf_counter()
        if self.req.skills:
            streams, first, ext = self._splice()
        else:
            streams, first, ext = self._prefill()
        ext["splice_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        prompt_len = streams[0].prompt_len
        self.decoder = Decoder(lm.model, streams, first)
        temperature = 1.0 if self.req.temperature is None else self.req.temperature
        self.sampler = Sampler(temperature, self.req.top_p or 1.0, self.req.seed, first.device)
        m = self.engine.metrics
        m.prompt_tokens.labels("reused").inc(ext["tokens_reused"])
        m.prompt_tokens.labels("computed").inc(prompt_len - ext["tokens_reused"])
        self.post(Started(prompt_len, ext["tokens_reused"], ext))
        return self._take()

    def step(self) -> bool:
        self.decoder.advance(self.last)
        return self._take()

    def fail(self, exc: BaseException) -> None:
        self.post(Failed(exc))

    def close(self) -> None:
        if self.result is not None:
            self.engine.rt.release(self.result)
            self.result = None
        self.decoder = None
        if self.cancelled.is_set() and not self.finished:
            self.engine.metrics.cancelled.inc()

    # -- building the cache ------------------------------------------------------------------------
    def _splice(self) -> tuple[list[Stream], torch.Tensor, dict[str, Any]]:
        rt, req, turns = self.engine.rt, self.req, self.turns
        extra = {"history": turns.history} if turns.history else {}
        ctx = Context(skills=list(req.skills), system=turns.system, user=turns.user, set=dict(req.set), **extra)
        repair = Repair.parse(None, req.repair) if req.repair else None
        budget = self.req.max_completion_tokens or self.req.max_tokens or 256
        self.result = r = rt.splice(ctx, repair=repair, edit_mode=req.edit_mode, extra_capacity=min(budget, 1024) + 1)
        self.engine.note_missed(r.missed, turns.system)
        self._budget(r.input_ids.shape[1])
        streams = streams_of(r)
        ext: dict[str, Any] = {"artifacts": r.artifacts, "tokens_reused": r.reused, "tokens_computed": r.computed,
                               "tokens_repaired": r.repaired}
        if r.guides:
            ext["guide_tokens_computed"] = sum(g.computed for g, _ in r.guides)
        if r.edits:
            ext["edits"] = r.edits
        return streams, rt.next_logits(r), ext

    def _prefill(self) -> tuple[list[Stream], torch.Tensor, dict[str, Any]]:
        lm = self.engine.lm
        text = lm.tokenizer.apply_chat_template(self.turns.messages(), tokenize=False, add_generation_prompt=True)
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        self._budget(len(ids))
        cache, x = new_cache(), torch.tensor([ids], device=lm.model.device)
        first = run(lm.model, x, cache=cache, mask=torch.ones_like(x))
        ext = {"artifacts": [], "tokens_reused": 0, "tokens_computed": len(ids), "tokens_repaired": 0}
        return [Stream(cache, len(ids))], first, ext

    def _budget(self, prompt_len: int) -> None:
        """Fix max_tokens (default: whatever the context window leaves); refuse what cannot fit."""
        lm, asked = self.engine.lm, self.req.max_completion_tokens or self.req.max_tokens
        room = lm.max_positions - prompt_len
        if room < 1 or (asked is not None and asked > room):
            raise ContextTooLong(f"this model's maximum context length is {lm.max_positions} tokens; the messages "
                                 f"take {prompt_len} and max_tokens asks for {asked or 1} more: shorten the "
                                 "messages or lower max_tokens")
        self.max_tokens = asked or room

    # -- decoding ----------------------------------------------------------------------------------
    def _take(self) -> bool:
        """Choose the next token, send the text it completes; True when the answer is over."""
        self.last = tok = self.sampler(self.decoder.logits)
        self.tokens += 1
        if self.tokens == 1:
            self.engine.metrics.ttft.labels("skills" if self.req.skills else "plain").observe(time.perf_counter() - self.arrived)
        if tok in self.engine.eos and not self.req.ignore_eos:
            return self._finish("stop")
        delta = self.text.add(tok)
        if delta:
            self.post(Delta(delta))
        if self.text.stopped:
            return self._finish("stop")
        if self.tokens >= self.max_tokens:
            return self._finish("length")
        return False

    def _finish(self, reason: str) -> bool:
        if not self.text.stopped:
            rest = self.text.flush()
            if rest:
                self.post(Delta(rest))
        self.finished = True
        self.engine.metrics.completion_tokens.inc(self.tokens)
        self.post(Finished(reason, self.tokens))
        return True

