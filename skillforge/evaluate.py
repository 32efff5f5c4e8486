"""How close is a splice to a full recompute, and how much faster is it: `skillforge eval` and `bench`.

Eval compares, case by case, the next-token distribution and the greedy continuation of
  full     a plain prefill of exactly the prompt tokens a transformers user gets from
           `apply_chat_template(messages, add_generation_prompt=True)` (asserted), and
  splice   Runtime.splice + next_logits (+ Runtime.generate for the continuation).
For cases with `set` (field edits) the reference ("oracle") is the `recompute` mode, as the edits
issue defines it: the skill re-prefilled with the new values, then spliced like any other. Against it,
the edit mode's splice and a *stale* splice that ignores the edit give `recovery` = 1 - KL(oracle||mode)
/ KL(oracle||stale): the share of the edit's effect on the next-token distribution that the mode gets
back. Splice error that every mode shares (a skill after system text or another skill) thus cancels
out; `kl_full` still compares the mode with a full prefill of the edited prompt, for the whole error.
On *gated* cases (the oracle's first word differs from the stale splice's: the edit changes the
decision) `decision` narrows the same comparison to the two answers: each arm's share of the oracle's
answer between them, and the recovery of that share. It separates "the mode reaches the oracle's
decision, with its confidence" from what an erratum line does to the rest of the distribution.

Baselines: `no-rotation` splices keys at their compile positions (rotate=False, no repair);
`plain` uses artifacts compiled without an anchor (compiled in memory, once per process) and no repair.

Bench times, for synthetic skills of N tokens, a full prefill of the whole prompt against a splice
reading the artifact from the store (page cache warm, hot cache empty), a splice from the hot cache,
and a floor: only the splice's own forward passes over the tokens it must compute anyway (template
pieces, system and user text, seam, last token) against an already assembled cache, nothing else.

Timings are wall-clock medians on whatever machine runs this; on a shared CPU they are noisy.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from skillforge.errors import SkillforgeError

GREEDY_TOKENS = 16
BASELINES = ("no-rotation", "plain")
CASE_KEYS = ("id", "skills", "system", "user", "set", "raw", "note")
BENCH_SYSTEM = "You are a helpful assistant."
BENCH_USER = "Summarize the most important rule above in one sentence."

Progress = Callable[[str], None] | None


class CaseError(SkillforgeError):
    """An eval case file is malformed; the message names the file and line."""

    exit_code = 2


# --------------------------------------------------------------------------------------------------
# Metrics (float64, on 1-D logit vectors)


def logit_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two logit vectors."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """KL(softmax(p) || softmax(q)) in nats, computed in float64."""
    lp = torch.log_softmax(p_logits.detach().double().flatten(), dim=-1)
    lq = torch.log_softmax(q_logits.detach().double().flatten(), dim=-1)
    return max(0.0, float((lp.exp() * (lp - lq)).sum()))


def top1(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Do both vectors pick the same next token?"""
    return int(a.argmax()) == int(b.argmax())


def recovery(kl_mode: float, kl_stale: float) -> float:
    """1 - kl_mode / kl_stale: share of the stale splice's divergence that the edit mode removes."""
    if kl_stale == 0:
        return 1.0 if kl_mode == 0 else 0.0
    return 1.0 - kl_mode / kl_stale


def word_token_ids(tokenizer: Any, word: str) -> list[int]:
    """The single tokens a generation can start `word` with (any case, with or without a leading space)."""
    ids = set()
    for form in {word, word.lower(), word.capitalize(), word.upper()}:
        for v in (form, " " + form):
            t = tokenizer(v, add_special_tokens=False)["input_ids"]
            if len(t) == 1:
                ids.add(t[0])
    return sorted(ids)


def answer_logits(logits: torch.Tensor, a_ids: list[int], b_ids: list[int]) -> torch.Tensor:
    """Two answers' next-token log-probability mass (a's tokens, b's tokens) as a 2-way logit vector:
    softmax, `kl` and `top1` on it compare the split between the answers alone."""
    lp = torch.log_softmax(logits.detach().double().flatten(), dim=-1)
    return torch.stack([lp[a_ids].logsumexp(0), lp[b_ids].logsumexp(0)])


def first_word(text: str) -> str:
    """The first word of a generation, lowercased, punctuation stripped ("No." -> "no")."""
    for word in text.split():
        w = re.sub(r"[^\w]", "", word.lower())
        if w:
            return w
    return ""


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


