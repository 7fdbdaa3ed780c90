"""Replica-hours by the stage of the law that asked for them (``autoscaler/spend.py``)."""

from __future__ import annotations

import pytest

from kubeplex.autoscaler.spend import spend, stacked

# Three evaluations: 2 replicas from the SLO stage for 3600 s; then the hold keeps a third
# for 1800 s with 1 standby; then the rate limit takes one of three away until the end.
LOG = [
    (0.0, (("slo", 2),), 0),
    (3600.0, (("slo", 2), ("hold", 1)), 1),
    (5400.0, (("slo", 3), ("hold", 0), ("rate_limit", -1)), 0),
]


def test_each_target_stands_until_the_next_evaluation_the_last_until_the_end() -> None:
    spent = spend(LOG, end_s=9000.0)
    assert spent.by_stage == pytest.approx({"slo": 2 + 1 + 3, "hold": 0.5, "rate_limit": -1})
    assert spent.asked == pytest.approx(2 + 1.5 + 2)
    assert spent.standby_hours == pytest.approx(0.5)
    text = spent.describe()
    assert text.startswith("replica-hours asked, by the stage that set them: 5.50 = slo 6.00")
    assert "hold 0.50 (9%)" in text and "rate_limit -1.00" in text
    assert text.endswith("warm standbys 0.50")


def test_an_end_before_the_last_evaluation_gives_it_no_time() -> None:
    assert spend(LOG, end_s=0.0).by_stage == pytest.approx(
        {"slo": 2 + 1, "hold": 0.5, "rate_limit": 0.0})
    assert spend([], end_s=100.0).asked == 0.0


def test_the_stacked_layers_are_what_each_stage_added() -> None:
    times, layers = stacked(LOG)
    assert list(times) == [0.0, 3600.0, 5400.0]
    assert set(layers) == {"slo", "hold"}  # the rate limit only took away
    assert list(layers["slo"]) == [2, 2, 3] and list(layers["hold"]) == [0, 1, 0]
