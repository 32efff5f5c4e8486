#!/usr/bin/env python
"""The standard benchmark: eval (cases + edits, default repair and the baselines), the repair curve, and
TTFT by skill length (splices, the floor and edits against full prefills, per model, in interleaved
rounds); rewrites the README's results section and docs/bench.png.

    SKILLFORGE_HOME=/tmp/benchhome python scripts/bench.py            # the full run (an hour or more on a CPU)
    python scripts/bench.py --only bench                               # TTFT tables only (their own markers)
    python scripts/bench.py --only models                              # the splice table on --eval-models
    python scripts/bench.py --only bench --lengths 256,512 --rounds 1 --bench-models smollm2-135m   # a quick check

Everything runs in one process, so full-recompute references are computed once and shared by every
repair setting. Only the text between `<!-- results:start -->` and `<!-- results:end -->` in README.md
is touched (the section is appended if the markers are missing); `--only bench` touches only the text
between `<!-- bench:start -->` and `<!-- bench:end -->` inside it, `--only models` only the per-model
splice tables between `<!-- models:start -->` and `<!-- models:end -->`, and `--only eval` keeps both.
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
BENCH_START, BENCH_END = "<!-- bench:start -->", "<!-- bench:end -->"
MODELS_START, MODELS_END = "<!-- models:start -->", "<!-- models:end -->"
LEGACY_BENCH_HEADING = "### Time to first token by skill length"
# (label, --seam, --repair): seam-only repairs of growing width, then blend (see runtime/repair.py)
CURVE = [("seam 0, no blend", 0, "seam"), ("seam 1, no blend", 1, "seam"), ("seam 4, no blend", 4, "seam"),
         ("seam 16, no blend", 16, "seam"), ("seam 32, no blend", 32, "seam"), ("blend 0.15, no seam", None, "blend:0.15")]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def host() -> str:
    """The CPU, its cores, and the torch and transformers versions."""
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
    if torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name(0)} (host: {where})"
    return f"{where}; torch {torch.__version__}, transformers {transformers.__version__}"


def machine(lm) -> str:
    import torch

    return f"{host()} ({torch.get_num_threads()} threads), {lm.name} in {lm.dtype} on {lm.device}"


def f(x, nd=3) -> str:
    if x is None:
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def eval_row(name: str, d: dict) -> str:
    return (f"| {name} | {f(d['top1_agreement'])} | {f(d['greedy16_match'])} | {f(d['greedy16_divergence_margin_max'], 2)} | "
            f"{f(d['kl_mean'], 4)} | "
            f"{f(d['logit_cosine_min'], 4)} | {f(d['reused_fraction'])} | {f(d['skill_recompute_fraction'])} | "
            f"{f(d['ttft_full_ms_median'], 0)} | {f(d['ttft_splice_ms_median'], 0)} |")


def render_eval(results: dict, env: str) -> list[str]:
    """The eval tables (splice fidelity, field edits) as README lines."""
    ev = results["eval"]
    lines = [f"Measured by `scripts/bench.py` on {env}, {time.strftime('%Y-%m-%d')}.", "",
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
              "in-place refuses values of another token length, so it runs on fewer cases.", ""]
    return lines


def ratio(r: dict, name: str) -> str:
    """A per-round ratio as `median (min-max)`, or '-' where its arms did not run."""
    d = r["ratios"].get(name)
    return "-" if d is None else f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})"


def ms(r: dict, key: str) -> str:
    return f"{r[key]:,.0f}" if r.get(key) is not None else "-"


def render_bench(benches: list[dict], env: str, plot: str | None, runs: str = "in one run", note: str = "") -> list[str]:
    """The TTFT tables, one pair per model, between the bench markers; `runs` says how they were run."""
    rounds = benches[0]["rounds"]
    lines = [BENCH_START, "", f"### Time to first token by skill length ({rounds} interleaved rounds per length)", "",
             f"Measured by `scripts/bench.py --only bench` on {env}, {time.strftime('%Y-%m-%d')}, {runs}. Every round "
             "runs each arm once, in a rotating order; a ratio is taken within a round (its arms ran seconds apart), "
             "and the tables give the median over rounds with the lowest and highest in brackets. Times are medians, "
             "in ms. Floor: the splice's forward passes alone over an already assembled cache: the repair's attention "
             "pass where it ran one, and the pass over every computed token (template pieces, system and user text, "
             "seams and repaired tokens, last token). Splices release their cache to the pool "
             "after each request, as the server does, so a repeated layout (store, hot) finds its skill's KV already in "
             "place; a new layout reads the artifact from the store and rotates and copies every reused key into "
             "pooled memory that last held something else (the first request for a set of skills).", ""]
    for b in benches:
        loads = [x for r in b["rows"] for rd in r["rounds"] for x in (rd["load_before"], rd["load_after"])]
        raw = "raw prompts (no chat template); " if b.get("raw_prompts") else ""
        lines += [f"#### {b['model']} ({raw}{b['dtype']} on {b['device']}; load average {min(loads):.1f}-{max(loads):.1f} on "
                  f"{b['cpu_count']} cores, {b['threads']} torch threads; {b['wall_s'] / 60:.0f} min)", "",
                  "| skill tokens | full prefill | splice (new layout) | splice (store) | splice (hot) | floor | speedup new layout | speedup store | speedup hot | new layout / floor | store / floor | hot / floor |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in b["rows"]:
            lines.append(f"| {r['tokens']} | {ms(r, 'full_ms')} | {ms(r, 'splice_cold_ms')} | {ms(r, 'splice_store_ms')} | "
                         f"{ms(r, 'splice_hot_ms')} | {ms(r, 'floor_ms')} | {ratio(r, 'speedup_cold')} | {ratio(r, 'speedup_store')} | "
                         f"{ratio(r, 'speedup_hot')} | {ratio(r, 'cold_over_floor')} | {ratio(r, 'store_over_floor')} | "
                         f"{ratio(r, 'hot_over_floor')} |")
        lines += ["", "| skill tokens | edited: full re-prefill | in-place | field+erratum | speedup in-place | speedup field+erratum | tokens computed (in-place / field+erratum) |",
                  "|---|---|---|---|---|---|---|"]
        for r in b["rows"]:
            lines.append(f"| {r['tokens']} | {ms(r, 'edit_full_ms')} | {ms(r, 'edit_inplace_ms')} | {ms(r, 'edit_erratum_ms')} | "
                         f"{ratio(r, 'edit_speedup_inplace')} | {ratio(r, 'edit_speedup_erratum')} | "
                         f"{r['edit_computed_inplace']} / {r['edit_computed_erratum']} |")
        c, one, est = b["compile_over_bare"], b.get("compile_over_one_forward"), b.get("compile_estimate_over_one_forward")
        lines += ["", f"Compile of {b['compile_tokens']} tokens: {b['compile_tokens_per_s']} tokens/s; a bare forward of the "
                  f"same tokens: {b['bare_forward_tokens_per_s']} tokens/s ("
                  + (f"compile / its two bare forwards, behind the anchor and the sensitivity lead, {c['median']:.3f}, "
                     f"{c['min']:.3f}-{c['max']:.3f}; compile / one forward {one['median']:.3f}, {one['min']:.3f}-{one['max']:.3f}"
                     + (f"; `--sensitivity estimate` / one forward {est['median']:.3f}, {est['min']:.3f}-{est['max']:.3f}" if est else "")
                     + ")." if one else f"compile / bare {c['median']:.3f}, {c['min']:.3f}-{c['max']:.3f}; measured before compile "
                     "recorded sensitivity, a second prefill)."), ""]
    lines += ["The edit rows change the skill's first line (`Customer tier: A` to `B`): a full re-prefill of the edited "
              "prompt (as many tokens as the original, so the round's full prefill times it) against splicing the compiled skill with the field recomputed in place, or in place plus the "
              "appended erratum (the default edit mode)."]
    if note:
        lines += ["", note]
    if plot:
        lines += ["", f"![TTFT by skill length]({plot})"]
    return [*lines, "", BENCH_END]


def _shown(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def between(text: str, start: str, end: str) -> tuple[int, int] | None:
    """Where the block from `start` to `end` (markers included) sits in `text`, if it is there."""
    if start in text and end in text and text.index(start) < text.index(end):
        return text.index(start), text.index(end) + len(end)
    return None


def _block(old: str, start: str, end: str, lines: list[str] | None) -> str:
    """A marked block's new text: `lines` if given, else what `old` has between the markers ('' if nothing)."""
    if lines:
        return "\n".join(lines)
    found = between(old, start, end)
    return old[found[0] : found[1]] if found else ""


