"""The sim engine's other OpenAI-style endpoints: embeddings, responses and rerank.

They exist so that clients (the official ``openai`` SDK among them) and the routers'
pass-through of ``/v1/embeddings``, ``/v1/responses`` and ``/v1/rerank`` can be tested without
vLLM. Each request runs through the engine's scheduler like a completion (it queues, takes KV
and shows in the ``vllm:*`` series), with these shapes:

* ``POST /v1/embeddings`` (``input``: a string, a list of strings, a token-id list or a list of
  them; ``encoding_format`` ``float`` or ``base64``, the SDK's default): a prefill of every input
  and one step (vLLM's pooling runner has no decode; the sim's step is its stand-in), answered
  with a unit vector per input of :data:`EMBEDDING_DIM` floats. Vectors are bags of hashed words,
  so texts sharing words point alike (the rerank scores use them).
* ``POST /v1/responses`` (``input``: a string or a list of messages; ``instructions``;
  ``max_output_tokens``, default 16; ``stream`` must be false): generated like a chat, answered
  as a Responses API object with one ``message`` output of ``output_text``.
* ``POST /v1/rerank`` (``query``, ``documents``: strings, ``top_n``): a prefill of query +
  document for each document, answered with each document's ``relevance_score`` (the cosine of
  their embeddings), best first (vLLM's, Jina's and Cohere's shape).

Token counts follow the completions' rules (:func:`~.server.count_prompt_tokens`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from kubeplex.runtime._limits import BadRequestBody, parse_json
from kubeplex.runtime._limits import request_id as read_request_id
from kubeplex.runtime.sim.engine import EngineAsleepError
from kubeplex.runtime.sim.sampling import Sampling, generate
from kubeplex.runtime.sim.server import (
    DEFAULT_MAX_TOKENS,
    BadRequest,
    SimServer,
    count_prompt_tokens,
)

__all__ = ["EMBEDDING_DIM", "attach", "embed"]

#: Width of the sim's embeddings. vLLM answers with the pooling model's hidden size; the sim
#: answers small vectors to keep answers light (no client depends on the width).
EMBEDDING_DIM = 64
#: Bytes of the sha256 digest that pick a word's dimension and sign.
_HASH_BYTES = 4
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


def embed(text: str) -> list[float]:
    """A unit vector of :data:`EMBEDDING_DIM` floats: each word adds +-1 at a hashed index."""
    vector = [0.0] * EMBEDDING_DIM
    for word in text.lower().split():
        digest = int.from_bytes(hashlib.sha256(word.encode()).digest()[:_HASH_BYTES], "big")
        vector[digest % EMBEDDING_DIM] += 1.0 if digest & 1 << 31 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _texts(value: Any, field: str) -> list[str | list[int]]:
    """``input`` of an embeddings request as a list of texts or token-id lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        return [list(value)]
    if isinstance(value, list) and value and all(
            isinstance(t, str) or (isinstance(t, list) and all(isinstance(i, int) for i in t))
            for t in value):
        return list(value)
    raise BadRequest(f"{field} must be a string, a list of strings or token ids", field)


def _tokens(item: str | list[int]) -> int:
    return len(item) if isinstance(item, list) else count_prompt_tokens({"prompt": item}, False)


