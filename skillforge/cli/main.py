"""Entry point: assembles the command groups and maps skillforge errors to exit codes."""

from __future__ import annotations

import sys

import typer

from skillforge.cli import bench_cmd, compile_cmd, eval_cmd, model_cmd, packs_cmd, registry_cmd, splice_cmd
from skillforge.errors import SkillforgeError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Compile reused prompt segments into KV artifacts once; splice them into any context.")
app.add_typer(model_cmd.app, name="model")
for group in (compile_cmd, registry_cmd, splice_cmd, eval_cmd, bench_cmd, packs_cmd):
    group.register(app)


def main() -> None:
    try:
        app(standalone_mode=False)
    except SkillforgeError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
