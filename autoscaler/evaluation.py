"""Trace-driven evaluation: build a policy by name and replay a trace against the fleet.

``replay`` is what ``kubeplex simulate autoscale`` runs. All policies see the same fleet (the
latency model of ``model`` on ``gpu``, the cold and warm start delays) and share the
per-replica target derived from the latency model at the trace's mean token counts.
``warm_pool`` is a fixed standby count for every policy, or ``"auto"``: kubeplex sizes it from
its forecast; the baselines, which have no forecast, keep none.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from kubeplex.autoscaler.baselines import HPAPolicy, KPAPolicy, KubeplexPolicy, StaticPolicy
from kubeplex.autoscaler.errors import AutoscalerConfigError
from kubeplex.autoscaler.fleet import FleetConfig, Policy, SimResult, simulate
from kubeplex.autoscaler.policy import (
    AutoscalerConfig,
    profile_capacity,
    slo_replicas,
    target_per_replica,
)
from kubeplex.autoscaler.trace import Trace
from kubeplex.placement.llm import profile

__all__ = ["PEAK_WINDOW_S", "POLICIES", "make_policy", "replay"]

POLICIES = ("kubeplex", "hpa", "kpa", "static-peak")
#: static-peak provisions for the highest arrival rate over any window this long.
PEAK_WINDOW_S = 60.0
#: Replica ceiling of the simulated pool (large: the benchmark measures the law, not a budget).
SIM_MAX_REPLICAS = 512


def make_policy(name: str, trace: Trace, config: AutoscalerConfig,
                warm_pool: int | None) -> tuple[Policy, int]:
    """The policy called ``name`` and how many replicas the fleet starts with."""
    if config.profile is None:
        raise AutoscalerConfigError("the evaluation needs a latency profile")
    capacity, latency = profile_capacity(config.profile, float(trace.prompt_tokens.mean()),
                                         float(trace.output_tokens.mean()), config.max_num_seqs)
    cv2 = max(1.0, trace.interarrival_cv() ** 2)
    # The baselines' target (requests in the system per replica) is the operating point the
    # queueing model picks at the trace's mean rate: an expert tuning of HPA/KPA for this SLO.
    mean_rate = len(trace) / max(trace.duration_s, 1.0)
    tuned = slo_replicas(mean_rate, capacity, config, cv2)
    target = (mean_rate * latency / tuned if tuned > 0
              else target_per_replica(config, capacity, latency))
    first_minute = float((trace.arrival_s < PEAK_WINDOW_S).sum()) / PEAK_WINDOW_S
    initial = max(1, slo_replicas(first_minute, capacity, config, cv2))
    if name == "kubeplex":
        return KubeplexPolicy(config), initial
    if name == "hpa":
        return HPAPolicy(target, config.max_replicas, warm_pool or 0), initial
    if name == "kpa":
        return KPAPolicy(target, config.max_replicas, warm_pool or 0), initial
    if name == "static-peak":
        peak = slo_replicas(trace.peak_rate(PEAK_WINDOW_S), capacity, config, cv2)
        return StaticPolicy(peak), peak
    raise AutoscalerConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


def replay(trace: Trace, model: str, gpu: str, slo_ttft_s: float, percentile: float,
           policy: str, cold_start_s: float = 60.0, warm_start_s: float = 2.0,
           warm_pool: int | None = None,
           progress: Callable[[float], None] | None = None) -> SimResult:
    """Replay ``trace`` with the named policy; ``warm_pool`` None means "auto"."""
    if not slo_ttft_s > 0 or not math.isfinite(slo_ttft_s):
        raise AutoscalerConfigError(f"the TTFT SLO must be a positive number of seconds, "
                                    f"got {slo_ttft_s}")
    llm = profile(model, gpu)
    config = AutoscalerConfig(
        slo_ttft_s=slo_ttft_s, percentile=percentile, min_replicas=0,
        max_replicas=SIM_MAX_REPLICAS, profile=llm, gpus_per_replica=llm.gpus,
        mean_prompt_tokens=float(trace.prompt_tokens.mean()),
        mean_output_tokens=float(trace.output_tokens.mean()),
        cold_start_s=cold_start_s, warm_start_s=warm_start_s, warm_pool=warm_pool)
    chosen, initial = make_policy(policy, trace, config, warm_pool)
    fleet = FleetConfig(profile=llm, cold_start_s=cold_start_s, warm_start_s=warm_start_s,
                        initial_replicas=initial, gpus_per_replica=llm.gpus)
    return simulate(trace, chosen, fleet, slo_ttft_s, percentile, progress)
