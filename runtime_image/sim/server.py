"""The sim engine's HTTP server: the slice of vLLM's OpenAI server that kubeplex relies on.

Endpoints: ``POST /v1/completions`` and ``/v1/chat/completions`` (``stream`` true or false,
``stream_options.include_usage``), ``GET /v1/models``, ``/health``, ``/metrics``,
``/version``; with ``--enable-sleep-mode`` also ``POST /sleep?level=1|2``, ``POST /wake_up``
and ``GET /is_sleeping`` (vLLM's dev-mode sleep API). Errors use vLLM's JSON error shape.

Token accounting (there is no real tokenizer):

* prompt tokens: the request's ``prompt_tokens`` field when given (a kubeplex extension so
  load generators can ask for exact sizes); else a list of token ids counts its length; else
  text counts ``ceil(characters / 4)`` (OpenAI's rule of thumb for English), and a chat adds
  :data:`CHAT_TOKENS_PER_MESSAGE` per message plus :data:`CHAT_REPLY_PRIMING` (OpenAI's
  chat-format accounting);
* output tokens: exactly ``max_tokens`` (``max_completion_tokens`` for chat), default
  :data:`DEFAULT_MAX_TOKENS`: the sim never stops early (as with vLLM's ``ignore_eos``).

Prefix caching keys on the prompt's chained block hashes (:mod:`kubeplex.runtime.prefix`):
cut from the text or token ids (``--block-size`` tokens a block), or given by the request as
``block_hashes`` (with ``block_size``) when it replays a trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubeplex.runtime.prefix import (
    CHARS_PER_TOKEN,
    DEFAULT_MAX_TOKENS,
    VLLM_BLOCK_SIZE,
    PromptBlocks,
    prompt_blocks,
)
from kubeplex.runtime.sim.engine import EngineAsleepError, SimEngine

__all__ = [
    "CHARS_PER_TOKEN",
    "CHAT_REPLY_PRIMING",
    "CHAT_TOKENS_PER_MESSAGE",
    "DEFAULT_MAX_TOKENS",
    "SimServer",
    "count_prompt_tokens",
]

#: OpenAI's chat accounting: each message costs its role/separator tokens ...
CHAT_TOKENS_PER_MESSAGE = 4
#: ... and every reply is primed with the assistant header.
CHAT_REPLY_PRIMING = 2
#: Words the sim "generates", one per output token.
WORDS = ("the", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
SIM_VERSION = "0.32.0+kubeplex-sim"
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


class BadRequest(Exception):
    """A request the sim refuses with 400 (vLLM's BadRequestError)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, kind: str, param: str | None = None,
           headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status, headers=headers)


def _text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def count_prompt_tokens(body: Mapping[str, Any], chat: bool) -> int:
    """Prompt tokens of a request body (see the module doc for the rules)."""
    hint = body.get("prompt_tokens")
    if hint is not None:
        if isinstance(hint, bool) or not isinstance(hint, int) or hint < 1:
            raise BadRequest("prompt_tokens must be a positive integer", "prompt_tokens")
        return hint
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list", "messages")
        total = CHAT_REPLY_PRIMING
        for m in messages:
            content = m.get("content", "") if isinstance(m, Mapping) else None
            if isinstance(content, list):  # content parts: count the text parts
                content = " ".join(str(p.get("text", "")) for p in content
                                   if isinstance(p, Mapping))
            if not isinstance(content, str):
                raise BadRequest("each message needs a string content", "messages")
            total += CHAT_TOKENS_PER_MESSAGE + _text_tokens(content)
        return total
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return _text_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    raise BadRequest("prompt must be a string or a list of token ids (the sim serves one "
                     "prompt per request)", "prompt")


@dataclass(frozen=True)
class _Parsed:
    chat: bool
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    blocks: PromptBlocks


