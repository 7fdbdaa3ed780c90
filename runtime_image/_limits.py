"""What every kubeplex HTTP surface checks before it acts on a request (hostile input).

The gateway, the runtime's router, the sim engine, the runtime's control API and the
operator's ``/alerts`` share these bounds, so a body one of them accepts is never refused one
hop later for a limit the client could not see:

* a body over :data:`MAX_BODY_BYTES` is refused with ``413`` (aiohttp's ``client_max_size``,
  answered as JSON by :func:`json_errors`);
* a JSON body nested deeper than :data:`MAX_JSON_DEPTH` is refused with ``400`` *before* it
  is parsed (:func:`check_depth`: the C decoder would recurse once per level);
* an OpenAI request body must be a JSON object whose ``model`` is a non-empty string
  (:func:`parse_request`; ``400`` naming ``model`` otherwise, never "model `None` not found");
* every 4xx the web framework raises itself (404 unknown path, 405 wrong method, 413) is
  answered as JSON by :func:`json_errors`, in the surface's own error shape;
* an ``X-Request-Id`` that is not short printable ASCII is replaced (:func:`request_id`): it
  is sent on to the engine and back to the client, and a header value a client made up must
  never be what makes the answer fail.

Booleans follow vLLM's request parsing (pydantic's lax mode): ``"false"``, ``"0"``, ``"no"``
are false, so ``"stream": "false"`` does not stream anywhere (:func:`as_bool`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy
from aiohttp import web

from kubeplex.runtime.errors import RuntimeError_

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_REQUEST_ID_CHARS",
    "BadRequestBody",
    "ErrorBody",
    "OpenAIRequest",
    "as_bool",
    "check_depth",
    "json_errors",
    "openai_error",
    "parse_json",
    "parse_request",
    "request_id",
]

#: Largest request body any kubeplex surface accepts (the gateway, the runtime's router and
#: the sim engine alike; vLLM's API server sets none). 64 MiB holds a full 128k-token context
#: as text several times over, with room for base64 images in chat messages.
MAX_BODY_BYTES = 64 * 1024**2
#: Deepest JSON nesting accepted. OpenAI bodies are shallow (messages -> content parts ->
#: image_url is 4 levels; a tool's JSON Schema rarely passes 20); Python's C decoder recurses
#: once per level and fails near 1,000 with a RecursionError.
MAX_JSON_DEPTH = 64
#: Longest client-given ``X-Request-Id`` kept (a UUID is 36 characters; OpenAI's are ~30).
MAX_REQUEST_ID_CHARS = 128
#: What pydantic's lax mode (vLLM's request models) reads as true / false from a string.
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
#: Every byte except the six that shape JSON nesting: ``[ ] { } " \``.
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'[]{}"\\')
_STRING = re.compile(rb'"[^"]*"')
#: Openings -> 1, closings -> -1 (as int8): the depth is their running sum.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
#: Structural bytes summed per numpy call (8 MiB of int64 running sums at most).
_DEPTH_CHUNK = 1 << 20
_REQUEST_ID = re.compile(f"[!-~]{{1,{MAX_REQUEST_ID_CHARS}}}")


class BadRequestBody(RuntimeError_):
    """A request body kubeplex refuses before forwarding it (400, naming ``param``)."""

    http_status = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def check_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse (:class:`BadRequestBody`) JSON nested deeper than ``limit``, without parsing it.

    Linear in the body, at C speed: keep only the bytes that shape nesting, drop escapes and
    strings, then take the running sum of openings (+1) and closings (-1) in numpy, a chunk at
    a time (a 64 MiB body is checked in well under a second). A body with at most ``limit``
    openings cannot be too deep and skips the rest.
    """
    shape = body.translate(None, _NOT_STRUCTURAL)
    if shape.count(b"[") + shape.count(b"{") <= limit:
        return
    if b"\\" in shape:  # an escaped quote or backslash is no string boundary
        shape = shape.replace(b"\\\\", b"").replace(b'\\"', b"").replace(b"\\", b"")
    steps = numpy.frombuffer(_STRING.sub(b"", shape).translate(_STEPS), dtype=numpy.int8)
    depth = 0
    for start in range(0, len(steps), _DEPTH_CHUNK):
        running = numpy.cumsum(steps[start:start + _DEPTH_CHUNK], dtype=numpy.int64) + depth
        if int(running.max()) > limit:
            raise BadRequestBody(f"the body is nested deeper than {limit} levels")
        depth = int(running[-1])


def parse_json(body: bytes, limit: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of ``body``; :class:`BadRequestBody` when it is too deep or not JSON."""
    check_depth(body, limit)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequestBody(f"the body is not valid JSON ({exc.__class__.__name__})") from exc


@dataclass(frozen=True)
class OpenAIRequest:
    """A parsed OpenAI request body: its ``model`` and every field (the object itself)."""

    model: str
    fields: Mapping[str, Any]


def parse_request(body: bytes) -> OpenAIRequest:
    """Parse an OpenAI request body; :class:`BadRequestBody` unless it is a JSON object with a
    non-empty string ``model``."""
    value = parse_json(body)
    if not isinstance(value, dict):
        raise BadRequestBody(f"the body must be a JSON object, got {_kind(value)}")
    model = value.get("model")
    if model is None:
        raise BadRequestBody("the body has no 'model': name the model to use", "model")
    if not isinstance(model, str) or not model:
        raise BadRequestBody(f"'model' must be a non-empty string, got {_kind(model)}", "model")
    return OpenAIRequest(model, value)


def as_bool(value: object, field: str) -> bool:
    """A boolean request field read like vLLM reads it (None is false)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise BadRequestBody(f"'{field}' must be a boolean, got {_kind(value)}", field)


def _kind(value: object) -> str:
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return "null" if value is None else type(value).__name__


def request_id(headers: Mapping[str, str]) -> str:
    """The request's ``X-Request-Id`` when it is short printable ASCII, else a new one."""
    given = headers.get("X-Request-Id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


#: Builds a surface's error body from (status, message).
ErrorBody = Callable[[int, str], Mapping[str, Any]]


def openai_error(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error shape (vLLM's too): ``{"error": {message, type, param, code}}``."""
    default = "BadRequestError" if status < 500 else "InternalServerError"
    kind = _ERROR_TYPES.get(status, default)
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
                404: "NotFoundError",
                405: "MethodNotAllowedError", 413: "RequestTooLargeError",
                415: "UnsupportedMediaTypeError", 422: "UnprocessableEntityError",
                503: "ServiceUnavailableError"}
_MESSAGES = {404: "no such endpoint: {method} {path}",
             405: "{method} is not allowed on {path}",
             413: "the body is larger than the limit of {limit} bytes"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_errors(shape: ErrorBody = openai_error) -> Any:
    """An aiohttp middleware answering the framework's own 4xx (unknown path, wrong method,
    body too large, bad request line) as JSON in ``shape``, instead of aiohttp's plain text."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.status >= 500:
                raise
            template = _MESSAGES.get(exc.status)
            message = template.format(method=request.method, path=request.path[:200],
                                      limit=request.client_max_size) if template \
                else exc.reason
            headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
            return web.json_response(shape(exc.status, message), status=exc.status,
                                     headers=headers)

    return middleware
