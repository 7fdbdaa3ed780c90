"""What an engine tells a router about itself: KV-cache events and its queued prefill (pure).

A router that only counts what it sent guesses each replica's cache (its own LRU index of
the blocks it routed there) and its queue (the prefill it sent, counted down at a measured
rate). An engine knows both exactly, and vLLM publishes the first: with
``--kv-events-config`` every engine step emits a batch of *KV events* over ZMQ
(``vllm/distributed/kv_events.py``), which llm-d's precise prefix-cache scorer and Dynamo's
KV router feed into a per-replica index of block hashes. The events here carry the same
information under vLLM's names:

:class:`BlockStored`
    full prompt blocks were registered in the prefix cache: their chained hashes in prompt
    order, the parent hash of the first (None: the prompt's first block) and the block size;
:class:`BlockRemoved`
    cached blocks were evicted (their hashes);
:class:`AllBlocksCleared`
    the whole cache was dropped (vLLM's ``reset_prefix_cache``; an engine restart).

vLLM's events also carry the blocks' token ids, LoRA name and storage medium; a router that
keys on hashes needs none of them. :class:`EngineLoad` is the second half: what an engine
still has to do before a new request's own prefill can start (its waiting queue's uncached
prompt tokens, and the rest of the step it is running), which vLLM's
``vllm:num_requests_waiting`` reports in requests only.

The sim engine (:class:`kubeplex.runtime.sim.prefix_cache.KVCache`) emits these events, and
the trace replay feeds them, with each replica's :class:`EngineLoad` after every change, to
:meth:`kubeplex.runtime.routing.Router.observe`. The gateway does not subscribe to a live
engine (docs/gateway.md, "Routing policy", says why).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AllBlocksCleared", "BlockRemoved", "BlockStored", "EngineLoad", "KVEvent"]


@dataclass(frozen=True)
class BlockStored:
    """Full prompt blocks entered the prefix cache (chained hashes, prompt order)."""

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    block_size: int


@dataclass(frozen=True)
class BlockRemoved:
    """Cached blocks were evicted."""

    block_hashes: tuple[int, ...]


@dataclass(frozen=True)
class AllBlocksCleared:
    """The engine dropped its whole prefix cache."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True)
class EngineLoad:
    """An engine's queue as of ``at`` (seconds, on the router's clock): the uncached prompt
    tokens of its ``waiting`` requests (not admitted yet), and when the step it is running
    ends (``at`` when it is idle): a request that arrives now starts its prefill
    after both."""

    at: float
    prefill_tokens: int
    step_ends_at: float
    waiting: int
