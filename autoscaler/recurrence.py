"""Recurrence: bursts that come back on a schedule (cron jobs, on-off phases, hourly batches).

The burst memory (:mod:`~kubeplex.autoscaler.memory`) holds a level that recurred through
every gap, because it cannot tell when the next burst comes: releasing would make that burst
wait a cold start. When the bursts start at a steady period, it can: the next one is due one
period after the last, to within the intervals' own spread. The law then provisions a cold
start ahead of it and need not hold the bursts' level in between.

* **detection** (:func:`detect`): the starts of the bursts in the memory (runs of what its
  buckets needed a whole replica above the median: :func:`~kubeplex.autoscaler.memory.
  burst_runs` on :func:`~kubeplex.autoscaler.memory.demand_level`; a burst under way when
  the memory's first bucket was recorded has no known start and is left out; each starts
  where its arrivals rose, up to a stable window before its demand did), at least
  :data:`MIN_STARTS` of them, and every two consecutive intervals ``d1, d2`` agreeing as
  ``|d1 - d2| <= LEVEL * (d1 + d2)``.
  Under bursts that start as a Poisson process (independent exponential gaps, the ``bursts``
  traces), ``d1 / (d1 + d2)`` is uniform on [0, 1], so ``|d1 - d2| / (d1 + d2)`` is too, and
  each pair passes by chance with probability exactly :data:`LEVEL`: a period is read into
  random bursts about once in 44 new bursts, and only while every start in the memory fits.
* **schedule** (:func:`schedule`): the period's phase now. ``AHEAD``: within a cold start
  (plus the prediction's spread) of the next start: have the level the bursts reached.
  ``BETWEEN``: the last burst is over and the next is not yet due: the memory need not hold
  their level (the next is provisioned ahead). ``DURING`` a burst the law reacts as usual.
  A burst that did not come by the end of its window breaks the schedule (``NONE``) until the
  starts agree again.

All pure: the memory and ``now`` come in.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from kubeplex.autoscaler.memory import (
    BUCKET_S,
    Peaks,
    burst_runs,
    demand_level,
    ongoing,
    run_level,
)
from kubeplex.autoscaler.signals import TEST_Z

__all__ = [
    "LEVEL",
    "MIN_STARTS",
    "Phase",
    "Recurrence",
    "Schedule",
    "Z",
    "detect",
    "schedule",
    "without_bursts",
]

#: The one-sided level in standard deviations of the law's tests (the rise test's too).
Z = TEST_Z
#: Chance that two consecutive intervals between Poisson bursts agree as closely as a period's
#: must: the rise test's one-sided level (~2.3%).
LEVEL = NormalDist().cdf(-Z)
#: Starts needed: two intervals, the fewest whose agreement can be tested.
MIN_STARTS = 3


@dataclass(frozen=True)
class Recurrence:
    """A period read from the bursts' starts: the starts (oldest first), the period (their
    mean interval), the spread of the next start (s) and the level every burst reached
    (replicas at the model's speed, as the memory records them)."""

    starts: tuple[float, ...]
    period_s: float
    spread_s: float
    level: float

    @property
    def next_start(self) -> float:
        return self.starts[-1] + self.period_s


class Phase(enum.Enum):
    """Where ``now`` falls in a recurrence (NONE: no period, or the last prediction missed)."""

    NONE = "none"
    DURING = "during"
    BETWEEN = "between"
    AHEAD = "ahead"


@dataclass(frozen=True)
class Schedule:
    """The recurrence stage's answer: the phase, the level to have now (replicas at the model's
    speed; 0 outside ``AHEAD``), why, and between bursts the one that ended."""

    phase: Phase
    level: float = 0.0
    reason: str = ""
    recurrence: Recurrence | None = None
    #: ``BETWEEN``: the burst that ended (start, end).
    last: tuple[float, float] | None = None


def _rise(peaks: Peaks, start: float, lag_s: float, bound: float) -> float:
    """Where the arrivals of a burst whose demand rose at ``start`` began to rise: the first
    of the buckets just before it, within ``lag_s`` (the stable window that measured the
    demand), whose requests are beyond ``bound`` (:data:`LEVEL`'s Poisson bound over the
    median bucket's)."""
    rise = start
    for bucket in reversed(peaks):
        if bucket.start >= start:
            continue
        if bucket.start < start - lag_s or bucket.requests <= bound:
            break
        rise = bucket.start
    return rise


def detect(peaks: Peaks, lag_s: float) -> Recurrence | None:
    """The period the bursts in the memory start at, or None (fewer than :data:`MIN_STARTS`
    known starts, or two consecutive intervals that disagree beyond :data:`LEVEL`). A burst
    starts where its arrivals rose (:func:`_rise`), up to ``lag_s`` before its demand did."""
    return _detect(peaks, burst_runs(peaks, demand_level), lag_s)


def _detect(peaks: Peaks, bursts: Sequence[tuple[float, float]],
            lag_s: float) -> Recurrence | None:
    """:func:`detect` on the memory's ``bursts`` (:func:`burst_runs` on
    :func:`~kubeplex.autoscaler.memory.demand_level`)."""
    if not peaks:
        return None
    counts = sorted(b.requests for b in peaks)
    typical = counts[len(counts) // 2]
    bound = typical + Z * math.sqrt(max(typical, 1.0))
    runs = [(_rise(peaks, start, lag_s, bound), start, end) for start, end in bursts]
    runs = [run for run in runs if run[0] > peaks[0].start]
    if len(runs) < MIN_STARTS:
        return None
    starts = tuple(rise for rise, _, _ in runs)
    intervals = [b - a for a, b in itertools.pairwise(starts)]
    for d1, d2 in itertools.pairwise(intervals):
        if abs(d1 - d2) > LEVEL * (d1 + d2):
            return None
    period = sum(intervals) / len(intervals)
    # The next start is known to a bucket (starts are bucket starts) beyond the intervals'
    # own spread around the period.
    spread = max(abs(d - period) for d in intervals) + BUCKET_S
    level = min(run_level(peaks, start, end) for _, start, end in runs)
    return Recurrence(starts, period, spread, level)


def schedule(peaks: Peaks, now: float, lead_s: float, lag_s: float) -> Schedule:
    """The phase of the bursts' period at ``now``: ``AHEAD`` from ``lead_s`` (a cold start)
    plus the spread before the next start, ``BETWEEN`` after the last burst ended and before
    that, ``DURING`` a burst; ``NONE`` without a period or once the next start is overdue
    (``lag_s``: see :func:`detect`)."""
    bursts = burst_runs(peaks, demand_level)
    found = _detect(peaks, bursts, lag_s)
    if found is None:
        return Schedule(Phase.NONE)
    due = found.next_start
    if now > due + found.spread_s:
        return Schedule(Phase.NONE, reason=(
            f"bursts every {found.period_s:.0f} s: the one due at {due:.0f} s did not come"),
            recurrence=found)
    if ongoing(peaks, bursts) is not None:
        return Schedule(Phase.DURING, recurrence=found)
    if now >= due - found.spread_s - lead_s:
        return Schedule(Phase.AHEAD, found.level, (
            f"bursts every {found.period_s:.0f} s (+-{found.spread_s:.0f} s): the next is due "
            f"at {due:.0f} s, provisioned ahead by a {lead_s:.0f} s start"), found)
    return Schedule(Phase.BETWEEN, reason=(
        f"bursts every {found.period_s:.0f} s: the next is due at {due:.0f} s, not held "
        f"through the gap"), recurrence=found, last=bursts[-1])


def without_bursts(peaks: Peaks, settle_s: float) -> Peaks:
    """The memory without its bursts' buckets and the ``settle_s`` after each (the stable
    window still carries a burst that ended): what to hold between recurring bursts. Called
    once :func:`detect` found a period, every burst with a known start is on it, and one under
    way when the memory began is taken to be too."""
    spans = burst_runs(peaks, demand_level)
    return tuple(b for b in peaks
                 if not any(start <= b.start < end + settle_s for start, end in spans))
