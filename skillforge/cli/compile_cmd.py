"""`skillforge compile PATH --model M`."""

from __future__ import annotations

from pathlib import Path

import typer

from skillforge.cli.common import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, emit, info, load, open_registry, open_store, table


def register(app: typer.Typer) -> None:
    @app.command("compile")
    def compile_(path: Path = typer.Argument(..., help="a skill folder, its skill.toml, or a folder of skill folders"),
                 model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
                 anchor: str = typer.Option("template", help="template (the chat template's system prefix) or none (what a raw prompt starts with)"),
                 system: str = typer.Option("", "--system", help="a deployment's fixed system text: compile behind it, so "
                                            "splices after exactly this system text need no repair"),
                 sensitivity: str = typer.Option("measured", "--sensitivity", help="measured (a second prefill: compile ~2x one "
                                                 "forward) or estimate (from the one forward: ~1.06x, repairs a little worse)"),
                 as_json: bool = JsonOpt) -> None:
        """Prefill each skill into a KV artifact for MODEL; skills already compiled are skipped."""
        from tqdm import tqdm

        from skillforge.build import compile_manifests
        from skillforge.compile import check_sensitivity_kind
        from skillforge.manifest import discover
        from skillforge.prompt import check_anchor

        check_anchor(anchor)  # before the model loads
        check_sensitivity_kind(sensitivity)
        manifests = discover(path)
        if not manifests:
            info(f"no skills found under {path}")
        registry, store = open_registry(), open_store()
        lm = load(model, device, dtype)
        with tqdm(total=len(manifests), desc="compiling", unit="skill", disable=len(manifests) < 2) as bar:
            def done(o):
                bar.update(1)
                info(f"{'compiled' if o.created else 'already compiled'}: {o.name}@{o.version} ({o.tokens} tokens, {o.digest[:19]})")
            outcomes = compile_manifests(lm, manifests, registry, store, anchor=anchor, on_done=done, system=system,
                                          sensitivity=sensitivity)
        rows = [o.to_dict() for o in outcomes]
        emit({"model": model, "fingerprint": lm.fingerprint.digest, "artifacts": rows}, as_json,
             table(rows, ["name", "version", "tokens", "bytes", "created", "digest"]))