class _Apis:
    def __init__(self, server: SimServer) -> None:
        self.server = server

    def _check_model(self, body: Mapping[str, Any]) -> None:
        model = body.get("model")
        if model is not None and not self.server.serves(model):
            raise LookupError(f"The model `{model}` does not exist. "
                              f"Valid aliases: {self.server.served_name}.")

    async def _run(self, request_id: str, prompt_tokens: int, max_tokens: int) -> int:
        """Queue one request on the engine and wait for its tokens; the tokens made."""
        if prompt_tokens + max_tokens > self.server.max_model_len:
            raise BadRequest(f"This model's maximum context length is "
                             f"{self.server.max_model_len} tokens; the request needs "
                             f"{prompt_tokens + max_tokens}.")
        produced = 0
        async with contextlib.aclosing(self.server.engine.generate(
                request_id, prompt_tokens, max_tokens)) as stream:
            async for n in stream:
                produced += n
        return produced

    async def _handle(self, request: web.Request, answer: Any) -> web.Response:
        request_id = read_request_id(request.headers)
        headers = {"X-Request-Id": request_id}
        try:
            body = parse_json(await request.read())
            if not isinstance(body, Mapping):
                raise BadRequest("the body must be a JSON object")
            self._check_model(body)
            if self.server.engine.sleep_level:
                raise EngineAsleepError("the engine is sleeping")
            out = await answer(body, request_id)
        except BadRequestBody as exc:  # not JSON, or nested too deep
            return _error(400, str(exc), "BadRequestError", None, headers)
        except BadRequest as exc:
            return _error(400, str(exc), "BadRequestError", exc.param, headers)
        except LookupError as exc:
            return _error(404, str(exc), "NotFoundError", "model", headers)
        except EngineAsleepError as exc:
            return _error(503, str(exc), "ServiceUnavailableError", None, headers)
        return web.Response(body=_DUMPS(out), content_type="application/json", headers=headers)

    # ---- endpoints ---------------------------------------------------------------------
    async def embeddings(self, request: web.Request) -> web.Response:
        async def answer(body: Mapping[str, Any], request_id: str) -> dict[str, Any]:
            items = _texts(body.get("input"), "input")
            fmt = body.get("encoding_format") or "float"
            if fmt not in ("float", "base64"):
                raise BadRequest("encoding_format must be float or base64", "encoding_format")
            tokens = sum(_tokens(i) for i in items)
            await self._run(request_id, tokens, 1)
            data = []
            for index, item in enumerate(items):
                vector = embed(item if isinstance(item, str) else " ".join(map(str, item)))
                value: Any = vector if fmt == "float" else base64.b64encode(
                    struct.pack(f"<{len(vector)}f", *vector)).decode()
                data.append({"object": "embedding", "index": index, "embedding": value})
            return {"object": "list", "data": data, "model": body.get("model"),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

        return await self._handle(request, answer)

    async def responses(self, request: web.Request) -> web.Response:
        async def answer(body: Mapping[str, Any], request_id: str) -> dict[str, Any]:
            if body.get("stream"):
                raise BadRequest("the sim engine answers /v1/responses with stream: false "
                                 "only", "stream")
            given = body.get("input")
            messages: Sequence[Any] = ([{"role": "user", "content": given}]
                                       if isinstance(given, str) else given or [])
            if body.get("instructions"):
                messages = [{"role": "system", "content": body["instructions"]}, *messages]
            prompt = count_prompt_tokens({"messages": list(messages)}, True)
            limit = body.get("max_output_tokens") or DEFAULT_MAX_TOKENS
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise BadRequest("max_output_tokens must be a positive integer",
                                 "max_output_tokens")
            produced = await self._run(request_id, prompt, limit)
            text = generate("", produced, Sampling()).text if produced else ""
            return {"id": f"resp_{request_id}", "object": "response",
                    "created_at": int(time.time()), "status": "completed",
                    "model": body.get("model"), "output": [{
                        "type": "message", "id": f"msg_{request_id}", "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                    "usage": {"input_tokens": prompt, "output_tokens": produced,
                              "total_tokens": prompt + produced}}

        return await self._handle(request, answer)

    async def rerank(self, request: web.Request) -> web.Response:
        async def answer(body: Mapping[str, Any], request_id: str) -> dict[str, Any]:
            query, documents = body.get("query"), body.get("documents")
            if not isinstance(query, str) or not query:
                raise BadRequest("query must be a non-empty string", "query")
            if not isinstance(documents, list) or not documents or not all(
                    isinstance(d, str) for d in documents):
                raise BadRequest("documents must be a non-empty list of strings", "documents")
            top_n = body.get("top_n") or len(documents)
            if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
                raise BadRequest("top_n must be a positive integer", "top_n")
            tokens = sum(_tokens(query) + _tokens(d) for d in documents)
            await self._run(request_id, tokens, 1)
            q = embed(query)
            scored = sorted(((sum(a * b for a, b in zip(q, embed(d), strict=True)), i, d)
                             for i, d in enumerate(documents)), key=lambda t: (-t[0], t[1]))
            return {"id": f"rerank-{request_id}", "model": body.get("model"),
                    "usage": {"total_tokens": tokens},
                    "results": [{"index": i, "document": {"text": d}, "relevance_score": s}
                                for s, i, d in scored[:top_n]]}

        return await self._handle(request, answer)


def _error(status: int, message: str, kind: str, param: str | None,
           headers: Mapping[str, str]) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status, headers=headers)


def attach(server: SimServer) -> None:
    """Add the three endpoints to ``server``'s application (before it starts)."""
    apis = _Apis(server)
    server.app.router.add_post("/v1/embeddings", apis.embeddings)
    server.app.router.add_post("/v1/responses", apis.responses)
    server.app.router.add_post("/v1/rerank", apis.rerank)
