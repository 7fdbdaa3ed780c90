"""The oracle: a reference policy that knows the whole trace and the fleet's true speed.

No real autoscaler can do this; benchmarks use it as the curve to measure against. For every
second ``t`` of the trace it computes the replicas the *next* requests need, from their own
token counts and the fleet's true latency (the profile at the fleet's speed):

* **prefill need**: for every window length ``L`` in :data:`WINDOWS_S`, the prefill seconds of
  the requests arriving in ``[t, t + L)`` must be done within ``L + SLO`` (the last of them
  may still wait one SLO); requests whose prefill alone exceeds the SLO are left out (no
  replica count serves them in time). The need is the largest such ratio;
* **throughput need**: all the GPU work (prefill plus each request's share of the batched
  decode steps) arriving over the next :data:`THROUGHPUT_WINDOW_S` seconds, per second;

divided by ``utilization`` (the knob that traces the oracle's cost/attainment curve: 1.0
provisions exactly the need, lower values add headroom). It provisions exactly one cold start
ahead: at ``t`` it asks for the largest need of ``[t, t + cold start]``, so each replica is
ready when its demand arrives and released once no demand within a cold start needs it.

The **reactive** reference is the oracle without foresight: the same needs computed from the
requests that have arrived (the windows end where the oracle's start, at the second before
``t``), with the fleet's true speed, and held for ``hold`` seconds (a cold start by default)
before a replica is released. It is what a policy that measures the present perfectly, and
predicts nothing, can reach; its ``utilization`` (headroom) and ``hold`` trace the curve such
policies live on. A bar that no point of that curve meets asks for foresight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kubeplex.autoscaler.errors import AutoscalerConfigError
from kubeplex.autoscaler.policy import Observed, profile_capacity
from kubeplex.autoscaler.trace import FloatArray, IntArray, Trace
from kubeplex.placement.llm import LLMProfile

__all__ = ["THROUGHPUT_WINDOW_S", "WINDOWS_S", "OraclePolicy", "oracle_needs", "oracle_targets",
           "reactive_needs", "reactive_targets"]

#: Window lengths (s) over which the prefill work of arrivals must clear within the SLO.
WINDOWS_S = (1, 2, 5, 10, 20, 60)
#: Window (s) over which the total GPU work of arrivals sets the throughput need.
THROUGHPUT_WINDOW_S = 60


def _forward_sum(values: FloatArray, length: int) -> FloatArray:
    """``out[t] = values[t] + ... + values[t + length - 1]`` (zeros past the end)."""
    padded = np.concatenate((np.cumsum(values), np.full(length, values.sum())))
    start = np.concatenate(([0.0], np.cumsum(values)))[: len(values)]
    return np.asarray(padded[length - 1: length - 1 + len(values)] - start, dtype=np.float64)


def _backward_sum(values: FloatArray, length: int) -> FloatArray:
    """``out[t] = values[t - length] + ... + values[t - 1]``: the ``length`` seconds before
    ``t`` (a tick at ``t`` has not seen second ``t``'s arrivals yet)."""
    total = np.concatenate(([0.0], np.cumsum(values)))[: len(values)]
    before = np.concatenate((np.zeros(length), total))[: len(values)]
    return np.asarray(total - before, dtype=np.float64)


def _needs(trace: Trace, profile: LLMProfile, speed: float, slo_ttft_s: float,
           max_num_seqs: int, utilization: float,
           window_sum: Callable[[FloatArray, int], FloatArray]) -> FloatArray:
    """Replicas needed at each second, the windows summed by ``window_sum`` (see the module
    docstring): ahead of ``t`` for the oracle, behind it for the reactive reference."""
    if not 0 < utilization <= 1.5 or not speed > 0:
        raise AutoscalerConfigError(f"oracle utilization must be in (0, 1.5] and speed > 0, got "
                                    f"{utilization} and {speed}")
    seconds = math.ceil(trace.duration_s) + 1
    cache: dict[int, float] = {}
    prefill = np.empty(len(trace))
    for i, n in enumerate(trace.prompt_tokens.tolist()):
        if n not in cache:
            cache[n] = profile.prefill_seconds(n) / speed
        prefill[i] = cache[n]
    capacity, _ = profile_capacity(profile, float(trace.prompt_tokens.mean()),
                                   float(trace.output_tokens.mean()), max_num_seqs)
    decode_per_token = (capacity.work_s - capacity.prefill_s) / speed / max(
        1.0, float(trace.output_tokens.mean()) - 1)
    work = prefill + np.maximum(0, trace.output_tokens - 1) * decode_per_token
    second = np.minimum(seconds - 1, trace.arrival_s.astype(np.int64))
    feasible = prefill <= slo_ttft_s
    prefill_per_s = np.bincount(second, weights=np.where(feasible, prefill, 0.0),
                                minlength=seconds).astype(np.float64)
    work_per_s = np.bincount(second, weights=work, minlength=seconds).astype(np.float64)
    need = window_sum(work_per_s, THROUGHPUT_WINDOW_S) / THROUGHPUT_WINDOW_S
    for length in WINDOWS_S:
        need = np.maximum(need, window_sum(prefill_per_s, length) / (length + slo_ttft_s))
    return np.asarray(need / utilization, dtype=np.float64)


def oracle_needs(trace: Trace, profile: LLMProfile, speed: float, slo_ttft_s: float,
                 max_num_seqs: int, utilization: float) -> FloatArray:
    """Replicas needed at each second of the trace (fractional; see the module docstring)."""
    return _needs(trace, profile, speed, slo_ttft_s, max_num_seqs, utilization, _forward_sum)


def reactive_needs(trace: Trace, profile: LLMProfile, speed: float, slo_ttft_s: float,
                   max_num_seqs: int, utilization: float) -> FloatArray:
    """The oracle's needs as seen at each second from the arrivals before it."""
    return _needs(trace, profile, speed, slo_ttft_s, max_num_seqs, utilization, _backward_sum)


def oracle_targets(needs: FloatArray, cold_start_s: float) -> IntArray:
    """Replicas to have at each second: the largest need within one cold start ahead."""
    ahead = math.ceil(cold_start_s) + 1
    padded = np.concatenate((needs, np.zeros(ahead)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, ahead)[: len(needs)]
    targets: IntArray = np.ceil(windows.max(axis=1) - 1e-9).astype(np.int64)
    return targets


def reactive_targets(needs: FloatArray, hold_s: float, initial: int = 0) -> IntArray:
    """Replicas to have at each second: the largest need seen within the last ``hold_s``
    (``inf``: the largest so far); the ``initial`` replicas count as asked for at 0."""
    if not hold_s >= 0:
        raise AutoscalerConfigError(f"the reactive hold must be >= 0 seconds, got {hold_s}")
    if math.isinf(hold_s) or hold_s >= len(needs):
        held = np.maximum.accumulate(needs)
    else:
        behind = math.ceil(hold_s) + 1
        padded = np.concatenate((np.zeros(behind - 1), needs))
        held = np.lib.stride_tricks.sliding_window_view(padded, behind).max(axis=1)
    targets: IntArray = np.ceil(held - 1e-9).astype(np.int64)
    kept = len(targets) if math.isinf(hold_s) else min(len(targets), math.ceil(hold_s) + 1)
    targets[:kept] = np.maximum(targets[:kept], initial)
    return targets


@dataclass
class OraclePolicy:
    """Replays per-second targets (:func:`oracle_targets` or :func:`reactive_targets`; zero
    past the trace)."""

    targets: IntArray
    name: str = "oracle"
    interval_s: float = 1.0

    def evaluate(self, observed: Observed, now: float) -> tuple[int, int]:
        index = int(now)
        wanted = int(self.targets[index]) if 0 <= index < len(self.targets) else 0
        return max(wanted, 1 if observed.held_requests else 0), 0
