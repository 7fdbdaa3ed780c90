"""The queueing model and the Holt forecast."""

from __future__ import annotations

import math

import pytest

from kubeplex.autoscaler.errors import AutoscalerConfigError
from kubeplex.autoscaler.forecast import HoltConfig, HoltState, holt_update
from kubeplex.autoscaler.queueing import (
    ReplicaCapacity,
    erlang_c,
    replicas_for_slo,
    ttft_percentile,
)

CAPACITY = ReplicaCapacity(prefill_s=0.05, work_s=0.1, source="hint")


def test_erlang_c_known_values() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # textbook M/M/2 at rho 0.5
    assert erlang_c(3, 3.0) == 1.0
    assert erlang_c(5, 0.0) == 0.0


def test_ttft_percentile_falls_with_replicas_and_rises_with_burstiness() -> None:
    values = [ttft_percentile(c, 30.0, CAPACITY, 0.99) for c in range(4, 10)]
    assert values == sorted(values, reverse=True)
    assert ttft_percentile(3, 30.0, CAPACITY, 0.99) == math.inf  # utilization 1
    calm = ttft_percentile(4, 30.0, CAPACITY, 0.99, arrival_cv2=1.0)
    bursty = ttft_percentile(4, 30.0, CAPACITY, 0.99, arrival_cv2=16.0)
    assert bursty > calm


def test_mm1_percentile_formula() -> None:
    # M/M/1 with the prefill as service: P(W > t) = rho * exp(-(mu - lambda) t)
    cap = ReplicaCapacity(prefill_s=0.1, work_s=0.1, source="hint")
    lam, mu, q = 5.0, 10.0, 0.95
    expected = math.log(0.5 / 0.05) / (mu - lam) + 0.1
    assert ttft_percentile(1, lam, cap, q) == pytest.approx(expected)


def test_replicas_for_slo_is_the_fewest() -> None:
    found = replicas_for_slo(30.0, CAPACITY, 0.2, 0.99, 0.85, arrival_cv2=4.0)
    assert found is not None
    assert ttft_percentile(found, 30.0, CAPACITY, 0.99, 4.0) <= 0.2
    assert (ttft_percentile(found - 1, 30.0, CAPACITY, 0.99, 4.0) > 0.2
            or (found - 1) * 0.85 < 30.0 * 0.1)
    assert replicas_for_slo(0.0, CAPACITY, 0.2, 0.99, 0.85) == 0
    assert replicas_for_slo(1.0, CAPACITY, 0.01, 0.99, 0.85) is None  # prefill > SLO


def test_holt_tracks_a_level_and_a_trend_on_irregular_steps() -> None:
    config = HoltConfig(damping_s=None)
    state = HoltState()
    t = 0.0
    for _ in range(200):
        state = holt_update(state, 10.0, t, config)
        t += 2.0
    assert state.level == pytest.approx(10.0)
    assert state.forecast(60) == pytest.approx(10.0, abs=1e-6)
    ramp = HoltState()
    t = 0.0
    for step in (2.0, 3.0, 1.0, 4.0) * 50:  # irregular sampling of rate = t / 10
        ramp = holt_update(ramp, t / 10, t, config)
        t += step
    assert ramp.trend == pytest.approx(0.1, rel=0.1)
    assert ramp.forecast(60) > ramp.level
    assert ramp.error > 0 and ramp.upper(60, 2.0) > ramp.forecast(60)
    assert ramp.upper(60, 0.0) == ramp.forecast(60)
    assert holt_update(ramp, 5.0, ramp.time or 0.0, config) is ramp  # no time passed


def test_holt_level_never_goes_negative_after_a_steep_fall() -> None:
    # A falling trend used to drive the level below zero once traffic stopped; then
    # |0 - predicted| kept the error band (and the replicas sized from it) up while idle.
    config, state, t = HoltConfig(), HoltState(), 0.0
    for i in range(40):
        state = holt_update(state, 3.0 + 0.2 * i, t, config)
        t += 1
    for i in range(10):
        state = holt_update(state, 11.0 - 1.1 * i, t, config)
        t += 1
    errors = []
    while t < 200:
        state = holt_update(state, 0.0, t, config)
        assert state.level >= 0.0
        errors.append(state.error)
        t += 1
    assert state.level == 0.0
    assert errors[-1] < errors[len(errors) // 2] < errors[0]  # the band keeps shrinking


def _fed(rates: list[float], config: HoltConfig, every_s: float = 2.0) -> HoltState:
    state = HoltState()
    for i, rate in enumerate(rates):
        state = holt_update(state, rate, i * every_s, config)
    return state


def test_a_damped_trend_fades_after_a_level_change_and_keeps_a_ramp_going() -> None:
    # 3 -> 30 req/s seen through a 60 s window: a 60 s ramp, then the plateau for 90 s
    window = [3.0] * 60 + [3.0 + 27.0 * min(1.0, i / 30) for i in range(1, 76)]
    damped, linear = _fed(window, HoltConfig()), _fed(window, HoltConfig(damping_s=None))
    # the linear trend extrapolates the ramp a minute past its end (~41 req/s); the damped
    # one stays within a tenth of the plateau
    assert linear.forecast(60) > 38.0
    assert 30.0 < damped.forecast(60) < 33.0
    # a ramp that goes on keeps a rising forecast: the trend settles at
    # beta / (beta + reference / damping) of the slope
    config = HoltConfig()
    ramp = _fed([0.05 * 2 * i for i in range(600)], config)
    settled = config.beta / (config.beta + config.reference_s / (config.damping_s or 1.0))
    assert ramp.trend == pytest.approx(0.05 * settled, rel=0.15)
    assert ramp.forecast(60) > ramp.level
    with pytest.raises(AutoscalerConfigError, match="damping"):
        HoltConfig(damping_s=0.0)
