"""A request's prompt as a chain of block hashes: what prefix caches and prefix routing key on.

vLLM's automatic prefix caching cuts the prompt into blocks of ``block_size`` tokens (16 by
default) and names every *full* block by a hash of its tokens *and* of its parent block's hash
(``vllm/v1/core/kv_cache_utils.py``, ``hash_block_tokens``): equal hashes at position *i* mean
an equal prompt up to the end of block *i*. The sim engine's cache
(:mod:`kubeplex.runtime.sim.prefix_cache`), the routing policy (:mod:`kubeplex.runtime.routing`,
in blocks of its own size) and the trace replay all key on such chains, computed here from a
request body:

* ``block_hashes`` (a kubeplex extension for trace replay, like the sim's ``prompt_tokens``):
  one id per block of ``block_size`` tokens (default :data:`VLLM_BLOCK_SIZE`), e.g. a Mooncake
  trace's ``hash_ids`` with ``block_size: 512``; the ids are chained again here, so ids that
  only name a block's content work too;
* a prompt of token ids: blocks of ``block_size`` ids;
* text (a completion's ``prompt``, or a chat's messages rendered as ``role\\ncontent\\n``):
  blocks of ``block_size * CHARS_PER_TOKEN`` characters, the sim's token accounting (no
  tokenizer is at hand in a router; equal text prefixes still give equal chains, and the sim
  counts text tokens the same way).

A block that is not full is never hashed (vLLM caches full blocks only), so a prompt shorter
than one block has no hashes. A block's hash is Python's ``hash((parent hash, content))``
(vLLM's former ``builtin`` hash; its default now is SHA-256 over pickle, which would cost a
router microseconds a block): 64 bits, fast, stable within one process and, as in vLLM, never
compared across processes (each engine and each router keys its own cache). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_TOKENS",
    "NO_BLOCKS",
    "VLLM_BLOCK_SIZE",
    "PromptBlocks",
    "chain",
    "prompt_blocks",
    "text_of",
]

#: vLLM's default KV-cache block size in tokens (``CacheConfig.DEFAULT_BLOCK_SIZE``, 0.32).
VLLM_BLOCK_SIZE = 16
#: OpenAI's rule of thumb: one token is about four characters of English text (the sim's
#: token accounting, and the router's estimate of a text prompt's tokens).
CHARS_PER_TOKEN = 4
#: OpenAI's documented default max_tokens for completions (the sim uses it for chat too).
DEFAULT_MAX_TOKENS = 16
#: The parent hash of a prompt's first block.
_ROOT = 0


@dataclass(frozen=True)
class PromptBlocks:
    """The full blocks of one prompt: chained hashes, each covering ``block_size`` tokens."""

    hashes: tuple[int, ...]
    block_size: int = VLLM_BLOCK_SIZE

    @property
    def tokens(self) -> int:
        """Prompt tokens the hashed blocks cover."""
        return len(self.hashes) * self.block_size


#: A prompt with no full block (nothing to cache or reuse).
NO_BLOCKS = PromptBlocks(())


def chain(blocks: Iterable[Hashable]) -> tuple[int, ...]:
    """Chained hashes of block contents: block *i*'s hash covers blocks 0..i."""
    out: list[int] = []
    parent = _ROOT
    for block in blocks:
        parent = hash((parent, block))
        out.append(parent)
    return tuple(out)


def _block_id(item: object) -> int | str:
    if isinstance(item, bool) or not isinstance(item, int | str):
        raise ValueError(f"a block id must be an integer or a string, got {item!r}")
    return item


def text_of(body: Mapping[str, Any], chat: bool) -> str | None:
    """The prompt text a request's blocks are cut from (None: no text prompt)."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        parts = []
        for m in messages:
            if not isinstance(m, Mapping):
                return None
            content = m.get("content", "")
            if isinstance(content, list):  # content parts: their text
                content = " ".join(str(p.get("text", "")) for p in content
                                   if isinstance(p, Mapping))
            parts.append(f"{m.get('role', '')}\n{content}\n")
        return "".join(parts)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else None


def _text_blocks(text: str, block_size: int) -> Iterable[str]:
    width = block_size * CHARS_PER_TOKEN
    return (text[i:i + width] for i in range(0, len(text) - width + 1, width))


def _token_blocks(tokens: Sequence[int], block_size: int) -> Iterable[tuple[int, ...]]:
    return (tuple(tokens[i:i + block_size])
            for i in range(0, len(tokens) - block_size + 1, block_size))


def prompt_blocks(body: Mapping[str, Any], chat: bool = False,
                  block_size: int = VLLM_BLOCK_SIZE) -> PromptBlocks:
    """The chained full-block hashes of a request body (see the module doc).

    Raises ValueError naming the field when ``block_hashes`` or ``block_size`` is malformed;
    a body with no usable prompt has no blocks (the caller refuses it for its own reasons).
    """
    given = body.get("block_hashes")
    if given is not None:
        size = body.get("block_size", block_size)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"block_size must be a positive integer, got {size!r}")
        if not isinstance(given, list):
            raise ValueError("block_hashes must be a list of block ids (integers or strings)")
        return PromptBlocks(chain(_block_id(i) for i in given), size)
    prompt = None if chat else body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return PromptBlocks(chain(_token_blocks(prompt, block_size)), block_size)
    text = text_of(body, chat)
    if not text:
        return PromptBlocks((), block_size)
    return PromptBlocks(chain(_text_blocks(text, block_size)), block_size)

