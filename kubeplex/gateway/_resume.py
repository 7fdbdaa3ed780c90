"""Resuming a generation elsewhere by recomputation: the pure half of request migration.

A request that was generating on a replica that died or left continues on another replica as
a new request whose prompt is the old prompt plus the text already generated, with the rest
of the token budget (Llumnix migrates the KV cache; recomputing it from text needs nothing
from the old replica, which may be gone). This module decides whether a request can be
resumed (:func:`resumable`), keeps what the client has been sent (:class:`Progress`, fed the
upstream's SSE events), builds the resumed body (:meth:`Progress.resume_body`), rewrites the
resumed stream's events so the client sees one stream (:meth:`Progress.rewrite`), and builds
the one JSON answer of a plain request (:meth:`Progress.answer`). No I/O here; the forwarding
is :mod:`kubeplex.gateway._migration`.

How each field carries over:

* completions, exactly: the gateway asks the replica for token ids (``return_token_ids``,
  vLLM's; the fields are in every vLLM 0.32 chunk anyway, null unless asked), and the resumed
  ``prompt`` is the prompt's token ids plus the generated ones (Llumnix's recomputation: the
  same tokens, so greedy decoding continues with the very same text). Trailing tokens whose
  text was still held back (part of a UTF-8 character) are generated again rather than
  carried, so their text reaches the client. A replica that returns no prompt ids (the sim
  for a text prompt) falls back to text;
* completions from text: ``prompt`` + generated text; chat: the messages plus an assistant
  message with the generated text and ``continue_final_message: true``,
  ``add_generation_prompt: false`` (vLLM's way to continue a reply; a request that already
  continued its own last assistant message gets the text appended to it);
* ``max_tokens`` / ``max_completion_tokens`` / ``min_tokens`` lose the tokens generated; the
  sim engine's ``prompt_tokens`` size hint gains them;
* the resumed stream's ``id`` becomes the first one's, a chat stream's second role chunk is
  dropped, so is the resumed prompt's ``prompt_token_ids``, and usage counts the tokens of
  every attempt: ``completion_tokens`` is the sum,
  ``prompt_tokens`` the first attempt's (when the stream told it, else the resumed prompt's
  count less the tokens carried over).

What is not resumed (the request is forwarded as before, and a cut stream stays cut; see
:func:`resumable` for the exact list): several choices (``n`` > 1, ``best_of``, beam search),
``echo``, batched prompts (a list of prompts), tools and structured output (a grammar would
restart mid-answer), logprobs, and a reply that streams reasoning content.

Limits of recomputation from text (chats, and replicas without token ids): the resumed prompt
is tokenized again, so a token that straddled the cut may come out split differently. With
sampling (temperature > 0) any continuation is a fresh sample from the cut on. Without token
ids, tokens are counted one per streamed event (vLLM sends one event per decode step), so
with speculative decoding the budget left can be a few tokens too large.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubeplex.runtime._limits import BadRequestBody, as_bool

__all__ = ["DONE", "Progress", "Resumable", "events", "resumable"]

#: The SSE event that ends an OpenAI stream.
DONE = b"data: [DONE]"
#: Request fields that make a generation follow a grammar or call tools: a resumed request
#: would restart the grammar mid-answer, so such requests are not resumed.
STRUCTURED_FIELDS = ("tools", "functions", "response_format", "guided_json", "guided_regex",
                     "guided_choice", "guided_grammar", "structured_outputs")
#: Request fields asking for per-token log probabilities (not carried across a move).
LOGPROB_FIELDS = ("logprobs", "top_logprobs", "prompt_logprobs")
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class Resumable:
    """A request the gateway can move between replicas mid-generation."""

    chat: bool
    client_stream: bool
    fields: Mapping[str, Any]

    def upstream_body(self) -> bytes | None:
        """What to send the first replica: None for the client's own bytes (a chat stream),
        else the request with what resuming needs: token ids (completions) and, for a plain
        request, a stream with usage, so what was generated is known."""
        if self.client_stream and self.chat:
            return None
        return _DUMPS(self._upstream(dict(self.fields))).encode()

    def _upstream(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.chat:
            body["return_token_ids"] = True
        if not self.client_stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    @property
    def prompt_ids(self) -> list[int] | None:
        """The prompt's token ids when the client gave them."""
        prompt = self.fields.get("prompt")
        return list(prompt) if isinstance(prompt, list) else None


def _int(fields: Mapping[str, Any], name: str) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestBody(f"'{name}' must be an integer, got {type(value).__name__}", name)
    return value