# --------------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    id: str
    skills: list[str]
    user: str
    system: str = ""
    set: dict[str, str] = field(default_factory=dict)
    raw: bool = False
    note: str = ""

    @classmethod
    def from_dict(cls, data: Any, where: str = "case") -> "Case":
        if not isinstance(data, dict):
            raise CaseError(f"{where}: expected a JSON object, got {type(data).__name__}")
        unknown = [k for k in data if k not in CASE_KEYS]
        if unknown:
            raise CaseError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(CASE_KEYS)})")
        for key in ("id", "skills", "user"):
            if key not in data:
                raise CaseError(f"{where}: missing required key {key!r}")
        cid, skills, user = data["id"], data["skills"], data["user"]
        if not isinstance(cid, str) or not cid:
            raise CaseError(f"{where}: 'id' must be a non-empty string")
        if not isinstance(skills, list) or not skills or not all(isinstance(s, str) and s for s in skills):
            raise CaseError(f"{where}: 'skills' must be a non-empty list of skill references")
        for key in ("user", "system", "note"):
            if key in data and not isinstance(data[key], str):
                raise CaseError(f"{where}: {key!r} must be a string")
        if not isinstance(data.get("raw", False), bool):
            raise CaseError(f"{where}: 'raw' must be true or false")
        assignments = data.get("set", {})
        if not isinstance(assignments, dict) or not all(isinstance(v, str) for v in assignments.values()):
            raise CaseError(f"{where}: 'set' must map \"skill.field\" to a string value")
        names = [s.split("@", 1)[0] for s in skills]
        for key in assignments:
            skill, dot, fname = key.partition(".")
            if not dot or not fname:
                raise CaseError(f"{where}: 'set' key {key!r} must look like skill.field")
            if skill not in names:
                raise CaseError(f"{where}: 'set' names skill {skill!r}, which is not in this case's skills ({', '.join(names)})")
        return cls(id=cid, skills=list(skills), user=user, system=data.get("system", ""), set=dict(assignments),
                   raw=data.get("raw", False), note=data.get("note", ""))


def parse_cases(lines: Iterable[str], source: str = "cases") -> list[Case]:
    """JSON Lines -> cases (blank lines skipped). Errors name `source:line`."""
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise CaseError(f"{where}: not valid JSON ({exc})") from None
        case = Case.from_dict(data, where)
        if case.id in seen:
            raise CaseError(f"{where}: duplicate case id {case.id!r} (first on line {seen[case.id]})")
        seen[case.id] = n
        cases.append(case)
    return cases


def load_cases(path: str | Path) -> list[Case]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        from skillforge.errors import NotFound

        raise NotFound(f"cannot read eval cases {path}: {exc.strerror or exc}") from None
    return parse_cases(text.splitlines(), str(path))


# --------------------------------------------------------------------------------------------------
# Artifacts: from a registry/store, or compiled in memory (cached per process)

_MEMORY: dict[tuple, Any] = {}
_FULL: dict[tuple, "FullArm"] = {}
_FULL_MAX = 1024


def _compiled(lm: Any, manifest: Any, anchor: str) -> Any:
    """A Resolved for `manifest` (default values) compiled in memory behind `anchor`; cached."""
    from skillforge.compile import compile_skill
    from skillforge.runtime import Resolved

    key = (lm.fingerprint.digest, manifest.name, manifest.version, manifest.render().digest, anchor)
    if key not in _MEMORY:
        meta, kv = compile_skill(lm, manifest, anchor=anchor)
        _MEMORY[key] = Resolved(meta, kv, None)
    return _MEMORY[key]


def manifest_of(resolved: Any) -> Any:
    from skillforge.manifest import Manifest

    meta = resolved.meta
    return Manifest.from_dict(meta.extra["manifest"], source=f"{meta.skill}@{meta.version}")


