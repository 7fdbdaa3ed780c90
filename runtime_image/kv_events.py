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
:meth:`kubeplex.runtime.routing.Router.observe`. A live sim engine publishes its load as a
stream of server-sent events at :data:`LOAD_PATH` (one :func:`encode_load` per change, and
at least every :data:`LOAD_HEARTBEAT_S`), which a runtime forwards and the gateway follows
(:func:`decode_load`); its KV events stay inside the process (a text prompt's block hashes
are Python's string hash, which differs between processes), and vLLM publishes no load
(docs/gateway.md, "Routing policy").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

__all__ = ["LOAD_HEARTBEAT_S", "LOAD_PATH", "AllBlocksCleared", "BlockRemoved", "BlockStored",
           "EngineLoad", "KVEvent", "decode_load", "encode_load"]

#: Where an engine (and a runtime, per model: ``LOAD_PATH + "/" + model``) streams its load.
LOAD_PATH = "/kubeplex/v1/load"
#: An engine repeats its load at least this often (seconds) when nothing changes, so that a
#: follower tells a quiet engine from a lost connection.
LOAD_HEARTBEAT_S = 1.0


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


def encode_load(load: EngineLoad) -> bytes:
    """One server-sent event of ``load``; times are relative (``step_ends_in_s``: the
    engine's and the follower's clocks differ)."""
    body = {"prefill_tokens": load.prefill_tokens, "waiting": load.waiting,
            "step_ends_in_s": round(max(0.0, load.step_ends_at - load.at), 6)}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def decode_load(data: str | bytes, now: float) -> EngineLoad:
    """An :func:`encode_load` event's JSON (the text after ``data: ``) received at ``now``
    (the follower's clock). Raises ValueError naming what is wrong."""
    try:
        body = json.loads(data)
    except ValueError as e:
        raise ValueError(f"a load event must be JSON: {e}") from None
    if not isinstance(body, dict):
        raise ValueError(f"a load event must be a JSON object, got {body!r}")
    counts = []
    for name in ("prefill_tokens", "waiting"):
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"a load event's {name} must be an integer >= 0, got {value!r}")
        counts.append(value)
    ends_in = body.get("step_ends_in_s")
    if isinstance(ends_in, bool) or not isinstance(ends_in, int | float) \
            or not 0 <= ends_in < math.inf:
        raise ValueError(f"a load event's step_ends_in_s must be a number >= 0, got "
                         f"{ends_in!r}")
    return EngineLoad(now, counts[0], now + ends_in, counts[1])
