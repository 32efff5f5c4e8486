"""`skillforge serve`: an OpenAI-compatible HTTP server that splices skills into every request."""

from __future__ import annotations

import typer

from skillforge.cli.common import DeviceOpt, DtypeOpt, ErratumOpt, ModelOpt, info, load, open_registry, open_store
from skillforge.errors import BadInput


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
              host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
              port: int = typer.Option(8000, "--port"),
              served_name: str = typer.Option(None, "--served-name", help="the model id clients send (default: --model as given)"),
              api_key: str = typer.Option(None, "--api-key", envvar="SKILLFORGE_API_KEY",
                                          help="require `Authorization: Bearer <key>` on /v1/* (default: no key)"),
              max_queue: int = typer.Option(64, "--max-queue", help="requests that may wait for the model; one more gets 503"),
              max_active: int = typer.Option(16, "--max-active", help="requests decoded at once, each holding a cache"),
              erratum: str = ErratumOpt,
              learn_after: int = typer.Option(0, "--learn-after", help="compile a skill behind the tokens before it once N requests "
                                              "spliced it there, so later ones splice exactly (0: never)"),
              log_level: str = typer.Option("info", "--log-level", help="critical|error|warning|info|debug")) -> None:
        """Serve POST /v1/chat/completions (OpenAI's schema, plus `skills`, `set`, `edit_mode`, `repair`),
        GET /v1/models, /v1/skills, /health and /metrics. SIGTERM finishes the requests in flight, then exits."""
        import logging

        import uvicorn

        from skillforge.server.app import create_app
        from skillforge.server.engine import Engine

        if max_queue < 0 or max_active < 1:
            raise BadInput("--max-queue must be 0 or more and --max-active 1 or more")
        if learn_after < 0:
            raise BadInput("--learn-after must be 0 or more (0: never compile variants)")
        if not 0 < port < 65536:
            raise BadInput(f"--port {port} is not a TCP port (1-65535)")
        logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")  # the worker's tracebacks
        lm = load(model, device, dtype)
        engine = Engine(lm, open_registry(), open_store(), name=served_name or model, erratum=erratum, learn_after=learn_after)
        app_ = create_app(engine, api_key=api_key or None, max_queue=max_queue, max_active=max_active)
        info(f"serving {served_name or model} on http://{host}:{port}/v1 ({'API key required' if api_key else 'no API key'})")
        uvicorn.run(app_, host=host, port=port, log_level=log_level)
