"""What every command shares: options, the registry and store of the current home, output.

Results go to stdout (one JSON document with --json, nothing else there); progress and messages go
to stderr, so `skillforge ... --json | jq` always works.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from skillforge import config

ModelOpt = typer.Option("smollm2-135m", "--model", "-m", help="an alias (skillforge model ls), a model folder, a .gguf file or a hub id")
DeviceOpt = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N")
DtypeOpt = typer.Option("auto", "--dtype", help="auto|float32|bfloat16|float16")
JsonOpt = typer.Option(False, "--json", help="print one JSON document on stdout")
EditModeOpt = typer.Option("field+erratum", "--edit-mode", help="auto|field+erratum|erratum|in-place|recompute|contrast")
ErratumOpt = typer.Option(None, "--erratum", help="wording of the override line for edits, with {label}, {value}, {field} and {old} (the compiled value)")
SeamOpt = typer.Option(None, "--seam", min=0, help="recompute the first K tokens of each skill that follows other text (default 16)")
RepairOpt = typer.Option(None, "--repair", help="auto (default: seam + blend sized by what the skills missed, up to 15% of "
                         "their tokens; auto:0.3 raises that ceiling), seam, none, or blend:<ratio> (plain CacheBlend)")


def info(message: str) -> None:
    print(message, file=sys.stderr)


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print a result: JSON when asked, else the human text (or a readable rendering of the data)."""
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    elif text is not None:
        print(text)
    else:
        print(json.dumps(data, indent=2, default=str))


def open_registry():
    from skillforge.registry import Registry

    return Registry(config.db_url())


def open_store(url: str | None = None):
    from skillforge.store import open_store as _open

    return _open(url or config.store_url())


def load(model: str, device: str, dtype: str):
    from skillforge.model import load_model

    info(f"loading model {model} ...")
    return load_model(model, device=device, dtype=dtype)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width table."""
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
