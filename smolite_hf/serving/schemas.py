"""Typed requests of `smolite serve` (pydantic v2) and the one error type every route answers with.

Each request is validated from its schema: the limits of `ServeLimits` come in through the validation context,
and a `ValidationError` becomes a `RequestError` that names the field (`messages[0].role`, `max_tokens`, ...).
`RequestError.smolite_body()` is the reply of the original routes (`{"error": ..., "field": ...}`),
`RequestError.openai_body()` the OpenAI shape (`{"error": {"message", "type", "param", "code"}}`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from .limits import ServeLimits


class RequestError(Exception):
    """A request the server does not serve: the HTTP status, a sentence saying why, and the field (`param`)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind
        self.headers = headers or {}

    def smolite_body(self) -> dict:
        return {"error": self.message, "field": self.param}

    def openai_body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------------------------
# field types


def _limits(info: ValidationInfo) -> ServeLimits:
    return (info.context or {}).get("limits") or ServeLimits()


def _message_text(value: str, info: ValidationInfo) -> str:
    limits = _limits(info)
    if not value.strip():
        raise PydanticCustomError("empty_message", "the message is empty")
    if len(value) > limits.max_message_chars:
        raise PydanticCustomError("message_too_long", "the message has {length} characters; the limit is {limit}",
                                  {"length": len(value), "limit": limits.max_message_chars})
    if "\ufffd" in value:
        raise PydanticCustomError("invalid_utf8", "the message is not valid UTF-8 (it contains U+FFFD where bytes "
                                  "could not be decoded)")
    return value


def _new_tokens(value: int | None, info: ValidationInfo) -> int | None:
    limit = _limits(info).max_new_tokens
    if value is not None and value > limit:
        raise PydanticCustomError("above_limit", "at most {limit} new tokens are served (the server's "
                                  "--max-new-tokens); got {value}", {"limit": limit, "value": value})
    return value


MessageText = Annotated[str, AfterValidator(_message_text)]
NewTokens = Annotated[int, Field(ge=1), AfterValidator(_new_tokens)]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


def _check_message_count(messages: list, info: ValidationInfo) -> list:
    limit = _limits(info).max_messages
    if len(messages) > limit:
        raise PydanticCustomError("too_many_messages", "the conversation has {count} messages; the limit is {limit}",
                                  {"count": len(messages), "limit": limit})
    if messages[-1].role != "user":
        raise PydanticCustomError("last_not_user", "the last message must be a user message (the reply answers it)")
    return messages


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------------------------------------------------------
# the original Smolite protocol: GET /api/chat and POST /api/chat


class ChatQuery(BaseModel):
    """The query of `GET /api/chat?message=...[&max_new_tokens=N]` (strings, converted: lax mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: MessageText
    max_new_tokens: NewTokens | None = None

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.message}]

    def settings(self) -> dict:
        return {} if self.max_new_tokens is None else {"max_new_tokens": self.max_new_tokens}


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: MessageText


class ChatRequest(_Strict):
    """The JSON body of `POST /api/chat`: only `messages` is required."""

    messages: Annotated[list[ChatMessage], Field(min_length=1), AfterValidator(_check_message_count)]
    max_new_tokens: NewTokens | None = None
    temperature: Annotated[float, Field(gt=0, le=10)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    do_sample: bool | None = None
    seed: Seed | None = None

    def as_messages(self) -> list[dict]:
        return [message.model_dump() for message in self.messages]

    def settings(self) -> dict:
        """`generate()` overrides; `do_sample: false` also sets neutral sampling fields, as `smolite chat --greedy`."""
        settings = self.model_dump(exclude={"messages", "seed"}, exclude_none=True)
        if settings.get("do_sample") is False:
            settings = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, **settings}
        return settings


# ---------------------------------------------------------------------------------------------------------------
# OpenAI: POST /v1/chat/completions


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class CompletionMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]  # `developer` is OpenAI's newer name for `system`
    content: str | list[TextPart]
    name: str | None = None  # accepted, not used: the chat template has no speaker names

    @field_validator("content", mode="after")
    @classmethod
    def _text(cls, content: str | list[TextPart], info: ValidationInfo) -> str:
        text = content if isinstance(content, str) else "".join(part.text for part in content)
        return _message_text(text, info)


class StreamOptions(_Strict):
    include_usage: bool = False


def _must_be_one(value: int) -> int:
    if value != 1:
        raise PydanticCustomError("n_not_one", "this server returns one choice per request; n must be 1, got {n}",
                                  {"n": value})
    return value


def _no_penalty(value: float) -> float:
    if value != 0:
        raise PydanticCustomError(
            "unsupported_penalty", "not supported: transformers has no logits processor for OpenAI's "
            "additive penalties; use repetition_penalty (multiplicative, > 1 discourages repeats) or leave it 0")
    return value


def _stop_strings(value: str | list[str] | None) -> tuple[str, ...]:
    stops = (value,) if isinstance(value, str) else tuple(value or ())
    if len(stops) > 4:
        raise PydanticCustomError("too_many_stops", "at most 4 stop sequences are accepted, got {count}",
                                  {"count": len(stops)})
    if any(not stop for stop in stops):
        raise PydanticCustomError("empty_stop", "a stop sequence must not be empty")
    return stops


class ChatCompletionRequest(_Strict):
    """The body of `POST /v1/chat/completions` (the fields this server honours; any other is a 400 naming it)."""

    model: str
    messages: Annotated[list[CompletionMessage], Field(min_length=1), AfterValidator(_check_message_count)]
    max_tokens: NewTokens | None = None
    max_completion_tokens: NewTokens | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: Seed | None = None
    stop: Annotated[str | list[str] | None, AfterValidator(_stop_strings)] = ()  # validated into a tuple
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, AfterValidator(_must_be_one)] = 1
    presence_penalty: Annotated[float, AfterValidator(_no_penalty)] = 0.0
    frequency_penalty: Annotated[float, AfterValidator(_no_penalty)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None  # an extension, as vLLM's
    user: str | None = None  # accepted, not used

    def as_messages(self) -> list[dict]:
        roles = {"developer": "system"}
        return [{"role": roles.get(m.role, m.role), "content": m.content} for m in self.messages]

    def settings(self) -> dict:
        """`generate()` overrides: temperature 0 is greedy; unset fields keep the folder's generation config."""
        settings: dict[str, Any] = {}
        if self.temperature == 0:
            settings.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=50)
        else:
            if self.temperature is not None:
                settings.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                settings["top_p"] = self.top_p
        new_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if new_tokens is not None:
            settings["max_new_tokens"] = new_tokens
        if self.repetition_penalty is not None:
            settings["repetition_penalty"] = self.repetition_penalty
        return settings

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# ---------------------------------------------------------------------------------------------------------------
# validation


