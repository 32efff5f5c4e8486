"""The HTTP routes: OpenAI's chat completions (with skills spliced in), models, skills, health, metrics.

The event loop only parses, validates and relays: each completion becomes a Generation submitted
to the scheduler, whose worker thread runs the model and posts events back through the loop
(`call_soon_threadsafe`). A client that goes away cancels its Generation (out of the queue, or
closed before its next token, its cache released). Every error reaches the client in OpenAI's
shape; anything unexpected is a 500 with a fixed message, its traceback in the log only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from skillforge.errors import BadInput, SkillforgeError
from skillforge.runtime import Repair
from skillforge.runtime.edits import MODES
from skillforge.server import schemas
from skillforge.server.engine import Delta, Engine, Event, Failed, Finished, Started
from skillforge.server.errors import ModelNotServed, ServerBusy, Unauthorized, classify, error_body
from skillforge.server.queue import Scheduler

ROUTES = ("/v1/chat/completions", "/v1/models", "/v1/skills", "/health", "/metrics")
POLL_S = 0.25  # how often a request waiting for the model checks that its client is still there


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def error_response(exc: BaseException, param: str | None = None) -> JSONResponse:
    """The client's view of `exc`. Its traceback is logged where it was caught (the worker, or uvicorn
    for a route's own failure), never sent."""
    status, body = classify(exc, param)
    headers = {"Retry-After": "1"} if isinstance(exc, ServerBusy) else None
    return JSONResponse(body, status_code=status, headers=headers)


class _Observe:
    """ASGI middleware: requests by route and status, and end-to-end latency of completions (to the
    last byte, so a stream counts whole)."""

    def __init__(self, app: Any, engine: Engine):
        self.app = app
        self.metrics = engine.metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status, t0 = 500, time.perf_counter()

        async def observed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            if route == "/v1/chat/completions":
                self.metrics.latency.observe(time.perf_counter() - t0)


def create_app(engine: Engine, api_key: str | None = None, max_queue: int = 64, max_active: int = 16) -> FastAPI:
    scheduler = Scheduler(max_queue, max_active, idle=engine.learn)
    engine.metrics.watch(engine.rt, lambda: scheduler.depth, lambda: scheduler.active)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        await asyncio.to_thread(scheduler.close)  # uvicorn has finished every response by now

    app = FastAPI(title="skillforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Observe, engine=engine)

    def require_key(authorization: str | None = Header(None)) -> None:
        if api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise Unauthorized("missing or wrong API key: send the header Authorization: Bearer <key>")

    @app.exception_handler(SkillforgeError)
    async def _skillforge_error(_: Request, exc: SkillforgeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        message = f"invalid request: {first.get('msg', 'malformed body')}" + (f" (at {'.'.join(loc)})" if loc else "")
        return JSONResponse(error_body(message, "invalid_request_error", "invalid_request", ".".join(loc) or None), 400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "queue_depth": scheduler.depth, "active": scheduler.active}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "skillforge",
                                            "fingerprint": engine.lm.fingerprint.digest}]}

    @app.get("/v1/skills", dependencies=[Depends(require_key)])
    def skills() -> dict[str, Any]:  # a plain def: the registry query runs in the thread pool
        return {"object": "list", "data": engine.skills()}

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat(req: schemas.ChatRequest, request: Request) -> Response:
        arrived = time.perf_counter()
        try:
            turns = validate(req)
        except _Invalid as bad:
            return error_response(bad.error, bad.param)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def post(event: Event) -> None:  # called on the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        gen = engine.generation(req, turns, post, arrived)
        scheduler.submit(gen)
        handed_over = False
        try:
            first = await next_event(events, request)
            if isinstance(first, Failed):
                return error_response(first.error)
            if req.stream:
                handed_over = True
                return _EventStream(stream(req, first, events), on_close=lambda: scheduler.cancel(gen),
                                    media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            return await collect(req, first, events, request)
        except ClientGone:
            return Response(status_code=499)
        finally:
            if not handed_over:
                scheduler.cancel(gen)  # a no-op when it finished; frees its place when it did not

    async def next_event(events: asyncio.Queue, request: Request) -> Event:
        while True:
            try:
                return await asyncio.wait_for(events.get(), POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    raise ClientGone() from None

    async def collect(req: schemas.ChatRequest, first: Started, events: asyncio.Queue, request: Request) -> Response:
        parts: list[str] = []
        while True:
            event = await next_event(events, request)
            if isinstance(event, Delta):
                parts.append(event.text)
            elif isinstance(event, Failed):
                return error_response(event.error)
            elif isinstance(event, Finished):
                use = schemas.usage(first.prompt_tokens, event.completion_tokens, first.cached_tokens)
                return JSONResponse(schemas.completion(schemas.new_id(), req.model, "".join(parts), event.finish_reason,
                                                       use, first.extension))

    async def stream(req: schemas.ChatRequest, first: Started, events: asyncio.Queue) -> AsyncIterator[str]:
        cid, created, with_usage = schemas.new_id(), int(time.time()), req.include_usage

        def sse(data: dict[str, Any]) -> str:
            return f"data: {json.dumps(data)}\n\n"

        yield sse(schemas.chunk(cid, req.model, created, {"role": "assistant", "content": ""}, with_usage=with_usage))
        while True:
            event = await events.get()
            if isinstance(event, Delta):
                yield sse(schemas.chunk(cid, req.model, created, {"content": event.text}, with_usage=with_usage))
            elif isinstance(event, Failed):
                yield sse(classify(event.error)[1])  # the status line is sent: the error goes in the stream
                return
            elif isinstance(event, Finished):
                yield sse(schemas.chunk(cid, req.model, created, {}, event.finish_reason, with_usage=with_usage,
                                        skillforge=first.extension))
                if with_usage:
                    use = schemas.usage(first.prompt_tokens, event.completion_tokens, first.cached_tokens)
                    yield sse(schemas.usage_chunk(cid, req.model, created, use))
                yield "data: [DONE]\n\n"
                return

    def validate(req: schemas.ChatRequest) -> schemas.Turns:
        """Everything that can be checked without the model, each error naming its field."""
        if req.model != engine.name:
            raise _Invalid(ModelNotServed(f"this server serves {engine.name!r}, not {req.model!r}; see GET /v1/models"), "model")
        unsupported = req.unsupported()
        if unsupported:
            raise _Invalid(BadInput(unsupported[1]), unsupported[0])
        turns = _checked("messages", lambda: schemas.split_turns(req.messages))
        _checked("skills", lambda: schemas.check_skills(req))
        _checked("set", lambda: schemas.check_set(req))
        _checked("edit_mode", lambda: _edit_mode(req.edit_mode))
        _checked("repair", lambda: Repair.parse(None, req.repair))
        return turns

    return app


class _EventStream(StreamingResponse):
    """A server-sent event stream that calls `on_close` however it ends: finished, or cancelled when
    the client went away (even before its first byte, when the body iterator never started)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class _Invalid(Exception):
    def __init__(self, error: SkillforgeError, param: str):
        super().__init__(str(error))
        self.error = error
        self.param = param


def _checked(param: str, check: Callable[[], Any]) -> Any:
    try:
        return check()
    except SkillforgeError as exc:
        raise _Invalid(exc, param) from None


def _edit_mode(mode: str) -> None:
    if mode not in MODES:
        raise BadInput(f"unknown edit_mode {mode!r}; choose one of {', '.join(MODES)}")
