"""Where a replay's replicas came from: the replica-hours each stage of the law asked for.

Every evaluation's target is the sum of what its stages did to it (the SLO stage's replicas,
then what the rise, panic, burst memory, hold... each added or took away: see
:meth:`~kubeplex.autoscaler.policy.Decision.changes`), and it stands until the next
evaluation. Summed over a replay, that tells what a policy's cost is made of: on a trace
whose demand wavers, how much the scale-down hold keeps beyond what the SLO stage asks, for
example. These are the replica-hours *asked for*; the fleet's GPU-hours also count the
replicas' start-up and their GPUs per replica, and lag the asks by the starts. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from kubeplex.autoscaler.trace import FloatArray

__all__ = ["STAGE_COLORS", "Spend", "StageLog", "spend", "stacked"]

#: The stages that set a target, in the law's order, and the colour plots draw each in.
STAGE_COLORS = {"no data": "tab:gray", "slo": "tab:blue", "credit": "tab:cyan",
                "rise": "tab:orange", "claim": "tab:olive", "panic": "tab:red",
                "recurrence": "tab:purple", "feedback": "tab:pink", "hold": "tab:green",
                "rate_limit": "tab:brown", "scale_to_zero": "black", "bounds": "lightgray",
                "budget": "gold"}

_V = TypeVar("_V")

#: Per evaluation: its time, what each stage did to the target, the warm standbys asked.
StageLog = Sequence[tuple[float, tuple[tuple[str, int], ...], int]]


@dataclass(frozen=True)
class Spend:
    """Replica-hours by stage, in the law's order (negative: the stage took replicas away,
    e.g. the rate limit or scale to zero), and the warm standby-hours asked."""

    by_stage: dict[str, float]
    standby_hours: float

    @property
    def asked(self) -> float:
        """Replica-hours asked for in all: what the stages add up to."""
        return sum(self.by_stage.values())

    def to_json(self) -> dict[str, Any]:
        """Replica-hours by stage and standby-hours, rounded for a report."""
        return {"by_stage": {name: round(hours, 4) for name, hours in self.by_stage.items()},
                "standby_hours": round(self.standby_hours, 4)}

    def describe(self) -> str:
        total = self.asked
        parts = [f"{name} {hours:.2f}" + (f" ({hours / total:.0%})" if total > 0 else "")
                 for name, hours in self.by_stage.items() if round(hours, 2)]
        return (f"replica-hours asked, by the stage that set them: {total:.2f} = "
                f"{' + '.join(parts) or '0'}; warm standbys {self.standby_hours:.2f}")


def _durations(log: StageLog, end_s: float) -> FloatArray:
    """How long each evaluation's target stood: until the next one (the last: ``end_s``)."""
    times = np.array([t for t, _, _ in log], dtype=float)
    return np.diff(np.append(times, max(end_s, times[-1]) if len(times) else end_s))


def spend(log: StageLog, end_s: float) -> Spend:
    """Sum ``log`` over the replay (which ends at ``end_s``)."""
    by_stage: dict[str, float] = {}
    standby = 0.0
    for (_, changes, warm), seconds in zip(log, _durations(log, end_s), strict=True):
        for name, change in changes:
            by_stage[name] = by_stage.get(name, 0.0) + change * seconds / 3600.0
        standby += warm * seconds / 3600.0
    return Spend(_in_law_order(by_stage), standby)


def stacked(log: StageLog) -> tuple[FloatArray, dict[str, FloatArray]]:
    """Evaluation times, and each stage's replicas at each (what it added; zero where it
    took away or did nothing), in the law's order: the layers of a stacked plot of the
    target."""
    times = np.array([t for t, _, _ in log], dtype=float)
    layers: dict[str, FloatArray] = {}
    for i, (_, changes, _) in enumerate(log):
        for name, change in changes:
            if change > 0:
                layers.setdefault(name, np.zeros(len(log)))[i] += change
    return times, _in_law_order(layers)


def _in_law_order(by_stage: dict[str, _V]) -> dict[str, _V]:
    """``by_stage`` in the law's order (stages it does not know last)."""
    order = list(STAGE_COLORS)
    return dict(sorted(by_stage.items(), key=lambda kv: (
        order.index(kv[0]) if kv[0] in order else len(order))))