class _Skills:
    """Ref -> Resolved, from in-memory manifests or the runtime's registry; `plain` -> anchor none."""

    def __init__(self, lm: Any, rt: Any, manifests: list[Any] | None, plain: bool):
        self.lm, self.rt, self.plain = lm, rt, plain
        self.manifests = {}
        for m in manifests or []:
            self.manifests[m.name] = max(self.manifests.get(m.name, m), m, key=lambda x: _vkey(x.version))
            self.manifests[m.ref] = m

    def get(self, ref: str) -> Any:
        if self.manifests:
            if ref not in self.manifests:
                from skillforge.errors import NotFound

                raise NotFound(f"eval case needs skill {ref!r}, which is not among the given skills ({', '.join(sorted(self.manifests))})")
            resolved = _compiled(self.lm, self.manifests[ref], "template")
        else:
            resolved = self.rt.resolve(ref)
        if self.plain:
            resolved = _compiled(self.lm, manifest_of(resolved), "none")
        return resolved


def _vkey(version: str) -> Any:
    from skillforge.refs import version_key

    return version_key(version)


# --------------------------------------------------------------------------------------------------
# Arms


def reference_ids(lm: Any, system: str, texts: list[str], user: str, raw: bool) -> list[int]:
    """The prompt a plain transformers user would build (layout contract), tokenized by transformers."""
    tok = lm.tokenizer
    content = "\n\n".join([t for t in [system, *texts] if t])  # written out: this checks skillforge.prompt
    if raw:
        return list(tok("\n\n".join(t for t in [content, user] if t), add_special_tokens=True)["input_ids"])
    messages = ([{"role": "system", "content": content}] if content else []) + [{"role": "user", "content": user}]
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


@dataclass(frozen=True)
class FullArm:
    """A full prefill and its greedy continuation. `margins[i]`: top-1 minus top-2 logit at step i - a
    continuation that differs where the margin is a few hundredths of a logit is a near-tie flip."""

    logits: torch.Tensor
    tokens: list[int]
    ttft_ms: float
    margins: list[float]


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
def full_arm(lm: Any, ids: list[int], new_tokens: int = GREEDY_TOKENS) -> FullArm:
    """Full prefill of `ids` and its greedy continuation. Memoized per process: a repair sweep reuses
    the same references."""
    from skillforge.model.forward import eos_ids, greedy, new_cache, run

    key = (lm.fingerprint.digest, tuple(ids), new_tokens)
    if key in _FULL:
        return _FULL[key]
    model, device = lm.model, lm.model.device
    cache = new_cache()
    t0 = time.perf_counter()
    logits = run(model, torch.tensor([ids], device=device), cache=cache)
    ttft = (time.perf_counter() - t0) * 1000
    step = lambda tok, i: run(model, torch.tensor([[tok]], device=device), cache=cache)  # noqa: E731
    out = greedy(logits, step, new_tokens, eos_ids(model, lm.tokenizer))
    if len(_FULL) >= _FULL_MAX:
        _FULL.pop(next(iter(_FULL)))
    _FULL[key] = FullArm(logits.cpu(), out.tokens, ttft, out.margins)
    return _FULL[key]


@torch.no_grad()
def splice_arm(rt: Any, skills: _Skills, case: Case, repair: Any, rotate: bool, edit_mode: str, with_set: bool,
               new_tokens: int = GREEDY_TOKENS) -> tuple[Any, torch.Tensor, list[int], float]:
    """Resolve (hot) + splice + next_logits, timed -> (result, logits, greedy continuation, TTFT ms)."""
    from skillforge.runtime import Context

    ctx = Context(skills=list(case.skills), system=case.system, user=case.user, raw=case.raw,
                  set=dict(case.set) if with_set else {})
    t0 = time.perf_counter()
    resolved = [skills.get(s) for s in case.skills]
    result = rt.splice(ctx, skills=resolved, repair=repair, rotate=rotate, edit_mode=edit_mode,
                       extra_capacity=new_tokens + 2)
    logits = rt.next_logits(result)
    ttft = (time.perf_counter() - t0) * 1000
    result.cache.crop(-1)  # undo the first decoding step, so generate() starts from the prompt again
    tokens, _ = rt.generate(result, new_tokens)
    return result, logits.cpu(), tokens, ttft


# --------------------------------------------------------------------------------------------------
# Eval


def _decode(lm: Any, tokens: list[int]) -> str:
    return lm.tokenizer.decode(tokens, skip_special_tokens=True)


