"""The sim engine's KV cache with vLLM's automatic prefix caching: pure, no clock.

It follows vLLM V1's block pool and KV-cache manager (``vllm/v1/core/block_pool.py``,
``kv_cache_manager.py``) in the ways that decide hits, evictions and memory use:

* **Capacity** is the engine's KV cache in tokens (its memory share, as the scheduler's).
  Running requests hold what they reserved (prompt + max_tokens, as the scheduler reserves it);
  the rest is free.
* **Caching.** Every full prompt block a request allocates is registered under its chained
  hash (:mod:`kubeplex.runtime.prefix`). When the request ends its blocks are freed but keep
  their hash: they stay reusable until the space is needed again.
* **Hits.** A new request reuses the longest run of its leading block hashes that is
  registered (held by running requests or free), at most ``prompt - 1`` tokens: vLLM always
  recomputes the last prompt token to get logits (``max_cache_hit_length``). A hit block is
  shared, not copied: two running requests with one prefix hold its blocks once.
* **Eviction** is LRU over free blocks: a request's blocks are freed tail first (vLLM frees
  in reverse order so that a prompt's tail goes before its shared head), a hit block leaves
  the free list while used and rejoins it at the most recent end.
* **Usage** (``vllm:kv_cache_usage_perc``) counts blocks held by running requests; free
  cached blocks do not count, as in vLLM.

Simplifications: space is counted in tokens, not 16-token blocks (a request's partly filled
last block is not rounded up); never-cached free space is used before a cached block is
evicted (vLLM's free queue interleaves both by the time they were freed, so it may evict a
little earlier); output tokens are never cached (a later turn that repeats an earlier answer
recomputes it). With ``prefix_caching=False`` nothing is registered: plain reservation.

**KV events.** With ``publish_events`` the cache records what a vLLM engine with
``--kv-events-config`` publishes (:mod:`kubeplex.runtime.kv_events`): a
:class:`~kubeplex.runtime.kv_events.BlockStored` for the blocks an allocation registers, a
:class:`~kubeplex.runtime.kv_events.BlockRemoved` for the blocks it evicts;
:meth:`KVCache.take_events` hands them over.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kubeplex.runtime.kv_events import BlockRemoved, BlockStored, KVEvent
from kubeplex.runtime.prefix import PromptBlocks

__all__ = ["Allocation", "KVCache"]


@dataclass(frozen=True)
class Allocation:
    """What one admitted request holds: the registered blocks it references (its cache hits
    first) and its other tokens (never-cached space: the partial last block and outputs)."""

    hashes: tuple[int, ...]
    block_tokens: tuple[int, ...]
    plain_tokens: int
    cached_tokens: int


@dataclass
class _Entry:
    tokens: int
    refs: int = 0


class KVCache:
    """One engine's KV cache with prefix caching (see the module doc)."""

    def __init__(self, capacity_tokens: int, prefix_caching: bool = True,
                 publish_events: bool = False) -> None:
        self.capacity = capacity_tokens
        self.prefix_caching = prefix_caching
        #: KV events not taken yet (None: not recorded).
        self._events: list[KVEvent] | None = [] if publish_events else None
        self.used = 0  # tokens held by running requests (shared blocks once)
        self._entries: dict[int, _Entry] = {}
        self._free_lru: OrderedDict[int, None] = OrderedDict()  # free registered blocks
        self._free_cached = 0  # tokens in those blocks

    # ---- observation ----------------------------------------------------------------------
    @property
    def usage(self) -> float:
        """``vllm:kv_cache_usage_perc``: the share held by running requests."""
        return self.used / self.capacity if self.capacity else 0.0

    def take_events(self) -> list[KVEvent]:
        """The KV events since the last call, oldest first (none unless ``publish_events``)."""
        events, self._events = self._events, None if self._events is None else []
        return events or []

    def lookup(self, blocks: PromptBlocks, prompt_tokens: int) -> int:
        """Prompt tokens a request would find cached now (no state change)."""
        return self._hits(blocks, prompt_tokens) * blocks.block_size

    def _hits(self, blocks: PromptBlocks, prompt_tokens: int) -> int:
        if not self.prefix_caching:
            return 0
        limit = min(len(blocks.hashes), max(0, prompt_tokens - 1) // blocks.block_size)
        hits = 0
        entries = self._entries
        for h in blocks.hashes[:limit]:
            if h not in entries:
                break
            hits += 1
        return hits

    # ---- allocation -----------------------------------------------------------------------
    def allocate(self, blocks: PromptBlocks, prompt_tokens: int,
                 total_tokens: int) -> Allocation | None:
        """Reserve ``total_tokens`` for a request whose prompt has ``blocks``; its cached
        prefix is reused. None when it does not fit now (nothing changes then)."""
        size = blocks.block_size
        hits = self._hits(blocks, prompt_tokens)
        hit_hashes = blocks.hashes[:hits]
        cached = hits * size
        new = max(0, total_tokens - cached)
        revive = sum(self._entries[h].tokens for h in hit_hashes if self._entries[h].refs == 0)
        free_plain = self.capacity - self.used - self._free_cached
        if new + revive > free_plain + self._free_cached:
            return None
        for h in hit_hashes:  # hits leave the free list before anything is evicted
            entry = self._entries[h]
            if entry.refs == 0:
                del self._free_lru[h]
                self._free_cached -= entry.tokens
                self.used += entry.tokens
            entry.refs += 1
        evicted: list[int] = []
        while self.capacity - self.used - self._free_cached < new:
            victim, _ = self._free_lru.popitem(last=False)
            self._free_cached -= self._entries.pop(victim).tokens
            evicted.append(victim)
        self.used += new
        registered: list[int] = []
        if self.prefix_caching:
            full = min(len(blocks.hashes), prompt_tokens // size)
            for h in blocks.hashes[hits:full]:
                if h in self._entries:
                    break  # already registered by another request: this copy stays plain
                self._entries[h] = _Entry(size, refs=1)
                registered.append(h)
        if self._events is not None:
            if evicted:
                self._events.append(BlockRemoved(tuple(evicted)))
            if registered:
                parent = hit_hashes[-1] if hit_hashes else None
                self._events.append(BlockStored(tuple(registered), parent, size))
        held = (*hit_hashes, *registered)
        tokens = tuple(self._entries[h].tokens for h in held)
        return Allocation(held, tokens, new - len(registered) * size, cached)

    def free(self, allocation: Allocation) -> None:
        """A request ended: its blocks become free, registered ones stay cached (tail first
        in the LRU order)."""
        self.used -= allocation.plain_tokens
        for h, tokens in zip(reversed(allocation.hashes), reversed(allocation.block_tokens),
                             strict=True):
            entry = self._entries.get(h)
            if entry is None:
                continue
            entry.refs -= 1
            if entry.refs == 0:
                self.used -= tokens
                self._free_lru[h] = None
                self._free_cached += tokens
