"""The late requests of a replay: too long alone, or in episodes of one kind each
(autoscaler/misses)."""

from __future__ import annotations

import numpy as np
import pytest

from kubeplex.autoscaler.fleet import Timeline
from kubeplex.autoscaler.misses import EPISODE_GAP_S, misses

SLO_S = 1.0
COLD_S = 60.0


def _timeline(ready: list[tuple[float, int]], fleet: list[tuple[float, int]]) -> Timeline:
    """Ticks every 2 s over 600 s; ready and fleet (ready + starting) as (from t, n) steps."""
    line = Timeline()
    for t in np.arange(0.0, 600.0, 2.0):
        line.time.append(float(t))
        line.ready.append([n for s, n in ready if s <= t][-1])
        line.replicas.append([n for s, n in fleet if s <= t][-1])
    return line


def _replay(late_at: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One request per second over 600 s, 512-token prompts; late (TTFT 3 s) inside the given
    (from, to) spans, 0.2 s elsewhere."""
    arrivals = np.arange(0.0, 600.0, 1.0)
    ttft = np.where([any(a <= t < b for a, b in late_at) for t in arrivals], 3.0, 0.2)
    return arrivals, np.full(arrivals.size, 512, dtype=np.int64), ttft


def test_nothing_late_is_no_episode() -> None:
    arrivals, prompts, ttft = _replay([])
    found = misses(arrivals, prompts, ttft, SLO_S, _timeline([(0, 1)], [(0, 1)]), COLD_S)
    assert (found.late, found.alone, found.episodes) == (0, 0, [])


def test_each_kind_is_told_from_the_timeline() -> None:
    arrivals, prompts, ttft = _replay([(100, 110), (200, 205), (400, 420)])
    # 100-110: a replica asked at 90 s is ready at 106 s (reaction); 200-205: asked at 198 s,
    # ready only at 258 s (late start); 400-420: nothing asked (not asked)
    line = _timeline(ready=[(0, 1), (106, 2), (258, 3)],
                     fleet=[(0, 1), (90, 2), (198, 3)])
    found = misses(arrivals, prompts, ttft, SLO_S, line, COLD_S,
                   reasons=[(90.0, "scale up 1 -> 2: rise"), (92.0, "hold 2"),
                            (198.0, "scale up 2 -> 3: backlog")])
    assert found.by_kind() == {"reaction": 10, "late start": 5, "not asked": 20, "alone": 0}
    assert [e.start for e in found.largest(2)] == [100.0, 400.0]
    assert [(e.start, e.end, e.late, e.sent, e.kind) for e in found.episodes] == [
        (100.0, 109.0, 10, 10, "reaction"), (200.0, 204.0, 5, 5, "late start"),
        (400.0, 419.0, 20, 20, "not asked")]
    reaction, late_start, not_asked = found.episodes
    assert (reaction.ready_before, reaction.ready_peak, reaction.asked_at) == (1, 2, (90.0,))
    assert reaction.reasons == ("scale up 1 -> 2: rise",)
    assert (late_start.ready_before, late_start.ready_peak) == (2, 2)
    assert late_start.reasons == ("scale up 2 -> 3: backlog",)
    assert not_asked.asked_at == () and not_asked.reasons == ()
    assert "400-419 s: 20 of 20 late (not asked); 3 ready before" in not_asked.describe()
    assert "asked for no replica" in not_asked.describe()


def test_late_requests_closer_than_the_gap_are_one_episode() -> None:
    gap = EPISODE_GAP_S
    arrivals, prompts, ttft = _replay([(100, 101), (100 + gap - 1, 100 + gap),
                                       (100 + 3 * gap, 100 + 3 * gap + 1)])
    found = misses(arrivals, prompts, ttft, SLO_S, _timeline([(0, 1)], [(0, 1)]), COLD_S)
    assert [(e.start, e.late, e.sent) for e in found.episodes] == [(100.0, 2, gap),
                                                                   (100 + 3 * gap, 1, 1)]


def test_prompts_too_long_alone_are_apart_and_unserved_requests_are_late() -> None:
    arrivals, prompts, ttft = _replay([(100, 103)])
    prompts[[50, 101, 350]] = 40_000  # too long alone: one among the late of 100-103 s
    ttft[[50, 350]] = 5.0
    ttft[300] = np.inf  # never served: late
    found = misses(arrivals, prompts, ttft, SLO_S, _timeline([(0, 2)], [(0, 2)]), COLD_S,
                   alone_s=lambda prompt: prompt / 10_000)
    assert found.alone == 3 and found.late == 3 + 2 + 1
    assert [(e.start, e.late, e.kind) for e in found.episodes] == [
        (100.0, 2, "not asked"), (300.0, 1, "not asked")]
    without = misses(arrivals, prompts, ttft, SLO_S, _timeline([(0, 2)], [(0, 2)]), COLD_S)
    assert without.alone == 0 and without.late == 6
    with pytest.raises(ValueError, match="SLO"):
        misses(arrivals, prompts, ttft, 0.0, _timeline([(0, 2)], [(0, 2)]), COLD_S)


def test_an_episode_tells_at_most_a_few_scale_ups() -> None:
    arrivals, prompts, ttft = _replay([(100, 160)])
    steps = [(0.0, 1)] + [(100.0 + 6 * i, 2 + i) for i in range(8)]
    found = misses(arrivals, prompts, ttft, SLO_S, _timeline([(0, 1)], steps), COLD_S,
                   reasons=[(100.0 + 6 * i, f"scale up {i}") for i in range(8)])
    (episode,) = found.episodes
    assert len(episode.asked_at) == 8 and len(episode.reasons) == 5
    assert "asked for more at 100, 106, 112, 118, 124 s and 3 more times" in episode.describe()
