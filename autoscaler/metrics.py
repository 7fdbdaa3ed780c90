"""The engine's metrics as the autoscaler reads them: vLLM's metric names, its histogram
bounds, and :class:`Scrape`, one read of one model's metrics.

Both sides of the autoscaler use these: the simulated fleet (:mod:`~kubeplex.autoscaler.fleet`)
and the metric sources write scrapes, and the control law (:mod:`~kubeplex.autoscaler.signals`
onwards) reads them. Keeping them apart from the law's estimates lets a change to how the law
reads a scrape leave the simulated world as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "COMPLETIONS",
    "GATEWAY_INSTANCE",
    "GENERATION_TOKENS",
    "HELD",
    "KV_USAGE",
    "PREFILL_TIME_COUNT",
    "PREFILL_TIME_SUM",
    "PROMPT_HISTOGRAM",
    "PROMPT_TOKENS",
    "RUNNING",
    "TTFT",
    "TTFT_BUCKETS",
    "WAITING",
    "Buckets",
    "Scrape",
    "prompt_token_buckets",
    "with_held",
]

# vLLM 0.32-0.33 metric names (DESIGN.md "vLLM facts"); counters are read by their sample name.
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
TTFT = "vllm:time_to_first_token_seconds"
COMPLETIONS = "vllm:request_success_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
#: Histogram of prompt lengths (tokens), observed when a request finishes.
PROMPT_HISTOGRAM = "vllm:request_prompt_tokens"
#: The sum and count of vLLM's histogram of the time requests spent in their prefill phase
#: (observed when a request finishes).
PREFILL_TIME_SUM = "vllm:request_prefill_time_seconds_sum"
PREFILL_TIME_COUNT = "vllm:request_prefill_time_seconds_count"
#: Not an engine's: the requests the gateway holds for the model at the scrape's time (no
#: replica to send them to yet), stamped in by the caller (:func:`with_held`) as one
#: instance, :data:`GATEWAY_INSTANCE`. Arrivals are counted where they enter the system, so
#: the gateway handing its held requests to a replica that became ready is no burst.
HELD = "kubeplex:gateway_held_requests"
GATEWAY_INSTANCE = "gateway"

#: vLLM's TTFT histogram bucket bounds (vllm/v1/metrics/loggers.py, 0.33): note no 2.0 edge.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)



def prompt_token_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's prompt-token histogram bounds (``build_1_2_5_buckets(max_model_len)``): 1, 2, 5,
    10, 20, 50, ... up to the model's context length."""
    bounds: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return tuple(bounds)
            bounds.append(float(value))
        exponent += 1


#: Cumulative histogram buckets ``(upper bound, count)``, ascending, ending with ``+Inf``.
Buckets = tuple[tuple[float, float], ...]

_EMPTY: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True)
class Scrape:
    """One read of one model's metrics at ``time`` (seconds, the caller's clock).

    ``values`` maps a sample name (gauges, and counters by their ``_total`` name) to
    ``{instance: value}``; ``histograms`` maps a histogram's base name to
    ``{instance: cumulative buckets}``.
    """

    time: float
    values: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    histograms: Mapping[str, Mapping[str, Buckets]] = field(default_factory=dict)

    def series(self, name: str) -> Mapping[str, float]:
        return self.values.get(name, _EMPTY)

    def total(self, name: str) -> float | None:
        """The sum over instances, or None when no instance exposes the metric."""
        series = self.values.get(name)
        return None if not series else math.fsum(series.values())


def with_held(scrape: Scrape, held: int) -> Scrape:
    """``scrape`` with the gateway's held requests at its time (:data:`HELD`)."""
    return Scrape(scrape.time, {**scrape.values, HELD: {GATEWAY_INSTANCE: float(held)}},
                  scrape.histograms)