def update_readme(readme: Path, eval_lines: list[str] | None, bench_lines: list[str] | None,
                  models_lines: list[str] | None = None) -> None:
    """Rewrite the results section: the eval part if given, the per-model block and the bench block if
    given, the rest kept."""
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    section = between(text, START, END)
    old = text[section[0] : section[1]] if section else f"{START}\n\n{END}"
    models = _block(old, MODELS_START, MODELS_END, models_lines)
    bench = _block(old, BENCH_START, BENCH_END, bench_lines)
    if eval_lines is not None:
        new = "\n".join([START, "", *eval_lines, *([models, ""] if models else []), bench, "", END])
    else:
        new = old
        if between(new, BENCH_START, BENCH_END):
            found = between(new, BENCH_START, BENCH_END)
            new = new[: found[0]] + bench + new[found[1] :]
        else:  # a section written before the bench had markers: its TTFT part runs to the end
            cut = new.find(LEGACY_BENCH_HEADING)
            new = new[: cut if cut >= 0 else new.index(END)] + bench + "\n\n" + END
        if models_lines:
            found = between(new, MODELS_START, MODELS_END)
            if found:
                new = new[: found[0]] + models + new[found[1] :]
            else:  # first time: before the bench block
                at = new.index(BENCH_START) if BENCH_START in new else new.index(END)
                new = new[:at] + models + "\n\n" + new[at:]
    if section:
        text = text[: section[0]] + new + text[section[1] :]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + "## Results\n\n" + new + "\n"
    tmp = readme.with_suffix(readme.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, readme)


