"""`skillforge eval CASES.jsonl`: how close splices come to a full recompute (see skillforge/evaluate.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from skillforge.cli.common import DeviceOpt, DtypeOpt, EditModeOpt, JsonOpt, ModelOpt, RepairOpt, SeamOpt, emit, info, load, open_registry, open_store


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
        from skillforge.errors import BadReference
        from skillforge.evaluate import BASELINES, format_eval, load_cases, run_eval
        from skillforge.runtime import Repair
        from skillforge.runtime.edits import MODES

        if baseline is not None and baseline not in BASELINES:
            raise BadReference(f"invalid --baseline {baseline!r}: use {' or '.join(BASELINES)}")
        if edit_mode not in MODES:
            raise BadReference(f"invalid --edit-mode {edit_mode!r}: use one of {', '.join(MODES)}")
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
