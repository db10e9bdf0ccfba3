"""`smolite serve`: a local chat server that streams replies over Server-Sent Events.

Built on Starlette (routing, validation responses), sse-starlette (SSE framing, pings, client-disconnect detection)
and uvicorn (HTTP). Replies come from the package's own `generate()` path (`chat.prepare_generation`: the chat
template, the window rule, the folder's generation config) through transformers' `AsyncTextIteratorStreamer`.

Endpoints

- `GET /api/chat?message=...[&max_new_tokens=N]` — the original Smolite protocol: one JSON object per event,
  `{"char": "..."}` pieces, then `{"done": true}`, or `{"error": "..."}`.
- `POST /api/chat` — JSON `{"messages": [{"role": ..., "content": ...}, ...], "max_new_tokens": ..., "temperature":
  ..., "top_p": ..., "repetition_penalty": ..., "do_sample": ..., "seed": ...}` (all but `messages` optional), the
  same event stream; multi-turn conversations go through the chat template.
- `GET /health` — `{"status": "ok", "busy": ..., "waiting": ..., "served": ..., "cancelled": ..., "failed": ...}`.
- `GET /` — a self-contained chat page (no CDN).

One model, loaded once, and one generation at a time: requests wait in a bounded queue (`503` when it is full),
so tokens of different users never interleave. A client that disconnects stops its generation at the next token.
Bad parameters get a `400` JSON error `{"error": ..., "field": ...}` naming the field.
"""

from __future__ import annotations

import contextlib
from html import escape
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import anyio
import torch
from jinja2.exceptions import TemplateError
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from transformers import AsyncTextIteratorStreamer, StoppingCriteria, StoppingCriteriaList

from .chat import prepare_generation

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass
class ServeLimits:
    """What one request may ask for; every value is checked before a request reaches the model."""

    max_message_chars: int = 1000  # per message
    max_messages: int = 64
    max_new_tokens: int = 100  # the cap; the window rule may allow fewer
    max_waiting: int = 32  # requests queued behind the running one before `503`
    max_body_bytes: int = 256 * 1024


class BadRequest(ValueError):
    """A request parameter that cannot be served; answered with `400` naming `field`."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class _StopOnEvent(StoppingCriteria):
    """Stops `generate()` at the next token once `event` is set (the client went away or the server shuts down)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# ---------------------------------------------------------------------------------------------------------------
# request validation


