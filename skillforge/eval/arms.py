"""The eval's arms: what a splice is compared with, and how each side is produced.

  full     a plain prefill of exactly the prompt tokens a transformers user gets from
           `apply_chat_template(messages, add_generation_prompt=True)`, and its greedy continuation.
           `reference_ids` renders that prompt on its own, not through skillforge.prompt: it is the
           check of that contract (run.py asserts the splice's tokens equal it).
  splice   Runtime.splice + next_logits (+ Runtime.generate for the continuation).
Skills come from a registry and store (the runtime's) or from manifests compiled in memory. What one
process can share between eval runs (compiled artifacts, full-prefill references) lives in an EvalMemo
that the caller passes along; nothing is kept at module level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from skillforge.compile import compile_skill
from skillforge.errors import NotFound
from skillforge.eval.cases import Case
from skillforge.manifest import Manifest
from skillforge.model.forward import eos_ids, greedy, new_cache, run
from skillforge.model.loader import LoadedModel
from skillforge.refs import version_key
from skillforge.runtime import Context, Repair, Resolved, Runtime, SpliceResult

GREEDY_TOKENS = 16
FULL_ARMS_MAX = 1024


@dataclass(frozen=True)
class FullArm:
    """A full prefill and its greedy continuation. `margins[i]`: top-1 minus top-2 logit at step i - a
    continuation that differs where the margin is a few hundredths of a logit is a near-tie flip."""

    logits: torch.Tensor
    tokens: list[int]
    ttft_ms: float
    margins: list[float]


@dataclass
class EvalMemo:
    """What several eval runs in one process can share: artifacts compiled in memory and full-prefill
    references (a repair sweep reuses the same references). Pass one to each run_eval call."""

    compiled: dict[tuple, Resolved] = field(default_factory=dict)
    full: dict[tuple, FullArm] = field(default_factory=dict)
    full_max: int = FULL_ARMS_MAX


def compiled(lm: LoadedModel, manifest: Manifest, anchor: str, memo: EvalMemo) -> Resolved:
    """A Resolved for `manifest` (default values) compiled in memory behind `anchor`; memoised."""
    key = (lm.fingerprint.digest, manifest.name, manifest.version, manifest.render().digest, anchor)
    if key not in memo.compiled:
        meta, kv = compile_skill(lm, manifest, anchor=anchor)
        memo.compiled[key] = Resolved(meta, kv, None)
    return memo.compiled[key]


def manifest_of(resolved: Resolved) -> Manifest:
    """The manifest an artifact was compiled from (kept in its metadata)."""
    meta = resolved.meta
    return Manifest.from_dict(meta.extra["manifest"], source=f"{meta.skill}@{meta.version}")


class SkillSource:
    """Ref -> Resolved, from in-memory manifests or the runtime's registry; `plain` -> anchor none."""

    def __init__(self, lm: LoadedModel, rt: Runtime, manifests: list[Manifest] | None, plain: bool, memo: EvalMemo):
        self.lm, self.rt, self.plain, self.memo = lm, rt, plain, memo
        self.manifests: dict[str, Manifest] = {}
        for m in manifests or []:
            self.manifests[m.name] = max(self.manifests.get(m.name, m), m, key=lambda x: version_key(x.version))
            self.manifests[m.ref] = m

    def get(self, ref: str) -> Resolved:
        if self.manifests:
            if ref not in self.manifests:
                raise NotFound(f"eval case needs skill {ref!r}, which is not among the given skills ({', '.join(sorted(self.manifests))})")
            resolved = compiled(self.lm, self.manifests[ref], "template", self.memo)
        else:
            resolved = self.rt.resolve(ref)
        if self.plain:
            resolved = compiled(self.lm, manifest_of(resolved), "none", self.memo)
        return resolved


def reference_ids(lm: LoadedModel, system: str, texts: list[str], user: str, raw: bool,
                  history: list[dict[str, str]] | None = None) -> list[int]:
    """The prompt a plain transformers user would build (layout contract), tokenized by transformers."""
    tok = lm.tokenizer
    content = "\n\n".join([t for t in [system, *texts] if t])  # written out: this checks skillforge.prompt
    turns = list(history or [])
    if raw:
        return list(tok("\n\n".join(t for t in [content, *(h["content"] for h in turns), user] if t),
                        add_special_tokens=True)["input_ids"])
    messages = ([{"role": "system", "content": content}] if content else []) + turns + [{"role": "user", "content": user}]
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


def divergence(full: FullArm, tokens: list[int]) -> dict | None:
    """Where a continuation first leaves the full arm's, with the full arm's margin there (None: same)."""
    step = next((i for i, (a, b) in enumerate(zip(full.tokens, tokens)) if a != b), None)
    if step is None:
        if len(full.tokens) == len(tokens):
            return None
        step = min(len(full.tokens), len(tokens))  # one stopped early (end of sequence)
    margin = full.margins[step] if step < len(full.margins) else None
    return {"step": step, "full_margin": None if margin is None else round(margin, 4)}


@torch.no_grad()
def full_arm(lm: LoadedModel, ids: list[int], memo: EvalMemo, new_tokens: int = GREEDY_TOKENS) -> FullArm:
    """Full prefill of `ids` and its greedy continuation; memoised in `memo` (oldest dropped first)."""
    key = (lm.fingerprint.digest, tuple(ids), new_tokens)
    if key in memo.full:
        return memo.full[key]
    model, device = lm.model, lm.model.device
    cache = new_cache()
    t0 = time.perf_counter()
    logits = run(model, torch.tensor([ids], device=device), cache=cache)
    ttft = (time.perf_counter() - t0) * 1000

    def step(tok: int, i: int) -> torch.Tensor:
        return run(model, torch.tensor([[tok]], device=device), cache=cache)

    out = greedy(logits, step, new_tokens, eos_ids(model, lm.tokenizer))
    if len(memo.full) >= memo.full_max:
        memo.full.pop(next(iter(memo.full)))
    memo.full[key] = FullArm(logits.cpu(), out.tokens, ttft, out.margins)
    return memo.full[key]


@torch.no_grad()
def splice_arm(rt: Runtime, skills: SkillSource, case: Case, repair: Repair, rotate: bool, edit_mode: str, with_set: bool,
               new_tokens: int = GREEDY_TOKENS) -> tuple[SpliceResult, torch.Tensor, list[int], float]:
    """Resolve (hot) + splice + next_logits, timed -> (result, logits, greedy continuation, TTFT ms)."""
    ctx = Context(skills=list(case.skills), system=case.system, user=case.user, raw=case.raw,
                  set=dict(case.set) if with_set else {}, history=list(case.history))
    t0 = time.perf_counter()
    resolved = [skills.get(s) for s in case.skills]
    result = rt.splice(ctx, skills=resolved, repair=repair, rotate=rotate, edit_mode=edit_mode,
                       extra_capacity=new_tokens + 2)
    logits = rt.next_logits(result)
    ttft = (time.perf_counter() - t0) * 1000
    result.cache.crop(-1)  # undo the first decoding step, so generate() starts from the prompt again
    tokens, _ = rt.generate(result, new_tokens)
    return result, logits.cpu(), tokens, ttft
