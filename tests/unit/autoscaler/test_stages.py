"""The control law's issue-14 stages, each alone: queue (backlog trigger), draining capacity,
futility, rise and the burst size the memory records."""

from __future__ import annotations

from dataclasses import replace
from statistics import NormalDist

import pytest

from kubeplex.autoscaler.memory import BUCKET_S, Bucket
from kubeplex.autoscaler.policy import (
    AutoscalerConfig,
    after_a_fall,
    backlog_trigger,
    burst_replicas,
    draining_capacity,
    falling,
    futile,
    rise_z,
    rising,
    slo_replicas,
    window_demand,
    work_cv2,
)
from kubeplex.autoscaler.queueing import ReplicaCapacity
from kubeplex.autoscaler.signals import NoData, Signals

CONFIG = AutoscalerConfig(
    slo_ttft_s=1.0, percentile=95, min_replicas=1, max_replicas=50, prefill_s_hint=0.05,
    work_s_hint=0.1, arrival_cv2=1.0, target_queue_per_replica=10, cold_start_s=60,
    warm_start_s=2)
CAPACITY = ReplicaCapacity(prefill_s=0.05, work_s=0.1, source="hint")


def _signals(**changes: object) -> Signals:
    base = Signals(time=60, window_s=60, instances=2, waiting=0, running=4, kv_usage=0.2,
                   arrival_rate=10, completion_rate=10, prompt_token_rate=None,
                   generation_token_rate=None, ttft_quantile=0.2, ttft_count=600,
                   arrival_cv2=1.0, saturated=False)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_backlog_trigger_fires_when_queued_prefill_would_hold_a_request_half_the_slo() -> None:
    # 2 ready replicas; 30 requests beyond one in progress each: 30 x 50 ms / 2 = 0.75 s > 0.5 s
    assert backlog_trigger(0, 32, 2, 2, CAPACITY, CONFIG) == (3, 30)
    # 10 beyond: 0.25 s of wait, within half the SLO: no trigger
    assert backlog_trigger(0, 12, 2, 2, CAPACITY, CONFIG) == (0, 10)
    # one prefill in progress per replica is no backlog at all
    assert backlog_trigger(0, 2, 2, 2, CAPACITY, CONFIG) == (0, 0)
    # waiting requests over target_queue_per_replica ask for their own count
    assert backlog_trigger(25, 27, 2, 2, CAPACITY, CONFIG)[0] == 3


def test_a_saturated_fleet_drains_at_its_measured_throughput() -> None:
    # 2 busy replicas finished 5 req/s: 0.4 s of work each, slower than the model's 0.1 s
    busy = _signals(engines_saturated=True, completion_rate=5)
    drained = draining_capacity(busy, CAPACITY, 2)
    assert drained.work_s == pytest.approx(0.4) and drained.source == "measured"
    # faster than the model, or not saturated: the model stands
    assert draining_capacity(_signals(engines_saturated=True, completion_rate=40), CAPACITY,
                             2) is CAPACITY
    assert draining_capacity(_signals(completion_rate=5), CAPACITY, 2) is CAPACITY


