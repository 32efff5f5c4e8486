"""`skillforge eval`: how close is a splice to a full recompute, case by case, and in aggregate.

Plain cases compare the next-token distribution and the greedy continuation of the full arm and the
splice arm (eval/arms.py). For cases with `set` (field edits) the reference ("oracle") is the
`recompute` mode, as the edits issue defines it: the skill re-prefilled with the new values, then
spliced like any other. Against it, the edit mode's splice and a *stale* splice that ignores the edit
give `recovery` = 1 - KL(oracle||mode) / KL(oracle||stale): the share of the edit's effect on the
next-token distribution that the mode gets back. Splice error that every mode shares (a skill after
system text or another skill) thus cancels out; `kl_full` still compares the mode with a full prefill
of the edited prompt, for the whole error. On *gated* cases (the oracle's first word differs from the
stale splice's: the edit changes the decision) `decision` narrows the same comparison to the two
answers: each arm's share of the oracle's answer between them, and the recovery of that share. It
separates "the mode reaches the oracle's decision, with its confidence" from what an erratum line
does to the rest of the distribution.

Baselines: `no-rotation` splices keys at their compile positions (rotate=False, no repair);
`plain` uses artifacts compiled without an anchor (compiled in memory) and no repair.
Timings are wall-clock medians on whatever machine runs this; on a shared CPU they are noisy.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from skillforge.errors import BadInput, EditError
from skillforge.eval.arms import EvalMemo, SkillSource, divergence, full_arm, manifest_of, reference_ids, splice_arm
from skillforge.eval.cases import Case
from skillforge.eval.metrics import answer_logits, first_word, kl, logit_cosine, mean, median, ratio, recovery, top1, word_token_ids
from skillforge.eval.values import value_check, value_summary
from skillforge.manifest import Manifest, discover
from skillforge.model.loader import LoadedModel
from skillforge.prompt import has_chat_template
from skillforge.runtime import Repair, Runtime
from skillforge.runtime.edits import group_assignments

BASELINES = ("no-rotation", "plain")

Progress = Callable[[str], None] | None


def case_kind(case: Case) -> str:
    """The case's kind from its note ("kind=lone-system ..." -> "lone-system"), "-" without one: the
    corpus tags each context with its shape, and splice error differs by shape far more than by case."""
    for word in case.note.split():
        key, eq, value = word.partition("=")
        if key == "kind" and eq and value:
            return value
    return "-"


def by_kind(rows: list[dict]) -> dict[str, dict]:
    """Plain rows grouped by kind -> the headline aggregates per kind (sorted by kind), so one shape of
    context that fails cannot hide behind an average over the others."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["kind"], []).append(r)
    return {k: {"cases": len(g), "top1_agreement": mean([float(r["top1"]) for r in g]),
                "greedy16_match": mean([float(r["greedy16_match"]) for r in g]),
                "kl_mean": mean([r["kl"] for r in g]), "kl_max": max(r["kl"] for r in g),
                "skill_recompute_fraction": ratio(g, "repaired", "skill_tokens")}
            for k, g in sorted(groups.items())}


def _decode(lm: LoadedModel, tokens: list[int]) -> str:
    return lm.tokenizer.decode(tokens, skip_special_tokens=True)


def _plain_case(lm: LoadedModel, rt: Runtime, skills: SkillSource, case: Case, repair: Repair, rotate: bool, edit_mode: str,
                memo: EvalMemo) -> dict:
    result, s_logits, s_tokens, s_ttft = splice_arm(rt, skills, case, repair, rotate, edit_mode, with_set=False)
    texts = [skills.get(s).meta.text for s in case.skills]
    ids = reference_ids(lm, case.system, texts, case.user, case.raw, case.history)
    if ids != result.prompt.ids:
        raise AssertionError(f"case {case.id}: the spliced prompt's tokens differ from transformers' own tokenization "
                             f"({len(result.prompt.ids)} vs {len(ids)} tokens)")
    full = full_arm(lm, ids, memo)
    f_logits = full.logits
    diverged = divergence(full, s_tokens)
    return {
        "id": case.id, "kind": case_kind(case), "skills": case.skills, "prompt_tokens": len(ids), "reused": result.reused,
        "computed": result.computed, "repaired": result.repaired, "skill_tokens": result.skill_tokens,
        "logit_cosine": round(logit_cosine(f_logits, s_logits), 6), "kl": kl(f_logits, s_logits),
        "top1": top1(f_logits, s_logits), "greedy16_match": diverged is None, "greedy16_divergence": diverged,
        "ttft_full_ms": round(full.ttft_ms, 2), "ttft_splice_ms": round(s_ttft, 2),
        "text_full": _decode(lm, full.tokens), "text_splice": _decode(lm, s_tokens),
    }


def _edit_case(lm: LoadedModel, rt: Runtime, skills: SkillSource, case: Case, repair: Repair, rotate: bool, edit_mode: str,
               memo: EvalMemo) -> dict:
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
    full = full_arm(lm, reference_ids(lm, case.system, texts, case.user, case.raw, case.history), memo)
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
    decision = gated_decision(lm, words, {"oracle": o_logits, "mode": m_logits, "stale": st_logits})
    return {
        "id": case.id, "kind": case_kind(case), "skills": case.skills, "set": case.set,
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
        # value-retrieval cases: does each answer carry the new value, or the compiled one (eval/values.py)
        "value": value_check(case.expect, [r.meta.field_values.get(k, "") for r in base for k in grouped.get(r.meta.skill, {})],
                             {"oracle": _decode(lm, o_tokens), "mode": _decode(lm, m_tokens), "stale": _decode(lm, st_tokens)})
        if case.expect else None,
    }


