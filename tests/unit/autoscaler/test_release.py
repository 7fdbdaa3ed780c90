"""The post-burst release alone: a burst that lasted a cold start is let go once the counts
since its end tell it is over, not before, and never a burst shorter than a cold start."""

from __future__ import annotations

import math

import pytest

from kubeplex.autoscaler.memory import BUCKET_S, Bucket, Peaks
from kubeplex.autoscaler.release import burst_over, settle_s

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


def test_a_burst_that_lasted_a_cold_start_is_released_once_it_is_over() -> None:
    peaks = _memory([(300.0, 10.0, 2.0), (90.0, 30.0, 5.0), (20.0, 10.0, 2.0)])
    end = 390.0
    released = burst_over(peaks, end + 20.0, COLD_START_S, SHORT_S, STABLE_S, Z)
    assert released is not None
    assert (released.start, released.end) == (300.0, end)
    assert released.rate == pytest.approx(10.0)
    assert "over" in released.reason
    # Too soon after its end (less than a short window), or once the stable window no longer
    # holds it (the law's own stages have let it go), nothing to release.
    assert burst_over(peaks, end + 2.0, COLD_START_S, SHORT_S, STABLE_S, Z) is None
    later = _memory([(300.0, 10.0, 2.0), (90.0, 30.0, 5.0), (70.0, 10.0, 2.0)])
    assert burst_over(later, end + 70.0, COLD_START_S, SHORT_S, STABLE_S, Z) is None


def test_a_rate_still_above_the_one_before_is_not_released() -> None:
    # The demand fell a replica below the burst but the rate is 20 req/s, not 10: not over.
    peaks = _memory([(300.0, 10.0, 2.0), (90.0, 30.0, 5.0), (20.0, 20.0, 3.0)])
    assert burst_over(peaks, 410.0, COLD_START_S, SHORT_S, STABLE_S, Z) is None


def test_a_burst_shorter_than_a_cold_start_is_left_to_the_memory() -> None:
    peaks = _memory([(300.0, 10.0, 2.0), (30.0, 30.0, 5.0), (20.0, 10.0, 2.0)])
    assert burst_over(peaks, 350.0, COLD_START_S, SHORT_S, STABLE_S, Z) is None
