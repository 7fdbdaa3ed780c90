"""Post-burst release: the replicas a burst needed go once it is over beyond doubt.

After a burst the law kept its replicas for minutes: the stable window (60 s) still counts the
burst's arrivals, and the scale-down delay (120 s) then holds the highest target of that
time. Both guard against reading noise as a change of rate; neither is needed once the arrival
counts since the burst's end tell it is over. :func:`burst_over` says when they do:

* the burst lasted at least a cold start (the replicas started for it served it; one shorter
  ended before they were ready, and the burst memory's standbys and hold are what serve the
  next such burst);
* since its end, long enough that a rate still at the burst's would have shown: the counts
  over ``T`` seconds at the rate before the burst and at the burst's rate are told apart at
  the rise test's ``z`` (each beyond ``z`` standard deviations of the other's side, a count's
  variance ``D`` times its mean, ``D`` the arrivals' index of dispersion) once
  ``sqrt(T / D) * (sqrt(burst) - sqrt(base)) >= z``, so ``T = D z^2 / (sqrt(burst) -
  sqrt(base))^2``; at least one short window (the test's unit);
* and the rate since the end is not above the rate before it beyond the same noise.

The noise is the arrivals' own, as for the fall test of the SLO stage: at Poisson noise a dip
of bursty traffic (cv 4) for one short window, in the middle of a diurnal rise that the memory
had read as a burst, released 3 of 7 ready replicas at 70 req/s; they came back a cold start
later, and the rise's minute missed 2% of the hour's requests.

The burst's start and the rate to plan for (the larger of the rates before and since the
burst) come back; the law then sizes the SLO stage at that rate and restarts its forecast from
it until the stable window no longer holds the burst, ends panic, and drops from its hold the
targets recorded from the burst's start until it was judged over. Once judged over a burst
stays so (``judged``). Bursts that recur on a schedule (:mod:`~kubeplex.autoscaler.recurrence`)
go through the same test whatever their length, against the rate between them. Rates come
from the memory's request counts. Pure: the memory and ``now`` come in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kubeplex.autoscaler.memory import BUCKET_S, Peaks, burst_runs, ongoing

__all__ = ["Release", "burst_over", "finished_burst", "settle_s"]


@dataclass(frozen=True)
class Release:
    """A burst that is over: its start and end (s), the rate to plan for now, why, and since
    when."""

    start: float
    end: float
    rate: float
    reason: str
    #: When it was first judged over (the targets set since are the release's own).
    judged_at: float


def settle_s(burst_rate: float, base_rate: float, z: float, dispersion: float = 1.0) -> float:
    """Seconds of counts that tell a rate still at ``burst_rate`` from one back at
    ``base_rate`` at ``z`` standard deviations each, the counts' variance ``dispersion``
    times their mean (inf when the burst was no higher)."""
    gap = math.sqrt(max(burst_rate, 0.0)) - math.sqrt(max(base_rate, 0.0))
    return math.inf if gap <= 0 else dispersion * (z / gap) ** 2


def _rate(peaks: Peaks, since: float, until: float) -> float | None:
    """Requests per second in the memory's (whole) buckets from ``since`` to ``until``."""
    counted = [b.requests for b in peaks if since <= b.start < until]
    return math.fsum(counted) / (len(counted) * BUCKET_S) if counted else None


def finished_burst(peaks: Peaks, min_length_s: float) -> tuple[float, float] | None:
    """The memory's last burst when it is over and lasted at least ``min_length_s``."""
    runs = burst_runs(peaks)
    if not runs or ongoing(peaks, runs) is not None:
        return None
    start, end = runs[-1]
    return (start, end) if end - start >= min_length_s else None


def burst_over(peaks: Peaks, burst: tuple[float, float], now: float, short_window_s: float,
               stable_window_s: float, z: float, judged: Release | None = None,
               between: Peaks | None = None, dispersion: float = 1.0) -> Release | None:
    """``burst`` (start, end) when it is over beyond the rise test's doubt and the stable
    window still holds it (None otherwise; see the module docstring). ``judged``: the release
    of the previous evaluation; once a burst was judged over it stays so (a count back above
    the bound by noise would take the release back and forth, a cold start each time), and
    only the rate since is updated. ``between``: the buckets between bursts that recur on a
    schedule, whose rate is the one to come back to (the stable window before such a burst's
    recorded start may hold the burst itself: its demand is measured up to a window late).
    ``dispersion``: the counts' variance over their mean (1: Poisson); bursty arrivals dip
    by chance further and for longer, and a dip of a rise that goes on is no end."""
    start, end = burst
    if not end <= now < end + stable_window_s:
        return None
    base = (_rate(peaks, start - stable_window_s, start) if between is None
            else _rate(between, -math.inf, math.inf))
    during = _rate(peaks, start, end)
    since = now - end
    if base is None or during is None or since <= 0:
        return None
    wait = max(short_window_s, settle_s(during, base, z, dispersion))
    after = math.fsum(b.requests for b in peaks if b.start >= end) / since
    noise = math.sqrt(dispersion * max(base, 1.0 / since) / since)
    evident = since >= wait and after <= base + z * noise
    kept = judged is not None and judged.start == start
    if not evident and not kept:
        return None
    return Release(start, end, max(after, base), (
        f"the burst of {during:.1f} req/s from {start:.0f} s to {end:.0f} s is over "
        f"({after:.1f} req/s for {since:.0f} s since, {base:.1f} before; {wait:.0f} s tell "
        f"them apart): its replicas released"), judged.judged_at if judged and kept else now)