def gated_decision(lm: LoadedModel, words: dict[str, str], logits: dict[str, torch.Tensor]) -> dict | None:
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


def run_eval(lm: LoadedModel, cases: list[Case] | list[dict], repair: Repair | None = None, baseline: str | None = None,
             edit_mode: str = "field+erratum", registry: Any = None, store: Any = None,
             skills: list[Manifest] | str | Path | None = None, runtime: Runtime | None = None, progress: Progress = None,
             memo: EvalMemo | None = None) -> dict:
    """Run every case; returns the eval JSON document (aggregates, `edits`, `per_case`).

    Skills come from `skills` (Manifests, or a folder of skills, compiled in memory) or else from
    `registry` + `store` (or `runtime`'s). `baseline` is None, "no-rotation" or "plain". Pass one
    `memo` to several runs to share compiled skills and full-prefill references between them.
    """
    if baseline not in (None, *BASELINES):
        raise BadInput(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}")
    cases = [c if isinstance(c, Case) else Case.from_dict(c, f"case {i + 1}") for i, c in enumerate(cases)]
    raw_only = not has_chat_template(lm.tokenizer)
    if raw_only:  # a base model (gemma-3-270m): every case as a raw prompt, and the document says so
        cases = [replace(c, raw=True) for c in cases]
    if isinstance(skills, (str, Path)):
        skills = discover(Path(skills))
    repair = repair or Repair()
    if baseline == "plain":
        repair = Repair(seam=0, blend=0.0)  # no repair at all
    rotate = baseline != "no-rotation"
    rt = runtime or Runtime(lm, registry, store, repair=repair)
    memo = memo if memo is not None else EvalMemo()
    source = SkillSource(lm, rt, skills, baseline == "plain", memo)
    for ref in dict.fromkeys(s for c in cases for s in c.skills):  # load (and compile) up front, untimed
        source.get(ref)

    plain_rows, edit_rows, skipped = [], [], []
    for n, case in enumerate(cases, 1):
        if progress:
            progress(f"[{n}/{len(cases)}] {case.id}")
        if case.set:
            try:
                edit_rows.append(_edit_case(lm, rt, source, case, repair, rotate, edit_mode, memo))
            except EditError as exc:  # e.g. in-place with a value of another token length
                skipped.append({"id": case.id, "set": case.set, "error": str(exc)})
                if progress:
                    progress(f"  skipped: {exc}")
        else:
            plain_rows.append(_plain_case(lm, rt, source, case, repair, rotate, edit_mode, memo))

    p = plain_rows
    doc: dict[str, Any] = {
        "model": lm.name, "fingerprint": lm.fingerprint.digest, "device": str(lm.device),
        "repair": repair.describe() if rotate else "none (no rotation)", "baseline": baseline,
        "edit_mode": edit_mode, "cases": len(p), "raw_prompts": "all (no chat template)" if raw_only else "as the cases say",
        "logit_cosine_mean": mean([r["logit_cosine"] for r in p]),
        "logit_cosine_min": min((r["logit_cosine"] for r in p), default=None),
        "kl_mean": mean([r["kl"] for r in p]),
        "kl_max": max((r["kl"] for r in p), default=None),
        "top1_agreement": mean([float(r["top1"]) for r in p]),
        "greedy16_match": mean([float(r["greedy16_match"]) for r in p]),
        # the widest top-2 margin of the full arm at which any continuation diverged: small = near-ties only
        "greedy16_divergence_margin_max": max((r["greedy16_divergence"]["full_margin"] for r in p
                                               if r["greedy16_divergence"] and r["greedy16_divergence"]["full_margin"] is not None),
                                              default=None),
        "reused_fraction": ratio(p, "reused", "prompt_tokens"),
        "skill_recompute_fraction": ratio(p, "repaired", "skill_tokens"),
        "ttft_full_ms_median": median([r["ttft_full_ms"] for r in p]),
        "ttft_splice_ms_median": median([r["ttft_splice_ms"] for r in p]),
        "by_kind": by_kind(p),
    }
    e = edit_rows
    doc["edits"] = {
        "cases": len(e),
        "top1_agreement": mean([float(r["top1"]) for r in e]),
        "first_word_agreement": mean([float(r["first_word_agreement"]) for r in e]),
        "kl_mean": mean([r["kl_mode"] for r in e]),
        "kl_stale_mean": mean([r["kl_stale"] for r in e]),
        "kl_full_mean": mean([r["kl_full"] for r in e]),
        "recovery_mean": mean([r["recovery"] for r in e]),
        "recovery_median": statistics.median([r["recovery"] for r in e]) if e else None,
        "computed_fraction": ratio(e, "tokens_computed", "edited_skill_tokens"),
        "stale_first_word_agreement": mean([float(r["first_word"]["stale"] == r["first_word"]["oracle"]) for r in e]),
        "oracle_flips": sum(r["oracle_flips"] for r in e),
        # gated cases: where the oracle's decision differs from the stale splice's, i.e. the edit matters
        "gated_first_word_agreement": mean([float(r["first_word_agreement"]) for r in e if r["oracle_flips"]]),
        "gated_recovery_mean": mean([r["recovery"] for r in e if r["oracle_flips"]]),
        "decision_recovery_mean": mean([r["decision"]["recovery"] for r in e if r["decision"]]),
        **value_summary(e),
        "skipped": len(skipped),
    }
    doc["per_case"] = plain_rows + edit_rows
    if skipped:
        doc["skipped"] = skipped
    return doc
