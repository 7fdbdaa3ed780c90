"""The burst memory alone: recording, recurring bursts, the miss budget, standbys, lengths."""

from __future__ import annotations

import pytest

from kubeplex.autoscaler.memory import (
    BUCKET_S,
    Bucket,
    Peaks,
    burst_standbys,
    current_burst,
    held_level,
    record,
    recurring,
    typical_burst_s,
)

P99 = 0.99
#: A memory horizon longer than the series the tests build: the memory is young (its oldest
#: bucket is when the demand began), as at a model's first half hour.
H = 3600.0


def _series(demands: list[float], requests: float = 10.0, shorts: list[float] | None = None,
            busy: float | None = None) -> Peaks:
    """One bucket per value; ``busy``: requests in buckets above the first value's level."""
    out = []
    for i, d in enumerate(demands):
        count = busy if busy is not None and d > demands[0] else requests
        short = shorts[i] if shorts is not None else d
        out.append(Bucket(i * BUCKET_S, d, short, count))
    return tuple(out)


def test_record_folds_one_bucket_and_forgets_the_old() -> None:
    peaks = record((), 2.0, 1.0, 5.0, now=3.0, horizon_s=60.0)
    peaks = record(peaks, 4.0, 3.0, 5.0, now=7.0, horizon_s=60.0)
    assert peaks == (Bucket(0.0, 4.0, 3.0, 10.0),)
    peaks = record(peaks, 1.0, 1.0, 1.0, now=12.0, horizon_s=60.0)
    assert [b.start for b in peaks] == [0.0, 10.0]
    later = record(peaks, 1.0, 1.0, 1.0, now=200.0, horizon_s=60.0)
    assert [b.start for b in later] == [200.0]


def test_a_level_recurs_only_after_the_demand_fell_between_visits() -> None:
    bursts = _series([1, 6, 1, 1, 6, 1])
    assert recurring(bursts, 6)
    ripple = _series([1, 6, 5, 6, 5, 6, 1])  # one plateau: never fell to half of 6
    assert not recurring(ripple, 6)
    assert not recurring(_series([1, 6, 1]), 6)


def test_recurring_bursts_are_held_when_their_requests_exceed_the_budget() -> None:
    # Bursts carry 40 of every 80 requests: far beyond half of the 1% the SLO may miss.
    heavy = _series([1, 6, 1, 1, 6, 1], requests=10.0, busy=20.0)
    assert held_level(heavy, P99, recent_s=BUCKET_S) == 6
    # Bursts carrying 0.1% of the requests are let go: missing them fits the budget.
    light = _series([1, 6, 1, 1, 6, 1] + [1] * 40, requests=1000.0, busy=5.0)
    assert held_level(light, P99, recent_s=BUCKET_S) == 0
    # A one-off peak is never held by the memory (the scale-down delay takes care of it), nor
    # is a steady level (one long episode: the SLO stage's business).
    assert held_level(_series([1, 9, 1, 1]), P99, recent_s=BUCKET_S) == 0


def test_standbys_cover_a_short_burst_seen_once_beyond_what_is_held() -> None:
    once = _series([1, 1, 5, 1, 1, 1], shorts=[1, 1, 5, 1, 1, 1])
    assert burst_standbys(once, held=1.0, quantile=P99, cold_start_s=60.0,
                          horizon_s=H) == pytest.approx(4)
    assert burst_standbys(once, held=5.0, quantile=P99, cold_start_s=60.0,
                          horizon_s=H) == 0



def test_standbys_cover_a_long_burst_seen_once_for_its_first_cold_start() -> None:
    """A burst longer than a cold start: its replicas come within it, so what a standby
    saves is its first cold start's requests. Not while it goes on (its replicas are on
    their way), nor once one came back (the held level's and the recurrence's business),
    nor when its first cold start's requests fit the budget."""
    shape = [1] * 6 + [5] * 8 + [1] * 6
    over = _series(shape, shorts=shape)
    assert burst_standbys(over, held=1.0, quantile=P99, cold_start_s=60.0,
                          horizon_s=H) == pytest.approx(4)
    # A plateau under one replica's throughput looks like its gaps in the short windows: a
    # long burst is found in the stable window's demand.
    plateau = _series(shape, shorts=[1] * len(shape))
    assert burst_standbys(plateau, held=1.0, quantile=P99, cold_start_s=60.0,
                          horizon_s=H) == pytest.approx(4)
    going = _series([1] * 10 + [5] * 7, shorts=[1] * 10 + [5] * 7)
    assert current_burst(going) is not None
    assert burst_standbys(going, held=1.0, quantile=P99, cold_start_s=60.0,
                          horizon_s=H) == 0
    twice = _series(shape * 2, shorts=shape * 2)
    assert burst_standbys(twice, held=1.0, quantile=P99, cold_start_s=60.0,
                          horizon_s=H) == 0
    # The first occurrence's start has left a full memory: it still came back.
    spikes = [7, 1, 1, 1, 1] + [5, 1, 1, 1, 1] * 4
    assert burst_standbys(_series(spikes, shorts=spikes), held=1.0, quantile=P99,
                          cold_start_s=60.0, horizon_s=len(spikes) * BUCKET_S) == 6
    aging = [5] * 6 + [1] * 4 + [5] * 7 + [1] * 14
    assert burst_standbys(_series(aging, shorts=aging), held=1.0, quantile=P99,
                          cold_start_s=60.0, horizon_s=len(aging) * BUCKET_S) == 0
    # 6 requests in its first cold start of ~2,000 in memory: within half the 1% budget.
    light = _series(shape + [1] * 150, requests=13.0, shorts=shape + [1] * 150, busy=1.0)
    assert burst_standbys(light, held=1.0, quantile=P99, cold_start_s=60.0,
                          horizon_s=H) == 0


