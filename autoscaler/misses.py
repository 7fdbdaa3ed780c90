"""Where a replay missed the TTFT SLO, and why: the late requests grouped into episodes.

A late request (TTFT over the SLO, or never served) whose prompt's prefill alone, on an idle
replica of the fleet, takes longer than the SLO is *alone*: no replica count serves it in time,
and it is counted apart. The other late requests less than ``EPISODE_GAP_S`` apart form one
episode. For each: when, how many of the requests sent in it were late, and what the fleet did
around it, read from the replay's timeline (so it judges any policy alike, not by the policy's
own account). An episode is of one kind:

* ``not asked``: the fleet asked for no replica from a cold start before the episode to its
  end; the policy judged its capacity enough (its model was optimistic for the fleet, or the
  rise did not show in what it reads);
* ``late start``: replicas were asked for, and none became ready before the episode ended (a
  burst shorter than a start: only capacity held beforehand serves it);
* ``reaction``: replicas asked for became ready during the episode; the late requests queued
  until they did.

A policy's own reasons for its scale-ups in that window come along when it keeps them
(kubeplex does). Pure: the replay's arrays come in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kubeplex.autoscaler.evaluation import Scenario
from kubeplex.autoscaler.fleet import SimResult, Timeline
from kubeplex.autoscaler.trace import FloatArray, IntArray, Trace

__all__ = ["EPISODE_GAP_S", "KINDS", "KIND_COLORS", "Episode", "Misses", "misses",
           "replay_misses"]

#: Late requests closer than this (seconds) belong to one episode.
EPISODE_GAP_S = 30.0
#: The kinds of late requests: those of episodes, then those too long alone.
KINDS = ("reaction", "late start", "not asked", "alone")
#: How plots draw each kind (``kubeplex simulate autoscale --plot``, the benchmark's PNG).
KIND_COLORS = {"reaction": "tab:orange", "late start": "tab:purple", "not asked": "tab:red",
               "alone": "tab:gray"}
#: At most this many scale-up times and reasons are told per episode.
SHOWN = 5


@dataclass(frozen=True)
class Episode:
    """One run of late requests and the fleet around it (times in seconds of the trace)."""

    start: float
    end: float
    late: int
    sent: int
    ready_before: int
    ready_peak: int
    #: when the fleet (ready and starting) grew, from a cold start before ``start`` to ``end``
    asked_at: tuple[float, ...]
    kind: str
    #: the policy's reasons for its scale-ups in that window, when it keeps them
    reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        more = len(self.asked_at) - SHOWN
        asked = (", asked for more at " + ", ".join(f"{t:.0f}" for t in self.asked_at[:SHOWN])
                 + " s" + (f" and {more} more times" if more > 0 else "")
                 if self.asked_at else ", asked for no replica")
        return (f"{self.start:.0f}-{self.end:.0f} s: {self.late} of {self.sent} late "
                f"({self.kind}); {self.ready_before} ready before, {self.ready_peak} at most "
                f"during it{asked}")


@dataclass(frozen=True)
class Misses:
    """A replay's late requests: those too long alone, and the others' episodes."""

    alone: int
    episodes: list[Episode]

    @property
    def late(self) -> int:
        return self.alone + sum(e.late for e in self.episodes)

    def by_kind(self) -> dict[str, int]:
        counts = {kind: sum(e.late for e in self.episodes if e.kind == kind)
                  for kind in KINDS[:-1]}
        return {**counts, "alone": self.alone}

    def largest(self, n: int) -> list[Episode]:
        """The ``n`` episodes with the most late requests, in time order."""
        return sorted(sorted(self.episodes, key=lambda e: -e.late)[:n], key=lambda e: e.start)


def _kind(asked: bool, ready_rose: bool) -> str:
    if not asked:
        return "not asked"
    return "reaction" if ready_rose else "late start"


def misses(arrival_s: FloatArray, prompt_tokens: IntArray, ttft: FloatArray, slo_s: float,
           timeline: Timeline, lookback_s: float,
           alone_s: Callable[[int], float] | None = None,
           reasons: Sequence[tuple[float, str]] = ()) -> Misses:
    """The replay's late requests. ``lookback_s``: how long before an episode a scale-up still
    counts as asked for it (a cold start); ``alone_s``: a prompt's prefill seconds on an idle
    replica of the fleet (None: none is judged alone); ``reasons``: (time, reason) of the
    policy's decisions."""
    if not slo_s > 0 or lookback_s < 0:
        raise ValueError(f"the SLO must be > 0 and the lookback >= 0, got {slo_s}, {lookback_s}")
    late = np.flatnonzero(~(ttft <= slo_s))
    if alone_s is not None and late.size:
        sizes = np.unique(prompt_tokens[late])
        too_long = sizes[[alone_s(int(p)) > slo_s for p in sizes]]
        lone = np.isin(prompt_tokens[late], too_long)
    else:
        lone = np.zeros(late.size, dtype=bool)
    late, alone = late[~lone], int(np.count_nonzero(lone))
    if late.size == 0:
        return Misses(alone, [])
    cuts = np.flatnonzero(np.diff(arrival_s[late]) > EPISODE_GAP_S) + 1
    ticks = np.asarray(timeline.time, dtype=float)
    ready = np.asarray(timeline.ready, dtype=int)
    fleet = np.asarray(timeline.replicas, dtype=int)
    grew = np.flatnonzero(np.diff(fleet) > 0) + 1  # ticks where the fleet asked for more
    out = []
    for group in np.split(late, cuts):
        start, end = float(arrival_s[group[0]]), float(arrival_s[group[-1]])
        sent = int(np.searchsorted(arrival_s, end, "right") - np.searchsorted(arrival_s, start))
        before = max(int(np.searchsorted(ticks, start, "right")) - 1, 0)
        during = slice(before, max(int(np.searchsorted(ticks, end, "right")), before + 1))
        ready_before = int(ready[before]) if ready.size else 0
        peak = int(ready[during].max()) if ready.size else 0
        asked = tuple(float(ticks[i]) for i in grew if start - lookback_s < ticks[i] <= end)
        said = tuple(dict.fromkeys(why for t, why in reasons
                                   if start - lookback_s < t <= end
                                   and why.startswith("scale up")))
        out.append(Episode(start, end, int(group.size), sent, ready_before, peak, asked,
                           _kind(bool(asked), peak > ready_before), said[:SHOWN]))
    return Misses(alone, out)


def replay_misses(trace: Trace, result: SimResult, scenario: Scenario,
                  reasons: Sequence[tuple[float, str]] = ()) -> Misses:
    """:func:`misses` of a replay: the scenario's SLO, a cold start of lookback, and a prompt
    judged alone on the fleet's true profile at its true speed."""
    truth = scenario.truth
    return misses(trace.arrival_s, trace.prompt_tokens, result.ttft, scenario.slo_ttft_s,
                  result.timeline, scenario.cold_start_s,
                  lambda prompt: truth.prefill_seconds(prompt) / scenario.fleet_speed, reasons)
