"""`skillforge ls|show|verify|gc|reindex`: what the index and the blob store hold."""

from __future__ import annotations

import typer

from skillforge.cli.common import DeviceOpt, DtypeOpt, JsonOpt, emit, info, load, open_registry, open_store, table


def register(app: typer.Typer) -> None:
    @app.command("ls")
    def ls(model: str = typer.Option(None, "--model", "-m", help="only artifacts for this model's fingerprint"),
           name: str = typer.Option(None, "--name", help="only this skill"),
           device: str = DeviceOpt, dtype: str = DtypeOpt, as_json: bool = JsonOpt) -> None:
        """List compiled artifacts: name, version, tokens, bytes, digest, fingerprint, created."""
        fingerprint = load(model, device, dtype).fingerprint.digest if model else None
        rows = [r.to_dict() for r in open_registry().list_artifacts(fingerprint=fingerprint, name=name)]
        shown = [{**r, "digest": r["digest"][:19]} for r in rows]
        emit(rows, as_json, table(shown, ["name", "version", "tokens", "bytes", "digest", "fingerprint", "created"]))

    @app.command()
    def show(ref: str = typer.Argument(..., help="name, name@version or name@sha256:..."),
             model: str = typer.Option(None, "--model", "-m", help="pick the artifact for this model"),
             device: str = DeviceOpt, dtype: str = DtypeOpt, as_json: bool = JsonOpt) -> None:
        """Show one artifact with its metadata (fields, anchor, fingerprint parts)."""
        from skillforge.errors import NotFound
        from skillforge.refs import SkillRef

        r = SkillRef.parse(ref)
        registry = open_registry()
        if r.digest:
            row = registry.get_artifact(r.digest)
        elif model:
            row = registry.find_artifact(r.name, load(model, device, dtype).fingerprint.digest, version=r.version)
        else:
            rows = [x for x in registry.list_artifacts(name=r.name) if r.version in (None, x.version)]
            if not rows:
                raise NotFound(f"no artifact for {ref}; run skillforge compile")
            if len({x.fingerprint for x in rows}) > 1:
                info(f"{ref} is compiled for {len({x.fingerprint for x in rows})} models; showing the newest (pass --model to choose)")
            row = rows[-1]
        meta = row.meta
        doc = {**row.to_dict(), "skill_text_digest": meta.text_digest, "anchor_ids": meta.anchor_ids, "offset": meta.offset,
               "fields": [f.__dict__ for f in meta.fields], "field_values": meta.field_values, "dtype": meta.dtype,
               "rope": meta.rope, "fingerprint_parts": meta.fingerprint_parts, "format": meta.format}
        text = "\n".join(f"{k:18} {v}" for k, v in doc.items() if k != "fingerprint_parts")
        emit(doc, as_json, text)

    @app.command()
    def verify(as_json: bool = JsonOpt) -> None:
        """Re-hash every blob; report corrupt and missing ones (exit 1 if any)."""
        from skillforge.registry import verify_all

        report = verify_all(open_registry(), open_store())
        bad = len(report["corrupt"]) + len(report["missing"])
        text = f"checked {report['checked']} blobs: {len(report['corrupt'])} corrupt, {len(report['missing'])} missing"
        for kind in ("corrupt", "missing"):
            text += "".join(f"\n  {kind}: {d}" for d in report[kind])
        if bad:
            text += "\nrecompile or pull the affected skills, then run skillforge gc"
        emit(report, as_json, text)
        if bad:
            raise typer.Exit(1)

    @app.command()
    def gc(grace: float = typer.Option(None, "--grace", min=0,
                                       help="seconds: keep unreferenced blobs and staging files younger than this "
                                            "(default: 600 for blobs, 3600 for staging files)"),
           as_json: bool = JsonOpt) -> None:
        """Remove blobs nothing in the index refers to, and what killed commands left staged; say how much."""
        from skillforge.registry import gc as collect

        grace_kw = {} if grace is None else {"grace_s": grace, "staging_grace_s": grace}
        report = collect(open_registry(), open_store(), **grace_kw)
        emit(report, as_json, f"removed {report['removed']} blobs, freed {report['freed_bytes'] / 1e6:.1f} MB; "
                              f"removed {report['staging_removed']} stale staging files, freed "
                              f"{report['staging_freed_bytes'] / 1e6:.1f} MB")

    @app.command()
    def reindex(as_json: bool = JsonOpt) -> None:
        """Rebuild the index from the blobs in the store; blobs that fail validation are reported and skipped."""
        from skillforge.registry import reindex as rebuild

        report = rebuild(open_registry(), open_store())
        for problem in report["problems"]:
            info(f"warning: skipped blob {problem['digest']}: {problem['error']}")
        emit(report, as_json, ", ".join(f"{k} {v}" for k, v in report.items() if k != "problems"))
