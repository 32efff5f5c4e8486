"""`skillforge bench`: time to first token of a full prefill against splices, by skill length (see
skillforge/eval/bench.py), and the text rendering of its result."""

from __future__ import annotations

from pathlib import Path

import typer

from skillforge.cli.common import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, emit, info, load, table


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
              lengths: str = typer.Option("512,2048,8000", "--lengths", help="comma-separated skill lengths in tokens"),
              repeats: int = typer.Option(3, "--repeats", help="repeats per arm (medians); full prefills of 4096+ tokens use at most 2"),
              plot: Path = typer.Option(None, "--plot", help="write a PNG of TTFT against length (needs matplotlib)"),
              as_json: bool = JsonOpt) -> None:
        """Benchmark TTFT: full prefill, splice from the store, splice from the hot cache, compute floor."""
        from skillforge.errors import BadInput
        from skillforge.eval import plot_bench, run_bench

        try:
            ns = [int(x) for x in lengths.split(",") if x.strip()]
        except ValueError:
            ns = []
        if not ns or any(n < 8 for n in ns):
            raise BadInput(f"invalid --lengths {lengths!r}: give token counts of 8 or more, e.g. 512,2048,8000")
        if repeats < 1:
            raise BadInput("--repeats must be at least 1")
        lm = load(model, device, dtype)
        doc = run_bench(lm, ns, repeats=repeats, progress=info)
        if plot is not None:
            info(f"wrote {plot_bench(doc, plot)}")
        emit(doc, as_json, format_bench(doc))


def format_bench(doc: dict) -> str:
    """Human rendering: the timing table and the compile and bare-forward throughput."""
    cols = ["tokens", "full_ms", "splice_store_ms", "splice_hot_ms", "floor_ms", "speedup_store", "speedup_hot", "bytes_per_token"]
    lines = [f"model {doc['model']} on {doc['device']} ({doc.get('dtype', '')}), medians of {doc['repeats']} repeats",
             table(doc["rows"], cols), "",
             f"compile {doc['compile_tokens_per_s']} tokens/s; bare forward of the same tokens {doc['bare_forward_tokens_per_s']} tokens/s"]
    return "\n".join(lines)