def resumable(path: str, fields: Mapping[str, Any], plain_too: bool) -> Resumable | str:
    """The request as a :class:`Resumable`, or why it cannot be resumed.

    Raises :class:`BadRequestBody` (400) for the fields it reads when they have the wrong type
    (the engine would refuse them too). ``plain_too``: whether a non-streaming request is
    resumed (it is then streamed from the replica and answered whole by the gateway).
    """
    if not path.endswith("/completions"):
        return "only completions and chat completions are resumed"
    chat = path.endswith("/chat/completions")
    stream = as_bool(fields.get("stream"), "stream")
    options = fields.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise BadRequestBody("'stream_options' must be an object", "stream_options")
    for name in ("n", "best_of", "max_tokens", "max_completion_tokens", "min_tokens"):
        _int(fields, name)
    if not stream and not plain_too:
        return "plain requests are not resumed (resume_plain is off)"
    if (fields.get("n") or 1) != 1 or (fields.get("best_of") or 1) != 1 \
            or as_bool(fields.get("use_beam_search"), "use_beam_search"):
        return "several choices (n, best_of or beam search)"
    if as_bool(fields.get("echo"), "echo"):
        return "echo"
    if any(fields.get(name) for name in STRUCTURED_FIELDS):
        return "tools or structured output"
    if any(fields.get(name) not in (None, False) for name in LOGPROB_FIELDS):
        return "logprobs"
    if chat:
        messages = fields.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
            return "messages is not a list of objects"
    elif not _one_prompt(fields.get("prompt")):
        return "the prompt is not one string or one list of token ids"
    return Resumable(chat, stream, fields)


def _one_prompt(prompt: object) -> bool:
    return isinstance(prompt, str) or (
        isinstance(prompt, list) and bool(prompt)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt))


def events(data: bytes) -> Iterator[bytes]:
    """The SSE events of ``data`` (whole events, each without its blank-line separator)."""
    for event in data.split(b"\n\n"):
        event = event.strip(b"\r\n")
        if event:
            yield event