def test_a_level_the_demand_stepped_down_from_keeps_no_standby() -> None:
    """20 minutes at 2 replicas, rippling to 3 in the short windows, then 1: the plateau
    was the demand's level, not a burst that may come back. While it is most of the memory
    its ripples are no burst (they needed no more than the memory's typical demand); once the
    lower level is, the plateau began before the memory (its first bucket is the oldest of a
    full memory), and it and its ripples keep nothing. At the memory's birth the same shape
    is a burst seen once: the demand began with it (on-off traffic that opens with a burst)."""
    def after_drop(high: int, low: int, horizon_s: float) -> float:
        demand = [2.0] * high + [1.0] * low
        # the plateau opens with a gap in the short windows (under a replica's throughput)
        shorts = [1.0] + [3.0 if i % 4 == 1 else 2.0 for i in range(1, high)] + [1.0] * low
        return burst_standbys(_series(demand, shorts=shorts), held=1.0, quantile=P99,
                              cold_start_s=60.0, horizon_s=horizon_s)

    for high, low in ((12, 3), (9, 6), (6, 10)):  # the memory is full: 15-16 buckets
        assert after_drop(high, low, horizon_s=(high + low) * BUCKET_S) == 0, (high, low)
    assert after_drop(6, 10, horizon_s=H) == pytest.approx(1)


def test_a_held_level_falls_with_the_traffic_its_bursts_rode_on() -> None:
    # Bursts of 6 over a demand of 2 (the memory's median); the demand of the last 30 s has
    # fallen to 1: the next burst adds its 4 to that, so 5 are held, not 6.
    fallen = _series([2, 6, 2, 2, 6, 2, 1, 1, 1, 1, 1], busy=20.0)
    assert held_level(fallen, P99, recent_s=3 * BUCKET_S) == 5
    # The same bursts with the demand still at 2: held at full height.
    assert held_level(_series([2, 6, 2, 2, 6, 2, 2, 2, 2], busy=20.0), P99,
                      recent_s=3 * BUCKET_S) == 6
    # A demand above the median now never holds more than the bursts reached.
    risen = _series([2, 6, 2, 2, 6, 2, 2, 4, 4, 4], busy=20.0)
    assert held_level(risen, P99, recent_s=3 * BUCKET_S) == 6


def test_a_burst_needs_a_whole_replica_more_than_the_median_rounded_as_a_held_level() -> None:
    """Levels are kept unrounded: 1.45 replicas over a median of 1.03 needs a second replica,
    a burst with its standby; 1.2 is within the speed estimate's noise of one, no burst."""
    def once(level: float) -> Peaks:
        shorts = [1.03] * 5 + [level] + [1.03] * 5
        return _series(shorts, shorts=shorts)

    assert burst_standbys(once(1.45), held=1.03, quantile=P99, cold_start_s=60.0,
                          horizon_s=H) == pytest.approx(0.42)
    assert burst_standbys(once(1.2), held=1.03, quantile=P99, cold_start_s=60.0,
                          horizon_s=H) == 0


def test_burst_lengths_and_the_one_going_on() -> None:
    shorts = [1, 5, 1, 1, 5, 5, 1, 1, 6]
    peaks = _series(shorts, shorts=shorts)
    assert typical_burst_s(peaks) == 2 * BUCKET_S
    assert current_burst(peaks) == 8 * BUCKET_S
    quiet = _series(shorts[:-1], shorts=shorts[:-1])
    assert current_burst(quiet) is None
    assert typical_burst_s(_series([1, 5, 1], shorts=[1, 5, 1])) is None
