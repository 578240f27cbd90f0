"""The FastAPI application: one :class:`AsyncLLMEngine` behind two APIs.

:func:`create_app` wires the pieces: the OpenAI routes (:mod:`.openai_api`), the TGI
routes (:mod:`.tgi_api`), ``/metrics`` (:mod:`.metrics`), an optional API key, a cap on
the body size, and error handlers that turn every bad request into a 4xx JSON body in
the caller's API's shape (OpenAI's ``{"error": {...}}`` under ``/v1``, TGI's
``{"error", "error_type"}`` elsewhere) instead of a 500 or a crashed step. Because the
engine runs in its own thread, one client's bad input never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from inferlab.engine.async_engine import (
    AsyncLLMEngine,
    EngineDeadError,
    RequestStream,
    StreamOutput,
)
from inferlab.engine.sampling_params import SamplingParams
from inferlab.serve.metrics import ServerMetrics
from inferlab.serve.protocol import openai_error, tgi_error

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt the context can hold


class ServeError(Exception):
    """A request the server refuses: HTTP ``status``, a message, and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class ServingEngine:
    """What the routes need from the engine: names, the tokenizer, limits, submit and collect."""

    def __init__(self, engine: AsyncLLMEngine, model_names: list[str], api_key: str | None = None):
        self.engine, self.model_names, self.api_key = engine, list(model_names), api_key
        self.default_max_tokens: int | None = None  # None: a request without max_tokens may fill the context
        self.tokenizer = engine.engine.tokenizer
        self.max_model_len = engine.engine.max_model_len
        self.metrics = ServerMetrics(engine.stats)
        self.token_text = lru_cache(maxsize=65536)(lambda t: engine.engine.decode([t]))

    def check_model(self, name: str) -> None:
        if name not in self.model_names:
            raise ServeError(404, f"The model `{name}` does not exist; this server serves {self.model_names}.",
                             "model", "model_not_found")

    def tokenize(self, prompt: str | list[int], param: str = "prompt") -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ServeError(400, f"{param} must not be empty", param)
            return list(self.tokenizer.encode(prompt))
        return list(prompt)

    def max_tokens(self, prompt_ids: list[int], requested: int | None, param: str = "max_tokens") -> int:
        """``requested`` checked against the context (default: whatever is left of it)."""
        left = self.max_model_len - len(prompt_ids)
        if left <= 0:
            raise ServeError(400, f"This model's maximum context length is {self.max_model_len} tokens; "
                             f"the prompt has {len(prompt_ids)}.", "prompt", "context_length_exceeded")
        if requested is None:
            return left if self.default_max_tokens is None else min(left, self.default_max_tokens)
        if requested <= 0:
            raise ServeError(400, f"{param} must be at least 1, got {requested}", param)
        if requested > left:
            raise ServeError(400, f"This model's maximum context length is {self.max_model_len} tokens. However, "
                             f"you requested {len(prompt_ids) + requested} tokens ({len(prompt_ids)} in the prompt, "
                             f"{requested} for the completion).", param, "context_length_exceeded")
        return requested

    async def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestStream:
        try:
            return await self.engine.add_request_async(prompt_ids, params, request_id=uuid.uuid4().hex)
        except (ValueError, TypeError) as err:
            raise ServeError(400, str(err)) from err
        except EngineDeadError as err:
            raise ServeError(503, str(err), code="engine_unavailable") from err

    def record(self, out: StreamOutput | None) -> None:
        """Count a request's last stream item in the metrics."""
        if out is not None and out.output is not None:
            done = out.output.outputs
            self.metrics.record(out.num_prompt_tokens, sum(len(c.token_ids) for c in done),
                                [c.finish_reason for c in done], out.metrics)


def sampling_params(**fields: Any) -> SamplingParams:
    """SamplingParams from request fields; a bad value is a 400 naming the field."""
    try:
        return SamplingParams(**{k: v for k, v in fields.items() if v is not None})
    except (TypeError, ValueError) as err:
        raise ServeError(400, str(err)) from err


async def merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, StreamOutput]]:
    """Items of several request streams as they come, tagged with the stream's position."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, out = await queue.get()
            if out is None:
                left -= 1
            else:
                yield i, out
    finally:
        for task in tasks:
            task.cancel()
        for s in streams:
            if not s.finished:
                s.engine.abort(s.request_id)


async def until_disconnect(request: Request, work) -> Any:
    """Await ``work`` unless the client goes away first (then it is cancelled: its requests abort)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise ServeError(499, "client closed the request", code="client_closed")
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(events: AsyncIterator[dict[str, Any]], done: bool = True) -> StreamingResponse:
    """Server-sent events: one ``data: {json}`` per item, then ``data: [DONE]`` (OpenAI's end marker)."""

    async def body():
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        if done:
            yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(engine: AsyncLLMEngine, model_names: list[str], api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, on_ready=None) -> FastAPI:
    """The server's app over a running :class:`AsyncLLMEngine`; ``model_names``: names it answers to.

    ``on_ready()`` is called once the server listens.
    """
    from inferlab.serve import openai_api, tgi_api

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if on_ready is not None:
            on_ready()
        yield

    app = FastAPI(title="inferlab", description="OpenAI- and TGI-compatible server over inferlab's engine",
                  lifespan=lifespan)
    app.state.serving = serving = ServingEngine(engine, model_names, api_key)
    _install_guards(app, serving, max_body_bytes)
    _install_error_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(tgi_api.router)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(serving.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if engine.is_running else 503)

    return app


OPEN_PATHS = ("/health", "/metrics", "/docs", "/openapi.json")


def _install_guards(app: FastAPI, serving: ServingEngine, max_body_bytes: int) -> None:
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if serving.api_key and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given.encode(), serving.api_key.encode()):
                return _error_response(request, ServeError(401, "missing or wrong API key", code="invalid_api_key"))
        return await call_next(request)


class BodyLimit:
    """413 for a body over ``max_bytes``: by its Content-Length up front, or counted as it streams in (chunked)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send, f"{int(length)} bytes")
        seen, over = 0, False

        async def counted():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    return {"type": "http.disconnect"}  # the app stops reading; we answer below
            return message

        async def unless_over(message) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:  # noqa: BLE001 — only an interrupted read of a too-large body lands here
            if not over:
                raise
        if over:
            await self._refuse(scope, receive, send, f"more than {self.max_bytes} bytes")

    async def _refuse(self, scope, receive, send, size: str) -> None:
        err = ServeError(413, f"request body is {size}; the limit is {self.max_bytes}")
        await _error_response(Request(scope), err)(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError):
        return _error_response(request, err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        if first.get("type") == "json_invalid":
            return _error_response(request, ServeError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}"))
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid request')}"
        return _error_response(request, ServeError(400, message, ".".join(where) or None))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return _error_response(request, ServeError(err.status_code, str(err.detail)))


def _error_response(request: Request, err: ServeError) -> JSONResponse:
    if request.url.path.startswith("/v1"):
        kind = "invalid_request_error" if err.status < 500 else "server_error"
        if err.status == 401:
            kind = "authentication_error"
        return JSONResponse(openai_error(err.message, kind, err.param, err.code), status_code=err.status)
    kind = "validation" if err.status < 500 else "overloaded"
    return JSONResponse(tgi_error(err.message, kind), status_code=err.status)
