"""The autoscaling step of a pool cycle: signals in, one Decision per ModelService out.

:class:`Scaler` keeps, per ModelService, the recent metric scrapes and the autoscaler's state
between cycles, in memory (a restarted operator starts afresh: stabilization windows restart,
which only delays a scale-down). It calls :func:`kubeplex.autoscaler.policy.decide` with the
config from :func:`kubeplex.operator.planning.autoscaler_config` and the fleet counts from
:func:`~kubeplex.operator.planning.observed_fleet`.

**The manual pin rule.** While ``spec.scaling.replicas`` is set (``kubectl scale`` sets it
through ``/scale``), that count is the desired replicas whatever the metrics say (the
autoscaler still runs, so the observed signals stay fresh). Remove the field to hand control
back: ``kubectl patch msvc NAME --type=json -p
'[{"op":"remove","path":"/spec/scaling/replicas"}]'``.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from kubeplex.api import ModelService
from kubeplex.autoscaler.errors import AutoscalerError
from kubeplex.autoscaler.policy import AutoscalerConfig, AutoscalerState, Decision, Observed, decide
from kubeplex.autoscaler.signals import Scrape, Signals
from kubeplex.autoscaler.sources import merge, parse_metrics_text
from kubeplex.operator._runtime_client import HeldRequests
from kubeplex.operator._status import iso, slo_status
from kubeplex.operator.errors import ConfigError
from kubeplex.operator.planning import ReplicaTemplate, autoscaler_config
from kubeplex.placement.hardware import GPUSpec

__all__ = ["Evaluation", "Scaler", "parse_overrides"]

#: Scrapes older than the stable window times this are dropped from the history.
HISTORY_WINDOWS = 2.0


def parse_overrides(text: str) -> dict[str, float]:
    """``KUBEPLEX_AUTOSCALER``: a JSON object of AutoscalerConfig numbers, e.g.
    ``{"stable_window_s": 10, "scale_down_delay_s": 10}`` (for tests and demos)."""
    if not text.strip():
        return {}
    allowed = {f.name for f in fields(AutoscalerConfig)} - {
        "slo_ttft_s", "percentile", "min_replicas", "max_replicas", "gpus_per_replica",
        "profile", "forecast", "warm_pool"}
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"KUBEPLEX_AUTOSCALER is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("KUBEPLEX_AUTOSCALER must be a JSON object")
    for k, v in data.items():
        if k not in allowed:
            raise ConfigError(f"KUBEPLEX_AUTOSCALER: unknown key {k!r}; allowed: "
                              f"{', '.join(sorted(allowed))}")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"KUBEPLEX_AUTOSCALER: {k} must be a number, got {v!r}")
    return {k: float(v) for k, v in data.items()}


@dataclass(frozen=True)
class Evaluation:
    desired: int
    warm: int
    reason: str
    observed: dict[str, Any] | None
    slo_status: str


@dataclass
class _ModelMemory:
    state: AutoscalerState = field(default_factory=AutoscalerState)
    scrapes: collections.deque[Scrape] = field(default_factory=collections.deque)


@dataclass
class Scaler:
    overrides: Mapping[str, float] = field(default_factory=dict)
    memory: dict[str, _ModelMemory] = field(default_factory=dict)

    def forget(self, key: str) -> None:
        self.memory.pop(key, None)

    def record(self, key: str, served_name: str, texts: Sequence[tuple[str, str]],
               now: float) -> None:
        """Parse this cycle's /metrics texts of ``key``'s ready pods into one scrape."""
        mem = self.memory.setdefault(key, _ModelMemory())
        scrapes = []
        for pod, text in texts:
            try:
                scrapes.append(parse_metrics_text(text, served_name, now, target=pod))
            except AutoscalerError:
                continue
        if scrapes:
            mem.scrapes.append(merge(scrapes, now))

    def record_scrape(self, key: str, scrape: Scrape) -> None:
        self.memory.setdefault(key, _ModelMemory()).scrapes.append(scrape)

    def evaluate(self, svc: ModelService, template: ReplicaTemplate, gpu: GPUSpec,
                 fleet: Mapping[str, Any], trigger: str | None, now: float,
                 held: HeldRequests | None = None) -> Evaluation:
        """``held``: the gateway's held requests this cycle (scale from zero); when they could
        not be read, 0 is assumed and the reason says so."""
        mem = self.memory.setdefault(svc.key, _ModelMemory())
        held = held or HeldRequests()
        config = autoscaler_config(svc, template, gpu, **self.overrides)
        horizon = max(config.stable_window_s, config.panic_window_s) * HISTORY_WINDOWS
        while mem.scrapes and now - mem.scrapes[0].time > horizon:
            mem.scrapes.popleft()
        observed = Observed(scrapes=tuple(mem.scrapes), trigger=trigger,
                            held_requests=held.of(svc.key), **fleet)
        decision: Decision = decide(observed, config, mem.state, now)
        mem.state = decision.state
        desired, reason = decision.desired_replicas, decision.reason
        if held.problem:
            reason = f"{reason} ({held.caveat}: {held.problem})"
        pin = svc.spec.scaling.replicas
        if pin is not None:
            desired, reason = pin, f"pinned to spec.scaling.replicas={pin} (autoscaler: {reason})"
        sig = decision.signals
        if isinstance(sig, Signals):
            observed_status: dict[str, Any] = {
                "queue": round(sig.waiting, 3), "arrivalRate": round(sig.arrival_rate, 3),
                "time": iso(now)}
            if sig.ttft_quantile is not None:
                observed_status["ttftSeconds"] = round(sig.ttft_quantile, 4)
            if sig.kv_usage is not None:
                observed_status["kvCacheUsage"] = round(sig.kv_usage, 4)
            idle = sig.arrival_rate == 0 and sig.in_system == 0
            slo = "Idle" if idle else slo_status(sig.ttft_quantile, svc.spec.slo.ttft_seconds,
                                                 sig.arrival_rate)
        else:
            observed_status = {}
            slo = "Idle" if fleet.get("ready", 0) == 0 and desired == 0 else "Unknown"
        return Evaluation(desired, decision.desired_warm, reason, observed_status or None, slo)