class SimServer:
    """The aiohttp application around one :class:`SimEngine`."""

    def __init__(self, engine: SimEngine, *, served_name: str, root: str, max_model_len: int,
                 sleep_mode: bool, wake_seconds: tuple[float, float],
                 block_size: int = VLLM_BLOCK_SIZE) -> None:
        self.engine = engine
        self.block_size = block_size
        self.served_name = served_name
        self.root = root
        self.max_model_len = max_model_len
        self.sleep_mode = sleep_mode
        self.wake_seconds = wake_seconds  # (level 1, level 2), in simulated seconds
        self.created = int(time.time())
        self.app = web.Application()
        r = self.app.router
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_get("/v1/models", self.models)
        r.add_get("/health", self.health)
        r.add_get("/metrics", self.metrics)
        r.add_get("/version", self.version)
        if sleep_mode:
            r.add_post("/sleep", self.sleep)
            r.add_post("/wake_up", self.wake_up)
            r.add_get("/is_sleeping", self.is_sleeping)

    # ---- plain endpoints -------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": SIM_VERSION})

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.engine.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": self.served_name, "object": "model", "created": self.created,
                "owned_by": "vllm", "root": self.root, "parent": None,
                "max_model_len": self.max_model_len}
        return web.json_response({"object": "list", "data": [card]})

    # ---- sleep mode ------------------------------------------------------------------
    async def sleep(self, request: web.Request) -> web.Response:
        level = request.query.get("level", "1")
        if level not in ("1", "2"):
            return _error(400, f"level must be 1 or 2, got {level!r}", "BadRequestError", "level")
        if self.engine.scheduler.num_running or self.engine.scheduler.num_waiting:
            return _error(400, "cannot sleep with requests in flight", "BadRequestError")
        self.engine.sleep_level = int(level)
        self.engine.metrics.set_sleep_level(int(level))
        return web.Response(status=200)

    async def wake_up(self, request: web.Request) -> web.Response:
        level = self.engine.sleep_level
        if level:
            await asyncio.sleep(self.wake_seconds[level - 1] * self.engine.time_scale)
            self.engine.sleep_level = 0
            self.engine.metrics.set_sleep_level(0)
        return web.Response(status=200)

    async def is_sleeping(self, request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.engine.sleep_level > 0})

    # ---- generation ------------------------------------------------------------------
    def _parse(self, body: Any, chat: bool) -> _Parsed:
        if not isinstance(body, Mapping):
            raise BadRequest("the body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.served_name:
            raise LookupError(f"The model `{model}` does not exist. "
                              f"Valid aliases: {self.served_name}.")
        prompt_tokens = count_prompt_tokens(body, chat)
        key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
        max_tokens = body.get(key)
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest(f"{key} must be a positive integer, got {max_tokens!r}", key)
        if body.get("n", 1) != 1:
            raise BadRequest("the sim engine serves n=1 only", "n")
        if prompt_tokens + max_tokens > self.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {max_tokens} output tokens and your prompt contains "
                f"{prompt_tokens} input tokens, for a total of {prompt_tokens + max_tokens} "
                f"tokens.", key)
        options = body.get("stream_options") or {}
        try:
            blocks = prompt_blocks(body, chat, self.block_size)
        except ValueError as exc:
            raise BadRequest(str(exc), "block_hashes") from exc
        return _Parsed(chat, prompt_tokens, max_tokens, bool(body.get("stream", False)),
                       bool(isinstance(options, Mapping) and options.get("include_usage")),
                       blocks)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        headers = {"X-Request-Id": request_id}
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "the body is not valid JSON", "BadRequestError", headers=headers)
        try:
            parsed = self._parse(body, chat)
        except BadRequest as exc:
            return _error(400, str(exc), "BadRequestError", exc.param, headers)
        except LookupError as exc:
            return _error(404, str(exc), "NotFoundError", "model", headers)
        if self.engine.sleep_level:
            return _error(503, "the engine is sleeping", "ServiceUnavailableError",
                          headers=headers)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"
        tokens = self.engine.generate(request_id, parsed.prompt_tokens, parsed.max_tokens,
                                      parsed.blocks)
        if parsed.stream:
            return await self._stream(request, parsed, ident, tokens, headers)
        produced = 0
        try:
            async with contextlib.aclosing(tokens) as stream:
                async for n in stream:
                    produced += n
        except EngineAsleepError as exc:
            return _error(503, str(exc), "ServiceUnavailableError", headers=headers)
        text = "".join(WORDS[i % len(WORDS)] for i in range(produced))
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "length",
                                  "stop_reason": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        out = {"id": ident, "object": "chat.completion" if chat else "text_completion",
               "created": int(time.time()), "model": self.served_name, "choices": [choice],
               "usage": self._usage(parsed, produced)}
        return web.Response(body=_DUMPS(out), content_type="application/json", headers=headers)

    @staticmethod
    def _usage(parsed: _Parsed, produced: int) -> dict[str, int]:
        return {"prompt_tokens": parsed.prompt_tokens, "completion_tokens": produced,
                "total_tokens": parsed.prompt_tokens + produced}

    async def _stream(self, request: web.Request, parsed: _Parsed, ident: str,
                      tokens: AsyncGenerator[int, None], headers: dict[str, str]
                      ) -> web.StreamResponse:
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        kind = "chat.completion.chunk" if parsed.chat else "text_completion"

        def chunk(piece: str | None, finish: str | None) -> bytes:
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
            if parsed.chat:
                choice["delta"] = {"content": piece} if piece is not None else {}
            else:
                choice["text"] = piece or ""
                choice["stop_reason"] = None
            out = {"id": ident, "object": kind, "created": created, "model": self.served_name,
                   "choices": [choice]}
            return b"data: " + _DUMPS(out).encode() + b"\n\n"

        if parsed.chat:  # vLLM opens a chat stream with the role
            first = {"id": ident, "object": kind, "created": created, "model": self.served_name,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": None}]}
            await response.write(b"data: " + _DUMPS(first).encode() + b"\n\n")
        produced = 0
        try:
            # aclosing: a client that hangs up aborts the request in the engine at once.
            async with contextlib.aclosing(tokens) as stream:
                async for n in stream:
                    piece = "".join(WORDS[i % len(WORDS)]
                                    for i in range(produced, produced + n))
                    produced += n
                    done = produced >= parsed.max_tokens
                    await response.write(chunk(piece, "length" if done else None))
            if parsed.include_usage:
                usage = {"id": ident, "object": kind, "created": created,
                         "model": self.served_name, "choices": [],
                         "usage": self._usage(parsed, produced)}
                await response.write(b"data: " + _DUMPS(usage).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away (vLLM logs nothing either)
        return response