def _plain_case(lm: Any, rt: Any, skills: _Skills, case: Case, repair: Any, rotate: bool, edit_mode: str) -> dict:
    result, s_logits, s_tokens, s_ttft = splice_arm(rt, skills, case, repair, rotate, edit_mode, with_set=False)
    texts = [skills.get(s).meta.text for s in case.skills]
    ids = reference_ids(lm, case.system, texts, case.user, case.raw)
    if ids != result.prompt.ids:
        raise AssertionError(f"case {case.id}: the spliced prompt's tokens differ from transformers' own tokenization "
                             f"({len(result.prompt.ids)} vs {len(ids)} tokens)")
    full = full_arm(lm, ids)
    f_logits = full.logits
    diverged = divergence(full, s_tokens)
    return {
        "id": case.id, "skills": case.skills, "prompt_tokens": len(ids), "reused": result.reused,
        "computed": result.computed, "repaired": result.repaired, "skill_tokens": result.skill_tokens,
        "logit_cosine": round(logit_cosine(f_logits, s_logits), 6), "kl": kl(f_logits, s_logits),
        "top1": top1(f_logits, s_logits), "greedy16_match": diverged is None, "greedy16_divergence": diverged,
        "ttft_full_ms": round(full.ttft_ms, 2), "ttft_splice_ms": round(s_ttft, 2),
        "text_full": _decode(lm, full.tokens), "text_splice": _decode(lm, s_tokens),
    }


def _edit_case(lm: Any, rt: Any, skills: _Skills, case: Case, repair: Any, rotate: bool, edit_mode: str) -> dict:
    from skillforge.runtime.edits import group_assignments

    grouped = group_assignments(case.set)
    base = [skills.get(s) for s in case.skills]
    texts, edited_tokens = [], 0
    for r in base:
        changes = grouped.get(r.meta.skill)
        if changes:
            text = manifest_of(r).render({**r.meta.field_values, **changes}).text
            texts.append(text)
            edited_tokens += len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])  # the skill as edited
        else:
            texts.append(r.meta.text)
    full = full_arm(lm, reference_ids(lm, case.system, texts, case.user, case.raw))
    oracle = splice_arm(rt, skills, case, repair, rotate, "recompute", with_set=True)
    result, m_logits, m_tokens, m_ttft = (oracle if edit_mode == "recompute" else
                                          splice_arm(rt, skills, case, repair, rotate, edit_mode, with_set=True))
    _, st_logits, st_tokens, _ = splice_arm(rt, skills, case, repair, rotate, edit_mode, with_set=False)
    _, o_logits, o_tokens, _ = oracle
    # tokens computed for the edit: per edited skill, a recompute counts the skill once
    computed, recomputed = 0, set()
    for e in result.edits:
        if str(e.get("mode", "")).endswith("recompute"):
            if e["skill"] not in recomputed:
                recomputed.add(e["skill"])
                computed += e["tokens_computed"]
        else:
            computed += e["tokens_computed"]
    kl_mode, kl_stale = kl(o_logits, m_logits), kl(o_logits, st_logits)
    words = {k: first_word(_decode(lm, t)) for k, t in (("oracle", o_tokens), ("mode", m_tokens), ("stale", st_tokens))}
    decision = _decision(lm, words, {"oracle": o_logits, "mode": m_logits, "stale": st_logits})
    return {
        "id": case.id, "skills": case.skills, "set": case.set,
        "mode": ",".join(sorted({str(e.get("mode")) for e in result.edits})) or edit_mode,
        "kl_mode": kl_mode, "kl_stale": kl_stale, "recovery": recovery(kl_mode, kl_stale), "kl_full": kl(full.logits, m_logits),
        "top1": top1(o_logits, m_logits), "top1_stale": top1(o_logits, st_logits),
        "first_word": words, "first_word_agreement": words["mode"] == words["oracle"],
        "oracle_flips": words["oracle"] != words["stale"], "oracle_top1_flips": not top1(o_logits, st_logits),
        "decision": decision,
        "tokens_computed": computed, "edited_skill_tokens": edited_tokens,
        "computed_fraction": computed / edited_tokens if edited_tokens else 0.0,
        "ttft_splice_ms": round(m_ttft, 2),
        "text_oracle": _decode(lm, o_tokens), "text_mode": _decode(lm, m_tokens), "text_stale": _decode(lm, st_tokens),
    }


