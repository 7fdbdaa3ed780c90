"""Burst memory: what the demand did over the last minutes, to decide what to keep.

Real traffic comes in bursts shorter than a cold start, separated by idle gaps. Scaling up
when a burst arrives is too late for that burst; what a policy can do is *remember*: keep the
capacity the last bursts needed while they keep coming, and release it when they stop. This
module keeps that memory, a compact record of the demand target (the replicas the SLO and
the burst rules asked for; never the backlog rule, whose spikes drain a queue that already
formed) in :data:`BUCKET_S` buckets, each with its highest target, over the last
``horizon_s`` seconds, and answers two questions:

* **hold** (:func:`held_level`): scale-down may go no lower than the highest level the demand
  reached in **at least two separate episodes** within the hold horizon (a recurring burst;
  the policy's stabilization already keeps any peak of the last scale-down delay). Episodes are separate when the demand fell to at most
  :data:`EPISODE_DROP` of the level in between, so the noise of one long plateau is one
  episode, not many. The memory horizon weighs an idle gap against the cold
  start a release would cost: a burst that recurs within ``hold_gap_cold_starts`` cold starts
  is cheaper to keep than to miss while a replica cold-starts for it, so its level is held
  through the gaps; bursts further apart are served from zero (or from warm standbys).
* **standbys** (:func:`burst_standbys`): warm standbys sized from burst statistics: the level
  that recurred over the whole memory (longer than the hold), beyond the replicas the target
  already holds: bursts that come back, but too far apart to keep replicas for the gap, are
  met in a warm start instead of a cold one.

All pure; ``now`` comes in, the memory goes back in the autoscaler's state.
"""

from __future__ import annotations

import math

__all__ = ["BUCKET_S", "EPISODE_DROP", "Peaks", "burst_standbys", "held_level", "record",
           "recurring_level"]

#: Width of a memory bucket (s): fine enough to separate bursts a few seconds apart, coarse
#: enough that 30 minutes of memory is 180 numbers.
BUCKET_S = 10.0

#: Two visits of a level are separate episodes when the demand fell to at most this fraction
#: of it in between: a burst that came back, not the ripple of one plateau.
EPISODE_DROP = 0.5

#: ``(bucket start, highest demand in it)``, oldest first. The caller chooses the unit; the
#: policy records replicas at the model's speed, so a later speed correction rescales them.
Peaks = tuple[tuple[float, float], ...]


def record(peaks: Peaks, target: float, now: float, horizon_s: float) -> Peaks:
    """``peaks`` with ``target`` folded in at ``now`` and buckets older than the horizon gone."""
    start = math.floor(now / BUCKET_S) * BUCKET_S
    kept = [(t, v) for t, v in peaks if t > now - horizon_s - BUCKET_S]
    if kept and kept[-1][0] == start:
        kept[-1] = (start, max(kept[-1][1], target))
    else:
        kept.append((start, target))
    return tuple(kept)


def _episodes(peaks: Peaks, level: float) -> int:
    """Visits of ``level`` separated by a drop to :data:`EPISODE_DROP` of it (or a missing
    bucket: no evaluation, no demand)."""
    runs, armed, previous = 0, True, None
    for t, value in peaks:
        if previous is not None and t - previous > BUCKET_S + 1e-9:
            armed = True
        previous = t
        if value >= level and armed:
            runs, armed = runs + 1, False
        elif value <= level * EPISODE_DROP:
            armed = True
    return runs


def recurring_level(peaks: Peaks) -> float:
    """The highest level the demand reached in at least two separate episodes (0: none)."""
    for level in sorted({v for _, v in peaks if v > 0}, reverse=True):
        if _episodes(peaks, level) >= 2:
            return level
    return 0.0


def held_level(peaks: Peaks, now: float, hold_s: float) -> float:
    """The recurring level over the last ``hold_s`` seconds of the memory."""
    return recurring_level(tuple((t, v) for t, v in peaks if t + BUCKET_S > now - hold_s))


def burst_standbys(peaks: Peaks, held: float) -> float:
    """Warm standbys: the recurring level over the whole memory beyond the ``held`` target."""
    return max(0.0, recurring_level(peaks) - held)
