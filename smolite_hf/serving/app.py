"""The `smolite serve` application: `create_app(model, tokenizer, ...)` returns a Starlette app with every route.

| route | |
|---|---|
| `POST /v1/chat/completions` | OpenAI's chat completions, JSON or `stream: true` (`chat.completion.chunk` events, then `data: [DONE]`) |
| `GET /v1/models` | the one model served |
| `GET /api/chat?message=...` | the original Smolite protocol: `{"char": ...}` events, then `{"done": true}` or `{"error": ...}` |
| `POST /api/chat` | `{"messages": [...], ...}`, the same events |
| `GET /health` | open even with an API key; `503` if the generation worker stopped |
| `GET /metrics` | Prometheus text format |
| `GET /` | the chat page |

Requests are validated by `schemas`, decoded by the `worker` (all running requests batched together), counted by
`metrics`. Errors are `{"error": {"message", "type", "param", "code"}}` under `/v1/` and `{"error", "field"}` on the
original routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from html import escape
from importlib import resources

import anyio
from jinja2.exceptions import TemplateError
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .limits import ServeLimits
from .metrics import ServerMetrics
from .schemas import ChatCompletionRequest, ChatRequest, RequestError, parse_json, parse_query
from .worker import BatchedGenerator, Delta, Failed, Finished, GenerationJob, Overloaded

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/", "/health")  # no API key needed: the page (static) and the health check


def create_app(model, tokenizer, *, name: str = "smolite", limits: ServeLimits | None = None,
               api_key: str | None = None, cors_origins: tuple[str, ...] = ()) -> Starlette:
    """The server for one loaded model. `app.state.worker` is its `BatchedGenerator` (started with the app).

    `api_key`: every route but `/` and `/health` needs `Authorization: Bearer <api_key>`. `cors_origins`: the
    origins (`https://example.com`) whose pages may call the API; requests from any other origin are refused.
    """
    limits = limits or ServeLimits()
    worker = BatchedGenerator(model, tokenizer, max_running=limits.max_running, max_waiting=limits.max_waiting)
    metrics = ServerMetrics(worker)
    routes = _Routes(worker, metrics, limits, name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(worker.close)

    middleware = [Middleware(metrics.middleware)]
    if cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"], max_age=600))
    middleware.append(Middleware(_AccessGuard, api_key=api_key, origins=frozenset(cors_origins)))
    app = Starlette(
        routes=[
            Route("/", routes.page, methods=["GET"]),
            Route("/health", routes.health, methods=["GET"]),
            Route("/metrics", routes.exposition, methods=["GET"]),
            Route("/api/chat", routes.chat_get, methods=["GET"]),
            Route("/api/chat", routes.chat_post, methods=["POST"]),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/models/{model:path}", routes.model, methods=["GET"]),
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
        ],
        middleware=middleware,
        exception_handlers={RequestError: _request_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.worker, app.state.metrics, app.state.limits = worker, metrics, limits
    return app


# ---------------------------------------------------------------------------------------------------------------
# errors


def _error_response(request_path: str, error: RequestError) -> JSONResponse:
    body = error.openai_body() if request_path.startswith("/v1/") else error.smolite_body()
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def _request_error(request: Request, error: RequestError) -> JSONResponse:
    return _error_response(request.url.path, error)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    message = {404: f"there is no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return _error_response(request.url.path, RequestError(message.get(error.status_code, str(error.detail)), None,
                                                          error.status_code, code=None, headers=error.headers))


async def _server_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("request failed")
    return _error_response(request.url.path, RequestError(f"internal error: {type(error).__name__}: {error}", None,
                                                          500, kind="server_error"))


# ---------------------------------------------------------------------------------------------------------------
# middleware


class _AccessGuard:
    """Refuses requests from other origins (unless allowed) with 403, and requests without the API key with 401."""

    def __init__(self, app, api_key: str | None, origins: frozenset[str]):
        self.app, self.api_key, self.origins = app, api_key, origins

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        error = None
        if origin is not None and origin not in self.origins and origin != f"{scope['scheme']}://{headers.get('host')}":
            error = RequestError(f"cross-origin requests from {origin} are refused; start the server with "
                                 "--cors-origin ORIGIN to allow an origin.", None, 403, code="origin_not_allowed")
        elif self.api_key is not None and scope["path"] not in OPEN_PATHS:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                error = RequestError("this server needs an API key: send Authorization: Bearer KEY.", None, 401,
                                     code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            elif not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                error = RequestError("the API key is not valid.", None, 401, code="invalid_api_key",
                                     headers={"WWW-Authenticate": "Bearer"})
        if error is None:
            return await self.app(scope, receive, send)
        await _error_response(scope["path"], error)(scope, receive, send)


# ---------------------------------------------------------------------------------------------------------------
# routes


class _Routes:
    def __init__(self, worker: BatchedGenerator, metrics: ServerMetrics, limits: ServeLimits, name: str):
        self.worker, self.metrics, self.limits, self.name = worker, metrics, limits, name
        self.created = int(time.time())

    async def page(self, request: Request) -> HTMLResponse:
        html = resources.files("smolite_hf").joinpath("resources/chat.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{MODEL_NAME}}", escape(self.name)))

    async def health(self, request: Request) -> JSONResponse:
        worker = self.worker
        body = {"status": "ok" if worker.alive else "worker stopped", "model": self.name, "busy": worker.running > 0,
                "running": worker.running, "waiting": worker.waiting, **worker.stats}
        return JSONResponse(body, status_code=200 if worker.alive else 503)

    async def exposition(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    # -- the original protocol -------------------------------------------------------------------------------------

    async def chat_get(self, request: Request):
        query = parse_query({key: request.query_params.getlist(key) for key in request.query_params.keys()}, self.limits)
        job = self._submit(query.messages(), query.settings())
        return self._stream(self._smolite_events(job))

    async def chat_post(self, request: Request):
        chat = parse_json(ChatRequest, await self._body(request), self.limits)
        job = self._submit(chat.as_messages(), chat.settings(), seed=chat.seed)
        return self._stream(self._smolite_events(job))

    async def _smolite_events(self, job: GenerationJob):
        async for event in self._events(job):
            if isinstance(event, Delta):
                if event.text:
                    yield {"data": json.dumps({"char": event.text}, ensure_ascii=False)}
            elif isinstance(event, Finished):
                yield {"data": json.dumps({"done": True})}
            else:
                yield {"data": json.dumps({"error": event.message}, ensure_ascii=False)}

    # -- OpenAI ------------------------------------------------------------------------------------------------------

    def _model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "smolite"}

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> JSONResponse:
        self._check_model(request.path_params["model"])
        return JSONResponse(self._model_card())

    def _check_model(self, model: str) -> None:
        if model != self.name:
            raise RequestError(f"the model {model!r} is not served here; this server serves {self.name!r} "
                               "(GET /v1/models).", "model", 404, code="model_not_found")

    async def chat_completions(self, request: Request):
        completion = parse_json(ChatCompletionRequest, await self._body(request), self.limits)
        self._check_model(completion.model)
        job = self._submit(completion.as_messages(), completion.settings(), completion.seed, completion.stop)
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if completion.stream:
            return self._stream(self._openai_chunks(job, reply_id, created, completion.include_usage))
        final = await self._final(job, request)
        if final is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        if isinstance(final, Failed):
            raise RequestError(final.message, None, 500, kind="server_error")
        return JSONResponse({
            "id": reply_id, "object": "chat.completion", "created": created, "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": final.text, "refusal": None},
                         "logprobs": None, "finish_reason": final.finish_reason}],
            "usage": _usage(final), "system_fingerprint": None,
        })

    async def _openai_chunks(self, job: GenerationJob, reply_id: str, created: int, include_usage: bool):
        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            body = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": self.name,
                    "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            if include_usage:
                body["usage"] = None
            return {"data": json.dumps(body, ensure_ascii=False)}

        yield chunk({"role": "assistant", "content": ""})
        async for event in self._events(job):
            if isinstance(event, Delta):
                if event.text:
                    yield chunk({"content": event.text})
            elif isinstance(event, Finished):
                yield chunk({}, event.finish_reason)
                if include_usage:
                    yield {"data": json.dumps({"id": reply_id, "object": "chat.completion.chunk", "created": created,
                                               "model": self.name, "system_fingerprint": None, "choices": [],
                                               "usage": _usage(event)})}
            else:
                error = RequestError(event.message, None, 500, kind="server_error")
                yield {"data": json.dumps(error.openai_body(), ensure_ascii=False)}
        yield {"data": "[DONE]"}

    # -- shared ------------------------------------------------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        too_large = RequestError(f"the body is larger than the limit of {limit} bytes.", "body", 413,
                                 code="request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    def _submit(self, messages: list[dict], settings: dict, seed: int | None = None, stop=()) -> GenerationJob:
        try:  # a conversation the chat template refuses (e.g. two user messages in a row) is the client's error
            prompt, config = self.worker.prepare(messages, **settings)
        except TemplateError as error:
            raise RequestError(str(error), "messages") from None
        try:
            return self.worker.submit(prompt, config, seed=seed, stop=stop, loop=asyncio.get_running_loop())
        except Overloaded as error:
            raise RequestError(str(error), None, 429, code="rate_limit_exceeded", kind="rate_limit_error",
                               headers={"Retry-After": str(error.retry_after)}) from None

    async def _events(self, job: GenerationJob):
        """The job's events; leaving early (the client went away) cancels it."""
        timed = False
        try:
            async for event in job.events():
                if isinstance(event, Delta) and not timed:
                    timed = True
                    self.metrics.first_token(job)
                yield event
        finally:
            job.cancel()

    def _stream(self, events) -> EventSourceResponse:
        return EventSourceResponse(events, ping=15, headers={"Cache-Control": "no-cache"})

    async def _final(self, job: GenerationJob, request: Request) -> Finished | Failed | None:
        """Wait for the job's last event; `None` if the client disconnects first (which cancels the job)."""
        final = None
        async with anyio.create_task_group() as group:
            async def watch_disconnect():
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch_disconnect)
            async for event in self._events(job):
                if isinstance(event, (Finished, Failed)):
                    final = event
            group.cancel_scope.cancel()
        return final


def _usage(final: Finished) -> dict:
    return {"prompt_tokens": final.prompt_tokens, "completion_tokens": final.completion_tokens,
            "total_tokens": final.prompt_tokens + final.completion_tokens}


__all__ = ["create_app"]
