"""`skillforge eval CASES.jsonl`: how close splices come to a full recompute (see skillforge/eval/), and
the text rendering of its result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from skillforge.cli.common import (DeviceOpt, DtypeOpt, EditModeOpt, JsonOpt, ModelOpt, RepairOpt, SeamOpt, emit, info, load,
                                   open_registry, open_store, table)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(cases: Path = typer.Argument(..., help="eval cases, one JSON object per line"),
              model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
              skills: Path = typer.Option(None, "--skills", help="compile the skills the cases need from this folder first"),
              seam: int = SeamOpt,
              repair: str = RepairOpt,
              baseline: str = typer.Option(None, "--baseline", help="no-rotation or plain (anchorless artifacts, no seam)"),
              edit_mode: str = EditModeOpt,
              as_json: bool = JsonOpt) -> None:
        """Compare spliced contexts with a full recompute: logits, greedy continuations, edits, TTFT."""
        from skillforge.errors import BadInput
        from skillforge.eval import BASELINES, load_cases, run_eval
        from skillforge.runtime import Repair
        from skillforge.runtime.edits import MODES

        if baseline is not None and baseline not in BASELINES:
            raise BadInput(f"invalid --baseline {baseline!r}: use {' or '.join(BASELINES)}")
        if edit_mode not in MODES:
            raise BadInput(f"invalid --edit-mode {edit_mode!r}: use one of {', '.join(MODES)}")
        rep = Repair.parse(seam, repair)
        parsed = load_cases(cases)
        registry, store = open_registry(), open_store()
        lm = load(model, device, dtype)
        if skills is not None:
            from skillforge.build import compile_manifests
            from skillforge.manifest import discover

            wanted = {s for c in parsed for s in c.skills}
            manifests = [m for m in discover(skills) if m.name in wanted or m.ref in wanted]
            compile_manifests(lm, manifests, registry, store, on_done=lambda o: info(
                f"{'compiled' if o.created else 'already compiled'}: {o.name}@{o.version} ({o.tokens} tokens)"))
        doc = run_eval(lm, parsed, repair=rep, baseline=baseline, edit_mode=edit_mode, registry=registry, store=store,
                       progress=info)
        doc["cases_file"] = str(cases)
        emit(doc, as_json, format_eval(doc))


def _g16(row: dict) -> str:
    """`y`, or `n@STEP(MARGIN)`: where the splice's continuation left the full arm's, and how close a call it was."""
    d = row["greedy16_divergence"]
    if d is None:
        return "y"
    return f"n@{d['step']}" + ("" if d["full_margin"] is None else f"({d['full_margin']:.2f})")


def format_eval(doc: dict) -> str:
    """Human rendering: a compact table per kind of case and the aggregate lines."""
    def f(x: Any, nd: int = 4) -> str:
        return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))

    plain = [r for r in doc["per_case"] if "set" not in r]
    edits = [r for r in doc["per_case"] if "set" in r]
    out = []
    if plain:
        rows = [{"id": r["id"], "kind": r.get("kind", "-"), "skills": "+".join(s.split("@")[0] for s in r["skills"]), "tokens": r["prompt_tokens"],
                 "reused": r["reused"], "cos": f"{r['logit_cosine']:.4f}", "kl": f"{r['kl']:.4f}", "top1": "y" if r["top1"] else "n",
                 "g16": _g16(r), "full_ms": f"{r['ttft_full_ms']:.0f}",
                 "splice_ms": f"{r['ttft_splice_ms']:.0f}"} for r in plain]
        out.append(table(rows, list(rows[0])))
        out.append("")
        out.append(f"repair {doc['repair']}  baseline {doc['baseline'] or '-'}  cases {doc['cases']}  "
                   f"raw prompts: {doc.get('raw_prompts', '-')}")
        out.append(f"top1 {f(doc['top1_agreement'], 3)}  greedy16 {f(doc['greedy16_match'], 3)} (diverged at full-arm "
                   f"margins <= {f(doc['greedy16_divergence_margin_max'], 3)} logits)  "
                   f"kl mean {f(doc['kl_mean'])} max {f(doc['kl_max'])}  cosine mean {f(doc['logit_cosine_mean'])} "
                   f"min {f(doc['logit_cosine_min'])}")
        out.append(f"reused {f(doc['reused_fraction'], 3)} of prompt tokens  skill tokens recomputed "
                   f"{f(doc['skill_recompute_fraction'], 3)}  ttft median full {f(doc['ttft_full_ms_median'], 1)} ms "
                   f"splice {f(doc['ttft_splice_ms_median'], 1)} ms")
        kinds = doc.get("by_kind", {})
        if kinds and (len(kinds) > 1 or "-" not in kinds):  # cases tagged with a kind (evals/corpus)
            out.append("")
            out.append(table([{"kind": k, "cases": g["cases"], "top1": f(g["top1_agreement"], 3),
                               "greedy16": f(g["greedy16_match"], 3), "kl_mean": f(g["kl_mean"]), "kl_max": f(g["kl_max"]),
                               "recomputed": f(g["skill_recompute_fraction"], 3)} for k, g in kinds.items()],
                             ["kind", "cases", "top1", "greedy16", "kl_mean", "kl_max", "recomputed"]))
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
        if ed.get("value_cases"):
            out.append(f"value cases {ed['value_cases']}: answers carrying the new value {f(ed['value_mode_new'], 3)} "
                       f"(oracle {f(ed['value_oracle_new'], 3)}, stale {f(ed['value_stale_new'], 3)}), the compiled value "
                       f"{f(ed['value_mode_stale'], 3)} (oracle {f(ed['value_oracle_stale'], 3)}, stale {f(ed['value_stale_stale'], 3)})")
    for s in doc.get("skipped", []):
        out.append(f"skipped {s['id']}: {s['error']}")
    return "\n".join(out)