def open_with_skills(args: argparse.Namespace, lm, cases: list) -> tuple:
    """The registry and store, with every skill the cases name compiled for `lm` (idempotent)."""
    from skillforge.build import compile_manifests
    from skillforge.cli.common import open_registry, open_store
    from skillforge.manifest import discover

    registry, store = open_registry(), open_store()
    wanted = {s for c in cases for s in c.skills}
    manifests = [m for m in discover(Path(args.skills)) if m.name in wanted or m.ref in wanted]
    compile_manifests(lm, manifests, registry, store, on_done=lambda o: log(f"skill {o.name}@{o.version}: {o.tokens} tokens"))
    return registry, store


def timed_eval(label: str, lm, cases: list, **kw) -> dict:
    """run_eval, with its headline figures and wall time logged under `label`."""
    from skillforge.eval import run_eval

    t = time.time()
    d = run_eval(lm, cases, **kw)
    log(f"eval {label}: top1 {d['top1_agreement']:.3f} greedy16 {d['greedy16_match']:.3f} kl {d['kl_mean']:.4f} "
        f"({time.time() - t:.0f} s)")
    return d


def run_evals(args: argparse.Namespace, lm) -> dict:
    """Every eval table: the default, the baselines, the repair curve, and each edit mode."""
    from skillforge.eval import EvalMemo, load_cases, run_eval
    from skillforge.runtime import Repair
    from skillforge.runtime.edits import MODES

    cases, edits = load_cases(args.cases), load_cases(args.edits)
    registry, store = open_with_skills(args, lm, cases + edits)
    memo = EvalMemo()  # full-recompute references, computed once and shared by every repair setting

    def ev(label: str, **kw) -> dict:
        return timed_eval(label, lm, cases, registry=registry, store=store, memo=memo, **kw)

    edit_modes = ["field+erratum", *(m for m in MODES if m != "field+erratum")]
    results: dict = {"eval": {}, "curve": {}, "cases_file": _shown(args.cases), "edits_file": _shown(args.edits)}
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
    return results


def run_model_evals(args: argparse.Namespace, name: str) -> dict:
    """The splice table's default and baselines on one more model (no repair curve, no edits)."""
    from skillforge.eval import EvalMemo, load_cases
    from skillforge.model import load_model

    lm = load_model(name, device=args.device, dtype=args.dtype)
    cases = load_cases(args.cases)
    registry, store = open_with_skills(args, lm, cases)
    memo = EvalMemo()
    doc: dict = {"model": name, "machine": machine(lm), "cases_file": _shown(args.cases)}
    for label, baseline in (("default", None), ("no-rotation", "no-rotation"), ("plain", "plain")):
        doc[label] = timed_eval(f"{name} {label}", lm, cases, baseline=baseline, registry=registry, store=store, memo=memo)
    return doc


