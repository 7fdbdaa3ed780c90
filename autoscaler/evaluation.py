"""Trace-driven evaluation: build a policy by name and replay a trace against the fleet.

``replay`` is what ``kubeplex simulate autoscale`` runs. The policy plans with ``profile``
(the latency model of ``model`` on ``gpu``, or a calibrated profile); the simulated fleet runs
``fleet_profile`` (default: the same) at ``fleet_speed`` times its speed, which the policy is
not told, so a wrong model shows in the results instead of being graded by itself.

Policies: ``kubeplex``, the baselines ``hpa``, ``kpa`` and ``static-peak`` (see
:mod:`~kubeplex.autoscaler.baselines`), and ``oracle`` (:mod:`~kubeplex.autoscaler.oracle`:
knows the trace and the fleet's true speed; ``oracle_utilization`` traces its curve) and
``reactive`` (the oracle without foresight: the needs of the arrivals so far, at the true
speed, held ``reactive_hold_s``; the same utilization is its headroom). HPA and
KPA share the per-replica target derived from the planning model at the trace's mean token
counts. ``warm_pool`` is a fixed standby count given to kubeplex, HPA and KPA alike, or
``None`` ("auto"): kubeplex sizes its standbys from burst statistics; the baselines, which have
no such rule, keep none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from kubeplex.autoscaler.baselines import HPAPolicy, KPAPolicy, KubeplexPolicy, StaticPolicy
from kubeplex.autoscaler.errors import AutoscalerConfigError
from kubeplex.autoscaler.fleet import FleetConfig, Policy, SimResult, simulate
from kubeplex.autoscaler.oracle import (
    OraclePolicy,
    oracle_needs,
    oracle_targets,
    reactive_needs,
    reactive_targets,
)
from kubeplex.autoscaler.policy import (
    AutoscalerConfig,
    profile_capacity,
    slo_replicas,
    target_per_replica,
)
from kubeplex.autoscaler.trace import Trace
from kubeplex.placement.llm import LLMProfile

__all__ = ["PEAK_WINDOW_S", "POLICIES", "Scenario", "make_policy", "replay"]

POLICIES = ("kubeplex", "hpa", "kpa", "static-peak", "oracle", "reactive")
#: static-peak provisions for the highest arrival rate over any window this long.
PEAK_WINDOW_S = 60.0
#: Replica ceiling of the simulated pool (large: the benchmark measures the law, not a budget).
SIM_MAX_REPLICAS = 512


@dataclass(frozen=True)
class Scenario:
    """What a replay runs: the planning profile, the fleet's truth, timings and the SLO."""

    profile: LLMProfile
    slo_ttft_s: float
    percentile: float
    cold_start_s: float = 60.0
    warm_start_s: float = 2.0
    warm_pool: int | None = None
    fleet_profile: LLMProfile | None = None
    fleet_speed: float = 1.0
    oracle_utilization: float = 1.0
    #: How long the reactive reference keeps a replica its past needs asked for (None: one
    #: cold start; ``inf``: to the end).
    reactive_hold_s: float | None = None

    def __post_init__(self) -> None:
        if not self.slo_ttft_s > 0 or not math.isfinite(self.slo_ttft_s):
            raise AutoscalerConfigError(f"the TTFT SLO must be a positive number of seconds, "
                                        f"got {self.slo_ttft_s}")
        if not self.fleet_speed > 0 or not math.isfinite(self.fleet_speed):
            raise AutoscalerConfigError(f"the fleet speed must be a positive number, got "
                                        f"{self.fleet_speed}")

    @property
    def truth(self) -> LLMProfile:
        return self.fleet_profile or self.profile


def make_policy(name: str, trace: Trace, config: AutoscalerConfig,
                scenario: Scenario) -> tuple[Policy, int]:
    """The policy called ``name`` and how many replicas the fleet starts with."""
    if config.profile is None:
        raise AutoscalerConfigError("the evaluation needs a latency profile")
    if name == "oracle":
        needs = oracle_needs(trace, scenario.truth, scenario.fleet_speed, scenario.slo_ttft_s,
                             config.max_num_seqs, scenario.oracle_utilization)
        targets = oracle_targets(needs, scenario.cold_start_s)
        return OraclePolicy(targets), max(1, int(targets[0]))
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
    warm = scenario.warm_pool or 0
    if name == "kubeplex":
        return KubeplexPolicy(config), initial
    if name == "reactive":  # starts where the other online policies do
        needs = reactive_needs(trace, scenario.truth, scenario.fleet_speed,
                               scenario.slo_ttft_s, config.max_num_seqs,
                               scenario.oracle_utilization)
        hold = (scenario.cold_start_s if scenario.reactive_hold_s is None
                else scenario.reactive_hold_s)
        targets = reactive_targets(needs, hold, initial)
        return OraclePolicy(targets, name="reactive"), initial
    if name == "hpa":
        return HPAPolicy(target, config.max_replicas, warm), initial
    if name == "kpa":
        return KPAPolicy(target, config.max_replicas, warm), initial
    if name == "static-peak":
        peak = slo_replicas(trace.peak_rate(PEAK_WINDOW_S), capacity, config, cv2)
        return StaticPolicy(peak), peak
    raise AutoscalerConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


def replay(trace: Trace, scenario: Scenario, policy: str,
           progress: Callable[[float], None] | None = None,
           built: Callable[[Policy], None] | None = None) -> SimResult:
    """Replay ``trace`` with the named policy under ``scenario``; ``built`` is given the
    policy made (to read what it kept, e.g. kubeplex's reasons)."""
    llm = scenario.profile
    config = AutoscalerConfig(
        slo_ttft_s=scenario.slo_ttft_s, percentile=scenario.percentile, min_replicas=0,
        max_replicas=SIM_MAX_REPLICAS, profile=llm, gpus_per_replica=llm.gpus,
        mean_prompt_tokens=float(trace.prompt_tokens.mean()),
        mean_output_tokens=float(trace.output_tokens.mean()),
        cold_start_s=scenario.cold_start_s, warm_start_s=scenario.warm_start_s,
        warm_pool=scenario.warm_pool)
    chosen, initial = make_policy(policy, trace, config, scenario)
    if built is not None:
        built(chosen)
    fleet = FleetConfig(profile=scenario.truth, cold_start_s=scenario.cold_start_s,
                        warm_start_s=scenario.warm_start_s, initial_replicas=initial,
                        gpus_per_replica=llm.gpus, speed=scenario.fleet_speed)
    return simulate(trace, chosen, fleet, scenario.slo_ttft_s, scenario.percentile, progress)
