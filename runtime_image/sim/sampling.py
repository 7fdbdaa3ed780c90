"""What the sim engine generates, and vLLM's sampling fields applied to it (pure functions).

The sim's "language model" is a ten-word cycle: a reply continues the cycle from the word its
context ends with (a context ending in none of them starts at ``"The"``). Being a function of
the context, it continues a cut generation exactly when the context is the old prompt plus
the text already generated, which is how the gateway resumes a request on another replica:
a client's token sequence then has no gap and no repeat, as with greedy decoding in vLLM.
Token ids are the words' indices in :data:`VOCABULARY`.

Sampling fields, handled the way vLLM 0.32 handles them:

* ``stop`` (a string or a list of strings): generation ends at the first token after which
  the text contains one of them (ignored before ``min_tokens``); the text is cut before it
  (after it with ``include_stop_str_in_output``), ``finish_reason`` is ``"stop"`` and
  ``stop_reason`` the string; ``stop_token_ids`` likewise, the token's text left out;
* ``n``: that many choices (the sim's are all the same text, as with greedy decoding);
* ``logprobs`` (completions: top-k count; chat: ``logprobs: true`` with ``top_logprobs``):
  vLLM's shapes, the generated token at log-probability 0 and the other words far below;
  more than :data:`MAX_LOGPROBS` is refused like vLLM's default ``max_logprobs``;
  ``prompt_logprobs`` is refused (the sim has no prompt tokens to score);
* ``min_tokens`` above ``max_tokens`` is refused, wrong types are refused, all with 400.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubeplex.runtime._limits import BadRequestBody, as_bool

__all__ = [
    "MAX_LOGPROBS",
    "VOCABULARY",
    "Output",
    "Sampling",
    "choice_logprobs",
    "context_of",
    "generate",
    "parse_sampling",
]

#: The words the sim generates, one per token, in a cycle (no word ends another one, so the
#: word a context ends with is never ambiguous).
VOCABULARY = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog",
              ".")
#: vLLM's default ``--max-logprobs``: requests asking for more top log-probabilities get 400.
MAX_LOGPROBS = 20
#: vLLM's stand-in for a log-probability of minus infinity in its JSON answers.
FAR_BELOW = -9999.0


@dataclass(frozen=True)
class Sampling:
    """The sampling fields of one request."""

    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop: bool = False
    min_tokens: int = 0
    #: Top log-probabilities per token (None: no logprobs asked).
    logprobs: int | None = None


@dataclass(frozen=True)
class Output:
    """One choice's generation: the text each token adds (stop-trimmed), its token ids, and
    why it finished."""

    pieces: tuple[str, ...]
    token_ids: tuple[int, ...]
    finish_reason: str
    stop_reason: str | int | None = None

    @property
    def tokens(self) -> int:
        return len(self.pieces)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _count(body: Mapping[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low \
            or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadRequestBody(f"{name} must be an integer {bound}, got {value!r}", name)
    return value


def parse_sampling(body: Mapping[str, Any], chat: bool, max_tokens: int) -> Sampling:
    """The sampling fields of a request body; :class:`BadRequestBody` where vLLM says 400."""
    n = _count(body, "n", 1) or 1
    stop = body.get("stop")
    if isinstance(stop, str):
        stops: tuple[str, ...] = (stop,)
    elif stop is None:
        stops = ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise BadRequestBody("stop must be a string or a list of strings", "stop")
    ids = body.get("stop_token_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                            for i in ids):
        raise BadRequestBody("stop_token_ids must be a list of integers", "stop_token_ids")
    min_tokens = _count(body, "min_tokens", 0) or 0
    if min_tokens > max_tokens:
        raise BadRequestBody(f"min_tokens must be less than or equal to max_tokens="
                             f"{max_tokens}, got {min_tokens}", "min_tokens")
    if body.get("prompt_logprobs") is not None:
        raise BadRequestBody("the sim engine computes no prompt_logprobs (it has no prompt "
                             "tokens to score); leave it out", "prompt_logprobs")
    if chat:
        asked = as_bool(body.get("logprobs"), "logprobs")
        top = _count(body, "top_logprobs", 0, MAX_LOGPROBS)
        if top is not None and not asked:
            raise BadRequestBody("when using `top_logprobs`, `logprobs` must be set to true",
                                 "top_logprobs")
        logprobs = (top or 0) if asked else None
    else:
        logprobs = _count(body, "logprobs", 0, MAX_LOGPROBS)
    return Sampling(n, stops, tuple(ids),
                    as_bool(body.get("include_stop_str_in_output"),
                            "include_stop_str_in_output"), min_tokens, logprobs)


def context_of(body: Mapping[str, Any], chat: bool) -> str | int:
    """What a reply continues: the prompt's text (or last token id), or, for a chat that
    continues its final assistant message, that message's text; else a new reply ("")."""
    if not chat:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[-1], int):
            return int(prompt[-1])
        return prompt if isinstance(prompt, str) else ""
    messages = body.get("messages")
    if as_bool(body.get("continue_final_message"), "continue_final_message") \
            and isinstance(messages, list) and messages and isinstance(messages[-1], Mapping) \
            and messages[-1].get("role") == "assistant":
        content = messages[-1].get("content")
        return content if isinstance(content, str) else ""
    return ""


