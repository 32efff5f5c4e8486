"""Entry point: assembles the command groups and maps skillforge errors to exit codes.

typer runs in standalone mode, as click intends for a console script: it prints usage errors (unknown
option, missing or ill-typed value, `typer.BadParameter`) with the command's usage line and exits 2,
turns `typer.Exit(n)` into exit status n, and `skillforge` alone prints the help and exits 2 (click's
rule: a command was required). typer ships its own copy of click, so catching click's exception
classes here would never match; leaving them to typer keeps this right whichever click it uses. What
reaches this function is a `SkillforgeError` (printed as one line, exit code from the error class) or a
bug, which keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from skillforge.cli import bench_cmd, compile_cmd, eval_cmd, model_cmd, packs_cmd, registry_cmd, serve_cmd, splice_cmd
from skillforge.errors import SkillforgeError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Compile reused prompt segments into KV artifacts once; splice them into any context.")
app.add_typer(model_cmd.app, name="model")
for group in (compile_cmd, registry_cmd, splice_cmd, eval_cmd, bench_cmd, packs_cmd, serve_cmd):
    group.register(app)


def main() -> None:
    """Run the command line; never returns (typer exits with the command's status)."""
    try:
        app(prog_name="skillforge")
    except SkillforgeError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
