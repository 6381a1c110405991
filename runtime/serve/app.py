"""The FastAPI application: /v1/completions, /v1/chat/completions (SSE with ``stream: true``), /v1/models,
/health and /metrics. Every error is OpenAI's ``{"error": {...}}`` with its status code; an unexpected
exception is logged on the server and answered with a 500 that carries no traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .metrics import CONTENT_TYPE_LATEST, Metrics
from .model import ServedModel
from .pool import GenParams, QueueFull, ReplicaPool, Result
from .protocol import ApiError, ChatRequest, CompletionRequest, parse

log = logging.getLogger("jetspec_compile.serve")
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
DISCONNECT_POLL_S = 0.25


def create_app(model: ServedModel, max_queue: int = 16, threads: int = 1) -> FastAPI:
    """The app over ``model``'s engines; the replica pool starts now and stops with the app's shutdown."""
    pool = ReplicaPool(model.engines, max_queue, threads=threads)
    metrics = Metrics(pool.load)
    pool.on_done = metrics.finished_generation
    app = FastAPI(title="jetspec-compile", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model, app.state.pool, app.state.metrics = model, pool, metrics
    app.router.add_event_handler("shutdown", pool.close)
    _routes(app, model, pool, metrics)
    _error_handlers(app, metrics)
    return app


def _routes(app: FastAPI, model: ServedModel, pool: ReplicaPool, metrics: Metrics) -> None:
    @app.get("/health")
    async def health():
        busy, waiting = pool.load()
        return {"status": "ok", "model": model.name, "replicas": len(pool.engines), "busy": busy,
                "waiting": waiting, "max_queue": pool.max_queue}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(model)]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str):
        if name != model.name:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {model.name!r}", "model",
                           "model_not_found")
        return _model_card(model)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse(CompletionRequest, await request.body())
        _check_model(model, req.model)
        ids = model.prompt_ids(req.prompt)
        params = _params(model, req, ids, req.max_tokens or DEFAULT_MAX_TOKENS)
        return await _answer(request, pool, metrics, "completions", params, req, _CompletionShape(model.name))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = parse(ChatRequest, await request.body())
        _check_model(model, req.model)
        ids = model.chat_ids([{"role": m.role, "content": m.text()} for m in req.messages])
        params = _params(model, req, ids, req.limit() or model.max_seq_len)
        return await _answer(request, pool, metrics, "chat", params, req, _ChatShape(model.name))


def _model_card(model: ServedModel) -> dict:
    return {"id": model.name, "object": "model", "created": 0, "owned_by": "jetspec-compile",
            "max_model_len": model.max_seq_len}


def _check_model(model: ServedModel, name: str) -> None:
    if name != model.name:
        raise ApiError(404, f"the model {name!r} does not exist; this server serves {model.name!r}", "model",
                       "model_not_found")


def _params(model: ServedModel, req, ids: list[int], max_tokens: int) -> GenParams:
    temperature = req.temperature if req.temperature is not None else 0.0
    model.check_sampling(temperature)
    top_k = req.top_k if req.top_k and req.top_k > 0 else None
    return GenParams(prompt=ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=req.top_p,
                     seed=req.seed, stop=req.stops(), speculative=model.speculative)


# ---- one request: admission, waiting, streaming -------------------------------------------------------

async def _answer(request: Request, pool: ReplicaPool, metrics: Metrics, endpoint: str, params: GenParams,
                  req, shape) -> Response:
    try:
        job = pool.submit(params, asyncio.get_running_loop())
    except QueueFull as e:
        raise ApiError(503, str(e), code="queue_full") from None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        metrics.request(endpoint, 200)
        return StreamingResponse(_sse(job, shape, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    result = await _collect(request, job)
    metrics.request(endpoint, 200)
    return JSONResponse(shape.full(result))


async def _collect(request: Request, job) -> Result:
    """Wait for a non-streamed result; a client that disconnects meanwhile cancels its job."""
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    raise ApiError(499, "client disconnected") from None
                continue
            if kind == "done":
                return value
            if kind == "error":
                raise ApiError(*value)
            if kind == "cancelled":
                raise ApiError(499, "request cancelled")
    finally:
        job.cancel()  # no-op once done; frees the replica at its next round otherwise


async def _sse(job, shape, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events; cancelled (client gone) -> the finally clause cancels the job."""
    try:
        first = shape.first_chunk()
        if first is not None:
            yield _event(first)
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                yield _event(shape.chunk(value))
            elif kind == "done":
                yield _event(shape.chunk("", value.openai_finish_reason))
                if include_usage:
                    yield _event(shape.usage_chunk(value))
                break
            elif kind == "error":
                yield _event(ApiError(*value).body())
                break
            else:
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(r: Result) -> dict:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens}


class _CompletionShape:
    object = "text_completion"

    def __init__(self, model: str):
        self.model, self.id, self.created = model, f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def _base(self) -> dict:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def first_chunk(self) -> dict | None:
        return None

    def chunk(self, text: str, reason: str | None = None) -> dict:
        return {**self._base(), "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]}

    def usage_chunk(self, r: Result) -> dict:
        return {**self._base(), "choices": [], "usage": _usage(r)}

    def full(self, r: Result) -> dict:
        return {**self.chunk(r.text, r.openai_finish_reason), "usage": _usage(r)}


class _ChatShape(_CompletionShape):
    object = "chat.completion.chunk"

    def __init__(self, model: str):
        super().__init__(model)
        self.id = f"chatcmpl-{uuid.uuid4().hex}"

    def first_chunk(self) -> dict:
        return {**self._base(), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]}

    def chunk(self, text: str, reason: str | None = None) -> dict:
        delta = {"content": text} if text or reason is None else {}
        return {**self._base(), "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

    def full(self, r: Result) -> dict:
        return {**self._base(), "object": "chat.completion", "usage": _usage(r),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                             "finish_reason": r.openai_finish_reason}]}


# ---- errors -------------------------------------------------------------------------------------------

def _error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def respond(request: Request, err: ApiError) -> JSONResponse:
        metrics.request(_endpoint(request), err.status)
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return respond(request, err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no route {request.url.path}", 405: f"method {request.method} is not allowed on "
                   f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        return respond(request, ApiError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return respond(request, ApiError(500, "internal server error (see the server log)"))


def _endpoint(request: Request) -> str:
    path = request.url.path
    return {"/v1/completions": "completions", "/v1/chat/completions": "chat"}.get(path, "other")