def _first_word(context: str | int) -> int:
    if isinstance(context, int):
        return (context + 1) % len(VOCABULARY) if 0 <= context < len(VOCABULARY) else 0
    for index, word in enumerate(VOCABULARY):
        if context.endswith(word):
            return (index + 1) % len(VOCABULARY)
    return 0


def generate(context: str | int, max_tokens: int, sampling: Sampling) -> Output:
    """One choice's output: up to ``max_tokens`` words continuing ``context``, stopped as
    ``sampling`` says."""
    start = _first_word(context)
    ids = [(start + i) % len(VOCABULARY) for i in range(max_tokens)]
    text = ""
    ends: list[int] = []  # the text's length after each token
    for k, token in enumerate(ids, start=1):
        if k > sampling.min_tokens and token in sampling.stop_token_ids:
            return _trim(ids[:k], [*ends, len(text)], text, "stop", token)
        searched = max(0, len(text) - max((len(s) for s in sampling.stop), default=0))
        text += VOCABULARY[token]
        ends.append(len(text))
        if k <= sampling.min_tokens or not sampling.stop:
            continue
        found = [(text.find(s, searched), s) for s in sampling.stop if s]
        hits = [(at, s) for at, s in found if at >= 0]
        if hits:
            at, stop = min(hits)
            cut = at + len(stop) if sampling.include_stop else at
            return _trim(ids[:k], ends, text[:cut], "stop", stop)
    return _trim(ids, ends, text, "length", None)


def _trim(ids: Sequence[int], ends: Sequence[int], text: str, finish: str,
          reason: str | int | None) -> Output:
    """Split ``text`` into the pieces each token adds (a token past the cut adds "")."""
    pieces, before = [], 0
    for end in ends:
        end = min(end, len(text))
        pieces.append(text[before:end])
        before = max(before, end)
    return Output(tuple(pieces), tuple(ids), finish, reason)


def choice_logprobs(output: Output, first: int, count: int, top: int, chat: bool,
                    offset: int) -> dict[str, Any]:
    """vLLM's ``logprobs`` object for tokens ``first .. first + count`` of ``output``
    (``offset``: the text offset of the first one, for completions)."""
    tokens = [VOCABULARY[i] for i in output.token_ids[first:first + count]]
    alternatives = [[w for w in VOCABULARY if w != t][:max(0, top - 1)] for t in tokens]
    if chat:
        def entry(token: str, logprob: float) -> dict[str, Any]:
            return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

        return {"content": [{**entry(t, 0.0), "top_logprobs": [entry(t, 0.0)] + [
            entry(a, FAR_BELOW) for a in alts] if top else []}
            for t, alts in zip(tokens, alternatives, strict=True)]}
    offsets = []
    for piece in output.pieces[first:first + count]:
        offsets.append(offset)
        offset += len(piece)
    return {"text_offset": offsets, "token_logprobs": [0.0] * len(tokens), "tokens": tokens,
            "top_logprobs": [{t: 0.0, **dict.fromkeys(alts, FAR_BELOW)}
                             for t, alts in zip(tokens, alternatives, strict=True)]}