def _memory(bursts: list[float], now: float) -> tuple[Bucket, ...]:
    """Ten-second buckets up to ``now``: short-window demand 1, and 5 in each burst bucket."""
    return tuple(Bucket(t, 5.0 if t in bursts else 1.0, 5.0 if t in bursts else 1.0, 10.0)
                 for t in (BUCKET_S * i for i in range(int(now // BUCKET_S) + 1)))


def test_no_cold_start_for_a_burst_shorter_than_one() -> None:
    """Two finished 10 s bursts: a new one is over before a 60 s cold start, so scaling up
    for it is futile; not so with a free warm standby, a short cold start, a burst that
    already outlasts them, or no burst history."""
    peaks = _memory([100.0, 300.0, 500.0], 500.0)
    assert "before a 60 s cold start" in futile(peaks, 505.0, CONFIG, 0)
    assert futile(peaks, 505.0, CONFIG, 1) == ""
    assert futile(peaks, 505.0, replace(CONFIG, cold_start_s=5.0), 0) == ""
    long_burst = _memory([100.0, 300.0, 480.0, 490.0, 500.0], 500.0)
    assert futile(long_burst, 505.0, CONFIG, 0) == ""
    assert futile(_memory([], 500.0), 505.0, CONFIG, 0) == ""


def test_a_burst_outlasts_the_others_only_beyond_the_memory_buckets_resolution() -> None:
    """Burst lengths are known to a bucket: the finished ones lasted at most 10 s, and one in
    its second bucket 15 s after its bucket began may have started 9 s into it (6 s ago):
    still futile. 25 s after, it surely outlasts them: reacted to."""
    assert "before a 60 s cold start" in futile(_memory([100.0, 300.0, 500.0, 510.0], 515.0),
                                                515.0, CONFIG, 0)
    assert futile(_memory([100.0, 300.0, 500.0, 510.0, 520.0], 525.0), 525.0, CONFIG, 0) == ""


def test_a_rise_is_a_short_window_rate_beyond_poisson_noise() -> None:
    # 5 req/s over 6 s, tested once per 6 s window: one standard deviation is
    # sqrt(5 / 6) ~ 0.91 req/s, a rise beyond 2 of them
    assert rising(7.0, 5.0, 6.0, 6.0)
    assert not rising(6.5, 5.0, 6.0, 6.0)
    assert not rising(100.0, 5.0, 0.0, 60.0)
    # from idle, a handful of arrivals in a long window is not a rise; many in a short one is
    assert not rising(0.3, 0.0, 6.0, 60.0)
    assert rising(5.0, 0.0, 6.0, 60.0)


def test_a_fall_is_the_rise_test_mirrored_at_the_counts_dispersion() -> None:
    """30 req/s in the stable window, 6 s short windows tested ten times per stable window
    (2.84 standard deviations): Poisson counts over 6 s have a standard deviation of
    sqrt(30 / 6) ~ 2.24 req/s, so below ~23.7 req/s the rate has fallen; counts twice as
    dispersed (batched or bursty arrivals) need ~21.0 req/s."""
    assert falling(22.0, 30.0, 6.0, 60.0, 1.0)
    assert not falling(24.0, 30.0, 6.0, 60.0, 1.0)
    assert not falling(22.0, 30.0, 6.0, 60.0, 2.0)
    assert falling(20.0, 30.0, 6.0, 60.0, 2.0)
    assert not falling(0.0, 30.0, 0.0, 60.0, 1.0)  # no short window: no test


def test_the_rise_test_keeps_its_false_alarm_rate_per_stable_window() -> None:
    """The test repeats on every 6 s window of a 60 s stable window: ten chances for noise.
    At 2 standard deviations each (~2.3% one-sided), a steady rate rose falsely in one stable
    window of five; the level is shared among the ten, 2.84 standard deviations each."""
    assert rise_z(6.0, 6.0) == pytest.approx(2.0)
    assert rise_z(6.0, 60.0) == pytest.approx(2.84, abs=0.01)
    assert rise_z(60.0, 60.0) == pytest.approx(2.0)  # a widened window: one test
    # 7 req/s over 5 (2.19 standard deviations): a rise tested once, noise tested ten times
    assert rising(7.0, 5.0, 6.0, 6.0)
    assert not rising(7.0, 5.0, 6.0, 60.0)
    assert rising(7.7, 5.0, 6.0, 60.0)  # 2.96 standard deviations
    # the old test's false alarm rate on a steady Poisson rate: ~2% of 6 s windows
    noise = NormalDist().cdf(-rise_z(6.0, 60.0)) * 10
    assert noise == pytest.approx(NormalDist().cdf(-2.0))


def test_a_burst_is_recorded_at_what_clears_its_work_not_at_its_steady_state_need() -> None:
    # 60 req/s for 6 s: 18 s of prefill work to clear within 6 s + 1 s at 85%: 3.03 replicas
    # (kept unrounded: the hold rounds once, at recall), where serving 60 req/s for good
    # needs 8 (0.1 s of work each at 85%)
    short = _signals(window_s=6.0, arrival_rate=60.0)
    assert burst_replicas(short, CAPACITY, CONFIG, 1.0) == pytest.approx(18.0 / (7.0 * 0.85))
    assert slo_replicas(60.0, CAPACITY, CONFIG, 1.0) == 8
    # a 1 s burst leaves a queue that drains within the SLO on fewer
    assert burst_replicas(replace(short, window_s=1.0), CAPACITY, CONFIG, 1.0) == (
        pytest.approx(3.0 / (2.0 * 0.85)))
    # a handful of requests still records one replica; no arrivals record none
    assert burst_replicas(_signals(window_s=6.0, arrival_rate=0.5), CAPACITY, CONFIG, 1.0) == 1
    assert burst_replicas(_signals(arrival_rate=0.0), CAPACITY, CONFIG, 1.0) == 0


def test_the_memory_records_a_window_at_poisson_variability() -> None:
    """A minute with a burst has a large index of dispersion; the SLO stage hedges for it,
    but the memory records the window's rate at Poisson variability (the burst itself is the
    short windows' to measure)."""
    # a large index of dispersion, such as a minute holding one short burst can have
    bursty = slo_replicas(12.0, CAPACITY, CONFIG, 400.0)
    poisson = slo_replicas(12.0, CAPACITY, CONFIG, 1.0)
    assert bursty > poisson
    assert window_demand(bursty, 12.0, CAPACITY, CONFIG, 400.0) == poisson
    assert window_demand(poisson, 12.0, CAPACITY, CONFIG, 1.0) == poisson


def test_after_a_fall_the_slo_stage_starts_no_replica_for_demand_that_is_over() -> None:
    """The stable window still says 30 req/s (more than 2 replicas); the last 6 s
    came at 5 req/s, far beyond noise below: no cold start for the 30, the 2 running stay
    (a scale-down waits as usual). A dip within noise, a target already met, or no short
    window leave the target alone."""
    stable = _signals(arrival_rate=30.0)
    short = _signals(window_s=6, arrival_rate=5.0)
    target = slo_replicas(30.0, CAPACITY, CONFIG, 1.0)
    assert target > 2 and slo_replicas(5.0, CAPACITY, CONFIG, 1.0) <= 2
    kept, why = after_a_fall(target, 2, short, stable, CAPACITY, CONFIG, 1.0, 1.0)
    assert kept == 2 and "fell beyond noise" in why
    dip = _signals(window_s=6, arrival_rate=27.0)
    assert after_a_fall(target, 2, dip, stable, CAPACITY, CONFIG, 1.0, 1.0) == (target, "")
    assert after_a_fall(target, target, short, stable, CAPACITY, CONFIG, 1.0, 1.0) == (
        target, "")
    assert after_a_fall(target, 2, NoData("no scrapes"), stable, CAPACITY, CONFIG, 1.0,
                        1.0) == (target, "")


def test_the_work_s_variability_is_its_dispersion_less_what_the_prompt_sizes_explain() -> None:
    """``work_cv2``: the prefill work's index of dispersion (in prompts) is ``ca^2 + cs^2``;
    the prompts' own ``cs^2``, read off the window's histogram, is taken off it."""
    inf = float("inf")
    chat = ((200.0, 0.0), (500.0, 0.0), (1000.0, 800.0), (2000.0, 800.0), (5000.0, 800.0),
            (10000.0, 800.0), (inf, 800.0))
    mixed = (*chat[:5], (10000.0, 900.0), (inf, 900.0))  # 100 prompts of 5-10k tokens more

    def signals(buckets: tuple[tuple[float, float], ...], dispersion: float | None) -> Signals:
        count = buckets[-1][1]
        mean = 700.0 if count == 800.0 else 1400.0
        return _signals(ttft_count=count, prompt_token_rate=mean * count / 60.0,
                        prompt_buckets=buckets,
                        prompt_token_dispersion=None if dispersion is None else dispersion * mean)

    assert work_cv2(signals(chat, None), CONFIG) is None  # no prompt-token counter
    # Prompts of one bucket explain little of a work dispersion of 12: nearly all of it is
    # the arrivals'. With a tenth of the prompts ten times longer, they explain ~2 of it.
    alone, beside = work_cv2(signals(chat, 12.0), CONFIG), work_cv2(signals(mixed, 12.0), CONFIG)
    assert alone is not None and beside is not None
    assert 11.0 < alone <= 12.0
    assert 8.0 < beside < alone - 1.5
