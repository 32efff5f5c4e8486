#!/usr/bin/env python
"""The standard benchmark: eval (cases + edits, default repair and the baselines), the repair curve, and
TTFT by skill length; rewrites the README section between the results markers and docs/bench.png.

    SKILLFORGE_HOME=/tmp/benchhome python scripts/bench.py            # the full run (tens of minutes on a CPU)
    python scripts/bench.py --lengths 256,512 --repeats 1 --no-repair-curve   # a quick check

Everything runs in one process, so full-recompute references are computed once and shared by every
repair setting. Only the text between `<!-- results:start -->` and `<!-- results:end -->` in README.md
is touched (the section is appended if the markers are missing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

START, END = "<!-- results:start -->", "<!-- results:end -->"
# (label, --seam, --repair): seam-only repairs of growing width, then blend (see runtime/repair.py)
CURVE = [("seam 0, no blend", 0, "seam"), ("seam 1, no blend", 1, "seam"), ("seam 4, no blend", 4, "seam"),
         ("seam 16, no blend", 16, "seam"), ("seam 32, no blend", 32, "seam"), ("blend 0.15, no seam", None, "blend:0.15")]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine(lm) -> str:
    import torch
    import transformers

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    where = f"{cpu}, {os.cpu_count()} cores"
    if str(lm.device).startswith("cuda"):
        where = f"{torch.cuda.get_device_name(0)} (host: {where})"
    return (f"{where}; torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
            f"{lm.name} in {lm.dtype} on {lm.device}")


def f(x, nd=3) -> str:
    if x is None:
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def eval_row(name: str, d: dict) -> str:
    return (f"| {name} | {f(d['top1_agreement'])} | {f(d['greedy16_match'])} | {f(d['greedy16_divergence_margin_max'], 2)} | "
            f"{f(d['kl_mean'], 4)} | "
            f"{f(d['logit_cosine_min'], 4)} | {f(d['reused_fraction'])} | {f(d['skill_recompute_fraction'])} | "
            f"{f(d['ttft_full_ms_median'], 0)} | {f(d['ttft_splice_ms_median'], 0)} |")


def render(results: dict, env: str, plot: str | None) -> str:
    ev = results["eval"]
    lines = [START, "",
             f"Measured by `scripts/bench.py` on {env}, {time.strftime('%Y-%m-%d')}. Timings are wall-clock medians; "
             "on a shared CPU they are noisy.", "",
             f"### Splice against full recompute ({ev['default']['cases']} contexts, `{results['cases_file']}`)", "",
             "| setting | top-1 agreement | greedy-16 match | diverged at margin <= | KL mean | cosine min | reused of prompt | skill tokens recomputed | TTFT full ms | TTFT splice ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines.append(eval_row(f"default ({ev['default']['repair']})", ev["default"]))
    for name, d in results.get("curve", {}).items():
        lines.append(eval_row(name, d))
    lines.append(eval_row("baseline: no rotation", ev["no-rotation"]))
    lines.append(eval_row("baseline: plain (no anchor, no seam)", ev["plain"]))
    lines += ["", "Diverged at margin: of the contexts whose 16 greedy tokens differ, the widest gap between the full "
              "recompute's top two logits at the first differing step. Small values mean every divergence was a near-tie "
              "that any approximation can flip; `skillforge eval` prints the step and margin per context."]
    first = next(iter(results["edits"].values()))["edits"]
    lines += ["", f"### Field edits ({first['cases']} decision contexts, `{results['edits_file']}`; the oracle's decision flips "
              f"with the value in {first['oracle_flips']}), each mode against the "
              "`recompute` mode (the oracle)", "",
              "| edit mode | top-1 agreement | first-word agreement | KL mean (stale) | recovery mean / median | computed of the skill | KL vs full prefill | oracle decision flips | gated: first word / recovery / decision recovery | cases run |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, doc in results["edits"].items():
        ed = doc["edits"]
        lines.append(f"| {mode} | {f(ed['top1_agreement'])} | {f(ed['first_word_agreement'])} | {f(ed['kl_mean'], 4)} "
                     f"({f(ed['kl_stale_mean'], 4)}) | {f(ed['recovery_mean'], 2)} / {f(ed['recovery_median'], 2)} | "
                     f"{f(ed['computed_fraction'])} | {f(ed['kl_full_mean'], 4)} | {ed['oracle_flips']}/{ed['cases']} | "
                     f"{f(ed['gated_first_word_agreement'])} / {f(ed['gated_recovery_mean'], 2)} / "
                     f"{f(ed['decision_recovery_mean'], 2)} | {ed['cases']} of {ed['cases'] + ed['skipped']} |")
    lines += ["", "Recovery = 1 - KL(oracle||mode) / KL(oracle||stale), where stale is the splice that ignores the edit. "
              "Gated: the contexts where the oracle's first word differs from the stale splice's (the edit changes the "
              "decision); decision recovery is the same ratio on the two answers' split alone (P(oracle's answer) over "
              "both answers), without the rest of the next-token distribution. "
              "in-place refuses values of another token length, so it runs on fewer cases."]
    b = results["bench"]
    lines += ["", f"### Time to first token by skill length (medians of {b['repeats']})", "",
              "| skill tokens | full prefill ms | splice (store) ms | splice (hot) ms | floor ms | speedup store | speedup hot | bytes/token |",
              "|---|---|---|---|---|---|---|---|"]
    for r in b["rows"]:
        lines.append(f"| {r['tokens']} | {r['full_ms']:.0f} | {r['splice_store_ms']:.0f} | {r['splice_hot_ms']:.0f} | "
                     f"{r['floor_ms']:.0f} | {r['speedup_store']:.1f}x | {r['speedup_hot']:.1f}x | {r['bytes_per_token']:.0f} |")
    lines += ["", f"Compile: {b['compile_tokens_per_s']} tokens/s; a bare forward of the same tokens: "
              f"{b['bare_forward_tokens_per_s']} tokens/s. Floor: {b['floor']}."]
    if plot:
        lines += ["", f"![TTFT by skill length]({plot})"]
    lines += ["", END]
    return "\n".join(lines)


def _shown(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def update_readme(readme: Path, section: str) -> None:
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    if START in text and END in text and text.index(START) < text.index(END):
        a, b = text.index(START), text.index(END) + len(END)
        text = text[:a] + section + text[b:]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + "## Results\n\n" + section + "\n"
    tmp = readme.with_suffix(readme.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, readme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--lengths", default="512,2048,8000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=str(REPO / "evals" / "cases.jsonl"))
    ap.add_argument("--edits", default=str(REPO / "evals" / "edits.jsonl"))
    ap.add_argument("--skills", default=str(REPO / "skills"))
    ap.add_argument("--readme", default=str(REPO / "README.md"))
    ap.add_argument("--plot", default="docs/bench.png", help="relative to the README's folder")
    ap.add_argument("--json-out", default=None, help="also write every result as one JSON file")
    ap.add_argument("--no-repair-curve", action="store_true", help="skip the seam/blend sweep")
    args = ap.parse_args()

    from skillforge.build import compile_manifests
    from skillforge.cli.common import open_registry, open_store
    from skillforge.eval import EvalMemo, load_cases, plot_bench, run_bench, run_eval
    from skillforge.manifest import discover
    from skillforge.model import load_model
    from skillforge.runtime import Repair
    from skillforge.runtime.edits import MODES

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    env = machine(lm)
    log(f"machine: {env}")
    registry, store = open_registry(), open_store()
    cases, edits = load_cases(args.cases), load_cases(args.edits)
    wanted = {s for c in cases + edits for s in c.skills}
    manifests = [m for m in discover(Path(args.skills)) if m.name in wanted or m.ref in wanted]
    compile_manifests(lm, manifests, registry, store, on_done=lambda o: log(f"skill {o.name}@{o.version}: {o.tokens} tokens"))

    memo = EvalMemo()  # full-recompute references, computed once and shared by every repair setting

    def ev(label: str, **kw) -> dict:
        t = time.time()
        d = run_eval(lm, cases, registry=registry, store=store, memo=memo, **kw)
        log(f"eval {label}: top1 {d['top1_agreement']:.3f} greedy16 {d['greedy16_match']:.3f} kl {d['kl_mean']:.4f} "
            f"({time.time() - t:.0f} s)")
        return d

    edit_modes = ["field+erratum", *(m for m in MODES if m != "field+erratum")]
    results: dict = {"machine": env, "eval": {}, "curve": {}, "cases_file": _shown(args.cases), "edits_file": _shown(args.edits)}
    results["eval"]["default"] = ev("default")
    for baseline in ("no-rotation", "plain"):
        results["eval"][baseline] = ev(baseline, baseline=baseline)
    if not args.no_repair_curve:
        for name, seam, rep in CURVE:
            results["curve"][name] = ev(name, repair=Repair.parse(seam, rep))
    results["edits"] = {}
    for mode in edit_modes:  # the default first
        results["edits"][mode] = run_eval(lm, edits, registry=registry, store=store, edit_mode=mode, memo=memo)
        log(f"edits {mode}: {json.dumps(results['edits'][mode]['edits'])}")
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    results["bench"] = run_bench(lm, lengths, repeats=args.repeats, progress=log)

    if args.json_out:  # first, so a run's figures survive a failure below
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    readme = Path(args.readme)
    plot_path = readme.parent / args.plot
    plot_bench(results["bench"], plot_path)
    update_readme(readme, render(results, env, args.plot))
    log(f"wrote {plot_path} and the results section of {readme}")


if __name__ == "__main__":
    main()
