"""Policies the fleet simulator replays: kubeplex and the field's control laws as baselines.

* ``kubeplex``: :func:`~kubeplex.autoscaler.policy.decide` every 2 s.
* ``hpa``: Kubernetes HPA fed one value by KEDA's Prometheus scaler (requests in the system):
  ``desired = ceil(current * metric / target)`` with the metric averaged over all current
  pods (unready ones count as 0 when scaling up, as the HPA does), 10% tolerance, 15 s sync,
  scale-up at most ``max(2x, +4 pods)`` per sync (the default behavior), scale-down to the
  highest recommendation of the last 300 s; min 1 replica.
* ``kpa``: Knative KPA on concurrency (requests in the system, the activator's held ones
  included): 60 s stable and 6 s panic averaging windows, panic when the panic window wants
  2x the ready pods, no scale-down in panic (which ends 60 s after the last such moment),
  scale-up rate 1000x and scale-down rate 2x, scale to zero after 30 s of grace at zero.
* ``static-peak``: enough replicas for the trace's peak (the queueing model at the highest
  60 s arrival rate), all ready from the start, never changed.

HPA and KPA share one per-replica target (requests in the system per replica): the operating
point kubeplex's queueing model picks at the trace's mean rate, by Little's law (an expert
tuning for this SLO; see :func:`kubeplex.autoscaler.evaluation.make_policy`), so the
comparison is between control laws, not between tunings. Constants from PEERS.md.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from kubeplex.autoscaler.metrics import RUNNING, WAITING
from kubeplex.autoscaler.policy import (
    AutoscalerConfig,
    AutoscalerState,
    Observed,
    decide,
)

__all__ = [
    "HPA_DOWN_STABILIZATION_S",
    "HPA_SYNC_S",
    "HPA_TOLERANCE",
    "KPA_PANIC_THRESHOLD",
    "KPA_PANIC_WINDOW_S",
    "KPA_STABLE_WINDOW_S",
    "KPA_TICK_S",
    "KPA_ZERO_GRACE_S",
    "HPAPolicy",
    "KPAPolicy",
    "KubeplexPolicy",
    "StaticPolicy",
]

#: Kubernetes HPA: --horizontal-pod-autoscaler-sync-period 15 s, tolerance 0.1, default
#: scaleDown stabilizationWindowSeconds 300; default scaleUp policies: 100% or 4 pods per 15 s.
HPA_SYNC_S = 15.0
HPA_TOLERANCE = 0.1
HPA_DOWN_STABILIZATION_S = 300.0
HPA_UP_PODS = 4
HPA_UP_PERCENT = 100.0
#: Knative KPA (config-autoscaler defaults): stable-window 60 s, panic-window 6 s (10%),
#: panic-threshold 200%, max-scale-up-rate 1000, max-scale-down-rate 2,
#: scale-to-zero-grace-period 30 s, evaluation tick 2 s.
KPA_STABLE_WINDOW_S = 60.0
KPA_PANIC_WINDOW_S = 6.0
KPA_PANIC_THRESHOLD = 2.0
KPA_MAX_UP_RATE = 1000.0
KPA_MAX_DOWN_RATE = 2.0
KPA_ZERO_GRACE_S = 30.0
KPA_TICK_S = 2.0
#: kubeplex evaluates every few seconds (the operator's loop period).
KUBEPLEX_TICK_S = 2.0


def _in_system(observed: Observed) -> float:
    if not observed.scrapes:
        return float(observed.held_requests)
    last = observed.scrapes[-1]
    waiting, running = last.total(WAITING) or 0.0, last.total(RUNNING) or 0.0
    return waiting + running + observed.held_requests


@dataclass
class KubeplexPolicy:
    """kubeplex's control law; keeps the state between evaluations, the reasons for its
    changes and, per evaluation, what each stage did to the target and the standbys asked."""

    config: AutoscalerConfig
    name: str = "kubeplex"
    interval_s: float = KUBEPLEX_TICK_S
    state: AutoscalerState = field(default_factory=AutoscalerState)
    reasons: list[tuple[float, str]] = field(default_factory=list)
    stages: list[tuple[float, tuple[tuple[str, int], ...], int]] = field(default_factory=list)

    def evaluate(self, observed: Observed, now: float) -> tuple[int, int]:
        decision = decide(observed, self.config, self.state, now)
        self.state = decision.state
        if decision.desired_replicas != observed.current:
            self.reasons.append((now, decision.reason))
        self.stages.append((now, decision.changes(), decision.desired_warm))
        return decision.desired_replicas, decision.desired_warm


@dataclass
class HPAPolicy:
    """Kubernetes HPA with KEDA's Prometheus scaler (see the module docstring)."""

    target: float
    max_replicas: int
    warm: int = 0
    name: str = "hpa"
    interval_s: float = HPA_SYNC_S
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def evaluate(self, observed: Observed, now: float) -> tuple[int, int]:
        current = max(1, observed.current)
        if not self.history:  # as if the HPA had been running at the current scale
            self.history.append((now, current))
        ratio = _in_system(observed) / current / self.target
        wanted = current if abs(ratio - 1) <= HPA_TOLERANCE else math.ceil(current * ratio)
        wanted = max(1, min(self.max_replicas, wanted))
        self.history.append((now, wanted))
        while self.history and now - self.history[0][0] >= HPA_DOWN_STABILIZATION_S:
            self.history.popleft()
        if wanted < current:
            wanted = min(current, max(r for _, r in self.history))
        up_limit = max(current + HPA_UP_PODS, math.ceil(current * (1 + HPA_UP_PERCENT / 100)))
        return min(wanted, up_limit), self.warm