def _decision(lm: Any, words: dict[str, str], logits: dict[str, torch.Tensor]) -> dict | None:
    """On a gated case (the oracle's first word differs from the stale splice's), each arm's share of the
    oracle's answer between the two answers, and the edit mode's recovery of that share: the decision
    alone, without the rest of the next-token distribution (None where the case is not gated)."""
    if words["oracle"] == words["stale"] or not words["oracle"] or not words["stale"]:
        return None
    a_ids, b_ids = word_token_ids(lm.tokenizer, words["oracle"]), word_token_ids(lm.tokenizer, words["stale"])
    if not a_ids or not b_ids:
        return None
    two = {k: answer_logits(v, a_ids, b_ids) for k, v in logits.items()}
    return {"answers": [words["oracle"], words["stale"]],
            **{f"share_{k}": round(float(torch.softmax(v, 0)[0]), 4) for k, v in two.items()},
            "recovery": recovery(kl(two["oracle"], two["mode"]), kl(two["oracle"], two["stale"]))}


def run_eval(lm: Any, cases: list[Case] | list[dict], repair: Any = None, baseline: str | None = None,
             edit_mode: str = "field+erratum", registry: Any = None, store: Any = None,
             skills: list[Any] | str | Path | None = None, runtime: Any = None, progress: Progress = None) -> dict:
    """Run every case; returns the eval JSON document (aggregates, `edits`, `per_case`).

    Skills come from `skills` (Manifests, or a folder of skills, compiled in memory) or else from
    `registry` + `store` (or `runtime`'s). `baseline` is None, "no-rotation" or "plain".
    """
    from skillforge.runtime import Repair, Runtime

    if baseline not in (None, *BASELINES):
        from skillforge.errors import BadReference

        raise BadReference(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}")
    cases = [c if isinstance(c, Case) else Case.from_dict(c, f"case {i + 1}") for i, c in enumerate(cases)]
    if isinstance(skills, (str, Path)):
        from skillforge.manifest import discover

        skills = discover(Path(skills))
    repair = repair or Repair()
    if baseline == "plain":
        repair = Repair(seam=0, blend=0.0)  # no repair at all
    rotate = baseline != "no-rotation"
    rt = runtime or Runtime(lm, registry, store, repair=repair)
    source = _Skills(lm, rt, skills, plain=baseline == "plain")
    for ref in dict.fromkeys(s for c in cases for s in c.skills):  # load (and compile) up front, untimed
        source.get(ref)

    from skillforge.errors import EditError

    plain_rows, edit_rows, skipped = [], [], []
    for n, case in enumerate(cases, 1):
        if progress:
            progress(f"[{n}/{len(cases)}] {case.id}")
        if case.set:
            try:
                edit_rows.append(_edit_case(lm, rt, source, case, repair, rotate, edit_mode))
            except EditError as exc:  # e.g. in-place with a value of another token length
                skipped.append({"id": case.id, "set": case.set, "error": str(exc)})
                if progress:
                    progress(f"  skipped: {exc}")
        else:
            plain_rows.append(_plain_case(lm, rt, source, case, repair, rotate, edit_mode))

    p = plain_rows
    doc: dict[str, Any] = {
        "model": lm.name, "fingerprint": lm.fingerprint.digest, "device": str(lm.device),
        "repair": repair.describe() if rotate else "none (no rotation)", "baseline": baseline,
        "edit_mode": edit_mode, "cases": len(p),
        "logit_cosine_mean": _mean([r["logit_cosine"] for r in p]),
        "logit_cosine_min": min((r["logit_cosine"] for r in p), default=None),
        "kl_mean": _mean([r["kl"] for r in p]),
        "kl_max": max((r["kl"] for r in p), default=None),
        "top1_agreement": _mean([float(r["top1"]) for r in p]),
        "greedy16_match": _mean([float(r["greedy16_match"]) for r in p]),
        # the widest top-2 margin of the full arm at which any continuation diverged: small = near-ties only
        "greedy16_divergence_margin_max": max((r["greedy16_divergence"]["full_margin"] for r in p
                                               if r["greedy16_divergence"] and r["greedy16_divergence"]["full_margin"] is not None),
                                              default=None),
        "reused_fraction": _ratio(p, "reused", "prompt_tokens"),
        "skill_recompute_fraction": _ratio(p, "repaired", "skill_tokens"),
        "ttft_full_ms_median": _median([r["ttft_full_ms"] for r in p]),
        "ttft_splice_ms_median": _median([r["ttft_splice_ms"] for r in p]),
    }
    e = edit_rows
    doc["edits"] = {
        "cases": len(e),
        "top1_agreement": _mean([float(r["top1"]) for r in e]),
        "first_word_agreement": _mean([float(r["first_word_agreement"]) for r in e]),
        "kl_mean": _mean([r["kl_mode"] for r in e]),
        "kl_stale_mean": _mean([r["kl_stale"] for r in e]),
        "kl_full_mean": _mean([r["kl_full"] for r in e]),
        "recovery_mean": _mean([r["recovery"] for r in e]),
        "recovery_median": statistics.median([r["recovery"] for r in e]) if e else None,
        "computed_fraction": _ratio(e, "tokens_computed", "edited_skill_tokens"),
        "stale_first_word_agreement": _mean([float(r["first_word"]["stale"] == r["first_word"]["oracle"]) for r in e]),
        "oracle_flips": sum(r["oracle_flips"] for r in e),
        # gated cases: where the oracle's decision differs from the stale splice's, i.e. the edit matters
        "gated_first_word_agreement": _mean([float(r["first_word_agreement"]) for r in e if r["oracle_flips"]]),
        "gated_recovery_mean": _mean([r["recovery"] for r in e if r["oracle_flips"]]),
        "decision_recovery_mean": _mean([r["decision"]["recovery"] for r in e if r["decision"]]),
        "skipped": len(skipped),
    }
    doc["per_case"] = plain_rows + edit_rows
    if skipped:
        doc["skipped"] = skipped
    return doc


