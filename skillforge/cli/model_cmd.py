"""`skillforge model pull|fingerprint`."""

from __future__ import annotations

import typer

from skillforge.cli.common import DeviceOpt, DtypeOpt, JsonOpt, emit, info, load

app = typer.Typer(no_args_is_help=True, help="Fetch the demo model; show a model's fingerprint.")


@app.command()
def pull(name: str = typer.Argument("smollm2-135m", help="only the demo alias smollm2-135m can be pulled"),
         as_json: bool = JsonOpt) -> None:
    """Fetch and convert the demo model once; print its local folder."""
    from skillforge.errors import ModelUnavailable
    from skillforge.model import demo

    if name != demo.ALIAS:
        raise ModelUnavailable(f"only the demo model {demo.ALIAS} can be pulled; pass other models as folders, .gguf files or hub ids")
    was_there = demo.is_pulled()
    path = demo.pull(log=info)
    emit({"model": name, "path": str(path), "fetched": not was_there}, as_json, str(path))


@app.command()
def fingerprint(model: str = typer.Argument(..., help="alias, model folder, .gguf file or hub id"),
                device: str = DeviceOpt, dtype: str = DtypeOpt, as_json: bool = JsonOpt) -> None:
    """Print the model's fingerprint and the parts it is computed from."""
    lm = load(model, device, dtype)
    fp = lm.fingerprint
    parts = dict(fp.parts)
    text = "\n".join([f"fingerprint  {fp.digest}", f"weights      sha256:{parts['weights']}",
                      f"tokenizer    sha256:{parts['tokenizer']}", f"dtype        {parts['dtype']}",
                      "config       " + ", ".join(f"{k}={v}" for k, v in parts["config"].items())])
    emit({"model": model, "fingerprint": fp.digest, "parts": parts}, as_json, text)
