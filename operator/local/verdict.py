"""Did a load run meet the model's TTFT SLO, phase by phase, and if not, why.

``kubeplex load`` and ``make demo`` record the fleet while they offer load (one
:class:`FleetPoint` per status read: replicas serving and starting, what the autoscaler wanted
and its reason). :func:`explain_phase` then judges each phase of the load pattern against the
SLO (its percentile of the answered requests' TTFT) and, for a phase that missed it, says which
requests were late and what the fleet did meanwhile:

* late while the fleet scaled up (sent before it reached the most replicas it had in the
  phase): the queue built during the reaction. The timeline says when the autoscaler asked
  for each replica and when it served; capacity that stands before the load rises
  (``spec.scaling.minReplicas``) is what removes this part;
* late once the fleet was at that level: it stayed too small. Either the autoscaler wanted
  more than it got (its reason names the limit: the pool's GPU budget, ``maxReplicas``), or it
  judged the level enough (its capacity model was optimistic for these engines).

Pure: the samples and the fleet record come in, lines of text go out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["FleetPoint", "Timed", "explain_phase", "fleet_point"]


class Timed(Protocol):
    """One request of a load run (:class:`~kubeplex.operator.local.load.Sample`)."""

    @property
    def sent(self) -> float: ...
    @property
    def status(self) -> int: ...
    @property
    def ttft(self) -> float | None: ...


@dataclass(frozen=True)
class FleetPoint:
    """The model's fleet at ``t`` (seconds since the load's start)."""

    t: float
    ready: int
    starting: int
    desired: int | None
    reason: str | None


def fleet_point(t: float, model: dict[str, object]) -> FleetPoint:
    """A point from one model's entry of the local status (``/kubeplex/v1/status``)."""
    def count(key: str) -> int:
        value = model.get(key)
        return value if isinstance(value, int) else 0
    desired = model.get("desired")
    reason = model.get("decision")
    return FleetPoint(t, count("ready"), count("starting"),
                      desired if isinstance(desired, int) else None,
                      reason if isinstance(reason, str) else None)


def _at(fleet: Sequence[FleetPoint], t: float) -> FleetPoint | None:
    """The last point at or before ``t`` (the first one if none is)."""
    before = [p for p in fleet if p.t <= t]
    return before[-1] if before else (fleet[0] if fleet else None)


def _timeline(fleet: Sequence[FleetPoint], start: float, end: float) -> list[str]:
    """The changes of the serving count and of the wanted count within [start, end)."""
    first = _at(fleet, start)
    if first is None:
        return []
    lines = [f"  +0.0 s  {first.ready} serving, {first.starting} starting"
             + (f", the autoscaler wants {first.desired}" if first.desired is not None else "")]
    ready, desired = first.ready, first.desired
    for p in fleet:
        if not start < p.t < end:
            continue
        if p.desired is not None and p.desired != desired:
            lines.append(f"  +{p.t - start:.1f} s  the autoscaler wants {p.desired}: {p.reason}")
            desired = p.desired
        if p.ready != ready:
            lines.append(f"  +{p.t - start:.1f} s  {p.ready} serving")
            ready = p.ready
    return lines


def explain_phase(samples: Sequence[Timed], label: str, start: float, end: float,
                  slo_s: float, percentile: float,
                  fleet: Sequence[FleetPoint]) -> list[str]:
    """The SLO verdict on the requests sent in [start, end) (first line), and for a miss the
    late requests and the fleet's timeline over the phase (the lines after)."""
    if not (0 < percentile < 100) or slo_s <= 0:
        raise ValueError(f"percentile must be in (0, 100) and the SLO > 0, got "
                         f"{percentile} and {slo_s}")
    sent = [s for s in samples if start <= s.sent < end]
    answered = [s.ttft for s in sent if s.status == 200 and s.ttft is not None]
    p = f"p{percentile:g}"
    if not answered:
        return [f"{label}: no request answered, nothing to judge"]
    value = float(np.quantile(answered, percentile / 100))  # as the load summary has it
    late = [s for s in sent if s.status != 200 or s.ttft is None or s.ttft > slo_s]
    allowed = math.floor(len(sent) * (100 - percentile) / 100)
    head = (f"{label}: TTFT {p} {value:.2f} s, {{}} the {slo_s:g} s SLO ({len(late)} of "
            f"{len(sent)} requests over it or failed; {p} allows {allowed})")
    if value <= slo_s:
        return [head.format("within")]
    lines = [head.format("over")]
    inside = [q for q in fleet if start <= q.t < end]
    if not inside:
        return [*lines, "  no record of the fleet during this phase to say why"]
    peak = max(q.ready for q in inside)
    reached = next(q.t for q in inside if q.ready == peak)
    scaling = [s for s in late if s.sent < reached]
    steady = [s for s in late if s.sent >= reached]
    lines.append(f"  late requests sent from +{late[0].sent - start:.1f} s to "
                 f"+{late[-1].sent - start:.1f} s; {len(scaling)} before the fleet reached "
                 f"its {peak} serving at +{reached - start:.1f} s, {len(steady)} after")
    lines += _timeline(fleet, start, end)
    if len(scaling) >= len(steady):
        lines.append("  why: mostly the queue built while the fleet scaled up. Reacting "
                     "takes the rise to show in the arrival counts, then a start; capacity "
                     "standing before the load rises (spec.scaling.minReplicas) removes it")
    else:
        last = inside[-1]
        if last.desired is not None and last.desired > peak:
            lines.append(f"  why: the fleet stayed under what the autoscaler wanted "
                         f"({last.desired}): {last.reason}")
        else:
            lines.append(f"  why: at {peak} serving the fleet stayed too slow while the "
                         f"autoscaler judged that enough ({last.reason}); its capacity "
                         "model is optimistic for these engines (`kubeplex calibrate` "
                         "measures them)")
    return lines
