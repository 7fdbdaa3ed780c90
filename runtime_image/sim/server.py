"""The sim engine's HTTP server: the slice of vLLM's OpenAI server that kubeplex relies on.

Endpoints: ``POST /v1/completions`` and ``/v1/chat/completions`` (``stream`` true or false,
``stream_options.include_usage``), ``GET /v1/models``, ``/health``, ``/metrics``,
``/version``, ``/kubeplex/v1/load`` (the engine's queue as a stream of server-sent events:
:mod:`kubeplex.runtime.kv_events`); with ``--enable-sleep-mode`` also
``POST /sleep?level=1|2``, ``POST /wake_up`` and ``GET /is_sleeping`` (vLLM's dev-mode sleep
API). Errors use vLLM's JSON error shape.

Token accounting (there is no real tokenizer):

* prompt tokens: the request's ``prompt_tokens`` field when given (a kubeplex extension so
  load generators can ask for exact sizes); else a list of token ids counts its length; else
  text counts ``ceil(characters / 4)`` (OpenAI's rule of thumb for English), and a chat adds
  :data:`CHAT_TOKENS_PER_MESSAGE` per message plus :data:`CHAT_REPLY_PRIMING` (OpenAI's
  chat-format accounting);
* output tokens: ``max_tokens`` (``max_completion_tokens`` for chat), default
  :data:`DEFAULT_MAX_TOKENS`, unless a ``stop`` string or ``stop_token_ids`` ends the reply
  sooner: the sim never emits an end-of-sequence token (as with vLLM's ``ignore_eos``). What
  the text is, and how ``stop``, ``n`` and ``logprobs`` apply, is
  :mod:`kubeplex.runtime.sim.sampling`; a stream carries one event per token, like vLLM's.

Prefix caching keys on the prompt's chained block hashes (:mod:`kubeplex.runtime.prefix`):
cut from the text or token ids (``--block-size`` tokens a block), or given by the request as
``block_hashes`` (with ``block_size``) when it replays a trace.

Bodies are bounded like every kubeplex surface's (:mod:`kubeplex.runtime._limits`: 64 MiB,
64 levels of nesting); ``"stream": "false"`` does not stream (vLLM's lax booleans).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubeplex.runtime._limits import (
    MAX_BODY_BYTES,
    BadRequestBody,
    as_bool,
    json_errors,
    parse_json,
)
from kubeplex.runtime._limits import request_id as read_request_id
from kubeplex.runtime.kv_events import LOAD_HEARTBEAT_S, LOAD_PATH, encode_load
from kubeplex.runtime.prefix import (
    CHARS_PER_TOKEN,
    DEFAULT_MAX_TOKENS,
    NO_BLOCKS,
    VLLM_BLOCK_SIZE,
    PromptBlocks,
    prompt_blocks,
)
from kubeplex.runtime.sim.engine import EngineAsleepError, SimEngine
from kubeplex.runtime.sim.lora import LoraRegistry
from kubeplex.runtime.sim.sampling import (
    Output,
    Sampling,
    choice_logprobs,
    context_of,
    generate,
    parse_sampling,
)

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
    sampling: Sampling
    output: Output
    #: vLLM's ``return_token_ids``: token ids in each choice (and the prompt's, when the
    #: prompt was given as ids: the sim has no tokenizer for text).
    token_ids: bool = False
    prompt_ids: tuple[int, ...] | None = None
    #: The prompt's block hashes (its prefix-cache keys).
    blocks: PromptBlocks = NO_BLOCKS


class SimServer:
    """The aiohttp application around one :class:`SimEngine`."""

    def __init__(self, engine: SimEngine, *, served_name: str, root: str, max_model_len: int,
                 sleep_mode: bool, wake_seconds: tuple[float, float],
                 lora: LoraRegistry | None = None, block_size: int = VLLM_BLOCK_SIZE) -> None:
        self.engine = engine
        self.block_size = block_size  # tokens per prefix-cache block of text prompts
        self.lora = lora  # LoRA adapters served beside the base model (--enable-lora)
        self.served_name = served_name
        self.root = root
        self.max_model_len = max_model_len
        self.sleep_mode = sleep_mode
        self.wake_seconds = wake_seconds  # (level 1, level 2), in simulated seconds
        self.created = int(time.time())
        self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors()])
        r = self.app.router
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_get("/v1/models", self.models)
        r.add_get("/health", self.health)
        r.add_get("/metrics", self.metrics)
        r.add_get("/version", self.version)
        r.add_get(LOAD_PATH, self.load)
        if sleep_mode:
            r.add_post("/sleep", self.sleep)
            r.add_post("/wake_up", self.wake_up)
            r.add_get("/is_sleeping", self.is_sleeping)
        if lora is not None:
            lora.attach(self.app)

    def serves(self, model: object) -> bool:
        """Whether a request's ``model`` names this engine: its served name or an adapter."""
        return model == self.served_name or (self.lora is not None and self.lora.serves(model))

    # ---- plain endpoints -------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": SIM_VERSION})

    async def load(self, request: web.Request) -> web.StreamResponse:
        """The engine's queue now and after every change (at least every
        :data:`LOAD_HEARTBEAT_S`), until the follower hangs up."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            while True:
                await response.write(encode_load(self.engine.load()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LOAD_HEARTBEAT_S):
                        await self.engine.load_change()
        return response

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.engine.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": self.served_name, "object": "model", "created": self.created,
                "owned_by": "vllm", "root": self.root, "parent": None,
                "max_model_len": self.max_model_len}
        adapters = self.lora.cards(self.created) if self.lora is not None else []
        return web.json_response({"object": "list", "data": [card, *adapters]})

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
        if model is not None and not self.serves(model):
            raise LookupError(f"The model `{model}` does not exist. "
                              f"Valid aliases: {self.served_name}.")
        prompt_tokens = count_prompt_tokens(body, chat)
        key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
        max_tokens = body.get(key)
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest(f"{key} must be a positive integer, got {max_tokens!r}", key)
        if prompt_tokens + max_tokens > self.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {max_tokens} output tokens and your prompt contains "
                f"{prompt_tokens} input tokens, for a total of {prompt_tokens + max_tokens} "
                f"tokens.", key)
        try:
            sampling = parse_sampling(body, chat, max_tokens)
            stream = as_bool(body.get("stream"), "stream")
            output = generate(context_of(body, chat), max_tokens, sampling)
        except BadRequestBody as exc:
            raise BadRequest(str(exc), exc.param) from exc
        options = body.get("stream_options") or {}
        if not isinstance(options, Mapping):
            raise BadRequest("stream_options must be an object", "stream_options")
        try:
            token_ids = as_bool(body.get("return_token_ids"), "return_token_ids")
        except BadRequestBody as exc:
            raise BadRequest(str(exc), exc.param) from exc
        try:
            blocks = prompt_blocks(body, chat, self.block_size)
        except ValueError as exc:
            raise BadRequest(str(exc), "block_hashes") from exc
        prompt = body.get("prompt")
        return _Parsed(chat, prompt_tokens, max_tokens, stream,
                       bool(options.get("include_usage")), sampling, output,
                       token_ids and not chat,
                       tuple(prompt) if isinstance(prompt, list) else None, blocks)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        request_id = read_request_id(request.headers)
        headers = {"X-Request-Id": request_id}
        try:
            body = parse_json(await request.read())
        except BadRequestBody as exc:
            return _error(400, str(exc), "BadRequestError", headers=headers)
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
        if parsed.stream:
            return await self._stream(request, parsed, ident, request_id, headers)
        produced = 0
        try:
            async with contextlib.aclosing(self._tokens(request_id, parsed)) as tokens:
                async for _, n in tokens:
                    produced += n
        except EngineAsleepError as exc:
            return _error(503, str(exc), "ServiceUnavailableError", headers=headers)
        output = parsed.output
        choices = []
        for index in range(parsed.sampling.n):
            choice = self._choice(parsed, index, 0, output.tokens, plain=True)
            if chat:
                choice["message"] = {"role": "assistant", "content": output.text}
            else:
                choice["text"] = output.text
            choices.append(choice)
        out = {"id": ident, "object": "chat.completion" if chat else "text_completion",
               "created": int(time.time()), "model": self.served_name, "choices": choices,
               "usage": self._usage(parsed, produced)}
        return web.Response(body=_DUMPS(out), content_type="application/json", headers=headers)

    def _choice(self, parsed: _Parsed, index: int, first: int, count: int,
                plain: bool = False) -> dict[str, Any]:
        """A choice's fields for tokens ``first .. first + count`` (not its text)."""
        output, top = parsed.output, parsed.sampling.logprobs
        last = first + count >= output.tokens
        choice: dict[str, Any] = {"index": index, "logprobs": None if top is None else
                                  choice_logprobs(output, first, count, top, parsed.chat,
                                                  len("".join(output.pieces[:first]))),
                                  "finish_reason": output.finish_reason if last else None}
        if plain or not parsed.chat or last:
            choice["stop_reason"] = output.stop_reason if last else None
        if parsed.token_ids:
            choice["token_ids"] = list(output.token_ids[first:first + count])
            prompt = parsed.prompt_ids if first == 0 else None
            choice["prompt_token_ids"] = list(prompt) if prompt is not None else None
        return choice

    async def _tokens(self, request_id: str,
                      parsed: _Parsed) -> AsyncGenerator[tuple[int, int], None]:
        """(choice, new tokens) as the engine makes them: ``n`` requests in the engine, like
        vLLM's parallel sampling."""
        count = parsed.sampling.n
        streams = [self.engine.generate(request_id if count == 1 else f"{request_id}-{i}",
                                        parsed.prompt_tokens, parsed.output.tokens,
                                        parsed.blocks)
                   for i in range(count)]
        if count == 1:
            async with contextlib.aclosing(streams[0]) as only:
                async for n in only:
                    yield 0, n
            return
        queue: asyncio.Queue[tuple[int, int, BaseException | None]] = asyncio.Queue()

        async def pump(index: int, stream: AsyncGenerator[int, None]) -> None:
            try:
                async with contextlib.aclosing(stream) as tokens:
                    async for n in tokens:
                        queue.put_nowait((index, n, None))
            except EngineAsleepError as exc:
                queue.put_nowait((index, 0, exc))
                return
            queue.put_nowait((index, 0, None))

        tasks = [asyncio.create_task(pump(i, st)) for i, st in enumerate(streams)]
        try:
            finished = 0
            while finished < count:
                index, n, error = await queue.get()
                if error is not None:
                    raise error
                if n:
                    yield index, n
                else:
                    finished += 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _usage(parsed: _Parsed, produced: int) -> dict[str, int]:
        return {"prompt_tokens": parsed.prompt_tokens, "completion_tokens": produced,
                "total_tokens": parsed.prompt_tokens + produced}

    async def _stream(self, request: web.Request, parsed: _Parsed, ident: str,
                      request_id: str, headers: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        kind = "chat.completion.chunk" if parsed.chat else "text_completion"
        pieces = parsed.output.pieces

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            out = {"id": ident, "object": kind, "created": created, "model": self.served_name,
                   "choices": choices, **extra}
            return b"data: " + _DUMPS(out).encode() + b"\n\n"

        def token(index: int, at: int) -> bytes:  # one event per token, like vLLM
            choice = self._choice(parsed, index, at, 1)
            if parsed.chat:
                choice["delta"] = {"content": pieces[at]}
            else:
                choice["text"] = pieces[at]
                choice.setdefault("stop_reason", None)
            return event([choice])

        produced = [0] * parsed.sampling.n
        try:
            if parsed.chat:  # vLLM opens each choice of a chat stream with the role
                await response.write(b"".join(event([{
                    "index": i, "delta": {"role": "assistant", "content": ""},
                    "logprobs": None, "finish_reason": None}])
                    for i in range(parsed.sampling.n)))
            # aclosing: a client that hangs up aborts the request in the engine at once.
            async with contextlib.aclosing(self._tokens(request_id, parsed)) as tokens:
                async for index, n in tokens:
                    start = produced[index]
                    produced[index] += n
                    await response.write(b"".join(token(index, at)
                                                  for at in range(start, start + n)))
            if parsed.include_usage:
                usage = self._usage(parsed, sum(produced))
                await response.write(event([], usage=usage))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except EngineAsleepError as exc:
            error = {"error": {"message": str(exc), "type": "ServiceUnavailableError",
                               "param": None, "code": 503}}
            await response.write(b"data: " + _DUMPS(error).encode() + b"\n\n")
        except ConnectionResetError:
            pass  # the client went away (vLLM logs nothing either)
        return response
