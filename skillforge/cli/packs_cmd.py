"""`skillforge publish|pull|packs ls`: share compiled skills through S3-compatible buckets.

Endpoint and credentials come from boto3's usual sources (AWS_* variables, ~/.aws files);
`--endpoint-url` (or AWS_ENDPOINT_URL) points at MinIO, R2 or Ceph.
"""

from __future__ import annotations

import typer

from skillforge.cli.common import DeviceOpt, DtypeOpt, JsonOpt, emit, info, load, open_registry, open_store, table

OnlyModelOpt = typer.Option(None, "--model", "-m", help="only artifacts for this model")
OnlyFingerprintOpt = typer.Option(None, "--fingerprint", help="only artifacts for this model fingerprint")
EndpointOpt = typer.Option(None, "--endpoint-url", help="S3 endpoint (MinIO, R2, Ceph); default: AWS_ENDPOINT_URL or AWS")


def _fingerprint(model: str | None, fingerprint: str | None, device: str, dtype: str) -> str | None:
    if model and fingerprint:
        raise typer.BadParameter("give --model or --fingerprint, not both")
    if model:
        return load(model, device, dtype).fingerprint.digest
    return fingerprint


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def register(app: typer.Typer) -> None:
    packs = typer.Typer(no_args_is_help=True, help="Packs of compiled skills in buckets.")
    app.add_typer(packs, name="packs")

    @app.command()
    def publish(skills: list[str] = typer.Argument(..., help="skills: name, name@version or name@sha256:..."),
                pack: str = typer.Option(..., "--pack", help="the pack's name@version, e.g. support@1.0.0"),
                to: str = typer.Option(..., "--to", help="bucket root, s3://bucket/prefix"),
                model: str = OnlyModelOpt,
                fingerprint: str = OnlyFingerprintOpt,
                encoding: str = typer.Option("zstd-planes", "--encoding",
                                             help="how blobs travel: zstd-planes (smaller) or none (for links "
                                                  "faster than decoding)"),
                endpoint_url: str = EndpointOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
                as_json: bool = JsonOpt) -> None:
        """Publish compiled skills as an immutable pack version: missing blobs, then index, then the tag."""
        from skillforge.errors import BadInput
        from skillforge.packs import ENCODINGS
        from skillforge.packs import publish as do_publish

        if encoding not in ENCODINGS:
            raise BadInput(f"unknown --encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
        fp = _fingerprint(model, fingerprint, device, dtype)
        with open_registry() as registry:
            result = do_publish(skills, pack, to, registry=registry, store=open_store(), fingerprint=fp,
                                endpoint_url=endpoint_url, progress=True, encoding=encoding)
        rate = result.uploaded_bytes / 1e6 / result.seconds if result.seconds > 0 else 0.0
        if result.created:
            text = (f"published {result.ref}: {len(result.skills)} skills, {result.artifacts} artifacts "
                    f"({_mb(result.bytes)}); uploaded {result.uploaded} blobs, {_mb(result.uploaded_bytes)} "
                    f"as {_mb(result.sent_bytes)} in {result.seconds:.1f}s ({rate:.1f} MB/s)\nindex {result.index_digest}")
        else:
            text = f"{result.ref} is already published with this content (index {result.index_digest}); nothing to do"
            if result.uploaded:
                text += f" (re-uploaded {result.uploaded} missing blobs)"
        emit(result.to_dict(), as_json, text)

    @app.command()
    def pull(ref: str = typer.Argument(..., help="s3://bucket/prefix/name@version"),
             model: str = OnlyModelOpt,
             fingerprint: str = OnlyFingerprintOpt,
             endpoint_url: str = EndpointOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
             as_json: bool = JsonOpt) -> None:
        """Pull a pack: verify every blob, store it, index it. Resumes; skips what is already here."""
        from skillforge.packs import pull as do_pull

        fp = _fingerprint(model, fingerprint, device, dtype)
        with open_registry() as registry:
            result = do_pull(ref, fingerprint=fp, registry=registry, store=open_store(), endpoint_url=endpoint_url,
                             progress=True)
        rate = result.downloaded_bytes / 1e6 / result.seconds if result.seconds > 0 else 0.0
        text = (f"pulled {result.ref}: {result.artifacts} artifacts ({_mb(result.bytes)}) for "
                f"{len(result.fingerprints)} model(s); downloaded {len(result.downloaded)} "
                f"({_mb(result.downloaded_bytes)} as {_mb(result.received_bytes)}, {rate:.1f} MB/s), "
                f"{result.skipped} already here, "
                f"{result.recorded} newly indexed")
        emit(result.to_dict(), as_json, text)

    @packs.command("ls")
    def ls(url: str = typer.Argument(None, help="bucket root s3://bucket/prefix; omitted: the packs this index has"),
           name: str = typer.Option(None, "--name", help="only this pack"),
           endpoint_url: str = EndpointOpt, as_json: bool = JsonOpt) -> None:
        """List pack versions in a bucket (verified), or those pulled/published here."""
        if url is None:
            with open_registry() as registry:
                from skillforge.packs import local_packs

                rows = [r for r in local_packs(registry) if name in (None, r["name"])]
            shown = [{**r, "artifacts": len(r["artifacts"]), "index": r["index_digest"][:19]} for r in rows]
            emit(rows, as_json, table(shown, ["name", "version", "source", "artifacts", "bytes", "index", "recorded"]))
            return
        from skillforge.packs import list_packs

        packs_found = [p.to_dict() for p in list_packs(url, endpoint_url=endpoint_url, name=name)]
        bad = [p for p in packs_found if p["error"]]
        for p in bad:
            info(f"warning: {p['ref']}: {p['error']}")
        shown = [{**p, "skills": ", ".join(p["skills"]) or "-", "models": len(p["fingerprints"]),
                  "index": (p["index_digest"] or "")[:19], "status": "INVALID" if p["error"] else "ok"}
                 for p in packs_found]
        emit(packs_found, as_json,
             table(shown, ["name", "version", "skills", "models", "artifacts", "bytes", "published", "index", "status"]))
