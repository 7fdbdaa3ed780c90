"""A new replica starts with a cold prefix cache: an input for the control law (pure).

With prefix caching (vLLM's, and the sim's) a warm replica prefills only the part of each
prompt it does not hold yet; with prefix-aware routing (``kubeplex.runtime.routing``) the
fleet's requests mostly land where their prefix is. A replica a scale-up adds holds nothing:
until its cache warms up it prefills whole prompts, and the router sends it mostly the requests
with no cached prefix elsewhere plus what the load bound spills. So right after a scale-up the
added capacity is worth less than a warm replica's: per request it does ``1 / (1 - h)`` times
the prefill work of a warm one, where ``h`` is the fleet's prefix-cache hit rate.

:func:`cold_cache` reads ``h`` from two scrapes of the vLLM counters
``vllm:prefix_cache_hits_total`` and ``vllm:prefix_cache_queries_total`` (prompt tokens found
cached / queried, summed over the replicas); :attr:`ColdCache.warm_fraction` is how much of a
warm replica's prefill throughput a cold one delivers. This module only states the effect;
how the control law discounts a new replica (e.g. in its warm-up credit) is the autoscaler's
to decide.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ColdCache", "cold_cache"]


@dataclass(frozen=True)
class ColdCache:
    """The fleet's prefix-cache hit rate and what it means for a replica that starts cold."""

    hit_rate: float  # fraction of prompt tokens served from cache, in [0, 1)

    @property
    def warm_fraction(self) -> float:
        """A cold replica's prefill throughput as a fraction of a warm one's: ``1 - h``."""
        return 1.0 - self.hit_rate

    @property
    def reason(self) -> str:
        return (f"prefix-cache hit rate {self.hit_rate:.0%}: a new replica starts cold and "
                f"prefills about {1 / self.warm_fraction:.2g}x the prompt tokens of a warm one "
                "until its cache warms up")


def cold_cache(hits_before: float, queries_before: float, hits_now: float,
               queries_now: float) -> ColdCache | None:
    """The hit rate between two readings of the counters; None when no prompt was queried in
    between (no data: nothing to say), or the counters went back (an engine restarted)."""
    queries = queries_now - queries_before
    hits = hits_now - hits_before
    if queries <= 0 or hits < 0 or hits > queries:
        return None
    return ColdCache(min(hits / queries, 1.0 - 1.0 / queries))
