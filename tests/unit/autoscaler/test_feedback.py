"""SLO feedback alone: periods, a step when the model is optimistic, an undone step when more
capacity does not help (no ratchet), relaxing after met periods."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kubeplex.autoscaler.feedback import (
    BLOCK_PERIODS,
    GAIN_Z,
    MIN_REQUESTS,
    RELAX_PERIODS,
    STEP,
    FeedbackState,
    evident_shortfall,
    needed_gain,
    observe,
    step,
    trial_requests,
)
from kubeplex.autoscaler.metrics import TTFT, TTFT_BUCKETS, Scrape

PERIOD = 60.0
FLOOR = 0.5


def _scrape(t: float, fast: float, slow: float) -> Scrape:
    """Cumulative first tokens: ``fast`` at 0.1 s, ``slow`` at 5 s."""
    bounds = (*TTFT_BUCKETS, float("inf"))
    buckets = tuple((b, (fast if b >= 0.1 else 0) + (slow if b >= 5.0 else 0)) for b in bounds)
    return Scrape(t, {}, {TTFT: {"e": buckets}})


def _judged(state: FeedbackState, good: float, bad: float, now: float,
            suffices: bool = True, infeasible: float = 0.0) -> FeedbackState:
    first = observe(state, [_scrape(now - 60, 0, 0)], 1.0, infeasible, now - 60) \
        if state.seen is None else state
    counted = observe(first, [_scrape(first.seen or 0.0, 0, 0), _scrape(now, good, bad)], 1.0,
                      infeasible, now)
    return step(counted, 0.99, suffices, FLOOR, PERIOD, now)


def test_a_period_is_judged_only_when_it_is_long_and_large_enough() -> None:
    state = observe(FeedbackState(), [_scrape(0, 0, 0)], 1.0, 0.0, 0.0)
    few = observe(state, [_scrape(0, 0, 0), _scrape(60, 197, 3)], 1.0, 0.0, 60.0)
    assert few.total == 200
    # 98.5% of 200 does not show p99 missed beyond doubt: wait for MIN_REQUESTS
    assert step(few, 0.99, True, FLOOR, PERIOD, 60.0) is few
    assert MIN_REQUESTS > 200
    assert step(few, 0.99, True, FLOOR, PERIOD, 30.0) is few  # shorter than a period


def test_a_few_requests_that_show_the_slo_missed_beyond_doubt_are_judged_at_once() -> None:
    assert evident_shortfall(30 / 40, 40, 0.95)  # a burst with a quarter of it late
    assert not evident_shortfall(37 / 40, 40, 0.95)  # 92.5% of 40: could be 95%
    assert not evident_shortfall(0.0, 0, 0.95)
    state = observe(FeedbackState(), [_scrape(0, 0, 0)], 1.0, 0.0, 0.0)
    burst = observe(state, [_scrape(0, 0, 0), _scrape(60, 90, 36)], 1.0, 0.0, 60.0)
    stepped = step(burst, 0.95, True, FLOOR, PERIOD, 60.0)
    assert burst.total < MIN_REQUESTS and stepped.factor == pytest.approx(STEP)


def test_an_optimistic_model_gets_one_step_and_a_step_that_helps_stays() -> None:
    state = _judged(FeedbackState(), 900, 100, now=60.0)  # 90% < 99%
    assert state.factor == pytest.approx(STEP) and state.trial == pytest.approx(0.9)
    assert "although the model said" in state.note
    state = _judged(state, 1940, 60, now=120.0)  # 97%: won back most of the gap
    assert state.factor == pytest.approx(STEP * STEP)
    # without the model saying the replicas suffice, no step
    calm = _judged(FeedbackState(), 900, 100, now=60.0, suffices=False)
    assert calm.factor == 1.0


def test_a_step_that_does_not_help_is_undone_and_blocked() -> None:
    state = _judged(FeedbackState(), 900, 100, now=60.0)
    state = _judged(state, 1810, 190, now=120.0)  # 90.5%: far less than a step must bring
    assert state.factor == 1.0 and state.trial is None
    assert "did not help" in state.note
    assert state.blocked_until == pytest.approx(120.0 + BLOCK_PERIODS * PERIOD)
    blocked = _judged(state, 900, 100, now=180.0)
    assert blocked.factor == 1.0, "no ratchet while blocked"


def test_infeasible_requests_are_not_held_against_the_fleet() -> None:
    # 10% of the requests cannot meet the SLO on any replica; the rest all did.
    state = _judged(FeedbackState(), 900, 100, now=60.0, infeasible=0.1)
    assert state.factor == 1.0 and state.met == 1


def test_the_counted_attainment_never_exceeds_every_request() -> None:
    # The capacity stage estimates 10% infeasible, yet every request met the SLO: the estimate
    # is wrong, not the attainment over 100%; no more are left out than missed.
    state = observe(FeedbackState(), [_scrape(0, 0, 0)], 1.0, 0.1, 0.0)
    assert state.counted is None
    state = observe(state, [_scrape(0, 0, 0), _scrape(60, 1000, 0)], 1.0, 0.1, 60.0)
    assert state.counted == 1.0
    # Over the period, not per scrape: 200 estimated infeasible in all, 40 misses; those are
    # the infeasible ones, and the 1,960 met are every counted request.
    later = observe(state, [_scrape(60, 1000, 0), _scrape(120, 1960, 40)], 1.0, 0.1, 120.0)
    assert later.infeasible == pytest.approx(200.0) and later.counted == 1.0
    assert later.counted_requests == 1960
    some = observe(later, [_scrape(120, 1960, 40), _scrape(180, 2600, 400)], 1.0, 0.1, 180.0)
    assert some.counted == pytest.approx(2600 / (3000 - 300))


def test_met_periods_relax_a_step() -> None:
    state = replace(FeedbackState(), factor=STEP)
    for i in range(RELAX_PERIODS):
        state = _judged(state, 1000, 0, now=60.0 * (i + 1))
    assert state.factor == pytest.approx(1.0)
    floor = step(observe(replace(FeedbackState(), factor=FLOOR, since=0.0, seen=0.0,
                                 good=0, total=1000), [], 1.0, 0.0, 60), 0.99, True, FLOOR,
                 PERIOD, 60.0)
    assert floor.factor == FLOOR, "never below the floor"


def test_a_step_must_bring_its_share_of_the_shortfall_for_the_steps_left() -> None:
    # from 0.9 to the floor 0.5 five more steps of 0.9 fit: with the one taken, six must
    # close the shortfall
    assert needed_gain(0.06, STEP, FLOOR) == pytest.approx(0.01)
    assert needed_gain(0.06, FLOOR, FLOOR) == pytest.approx(0.06)  # the last step: all of it


def test_a_trial_is_judged_once_its_requests_can_tell_the_needed_gain_from_noise() -> None:
    needed = needed_gain(0.08, STEP, FLOOR)
    n = trial_requests(0.91, needed)
    assert GAIN_Z * (0.91 * 0.09 / n) ** 0.5 == pytest.approx(needed)
    state = _judged(FeedbackState(), 910, 90, now=60.0)  # 91%: a step
    waiting = _judged(state, 920, 80, now=120.0)  # 1,000 requests: too few to judge
    assert n > 1000 and waiting.trial == pytest.approx(0.91)
    assert waiting.factor == pytest.approx(STEP) and waiting.total == 1000
    # 92.4% over enough requests: a small gain, but six like it close the gap; kept
    total = 1.01 * n
    kept = _judged(waiting, 0.924 * total - 920, 0.076 * total - 80, now=180.0)
    assert kept.factor == pytest.approx(STEP * STEP) and "did not help" not in kept.note


def test_a_short_period_is_judged_on_the_record_of_the_last_ones() -> None:
    """A p99 target is a long-run share: one period below it, after periods well above, is
    the noise of a bursty mix (a clump of long prompts) while the record of the last
    :data:`RELAX_PERIODS` periods still meets it; no step. One more short period that
    brings the record under the target steps."""
    state = FeedbackState()
    for i in range(RELAX_PERIODS - 1):
        state = _judged(state, 1000, 0, now=60.0 * (i + 1))
    noise = _judged(state, 980, 20, now=60.0 * RELAX_PERIODS)  # 98%; the record 99.6%
    assert noise.factor == 1.0 and noise.trial is None
    again = _judged(noise, 950, 50, now=60.0 * (RELAX_PERIODS + 1))  # the record 98.6%
    assert again.factor == pytest.approx(STEP) and again.trial == pytest.approx(0.95)
    # With no record yet, a short period is all there is.
    assert _judged(FeedbackState(), 980, 20, now=60.0).factor == pytest.approx(STEP)