def render_models(docs: list[dict]) -> list[str]:
    """One splice table per extra model, between the models markers."""
    lines = [MODELS_START, ""]
    for doc in docs:
        d = doc["default"]
        raw = " Its tokenizer has no chat template: every case ran as a raw prompt." if d["raw_prompts"].startswith("all") else ""
        lines += [f"### Splice against full recompute on {doc['model']} ({d['cases']} contexts, `{doc['cases_file']}`)", "",
                  f"Measured by `scripts/bench.py --only models` on {doc['machine']}, {time.strftime('%Y-%m-%d')}.{raw}", "",
                  "| setting | top-1 agreement | greedy-16 match | diverged at margin <= | KL mean | cosine min | reused of prompt | skill tokens recomputed | TTFT full ms | TTFT splice ms |",
                  "|---|---|---|---|---|---|---|---|---|---|",
                  eval_row(f"default ({d['repair']})", d), eval_row("baseline: no rotation", doc["no-rotation"]),
                  eval_row("baseline: plain (no anchor, no seam)", doc["plain"]), ""]
    return [*lines, MODELS_END]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="the model the eval tables measure")
    ap.add_argument("--bench-models", default="smollm2-135m,qwen2.5-coder-0.5b", help="the models the TTFT tables measure, in order")
    ap.add_argument("--eval-models", default="gemma-3-270m,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b",
                    help="more models the splice table (default repair and baselines) is measured on, one table each")
    ap.add_argument("--only", choices=("all", "eval", "models", "bench"), default="all")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--lengths", default="512,2048,8000")
    ap.add_argument("--rounds", "--repeats", type=int, default=3, help="interleaved rounds per length")
    ap.add_argument("--compile-tokens", type=int, default=None, help="skill length compile is timed at (default: min(longest, 2048))")
    ap.add_argument("--from-json", nargs="+", default=None,
                    help="write the TTFT tables from the bench results of earlier --json-out files instead of measuring")
    ap.add_argument("--note", default="", help="a paragraph added under the TTFT tables (what this run left out, and why)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); on a CPU shared with other jobs, 1 avoids threads waiting on each other")
    ap.add_argument("--cases", default=str(REPO / "evals" / "cases.jsonl"))
    ap.add_argument("--edits", default=str(REPO / "evals" / "edits.jsonl"))
    ap.add_argument("--skills", default=str(REPO / "skills"))
    ap.add_argument("--readme", default=str(REPO / "README.md"))
    ap.add_argument("--plot", default="docs/bench.png", help="relative to the README's folder")
    ap.add_argument("--json-out", default=None, help="also write every result as one JSON file")
    ap.add_argument("--no-repair-curve", action="store_true", help="skip the seam/blend sweep")
    args = ap.parse_args()

    from skillforge.eval import plot_bench, run_bench
    from skillforge.model import load_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.time()
    results: dict = {}
    eval_lines = bench_lines = None
    if args.only in ("all", "eval"):
        lm = load_model(args.model, device=args.device, dtype=args.dtype)
        env = machine(lm)
        log(f"machine: {env}")
        results.update(run_evals(args, lm), machine=env)
        eval_lines = render_eval(results, env)
    models_lines = None
    if args.only in ("all", "models"):
        results["models"] = []
        for name in [m.strip() for m in args.eval_models.split(",") if m.strip()]:
            results["models"].append(run_model_evals(args, name))
            if args.json_out:  # after every model, so a long run's figures survive an interruption
                Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
        models_lines = render_models(results["models"])
    if args.from_json:
        saved = [json.loads(Path(p).read_text()) for p in args.from_json]
        results["bench"] = [b for doc in saved for b in doc["bench"]]
        runs = "in one run" if len(saved) == 1 else f"in {len(saved)} runs (see the note below the tables)"
        bench_lines = render_bench(results["bench"], host(), args.plot, runs, args.note)
    elif args.only in ("all", "bench"):
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
        results["bench"] = []
        for name in [m for m in args.bench_models.split(",") if m.strip()]:
            lm = load_model(name.strip(), device=args.device, dtype=args.dtype)
            env = host()  # the model and threads are named per table
            log(f"bench {name} on {env}")
            results["bench"].append(run_bench(lm, lengths, rounds=args.rounds, progress=log, compile_tokens=args.compile_tokens))
            del lm
            if args.json_out:  # after every model, so a long run's figures survive an interruption
                Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
        bench_lines = render_bench(results["bench"], env, args.plot, note=args.note)
    results["wall_s"] = round(time.time() - t0, 1)

    if args.json_out:  # first, so a run's figures survive a failure below
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    readme = Path(args.readme)
    if bench_lines:
        plot_bench(results["bench"], readme.parent / args.plot)
    update_readme(readme, eval_lines, bench_lines, models_lines)
    log(f"wrote the results section of {readme} in {results['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
