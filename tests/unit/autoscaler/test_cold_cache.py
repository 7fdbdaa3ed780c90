"""The cold-cache input: the fleet's prefix-cache hit rate and a new replica's handicap."""

from __future__ import annotations

import pytest

from kubeplex.autoscaler.cold_cache import ColdCache, cold_cache


def test_hit_rate_from_two_readings_and_the_cold_replicas_share() -> None:
    state = cold_cache(100, 1000, 700, 2000)
    assert state == ColdCache(0.6)
    assert state.warm_fraction == pytest.approx(0.4)
    assert "2.5x the prompt tokens" in state.reason


@pytest.mark.parametrize("readings", [(5, 10, 5, 10), (50, 100, 10, 20), (0, 0, 30, 20)])
def test_no_data_or_a_restarted_engine_says_nothing(readings: tuple[float, ...]) -> None:
    assert cold_cache(*readings) is None


def test_an_all_hit_window_stays_below_one() -> None:
    state = cold_cache(0, 0, 500, 500)
    assert state is not None and state.hit_rate < 1 and state.warm_fraction > 0