def _integer(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise BadRequest(field, f"{field} must be an integer, got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(field, f"{field} must be an integer, got {value!r}.")
    if not low <= value <= high:
        raise BadRequest(field, f"{field} must be between {low} and {high}, got {value}.")
    return value


def _number(field: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(field, f"{field} must be a finite number, got {value!r}.")
    if value > high or value < low or (low_open and value == low):
        bound = f"greater than {low}" if low_open else f"at least {low}"
        raise BadRequest(field, f"{field} must be {bound} and at most {high}, got {value}.")
    return float(value)


def _message_text(field: str, value: Any, limits: ServeLimits) -> str:
    if not isinstance(value, str):
        raise BadRequest(field, f"{field} must be a string, got {type(value).__name__}.")
    if not value.strip():
        raise BadRequest(field, f"{field} is empty.")
    if len(value) > limits.max_message_chars:
        raise BadRequest(field, f"{field} has {len(value)} characters; the limit is {limits.max_message_chars}.")
    if "\ufffd" in value:
        raise BadRequest(field, f"{field} is not valid UTF-8 (it contains U+FFFD where bytes could not be decoded).")
    return value


def parse_query(query: dict[str, list[str]], limits: ServeLimits) -> tuple[list[dict], dict]:
    """`(messages, overrides)` from the query parameters of `GET /api/chat`."""
    unknown = sorted(set(query) - {"message", "max_new_tokens"})
    if unknown:
        raise BadRequest(unknown[0], f"unknown query parameter {unknown[0]!r}; use message and max_new_tokens.")
    for name, values in query.items():
        if len(values) > 1:
            raise BadRequest(name, f"{name} is given {len(values)} times; give it once.")
    if "message" not in query:
        raise BadRequest("message", "message is required, e.g. /api/chat?message=안녕하세요")
    text = _message_text("message", query["message"][0], limits)
    overrides = {}
    if "max_new_tokens" in query:
        overrides["max_new_tokens"] = _integer("max_new_tokens", query["max_new_tokens"][0], 1, limits.max_new_tokens)
    return [{"role": "user", "content": text}], overrides


_SETTINGS = {
    "max_new_tokens": lambda v, limits: _integer("max_new_tokens", v, 1, limits.max_new_tokens),
    "temperature": lambda v, limits: _number("temperature", v, 0.0, 10.0, low_open=True),
    "top_p": lambda v, limits: _number("top_p", v, 0.0, 1.0, low_open=True),
    "repetition_penalty": lambda v, limits: _number("repetition_penalty", v, 0.0, 10.0, low_open=True),
    "do_sample": lambda v, limits: v if isinstance(v, bool) else _raise("do_sample", "do_sample must be true or false."),
    "seed": lambda v, limits: _integer("seed", v, 0, 2**63 - 1),
}


def _raise(field: str, message: str):
    raise BadRequest(field, message)


def parse_body(body: Any, limits: ServeLimits) -> tuple[list[dict], dict]:
    """`(messages, settings)` from the JSON body of `POST /api/chat`."""
    if not isinstance(body, dict):
        raise BadRequest("body", f"the body must be a JSON object with a messages list, got {type(body).__name__}.")
    unknown = sorted(set(body) - {"messages", *_SETTINGS})
    if unknown:
        raise BadRequest(unknown[0], f"unknown field {unknown[0]!r}; known fields: messages, {', '.join(_SETTINGS)}.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "messages must be a non-empty list of {role, content} objects.")
    if len(messages) > limits.max_messages:
        raise BadRequest("messages", f"messages has {len(messages)} entries; the limit is {limits.max_messages}.")
    checked = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(field, f"{field} must be an object with role and content.")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise BadRequest(f"{field}.{extra[0]}", f"{field} has an unknown field {extra[0]!r}; use role and content.")
        if message.get("role") not in ROLES:
            raise BadRequest(f"{field}.role", f"{field}.role must be one of {', '.join(ROLES)}, got {message.get('role')!r}.")
        checked.append({"role": message["role"], "content": _message_text(f"{field}.content", message.get("content"), limits)})
    if checked[-1]["role"] != "user":
        raise BadRequest("messages", "the last message must be a user message (the reply answers it).")
    settings = {name: _SETTINGS[name](body[name], limits) for name in _SETTINGS if name in body}
    return checked, settings


# ---------------------------------------------------------------------------------------------------------------
# the server


class ChatServer:
    """The model, its tokenizer and one generation worker, shared by every request."""

    def __init__(self, model, tokenizer, limits: ServeLimits | None = None, name: str = "smolite"):
        self.model = model
        self.tokenizer = tokenizer
        self.limits = limits or ServeLimits()
        self.name = name
        self.stats = {"served": 0, "cancelled": 0, "failed": 0}
        self.busy = False
        self.waiting = 0
        self.shutdown = threading.Event()
        self._lock: anyio.Lock | None = None

    def app(self) -> Starlette:
        routes = [
            Route("/", self.page, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/api/chat", self.chat_get, methods=["GET"]),
            Route("/api/chat", self.chat_post, methods=["POST"]),
        ]
        return Starlette(routes=routes, exception_handlers={BadRequest: _bad_request}, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        yield
        self.shutdown.set()  # a running generation stops at its next token

    # -- endpoints ---------------------------------------------------------------------------------------------

    async def page(self, request: Request) -> HTMLResponse:
        html = resources.files("smolite_hf").joinpath("resources/chat.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{MODEL_NAME}}", escape(self.name)))

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.name, "busy": self.busy, "waiting": self.waiting, **self.stats})

    async def chat_get(self, request: Request):
        query = {key: request.query_params.getlist(key) for key in request.query_params.keys()}
        messages, overrides = parse_query(query, self.limits)
        return self._stream(messages, overrides)

    async def chat_post(self, request: Request):
        body = await request.body()
        if len(body) > self.limits.max_body_bytes:
            raise BadRequest("body", f"the body has {len(body)} bytes; the limit is {self.limits.max_body_bytes}.")
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise BadRequest("body", f"the body is not valid UTF-8 ({error.reason} at byte {error.start}).") from None
        except json.JSONDecodeError as error:
            raise BadRequest("body", f"the body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}.") from None
        messages, settings = parse_body(data, self.limits)
        try:  # a conversation the chat template refuses (e.g. two user messages in a row) is the client's error
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        except TemplateError as error:
            raise BadRequest("messages", str(error)) from None
        return self._stream(messages, settings)

    # -- streaming ---------------------------------------------------------------------------------------------

    def _stream(self, messages: list[dict], settings: dict) -> EventSourceResponse | JSONResponse:
        if self.waiting >= self.limits.max_waiting:
            return JSONResponse({"error": f"the server is busy ({self.waiting} requests waiting); try again later."}, 503)
        return EventSourceResponse(self._events(messages, settings), ping=15, headers={"Cache-Control": "no-cache"})

    async def _events(self, messages: list[dict], settings: dict):
        if self._lock is None:
            self._lock = anyio.Lock()
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
        try:
            self.busy = True
            async for event in self._generate(messages, settings):
                yield event
        finally:
            self.busy = False
            self._lock.release()

    async def _generate(self, messages: list[dict], settings: dict):
        settings = dict(settings)
        seed = settings.pop("seed", None)
        if settings.get("do_sample") is False:  # greedy: neutral sampling fields, as `smolite chat --greedy`
            settings = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, **settings}
        stop = threading.Event()
        streamer = AsyncTextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        outcome: dict[str, Any] = {}

        def work():
            try:
                if seed is not None:
                    torch.manual_seed(seed)
                input_ids, config = prepare_generation(self.model, self.tokenizer, messages, **settings)
                with torch.no_grad():
                    self.model.generate(
                        input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        generation_config=config,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                    )
            except Exception as error:  # reported to this client; the server keeps serving
                logger.exception("generation failed")
                outcome["error"] = f"{type(error).__name__}: {error}"
                streamer.end()

        thread = threading.Thread(target=work, name="smolite-generate", daemon=True)
        started = time.perf_counter()
        thread.start()
        finished = False
        try:
            first = True
            async for piece in streamer:
                if self.shutdown.is_set():
                    stop.set()
                if first:
                    piece = piece.lstrip()
                    first = not piece
                if piece:
                    yield {"data": json.dumps({"char": piece}, ensure_ascii=False)}
            finished = True
        finally:
            stop.set()
            with anyio.CancelScope(shield=True):  # free the worker before the next request takes the lock
                await anyio.to_thread.run_sync(thread.join)
            if not finished:
                self.stats["cancelled"] += 1
                logger.info("client went away; generation stopped after %.2fs", time.perf_counter() - started)
        if "error" in outcome:
            self.stats["failed"] += 1
            yield {"data": json.dumps({"error": outcome["error"]}, ensure_ascii=False)}
        else:
            self.stats["served"] += 1
            yield {"data": json.dumps({"done": True})}


async def _bad_request(request: Request, error: BadRequest) -> JSONResponse:
    return JSONResponse({"error": str(error), "field": error.field}, status_code=400)


def serve(model_dir, host: str = "127.0.0.1", port: int = 8000, device: str | None = None, dtype: str = "float32",
          limits: ServeLimits | None = None, log_level: str = "info", allow_pickle: bool = False) -> int:
    """Load the model folder once and serve it until Ctrl-C."""
    import uvicorn

    from .chat import load_chat_model

    model, tokenizer = load_chat_model(model_dir, device=device, dtype=dtype, allow_pickle=allow_pickle)
    server = ChatServer(model, tokenizer, limits, name=str(model_dir))
    where = "only this machine can connect" if host in ("127.0.0.1", "localhost", "::1") else "reachable from the network"
    print(f"Serving {model_dir} on http://{host}:{port}/ ({where}; --host to change). Ctrl-C stops.", flush=True)
    # h11 refuses request heads over 16 KiB with a bare 400; allow 1 MiB so an oversized message reaches our check
    uvicorn.run(server.app(), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                h11_max_incomplete_event_size=1 << 20)
    return 0


__all__ = ["BadRequest", "ChatServer", "ServeLimits", "parse_body", "parse_query", "serve"]
