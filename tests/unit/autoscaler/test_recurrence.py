"""The recurrence stage alone: a steady period of bursts is found and scheduled; Poisson bursts
(exponential gaps, as the ``bursts`` traces draw them) are not read as one."""

from __future__ import annotations

import random

import pytest

from kubeplex.autoscaler.memory import BUCKET_S, Bucket, Peaks, held_level
from kubeplex.autoscaler.recurrence import (
    LEVEL,
    Phase,
    detect,
    schedule,
    without_bursts,
)

COLD_START_S = 60.0
LAG_S = 60.0  # the stable window
P99 = 0.99


def _memory(starts: list[float], length_s: float, until: float, base: float = 1.0,
            high: float = 2.0, lag_s: float = 0.0) -> Peaks:
    """Buckets up to ``until``: 300 requests a bucket for ``length_s`` from each start, else
    30, and a demand of ``high`` from ``lag_s`` after each start (the stable window measures
    it late), else ``base``."""
    out = []
    t = 0.0
    while t <= until:
        arriving = any(s <= t < s + length_s for s in starts)
        level = high if any(s + lag_s <= t < s + length_s + lag_s for s in starts) else base
        out.append(Bucket(t, level, level, 300.0 if arriving else 30.0))
        t += BUCKET_S
    return tuple(out)


def _poisson_starts(rng: random.Random, mean_gap_s: float, until: float) -> list[float]:
    starts, t = [], rng.expovariate(1 / mean_gap_s)
    while t < until:
        starts.append(BUCKET_S * (t // BUCKET_S))
        t += BUCKET_S + rng.expovariate(1 / mean_gap_s)  # a burst lasts a bucket
    return starts


def test_a_steady_period_is_found_from_three_known_starts() -> None:
    # On-off: 3 minutes on every 10 minutes; the burst at 0 began before the memory (no known
    # start), so the period needs the third start, at 1800 s.
    periodic = [0.0, 600.0, 1200.0, 1800.0, 2400.0]
    assert detect(_memory(periodic, 180.0, until=1790.0), LAG_S) is None
    found = detect(_memory(periodic, 180.0, until=1810.0), LAG_S)
    assert found is not None
    assert found.starts == (600.0, 1200.0, 1800.0)
    assert found.period_s == pytest.approx(600.0)
    assert found.next_start == pytest.approx(2400.0)
    assert found.level == 2.0
    # The demand rises 40 s after the arrivals (the stable window): the start is where the
    # arrivals rose, so the next burst is provisioned ahead of its arrivals, not its demand.
    lagging = detect(_memory(periodic, 180.0, until=1850.0, lag_s=40.0), LAG_S)
    assert lagging is not None and lagging.starts == (600.0, 1200.0, 1800.0)
    # Intervals of 600 and 700 s are no period (|d1 - d2| / (d1 + d2) = 0.08 > LEVEL).
    assert detect(_memory([0.0, 600.0, 1200.0, 1900.0], 180.0, until=1910.0), LAG_S) is None


def test_the_schedule_releases_between_bursts_and_provisions_a_cold_start_ahead() -> None:
    periodic = [0.0, 600.0, 1200.0, 1800.0, 2400.0]

    def at(now: float) -> Phase:
        return schedule(_memory(periodic, 180.0, until=now), now, COLD_START_S, LAG_S).phase

    assert at(1850.0) is Phase.DURING
    assert at(2100.0) is Phase.BETWEEN
    ahead = schedule(_memory(periodic, 180.0, until=2330.0), 2330.0, COLD_START_S, LAG_S)
    assert ahead.phase is Phase.AHEAD and ahead.level == 2.0
    assert "2400" in ahead.reason
    # The burst due at 2400 s never came: the schedule is broken, nothing is provisioned.
    late = _memory(periodic[:4], 180.0, until=2450.0)
    missed = schedule(late, 2450.0, COLD_START_S, LAG_S)
    assert missed.phase is Phase.NONE and missed.level == 0.0
    assert "did not come" in missed.reason


def test_between_bursts_the_memory_holds_only_what_is_left_without_them() -> None:
    periodic = [0.0, 600.0, 1200.0, 1800.0]
    peaks = _memory(periodic, 180.0, until=2100.0)
    assert held_level(peaks, P99, recent_s=60.0) == 2.0  # the bursts recur: held
    found = detect(peaks, LAG_S)
    assert found is not None
    left = without_bursts(peaks, settle_s=60.0)
    assert max(b.demand for b in left) == 1.0
    assert held_level(left, P99, recent_s=60.0) == 1.0  # the level between them


def test_poisson_bursts_fill_the_memory_without_a_period() -> None:
    # The bursts traces: 30 minutes of memory holds ~30 bursts at exponential gaps of mean
    # 60 s, and every consecutive pair of intervals must agree, which random gaps never do.
    rng = random.Random(14)
    for _ in range(200):
        starts = _poisson_starts(rng, 60.0, until=1800.0)
        assert detect(_memory(starts, BUCKET_S, until=1800.0), LAG_S) is None
    # bursts-sparse (mean gap 240 s): ~7 bursts, now and then only three, whose two
    # intervals agree by chance with probability LEVEL; over whole memories, rarer still.
    trials = 1000
    found = sum(detect(_memory(_poisson_starts(rng, 240.0, until=1800.0), BUCKET_S,
                               until=1800.0), LAG_S) is not None for _ in range(trials))
    assert found / trials < LEVEL / 4


def test_three_poisson_starts_pass_as_a_period_at_the_tests_level() -> None:
    # The fewest starts, where the test is weakest: two exponential intervals agree within
    # LEVEL of their sum with probability LEVEL (|d1 - d2| / (d1 + d2) is uniform).
    rng = random.Random(7)
    trials, found = 4000, 0
    for _ in range(trials):
        starts: list[float] = []
        while len(starts) != 3:
            starts = _poisson_starts(rng, 240.0, until=1800.0)[:3]
        found += detect(_memory(starts, BUCKET_S, until=starts[-1] + 200.0), LAG_S) is not None
    assert found / trials < 2 * LEVEL
