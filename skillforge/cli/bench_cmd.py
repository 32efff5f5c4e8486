"""`skillforge bench`: time to first token of a full prefill against splices and edits, by skill length
(see skillforge/eval/bench.py), and the text rendering of its result."""

from __future__ import annotations

from pathlib import Path

import typer

from skillforge.cli.common import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, emit, info, load, table


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
              lengths: str = typer.Option("512,2048,8000", "--lengths", help="comma-separated skill lengths in tokens"),
              rounds: int = typer.Option(3, "--rounds", "--repeats",
                                         help="rounds; each runs every arm once, in a rotating order, and ratios are taken within a round"),
              plot: Path = typer.Option(None, "--plot", help="write a PNG of TTFT against length (needs matplotlib)"),
              as_json: bool = JsonOpt) -> None:
        """Benchmark TTFT: full prefill, splice from the store and the hot cache, compute floor, field edits."""
        from skillforge.errors import BadInput
        from skillforge.eval import plot_bench, run_bench

        try:
            ns = [int(x) for x in lengths.split(",") if x.strip()]
        except ValueError:
            ns = []
        if not ns or any(n < 16 for n in ns):
            raise BadInput(f"invalid --lengths {lengths!r}: give token counts of 16 or more, e.g. 512,2048,8000")
        if rounds < 1:
            raise BadInput("--rounds must be at least 1")
        lm = load(model, device, dtype)
        doc = run_bench(lm, ns, rounds=rounds, progress=info)
        if plot is not None:
            info(f"wrote {plot_bench(doc, plot)}")
        emit(doc, as_json, format_bench(doc))


def ratio(r: dict, name: str) -> str:
    """A per-round ratio as `median (min-max)`, or '-' where the arms did not run."""
    d = r["ratios"].get(name)
    return "-" if d is None else f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})"


def format_bench(doc: dict) -> str:
    """Human rendering: median times per arm, the per-round ratios, compile against a bare forward."""
    cols = ["tokens", "full_ms", "splice_cold_ms", "splice_store_ms", "splice_hot_ms", "floor_ms", "edit_full_ms", "edit_inplace_ms",
            "edit_erratum_ms"]
    times = [{c: r.get(c, "-") for c in cols} for r in doc["rows"]]
    ratios = [{"tokens": r["tokens"], **{n: ratio(r, n) for n in ("speedup_cold", "speedup_store", "speedup_hot", "cold_over_floor", "store_over_floor",
                                                                  "hot_over_floor", "edit_speedup_inplace", "edit_speedup_erratum")}}
              for r in doc["rows"]]
    c, one, est = doc["compile_over_bare"], doc["compile_over_one_forward"], doc["compile_estimate_over_one_forward"]
    lines = [f"model {doc['model']} on {doc['device']} ({doc.get('dtype', '')}), {doc['rounds']} interleaved rounds; "
             f"load average {doc['load']['start']} -> {doc['load']['end']} on {doc['cpu_count']} cores"
             + ("; raw prompts (the model has no chat template)" if doc.get("raw_prompts") else ""),
             "median ms per arm:", table(times, cols), "",
             "per-round ratios, median (min-max):", table(ratios, list(ratios[0])), "",
             f"compile {doc['compile_tokens_per_s']} tokens/s; bare forward of the same tokens {doc['bare_forward_tokens_per_s']} "
             f"tokens/s; compile / its two bare forwards (behind the anchor and the sensitivity lead) {c['median']:.3f} "
             f"({c['min']:.3f}-{c['max']:.3f}); compile / one forward {one['median']:.3f} ({one['min']:.3f}-{one['max']:.3f}); "
             f"--sensitivity estimate / one forward {est['median']:.3f} ({est['min']:.3f}-{est['max']:.3f})"]
    return "\n".join(lines)
