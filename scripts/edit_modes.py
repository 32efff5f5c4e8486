"""Every edit mode against the recompute oracle on one model, sharing the oracle and stale arms.

`skillforge eval --edit-mode M` recomputes the oracle for every mode; on a slow CPU and a 1.5B model
that is most of the cost. This computes, per case, the oracle (the skill re-prefilled with the new
values) and the stale splice once, checks whether the case is gated (the oracle's first word differs
from the stale one's) or asks for the value (`expect`), and only then splices each mode. One JSON line
per case and mode goes to --out as it is measured, so a long run can be summarised part way:

    python scripts/edit_modes.py CASES.jsonl [MORE.jsonl] --model qwen2.5-coder-1.5b --out rows.jsonl
    python scripts/edit_modes.py --summarize rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from skillforge.errors import EditError
from skillforge.eval.arms import EvalMemo, SkillSource, manifest_of, splice_arm
from skillforge.eval.cases import load_cases
from skillforge.eval.metrics import first_word, kl, recovery
from skillforge.eval.run import gated_decision
from skillforge.eval.values import value_check
from skillforge.manifest import discover
from skillforge.model.loader import load_model
from skillforge.runtime import Repair, Runtime
from skillforge.runtime.edits import DEFAULT_ERRATUM, group_assignments

SKILL_DIRS = ("skills", "evals/corpus/skills")
MODES = ("field+erratum", "erratum", "in-place", "contrast", "auto")


def measure(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device="cpu")
    rt = Runtime(lm, repair=Repair(), erratum=args.erratum)
    manifests = [m for d in SKILL_DIRS for m in discover(Path(d))]
    src = SkillSource(lm, rt, manifests, False, EvalMemo())
    repair = Repair()
    out = open(args.out, "a", encoding="utf-8")
    for path in args.cases:
        for case in load_cases(path):
            if args.only and case.id not in args.only:
                continue
            dec = lambda t: lm.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
            n = args.value_tokens if case.expect else args.tokens
            _, o_logits, o_tokens, _ = splice_arm(rt, src, case, repair, True, "recompute", True, n)
            _, s_logits, s_tokens, _ = splice_arm(rt, src, case, repair, True, "field+erratum", False, n)
            base = [src.get(s) for s in case.skills]
            grouped = group_assignments(case.set)
            edited = sum(len(lm.tokenizer(manifest_of(r).render({**r.meta.field_values, **grouped[r.meta.skill]}).text,
                                          add_special_tokens=False)["input_ids"]) for r in base if r.meta.skill in grouped)
            stale_values = [r.meta.field_values.get(k, "") for r in base for k in grouped.get(r.meta.skill, {})]
            gated = first_word(dec(o_tokens)) != first_word(dec(s_tokens))
            print(f"{case.id}: oracle {dec(o_tokens)!r} stale {dec(s_tokens)!r} {'GATED' if gated else ''}", file=sys.stderr, flush=True)
            if not gated and not case.expect:
                out.write(json.dumps({"model": args.model, "id": case.id, "mode": None, "gated": False,
                                      "text_oracle": dec(o_tokens), "text_stale": dec(s_tokens)}) + "\n")
                out.flush()
                continue
            for mode in args.modes:
                try:
                    result, m_logits, m_tokens, _ = splice_arm(rt, src, case, repair, True, mode, True, n)
                except EditError as exc:
                    print(f"  {mode}: skipped ({exc})", file=sys.stderr, flush=True)
                    continue
                words = {"oracle": first_word(dec(o_tokens)), "mode": first_word(dec(m_tokens)), "stale": first_word(dec(s_tokens))}
                k_mode, k_stale = kl(o_logits, m_logits), kl(o_logits, s_logits)
                decision = gated_decision(lm, words, {"oracle": o_logits, "mode": m_logits, "stale": s_logits})
                texts = {"oracle": dec(o_tokens), "mode": dec(m_tokens), "stale": dec(s_tokens)}
                row = {"model": args.model, "variant": args.variant, "id": case.id, "mode": mode, "gated": gated,
                       "agree": words["mode"] == words["oracle"], "kl_mode": k_mode, "kl_stale": k_stale,
                       "recovery": recovery(k_mode, k_stale), "decision": decision,
                       "computed": sum(e["tokens_computed"] for e in result.edits), "edited_tokens": edited,
                       "value": value_check(case.expect, stale_values, texts) if case.expect else None,
                       "text_oracle": texts["oracle"], "text_mode": texts["mode"], "text_stale": texts["stale"]}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(f"  {mode}: {texts['mode']!r} rec {row['recovery']:.3f} "
                      f"dec {decision['recovery'] if decision else float('nan'):.3f}", file=sys.stderr, flush=True)
                rt.release(result)


def summarize(path: Path) -> None:
    """Per model, variant and mode: decision agreement on the gated cases (ungated decision cases are
    screened, not run per mode, so only their count is shown), recovery mean and median on them (KL
    and the two-answer decision share), value answers carrying the new / stale value (and the oracle's),
    and the share of the edited skill's tokens computed."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = sorted({(r["model"], r.get("variant", ""), r["mode"]) for r in rows if r["mode"]})

    def f(xs: list[float], med: bool = False) -> str:
        return "-" if not xs else f"{(statistics.median if med else statistics.fmean)(xs):.2f}"

    print("| model | variant | mode | decision agreement, gated (n; ungated screened) | recovery mean / median, gated | "
          "decision recovery mean / median, gated | value carried new / stale (n) | oracle new | computed share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, variant, mode in keys:
        g = [r for r in rows if (r["model"], r.get("variant", ""), r["mode"]) == (model, variant, mode)]
        gated = [r for r in g if not r["value"] and r["gated"]]
        vals = [r["value"] for r in g if r["value"]]
        ungated = len({r["id"] for r in rows if r["model"] == model and r["mode"] is None})
        d_rec = [r["decision"]["recovery"] for r in gated if r["decision"]]
        print(f"| {model} | {variant or '-'} | {mode} | {f([float(r['agree']) for r in gated])} ({len(gated)}; {ungated}) | "
              f"{f([r['recovery'] for r in gated])} / {f([r['recovery'] for r in gated], True)} | "
              f"{f(d_rec)} / {f(d_rec, True)} | {f([float(v['mode_new']) for v in vals])} / "
              f"{f([float(v['mode_stale']) for v in vals])} ({len(vals)}) | {f([float(v['oracle_new']) for v in vals])} | "
              f"{sum(r['computed'] for r in g) / max(1, sum(r['edited_tokens'] for r in g)):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", type=Path, nargs="*")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--erratum", default=DEFAULT_ERRATUM, help="erratum template ({label}, {value}, {field})")
    ap.add_argument("--variant", default="", help="a name for this run's settings in the summary")
    ap.add_argument("--only", nargs="*", help="case ids to run")
    ap.add_argument("--tokens", type=int, default=4, help="greedy tokens for decision cases")
    ap.add_argument("--value-tokens", type=int, default=10, help="greedy tokens for value cases")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/edit_modes.jsonl"))
    ap.add_argument("--summarize", type=Path, help="print the table for a rows file and exit")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
    else:
        measure(args)


if __name__ == "__main__":
    main()