def _ratio(rows: list[dict], num: str, den: str) -> float | None:
    d = sum(r[den] for r in rows)
    return sum(r[num] for r in rows) / d if d else None


def _g16(row: dict) -> str:
    """`y`, or `n@STEP(MARGIN)`: where the splice's continuation left the full arm's, and how close a call it was."""
    d = row["greedy16_divergence"]
    if d is None:
        return "y"
    return f"n@{d['step']}" + ("" if d["full_margin"] is None else f"({d['full_margin']:.2f})")


def format_eval(doc: dict) -> str:
    """Human rendering: a compact table per kind of case and the aggregate lines."""
    from skillforge.cli.common import table

    def f(x: Any, nd: int = 4) -> str:
        return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))

    plain = [r for r in doc["per_case"] if "set" not in r]
    edits = [r for r in doc["per_case"] if "set" in r]
    out = []
    if plain:
        rows = [{"id": r["id"], "skills": "+".join(s.split("@")[0] for s in r["skills"]), "tokens": r["prompt_tokens"],
                 "reused": r["reused"], "cos": f"{r['logit_cosine']:.4f}", "kl": f"{r['kl']:.4f}", "top1": "y" if r["top1"] else "n",
                 "g16": _g16(r), "full_ms": f"{r['ttft_full_ms']:.0f}",
                 "splice_ms": f"{r['ttft_splice_ms']:.0f}"} for r in plain]
        out.append(table(rows, list(rows[0])))
        out.append("")
        out.append(f"repair {doc['repair']}  baseline {doc['baseline'] or '-'}  cases {doc['cases']}")
        out.append(f"top1 {f(doc['top1_agreement'], 3)}  greedy16 {f(doc['greedy16_match'], 3)} (diverged at full-arm "
                   f"margins <= {f(doc['greedy16_divergence_margin_max'], 3)} logits)  "
                   f"kl mean {f(doc['kl_mean'])} max {f(doc['kl_max'])}  cosine mean {f(doc['logit_cosine_mean'])} "
                   f"min {f(doc['logit_cosine_min'])}")
        out.append(f"reused {f(doc['reused_fraction'], 3)} of prompt tokens  skill tokens recomputed "
                   f"{f(doc['skill_recompute_fraction'], 3)}  ttft median full {f(doc['ttft_full_ms_median'], 1)} ms "
                   f"splice {f(doc['ttft_splice_ms_median'], 1)} ms")
    if edits:
        if out:
            out.append("")
        rows = [{"id": r["id"], "set": ",".join(f"{k}={v}" for k, v in r["set"].items()), "kl_mode": f"{r['kl_mode']:.4f}",
                 "kl_stale": f"{r['kl_stale']:.4f}", "recovery": f"{r['recovery']:.3f}", "top1": "y" if r["top1"] else "n",
                 "kl_full": f"{r['kl_full']:.4f}", "oracle": r["first_word"]["oracle"], "mode": r["first_word"]["mode"],
                 "stale": r["first_word"]["stale"]} for r in edits]
        out.append(table(rows, list(rows[0])))
        ed = doc["edits"]
        out.append("")
        out.append(f"edits ({doc['edit_mode']}): cases {ed['cases']}  top1 {f(ed['top1_agreement'], 3)}  first word "
                   f"{f(ed['first_word_agreement'], 3)} (stale {f(ed['stale_first_word_agreement'], 3)})  kl mean "
                   f"{f(ed['kl_mean'])} (stale {f(ed['kl_stale_mean'])}, vs full prefill {f(ed['kl_full_mean'])})  "
                   f"recovery {f(ed['recovery_mean'], 3)}  "
                   f"computed {f(ed['computed_fraction'], 3)} of the skill  oracle flips {ed['oracle_flips']}/{ed['cases']}")
        if ed["oracle_flips"]:
            out.append(f"gated cases (the oracle's first word flips with the value) {ed['oracle_flips']}: first word "
                       f"{f(ed['gated_first_word_agreement'], 3)}  recovery {f(ed['gated_recovery_mean'], 3)}  "
                       f"decision recovery {f(ed['decision_recovery_mean'], 3)}")
    for s in doc.get("skipped", []):
        out.append(f"skipped {s['id']}: {s['error']}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Bench


def bundled_skills_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "skills"


def synthetic_text(tokenizer: Any, n: int, source_dir: Path | None = None) -> str:
    """Text that tokenizes to exactly `n` tokens on its own: bundled skill texts, concatenated and cut."""
    from skillforge.manifest import discover

    folder = source_dir or bundled_skills_dir()
    texts = [m.render().text for m in discover(folder)] if folder.is_dir() else []
    if not texts:
        texts = ["Follow the policy exactly, answer briefly, and say what the user can do next."]
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    parts, ids = [], []
    while len(ids) < n + 128:
        parts.append(texts[len(parts) % len(texts)])
        ids = enc("\n\n".join(parts))
    best = None
    for start in range(64):  # windows of the token stream; the first that re-tokenizes to exactly n tokens
        for m in (n, n + 1, n - 1):
            if m <= 0 or start + m > len(ids):
                continue
            text = tokenizer.decode(ids[start : start + m])
            if text != text.strip():
                continue  # edge whitespace merges with the prompt around the skill
            got = len(enc(text))
            if got == n:
                return text
            if best is None or abs(got - n) < abs(best[1] - n):
                best = (text, got)
    return best[0]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


@torch.no_grad()
def run_bench(lm: Any, lengths: list[int], repeats: int = 3, full_repeats: int | None = None,
              progress: Progress = None) -> dict:
    """TTFT of a full prefill against splices (store, hot cache) and the floor, per synthetic skill length."""
    from skillforge.build import compile_manifests
    from skillforge.errors import ContextTooLong
    from skillforge.manifest import Manifest
    from skillforge.model.forward import new_cache, run
    from skillforge.registry import Registry
    from skillforge.runtime import Context, Runtime
    from skillforge.store import LocalStore

    say = progress or (lambda s: None)
    model, device = lm.model, lm.model.device
    rows, compile_info = [], {}
    with tempfile.TemporaryDirectory(prefix="skillforge-bench-") as tmp:
        registry, store = Registry(f"sqlite:///{Path(tmp) / 'index.sqlite'}"), LocalStore(Path(tmp))
        try:
            for n in sorted(lengths):
                text = synthetic_text(lm.tokenizer, n)
                manifest = Manifest.from_dict({"name": f"bench-{n}", "version": "1.0.0", "template": text}, source=f"bench-{n}")
                say(f"bench {n} tokens: compiling")
                outcome, compile_ms = _timed(lambda: compile_manifests(lm, [manifest], registry, store)[0])
                ctx = Context(skills=[f"bench-{n}"], system=BENCH_SYSTEM, user=BENCH_USER)
                rt = Runtime(lm, registry, store)
                probe = rt.splice(ctx)
                L = len(probe.prompt.ids)
                if L + 1 > lm.max_positions:
                    raise ContextTooLong(f"bench length {n}: the prompt is {L} tokens; {lm.name} allows {lm.max_positions}")
                reps_full = full_repeats or (repeats if n < 4096 else min(repeats, 2))

                say(f"bench {n} tokens: full prefill x{reps_full}")
                ids = torch.tensor([probe.prompt.ids], device=device)
                full = [_timed(lambda: run(model, ids, cache=new_cache()))[1] for _ in range(reps_full)]

                say(f"bench {n} tokens: splices x{repeats}")
                rt.release(probe)
                store_ms, hot_ms = [], []

                def first_token() -> Any:
                    result = rt.splice(ctx)
                    rt.next_logits(result)
                    return result

                for _ in range(repeats):
                    rt.hot.clear()  # next resolve reads the mmap'd blob (from the page cache: warmed by the probe)
                    for arm in (store_ms, hot_ms):
                        result, ms = _timed(first_token)
                        arm.append(ms)
                        rt.release(result)  # as a serving loop does when a request is done

                # floor: the splice's own forward passes over an already assembled cache
                base = rt.splice(ctx)
                ids_1d = base.input_ids[0]
                floor = [_timed(lambda: rt.compute(base.cache, ids_1d, base.computed_positions))[1] for _ in range(repeats)]
                f_ms, s_ms, h_ms = statistics.median(full), statistics.median(store_ms), statistics.median(hot_ms)
                rows.append({
                    "tokens": outcome.tokens, "prompt_tokens": L, "computed_tokens": probe.computed,
                    "full_ms": round(f_ms, 2), "splice_store_ms": round(s_ms, 2), "splice_hot_ms": round(h_ms, 2),
                    "floor_ms": round(statistics.median(floor), 2),
                    "speedup_store": round(f_ms / s_ms, 2), "speedup_hot": round(f_ms / h_ms, 2),
                    "bytes_per_token": round(outcome.bytes / outcome.tokens, 1), "full_repeats": reps_full,
                })
                compile_info = {"tokens": outcome.tokens, "compile_ms": compile_ms, "manifest": manifest}
                say(f"bench {n} tokens: full {f_ms:.0f} ms, splice store {s_ms:.0f} ms, hot {h_ms:.0f} ms")
        finally:
            registry.close()
    result: dict[str, Any] = {"model": lm.name, "device": str(lm.device), "dtype": lm.dtype, "repeats": repeats,
                              "rows": rows, "compile_tokens_per_s": None, "bare_forward_tokens_per_s": None}
    if compile_info:
        from skillforge.prompt import resolve_anchor, tokenize_with_offsets

        n = compile_info["tokens"]
        result["compile_tokens_per_s"] = round(n / (compile_info["compile_ms"] / 1000), 1)
        ids, _ = tokenize_with_offsets(lm.tokenizer, compile_info["manifest"].render().text)
        x = torch.tensor([resolve_anchor(lm.tokenizer, "template") + ids], device=device)
        say(f"bench: bare forward of {x.shape[1]} tokens")
        _, bare_ms = _timed(lambda: run(model, x, cache=new_cache()))
        result["bare_forward_tokens_per_s"] = round(n / (bare_ms / 1000), 1)
    result["floor"] = ("the splice's forward passes alone (template pieces, system and user text, seam and repaired "
                       "tokens, last token) over an already assembled cache: no tokenization, artifact read or rotation")
    return result


def format_bench(doc: dict) -> str:
    from skillforge.cli.common import table

    cols = ["tokens", "full_ms", "splice_store_ms", "splice_hot_ms", "floor_ms", "speedup_store", "speedup_hot", "bytes_per_token"]
    lines = [f"model {doc['model']} on {doc['device']} ({doc.get('dtype', '')}), medians of {doc['repeats']} repeats",
             table(doc["rows"], cols), "",
             f"compile {doc['compile_tokens_per_s']} tokens/s; bare forward of the same tokens {doc['bare_forward_tokens_per_s']} tokens/s"]
    return "\n".join(lines)


def plot_bench(doc: dict, path: str | Path) -> Path:
    """TTFT against skill length, log y, one line per arm (PNG via matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    xs = [r["tokens"] for r in doc["rows"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for key, label in (("full_ms", "full prefill"), ("splice_store_ms", "splice (store)"),
                       ("splice_hot_ms", "splice (hot cache)"), ("floor_ms", "floor (compute only)")):
        ax.plot(xs, [r[key] for r in doc["rows"]], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("skill tokens")
    ax.set_ylabel("time to first token (ms)")
    ax.set_title(f"{doc['model']} on {doc['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
