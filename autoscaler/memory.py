"""Burst memory: what the demand did over the last half hour, to decide what to keep.

Real traffic comes in bursts, often shorter than a cold start, separated by idle gaps.
Scaling up when a burst arrives is too late for that burst; what a policy can do is
*remember*. The memory is a compact record, in :data:`BUCKET_S` buckets over the last
``horizon_s`` seconds, of the highest demand (the replicas the SLO and burst rules asked for;
never the backlog rule, whose spikes drain a queue that already formed), the highest
short-window demand (what bursts needed), and the requests that arrived. It answers:

* **hold** (:func:`held_level`): a release weighs the idle gap against what the next burst
  would cost: a replica released now makes that burst wait a cold start for it, and the
  requests of a burst shorter than a cold start then miss the SLO altogether. So the policy
  keeps the highest level the demand reached in **at least two separate bursts** within the
  memory (:func:`recurring`), if the requests that needed that level are more than the
  SLO's miss budget can absorb (:data:`BUDGET_SHARE` of ``1 - percentile`` of the
  requests in memory). Bursts that carry fewer requests are let go (missing them stays
  within the budget and holding them would cost GPUs for nothing); one-off plateaus (a
  single episode) are released after the scale-down delay. Two visits of a level are separate
  episodes when the demand fell to at most :data:`EPISODE_DROP` of it in between, so the
  ripple of one plateau is one episode. A burst adds to the traffic around it, so the held
  level moves with that traffic: down by as much as the demand now is below the memory's
  median (bursts over a daily peak are not held at full height once the day declines); both
  medians are of the recorded buckets, so a flat demand moves nothing.
* **standbys** (:func:`burst_standbys`): a burst seen once (not yet recurring, nor the level
  the demand stepped down from) is covered by warm standbys: a claim takes a warm start, so
  its next occurrence is served within seconds, where a replica cold-started for it would
  come after a burst shorter than a cold start, or after a longer one's first cold start;
  and a standby can serve any model of a shared pool, unlike a held replica.
* **burst lengths** (:func:`typical_burst_s`, :func:`current_burst`): how long the bursts in
  the memory lasted (runs of short-window demand a whole replica above its median), so the
  policy can tell a burst that will be over before a new replica is ready.

All pure; ``now`` comes in, the memory goes back in the autoscaler's state.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kubeplex.autoscaler.capacity import SPEED_NOISE

__all__ = [
    "BUCKET_S",
    "BUDGET_SHARE",
    "EPISODE_DROP",
    "Bucket",
    "Peaks",
    "burst_runs",
    "burst_standbys",
    "current_burst",
    "demand_level",
    "held_level",
    "ongoing",
    "record",
    "recurring",
    "replicas_at",
    "run_level",
    "short_level",
    "typical_burst_s",
]

#: Width of a memory bucket (s): fine enough to separate bursts a few seconds apart, coarse
#: enough that 30 minutes of memory is 180 of them.
BUCKET_S = 10.0
#: Two visits of a level are separate episodes when the demand fell to at most this fraction
#: of it in between: a burst that came back, not the ripple of one plateau.
EPISODE_DROP = 0.5
#: Share of the SLO's miss budget (``1 - percentile`` of the requests) that bursts the memory
#: does not hold for may use: the other half is left to queueing tails and model error.
BUDGET_SHARE = 0.5


@dataclass(frozen=True)
class Bucket:
    """One bucket: its start, the highest demand and short-window demand in it (replicas at
    the model's speed: a later speed correction rescales them), and the requests that came."""

    start: float
    demand: float
    short: float
    requests: float


#: The memory, oldest bucket first.
Peaks = tuple[Bucket, ...]


def record(peaks: Peaks, demand: float, short: float, arrivals: float, now: float,
           horizon_s: float) -> Peaks:
    """``peaks`` with this evaluation folded in at ``now`` (``arrivals``: requests since the
    last one) and the buckets older than the horizon gone."""
    start = math.floor(now / BUCKET_S) * BUCKET_S
    kept = [b for b in peaks if b.start > now - horizon_s - BUCKET_S]
    if kept and kept[-1].start == start:
        last = kept[-1]
        kept[-1] = Bucket(start, max(last.demand, demand), max(last.short, short),
                          last.requests + arrivals)
    else:
        kept.append(Bucket(start, demand, short, arrivals))
    return tuple(kept)


def _episodes(peaks: Peaks, level: float) -> int:
    """Visits of ``level`` separated by a drop to :data:`EPISODE_DROP` of it (or a missing
    bucket: no evaluation, no demand)."""
    runs, armed, previous = 0, True, None
    for bucket in peaks:
        if previous is not None and bucket.start - previous > BUCKET_S + 1e-9:
            armed = True
        previous = bucket.start
        if bucket.demand >= level and armed:
            runs, armed = runs + 1, False
        elif bucket.demand <= level * EPISODE_DROP:
            armed = True
    return runs


def recurring(peaks: Peaks, level: float) -> bool:
    """Whether the demand reached ``level`` in at least two separate episodes."""
    return _episodes(peaks, level) >= 2


def _share(peaks: Peaks, level: float) -> float:
    total = math.fsum(b.requests for b in peaks)
    if total <= 0:
        return 0.0
    return math.fsum(b.requests for b in peaks if b.demand >= level) / total


def held_level(peaks: Peaks, quantile: float, recent_s: float) -> float:
    """The highest recurring level whose requests exceed the memory's share of the miss budget
    (0: nothing to hold), moved with the traffic its bursts rode on: down by as much as the
    demand of the last ``recent_s`` (median bucket) is below the whole memory's median, never
    above the level itself."""
    budget = BUDGET_SHARE * (1.0 - quantile)
    for level in sorted({b.demand for b in peaks if b.demand > 0}, reverse=True):
        if recurring(peaks, level) and _share(peaks, level) > budget:
            typical = statistics.median(b.demand for b in peaks)
            latest = peaks[-1].start
            recent = statistics.median(b.demand for b in peaks if b.start > latest - recent_s)
            return min(level, max(recent, level - typical + recent))
    return 0.0


def burst_standbys(peaks: Peaks, held: float, quantile: float, cold_start_s: float,
                   horizon_s: float) -> float:
    """Standbys for a burst seen once whose next occurrence would miss more than the memory's
    share of the miss budget while a replica cold-starts for it: its level beyond ``held`` (0
    when none). A burst shorter than a cold start (a run of short-window demand) is over
    before such a replica is ready, so all its requests at that level count. A longer one (a
    run of the stable window's demand: a plateau under one replica's throughput looks like
    its gaps in the short windows) counts the requests of its first cold start, once over
    and while it is the memory's only one: one still going on is the reactive stages' (its
    replicas are on their way), and once one came back the held level and the recurrence
    serve them. A burst has a start the memory saw: the memory's only run, begun at the
    oldest bucket of a memory full to its ``horizon_s``, was going on before the memory, so
    it is the level the demand fell from (a step down reads as a burst once the lower level
    fills half the memory), not a burst that may come back, and nor are its ripples in the
    short windows. Nor is a ripple of a plateau that is still most of the memory: a short
    burst needs more replicas than the memory's median demand."""
    budget = BUDGET_SHARE * (1.0 - quantile)
    runs = burst_runs(peaks, demand_level)
    before = _level_before(peaks, runs, horizon_s)
    typical = replicas_at(statistics.median(b.demand for b in peaks), 1.0) if peaks else 0
    for start, end in burst_runs(peaks):
        if end - start >= cold_start_s or (before and before[0] <= start < before[1]):
            continue
        level = run_level(peaks, start, end)
        if level > held and _share(peaks, level) > budget:
            return level - held if replicas_at(level, 1.0) > typical else 0.0
    going = ongoing(peaks, runs)
    over = [(start, end) for start, end in runs
            if end - start >= cold_start_s and start != going]
    total = math.fsum(b.requests for b in peaks)
    if len(over) != 1 or total <= 0 or over[0] == before:
        return 0.0  # none, one that came back (held or recurring), or the level before
    start, end = over[0]
    level = run_level(peaks, start, end)
    first = math.fsum(b.requests for b in peaks if start <= b.start < start + cold_start_s)
    return level - held if level > held and first / total > budget else 0.0


def _level_before(peaks: Peaks, runs: Sequence[tuple[float, float]], horizon_s: float,
                  ) -> tuple[float, float] | None:
    """The level the demand fell from: ``runs`` (:func:`burst_runs` of the stable window's
    demand) when they are a single run that may have begun before the memory, one starting
    at the oldest bucket of a memory that spans its whole horizon (at the memory's birth,
    the oldest bucket is when the demand began). Among other runs, one whose start aged out
    is a burst that came back."""
    if len(runs) != 1 or runs[0][0] != peaks[0].start:
        return None
    return runs[0] if peaks[-1].start - peaks[0].start >= horizon_s - BUCKET_S else None


def replicas_at(level: float, speed: float) -> int:
    """Replicas for a memory ``level`` (replicas at the model's speed) at the estimated
    ``speed``: rescaled, but a fraction of a replica within :data:`SPEED_NOISE` of the whole
    count below it (the speed estimate's noise) adds no replica."""
    needed = level / speed
    whole = math.floor(needed)
    if whole > 0 and needed <= whole * (1 + SPEED_NOISE):
        return whole
    return max(0, math.ceil(needed - 1e-9))


def run_level(peaks: Peaks, start: float, end: float) -> float:
    """The highest demand in a run of the memory's buckets from ``start`` to ``end`` (one of
    :func:`burst_runs`): the level that burst reached."""
    return max(b.demand for b in peaks if start <= b.start < end)


def demand_level(bucket: Bucket) -> float:
    """What a bucket needed: the stable window's demand, not the short windows' (these are
    sized to clear a few seconds of work, so a plateau under one replica's throughput looks
    like its gaps in them, while it needs the replicas its stable window shows)."""
    return bucket.demand


def short_level(bucket: Bucket) -> float:
    """What a bucket's bursts needed: its short-window demand."""
    return bucket.short


def burst_runs(peaks: Peaks, level: Callable[[Bucket], float] = short_level,
               ) -> list[tuple[float, float]]:
    """(start, end) of the bursts in the memory: the runs of consecutive buckets whose
    ``level`` (the short-window demand unless told) needs at least one replica more than the
    memory's median, both counted as a held level is (:func:`replicas_at`): the levels are
    kept unrounded, and a burst needing 1.45 replicas over a median of 1.03 needs a second
    replica (it was not a burst while the test was ``short > median + 1``, so the burst seen
    once got no standby)."""
    if len(peaks) < 2:
        return []
    values = sorted(level(b) for b in peaks)
    base = replicas_at(values[len(values) // 2], 1.0)
    runs: list[tuple[float, float]] = []
    start: float | None = None
    previous: float | None = None
    for bucket in peaks:
        contiguous = previous is not None and bucket.start - previous <= BUCKET_S + 1e-9
        bursting = replicas_at(level(bucket), 1.0) > base
        if bursting and start is not None and contiguous:
            previous = bucket.start
            continue
        if start is not None and previous is not None:
            runs.append((start, previous + BUCKET_S))
            start = None
        if bursting:
            start = bucket.start
        previous = bucket.start
    if start is not None and previous is not None:
        runs.append((start, previous + BUCKET_S))
    return runs


def typical_burst_s(peaks: Peaks) -> float | None:
    """How long the finished bursts in the memory lasted at most (s); None with fewer than
    two."""
    runs = burst_runs(peaks)
    last = peaks[-1].start + BUCKET_S if peaks else None
    finished = [end - start for start, end in runs if end != last]
    if len(finished) < 2:
        return None
    return max(finished)


def current_burst(peaks: Peaks, level: Callable[[Bucket], float] = short_level,
                  ) -> float | None:
    """When the burst going on now started (None: no burst now; ``level`` as for
    :func:`burst_runs`)."""
    return ongoing(peaks, burst_runs(peaks, level))


def ongoing(peaks: Peaks, runs: Sequence[tuple[float, float]]) -> float | None:
    """The start of the last of ``runs`` (:func:`burst_runs` of ``peaks``) when it goes on
    to the memory's latest bucket (None: no burst now)."""
    if not runs or not peaks or runs[-1][1] != peaks[-1].start + BUCKET_S:
        return None
    return runs[-1][0]