def _json(event: bytes) -> dict[str, Any] | None:
    """An event's JSON object, None for ``[DONE]``, comments and anything else."""
    if not event.startswith(b"data:") or event == DONE:
        return None
    try:
        value = json.loads(event[5:])
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Progress:
    """What one request has generated so far, over every attempt (see the module doc)."""

    request: Resumable
    text: list[str] = field(default_factory=list)
    #: Token ids of the prompt and of what was generated, when the replica reports them (one
    #: text piece per generated id: ``pieces[i]`` is the text token ``ids[i]`` released).
    prompt_ids: list[int] | None = None
    ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    #: Tokens generated by the attempts before the current one, and by the current one.
    carried: int = 0
    tokens: int = 0
    #: Prompt tokens of the first attempt, when a usage report said.
    prompt_tokens: int | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    stop_reason: object = None
    id: str | None = None
    created: int | None = None
    model: str | None = None
    role_sent: bool = False
    #: Events the client has been sent (a resumed stream is rewritten only after one).
    sent: int = 0
    #: Why this generation cannot continue elsewhere (reasoning content, an error event).
    stuck: str | None = None
    moves: int = 0

    @property
    def generated(self) -> str:
        return "".join(self.text)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def absorb(self, event: bytes) -> None:
        """Update from one upstream event (the current attempt's)."""
        data = _json(event)
        if data is None:
            return
        if "error" in data:
            self.stuck = "the replica reported an error mid-stream"
            return
        if self.prompt_ids is None and self.moves == 0:
            self.prompt_ids = self.request.prompt_ids
        self.id = self.id or data.get("id")
        self.created = self.created or data.get("created")
        self.model = self.model or data.get("model")
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            if self.moves == 0 and isinstance(usage.get("prompt_tokens"), int):
                self.prompt_tokens = usage["prompt_tokens"]
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if self.request.chat:
                delta = choice.get("delta") or {}
                if "role" in delta:
                    self.role_sent = True
                if delta.get("reasoning_content") or delta.get("tool_calls"):
                    self.stuck = "the reply streams reasoning or tool calls"
                piece = delta.get("content")
                counts = "role" not in delta
            else:
                piece = choice.get("text")
                counts = not self._token_ids(choice, piece)
            if isinstance(piece, str) and piece:
                self.text.append(piece)
            if counts:
                self.tokens += 1
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
                self.stop_reason = choice.get("stop_reason")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int) \
                and data.get("choices"):
            self.tokens = usage["completion_tokens"]  # continuous usage: exact

    def _token_ids(self, choice: Mapping[str, Any], piece: object) -> bool:
        """Record a completion chunk's token ids; False when it has none (count the event)."""
        first = choice.get("prompt_token_ids")
        if self.moves == 0 and self.prompt_ids is None and isinstance(first, list) \
                and all(isinstance(t, int) for t in first):
            self.prompt_ids = list(first)
        ids = choice.get("token_ids")
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            return False
        self.ids.extend(ids)
        # A chunk's text belongs to its last token (earlier ones in it released nothing
        # alone), so a chunk with no text marks all its tokens as held back.
        self.pieces.extend([""] * (len(ids) - 1) + [piece if isinstance(piece, str) else ""])
        self.tokens += len(ids)
        return True

    def absorb_all(self, data: bytes) -> None:
        for event in events(data):
            self.absorb(event)

    # ---- moving -------------------------------------------------------------------------
    def budget_left(self) -> bool:
        """Whether tokens remain to generate (False: the cut came after the last token)."""
        limit = self.request.fields.get("max_completion_tokens") if self.request.chat \
            else None
        if limit is None:
            limit = self.request.fields.get("max_tokens")
        return not isinstance(limit, int) or self.carried + self.tokens < limit

    def _exact(self) -> bool:
        """Whether every generated token's id is known (the resume is by token ids)."""
        return self.prompt_ids is not None and len(self.ids) == self.carried

    def next_attempt(self) -> None:
        """The current attempt was cut: its tokens are carried into the next one. Resuming by
        token ids, trailing tokens whose text was held back (the start of a UTF-8 character)
        are dropped, to be generated again with their text."""
        self.carried += self.tokens
        self.tokens = 0
        self.usage = None
        self.moves += 1
        if self._exact():
            while self.ids and not self.pieces[-1]:
                self.ids.pop()
                self.pieces.pop()
                self.carried -= 1
        elif self.request.prompt_ids is not None and self.carried:
            self.stuck = "the replica reported no token ids to continue a token-id prompt"

    def resume_body(self) -> bytes:
        """The request that continues this generation (the plain ones as streams)."""
        body = self.request._upstream(dict(self.request.fields))
        text, done = self.generated, self.carried
        if done == 0 and not text:
            return _DUMPS(body).encode()
        if not self.request.chat and self.prompt_ids is not None and self._exact():
            body["prompt"] = self.prompt_ids + self.ids
        elif self.request.chat:
            messages = list(body["messages"])
            last = messages[-1] if messages else None
            if as_bool(body.get("continue_final_message"), "continue_final_message") \
                    and isinstance(last, Mapping) and last.get("role") == "assistant" \
                    and isinstance(last.get("content"), str):
                messages[-1] = {**last, "content": last["content"] + text}
            else:
                messages.append({"role": "assistant", "content": text})
            body.update(messages=messages, continue_final_message=True,
                        add_generation_prompt=False)
        else:
            body["prompt"] = body["prompt"] + text
        for name in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(name), int):
                body[name] = max(1, body[name] - done)
        if isinstance(body.get("min_tokens"), int):
            body["min_tokens"] = max(0, body["min_tokens"] - done)
        if isinstance(body.get("prompt_tokens"), int):  # the sim engine's size hint
            body["prompt_tokens"] += done
        return _DUMPS(body).encode()

    # ---- what the client sees ------------------------------------------------------------
    def _usage(self, usage: Mapping[str, Any]) -> dict[str, Any]:
        completion = self.carried + int(usage.get("completion_tokens") or 0)
        prompt = self.prompt_tokens if self.prompt_tokens is not None \
            else max(0, int(usage.get("prompt_tokens") or 0) - self.carried)
        return {**usage, "prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def rewrite(self, event: bytes) -> bytes | None:
        """A resumed attempt's event as the client's stream continues it (None: drop it)."""
        if self.sent == 0 or self.moves == 0:
            return event
        data = _json(event)
        if data is None:
            return event
        choices = data.get("choices") or []
        if self.request.chat and self.role_sent and choices and all(
                isinstance(c, dict) and "role" in (c.get("delta") or {})
                and not (c.get("delta") or {}).get("content") for c in choices):
            return None  # the client had its role chunk
        if self.id is not None:
            data["id"] = self.id
        for choice in choices:
            if isinstance(choice, dict) and choice.get("prompt_token_ids") is not None:
                choice["prompt_token_ids"] = None  # the resumed prompt's, not the client's
        if isinstance(data.get("usage"), dict):
            data["usage"] = self._usage(data["usage"])
        return b"data: " + _DUMPS(data).encode()

    def answer(self) -> dict[str, Any]:
        """The one JSON answer of a plain request, from every attempt's events."""
        text = self.generated
        choice: dict[str, Any] = {"index": 0, "logprobs": None,
                                  "finish_reason": self.finish_reason,
                                  "stop_reason": self.stop_reason}
        if self.request.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
            if as_bool(self.request.fields.get("return_token_ids"), "return_token_ids"):
                choice.update(token_ids=self.ids, prompt_token_ids=self.prompt_ids)
        usage = self._usage(self.usage or {"prompt_tokens": self.prompt_tokens,
                                           "completion_tokens": self.tokens})
        return {"id": self.id, "object": "chat.completion" if self.request.chat
                else "text_completion", "created": self.created, "model": self.model,
                "choices": [choice], "usage": usage}