@dataclass
class KPAPolicy:
    """Knative's KPA (see the module docstring)."""

    target: float
    max_replicas: int
    warm: int = 0
    name: str = "kpa"
    interval_s: float = KPA_TICK_S
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    panic_since: float | None = None
    last_burst: float = -math.inf
    last_desired: int = 0
    zero_since: float | None = None

    def _average(self, now: float, window: float) -> float:
        values = [v for t, v in self.samples if now - t < window]
        return sum(values) / len(values) if values else 0.0

    def evaluate(self, observed: Observed, now: float) -> tuple[int, int]:
        self.samples.append((now, _in_system(observed)))
        while self.samples and now - self.samples[0][0] >= KPA_STABLE_WINDOW_S:
            self.samples.popleft()
        stable = math.ceil(self._average(now, KPA_STABLE_WINDOW_S) / self.target)
        burst = math.ceil(self._average(now, KPA_PANIC_WINDOW_S) / self.target)
        ready = observed.ready
        if burst >= KPA_PANIC_THRESHOLD * max(1, ready) and burst > 0:
            self.last_burst = now
            if self.panic_since is None:
                self.panic_since = now
        elif self.panic_since is not None and now - self.last_burst >= KPA_STABLE_WINDOW_S:
            self.panic_since = None
        desired = max(burst, self.last_desired) if self.panic_since is not None else stable
        if ready > 0:
            desired = min(desired, math.ceil(ready * KPA_MAX_UP_RATE))
            desired = max(desired, math.floor(ready / KPA_MAX_DOWN_RATE))
        if desired == 0 and observed.held_requests == 0:
            self.zero_since = now if self.zero_since is None else self.zero_since
            if now - self.zero_since < KPA_ZERO_GRACE_S and observed.current:
                desired = 1
        else:
            self.zero_since = None
            desired = max(desired, 1) if observed.held_requests else desired
        desired = min(self.max_replicas, desired)
        self.last_desired = desired
        return desired, self.warm


@dataclass
class StaticPolicy:
    """A fixed replica count (static-peak)."""

    replicas: int
    name: str = "static-peak"
    interval_s: float = 3600.0

    def evaluate(self, observed: Observed, now: float) -> tuple[int, int]:
        return self.replicas, 0