def _is_union_branch(part) -> bool:
    """pydantic puts the tried branch of a union in `loc` (`str`, `list[TextPart]`, `function-after[...]`)."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or not part.isidentifier())


def field_name(loc: tuple) -> str:
    """`('messages', 0, 'role')` -> `messages[0].role`; the body itself is `body`."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not _is_union_branch(part):
            name += f".{part}" if name else str(part)
    return name or "body"


_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter"}


def _request_error(error: ValidationError, model: type[BaseModel]) -> RequestError:
    errors = error.errors(include_url=False)
    # of a union's branches, the one that got furthest (a wrong value before an extra field)
    first = max(errors, key=lambda e: (len(e["loc"]), e["type"] != "extra_forbidden"))
    loc = tuple(part for part in first["loc"] if not _is_union_branch(part))
    field = field_name(loc)
    kind = first["type"]
    if kind == "missing":
        message = f"{field} is required."
    elif kind == "extra_forbidden":
        if len(loc) == 1:
            message = f"unknown field {field!r}; this server accepts {', '.join(model.model_fields)}."
        else:
            message = f"{field_name(loc[:-1])} has an unknown field {loc[-1]!r}."
    elif kind in ("model_type", "model_attributes_type", "dict_type") and field == "body":
        message = f"the body must be a JSON object, got {type(first['input']).__name__}."
    else:
        got = first.get("input")
        shown = repr(got) if not isinstance(got, (str, list, dict)) or len(repr(got)) <= 60 else f"{repr(got)[:57]}..."
        message = f"{field}: {first['msg'][0].lower() + first['msg'][1:]}" + ("" if kind in _OWN else f", got {shown}")
        message += "."
    code = _CODES.get(kind, "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value")
    return RequestError(message, param=field, code=code)


_OWN = {"empty_message", "message_too_long", "invalid_utf8", "above_limit", "too_many_messages", "last_not_user",
        "n_not_one", "unsupported_penalty", "too_many_stops", "empty_stop"}


def parse_json(model: type[BaseModel], body: bytes, limits: ServeLimits):
    """Validate a JSON request body against `model`; a `RequestError` names the field otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(f"the body is not valid UTF-8 ({error.reason} at byte {error.start}).", "body") from None
    try:
        return model.model_validate_json(text, context={"limits": limits})
    except ValidationError as error:
        if error.errors()[0]["type"] == "json_invalid":
            raise RequestError(f"the body is not valid JSON: {error.errors()[0]['ctx']['error']}.", "body") from None
        raise _request_error(error, model) from None


def parse_query(params: dict[str, list[str]], limits: ServeLimits) -> ChatQuery:
    """Validate the query of `GET /api/chat` (each parameter given once)."""
    for name, values in params.items():
        if len(values) > 1:
            raise RequestError(f"{name} is given {len(values)} times; give it once.", name)
    try:
        return ChatQuery.model_validate({name: values[0] for name, values in params.items()},
                                        context={"limits": limits})
    except ValidationError as error:
        raise _request_error(error, ChatQuery) from None


__all__ = [
    "ChatCompletionRequest", "ChatMessage", "ChatQuery", "ChatRequest", "CompletionMessage", "RequestError",
    "StreamOptions", "field_name", "parse_json", "parse_query",
]
