"""The post-burst release alone: a burst that lasted a cold start is let go once the counts
since its end tell it is over, not before, and never a burst shorter than a cold start."""

from __future__ import annotations

import math

import pytest

from kubeplex.autoscaler.memory import BUCKET_S, Bucket, Peaks
from kubeplex.autoscaler.release import Release, burst_over, finished_burst, settle_s

COLD_START_S, SHORT_S, STABLE_S, Z = 60.0, 6.0, 60.0, 2.84


def _memory(rates: list[tuple[float, float, float]]) -> Peaks:
    """Buckets from (seconds, req/s, replicas needed) segments, oldest first."""
    out, t = [], 0.0
    for seconds, rate, needed in rates:
        for _ in range(round(seconds / BUCKET_S)):
            out.append(Bucket(t, needed, needed, rate * BUCKET_S))
            t += BUCKET_S
    return tuple(out)


def test_the_settle_time_is_what_tells_the_two_rates_apart() -> None:
    # 10 -> 20 req/s: ~4.7 s of counts separate them at 2.84 standard deviations each side.
    t = settle_s(20.0, 10.0, Z)
    assert t == pytest.approx(Z**2 / (math.sqrt(20) - math.sqrt(10)) ** 2)
    assert Z * math.sqrt(10 * t) + Z * math.sqrt(20 * t) == pytest.approx((20 - 10) * t)
    # A burst barely above the rate before it takes much longer; one not above never tells.
    assert settle_s(13.0, 10.0, Z) > 5 * t
    assert settle_s(10.0, 10.0, Z) == math.inf


def _over(peaks: Peaks, now: float, judged: Release | None = None) -> Release | None:
    burst = finished_burst(peaks, COLD_START_S)
    return None if burst is None else burst_over(peaks, burst, now, SHORT_S, STABLE_S, Z,
                                                 judged)


def test_a_burst_that_lasted_a_cold_start_is_released_once_it_is_over() -> None:
    peaks = _memory([(300.0, 10.0, 2.0), (90.0, 30.0, 5.0), (20.0, 10.0, 2.0)])
    end = 390.0
    released = _over(peaks, end + 20.0)
    assert released is not None
    assert (released.start, released.end) == (300.0, end)
    assert released.rate == pytest.approx(10.0)
    assert "over" in released.reason
    # Too soon after its end (less than a short window), or once the stable window no longer
    # holds it (the law's own stages have let it go), nothing to release.
    assert _over(peaks, end + 2.0) is None
    later = _memory([(300.0, 10.0, 2.0), (90.0, 30.0, 5.0), (70.0, 10.0, 2.0)])
    assert _over(later, end + 70.0) is None


def test_a_rate_still_above_the_one_before_is_not_released_unless_already_judged() -> None:
    # The short windows need the quiet level again but the rate is 20 req/s, not 10: not over.
    peaks = _memory([(300.0, 10.0, 2.0), (90.0, 30.0, 5.0), (20.0, 20.0, 2.0)])
    assert _over(peaks, 410.0) is None
    # Judged over at the previous evaluation, it stays over (noise above the bound would take
    # the release back and forth), planned for at the rate since.
    judged = _over(_memory([(300.0, 10.0, 2.0), (90.0, 30.0, 5.0), (10.0, 10.0, 2.0)]), 400.0)
    assert judged is not None
    kept = _over(peaks, 410.0, judged)
    assert kept is not None and kept.rate == pytest.approx(20.0)


def test_a_burst_shorter_than_a_cold_start_is_left_to_the_memory() -> None:
    peaks = _memory([(300.0, 10.0, 2.0), (30.0, 30.0, 5.0), (20.0, 10.0, 2.0)])
    assert finished_burst(peaks, COLD_START_S) is None
    assert finished_burst(peaks, 30.0) == (300.0, 330.0)


def test_a_dip_of_bursty_traffic_is_no_end_of_a_burst() -> None:
    # A rise the memory read as a burst (30 -> 57 req/s) dips to 33 req/s for the 10 s since:
    # over in Poisson counts, not in counts whose variance is 16 times their mean (cv 4).
    peaks = _memory([(400.0, 30.0, 3.0), (380.0, 57.0, 6.0), (10.0, 33.0, 3.0)])
    burst = finished_burst(peaks, COLD_START_S)
    assert burst == (400.0, 780.0)
    assert burst_over(peaks, burst, 790.0, SHORT_S, STABLE_S, Z) is not None
    assert burst_over(peaks, burst, 790.0, SHORT_S, STABLE_S, Z, dispersion=16.0) is None
    # Such counts take 16 times as long to tell the two rates apart, and a real end still
    # shows: back at 30 req/s for the 40 s since, released.
    assert settle_s(57.0, 30.0, Z, 16.0) == pytest.approx(16 * settle_s(57.0, 30.0, Z))
    ended = _memory([(400.0, 30.0, 3.0), (380.0, 57.0, 6.0), (40.0, 30.0, 3.0)])
    assert burst_over(ended, burst, 820.0, SHORT_S, STABLE_S, Z, dispersion=16.0) is not None
