"""A short-horizon forecast of the arrival rate: Holt's damped trend on irregular steps.

Holt's method (double exponential smoothing) keeps a *level* and a *trend* (rate change per
second). Observations arrive every few seconds but not exactly periodically, so the smoothing
weights are scaled to the elapsed time: a step of ``dt`` seconds uses
``alpha_dt = 1 - (1 - alpha) ** (dt / reference_s)`` (the same decay per second whatever the
sampling period). The trend is **damped** (Gardner & McKenzie's damped trend, FPP3 ch. 8.2):
it fades with the time constant ``damping_s``, so the forecast ``h`` seconds ahead is
``level + trend * damping_s * (1 - exp(-h / damping_s))`` (``level + trend * h`` for ``h``
well under it). The law feeds it the stable window's average rate, which turns a level
change (traffic that switches from 3 to 30 req/s) into a ramp lasting one window; an undamped
trend extrapolated that ramp a cold start past its end (40 req/s a minute and a half after
the switch, a replica too many for the whole plateau). Damped over one window, a ramp that
stopped fades with it; the price is the damped method's usual one, a trend that goes on is
extrapolated conservatively (its smoothed trend settles at ``beta / (beta + reference_s /
damping_s)`` of the slope, ~3/8 with the defaults): ramps are met by the measured rate, the
rise rule and the burst memory, the forecast only adds to them. The upper bound adds ``z``
times the smoothed absolute one-step error (a robust spread estimate), so bursty traffic,
whose forecast errors are large, gets more headroom than smooth traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kubeplex.autoscaler.errors import AutoscalerConfigError

__all__ = ["MAD_TO_SD", "HoltConfig", "HoltState", "holt_update"]

#: Standard deviation over mean absolute deviation of a normal distribution, sqrt(pi/2)
#: (~1.25): turns the smoothed absolute forecast error into a standard deviation.
MAD_TO_SD = math.sqrt(math.pi / 2)


@dataclass(frozen=True)
class HoltConfig:
    """Smoothing constants (per ``reference_s`` seconds).

    Defaults: alpha 0.3 / beta 0.1 per 10 s are textbook values for a responsive level and a
    slower trend (Hyndman & Athanasopoulos, FPP3 ch. 8). The band above the forecast is the
    caller's choice of ``z`` (:meth:`HoltState.upper`; the law's ``headroom_z``).
    """

    alpha: float = 0.3
    beta: float = 0.1
    reference_s: float = 10.0
    #: Time constant (s) over which a trend fades: the law's stable window (60 s), the length
    #: of the ramp a level change makes in the window's average. None: Holt's linear trend.
    damping_s: float | None = 60.0

    def __post_init__(self) -> None:
        if self.damping_s is not None and not self.damping_s > 0:
            raise AutoscalerConfigError(f"the forecast's damping time must be > 0 s, got "
                                        f"{self.damping_s}")


@dataclass(frozen=True)
class HoltState:
    """Level (req/s), trend (req/s per s), smoothed absolute error and the last update time."""

    level: float = 0.0
    trend: float = 0.0
    error: float = 0.0
    time: float | None = None
    #: The trend's damping time constant (s; None: undamped), from :class:`HoltConfig`.
    damping_s: float | None = None

    def forecast(self, horizon_s: float) -> float:
        """The expected rate ``horizon_s`` seconds after the last update (never negative)."""
        return max(0.0, self.level + self.trend * _reach(horizon_s, self.damping_s))

    def upper(self, horizon_s: float, z: float) -> float:
        """The forecast plus ``z`` standard deviations of the one-step error (the smoothed
        absolute error times :data:`MAD_TO_SD`; z = 2 covers ~95% of errors were they
        normal)."""
        return self.forecast(horizon_s) + z * MAD_TO_SD * self.error


def _reach(horizon_s: float, damping_s: float | None) -> float:
    """Seconds of trend a forecast ``horizon_s`` ahead adds: the horizon itself undamped,
    ``damping_s * (1 - exp(-horizon_s / damping_s))`` damped."""
    if damping_s is None:
        return horizon_s
    return damping_s * -math.expm1(-horizon_s / damping_s)


def holt_update(state: HoltState, observed_rate: float, now: float,
                config: HoltConfig) -> HoltState:
    """Fold one observation of the arrival rate at ``now`` into the state."""
    if state.time is None:
        return HoltState(level=observed_rate, trend=0.0, error=0.0, time=now,
                         damping_s=config.damping_s)
    dt = now - state.time
    if dt <= 0:
        return state
    steps = dt / config.reference_s
    alpha = 1.0 - (1.0 - config.alpha) ** steps
    beta = 1.0 - (1.0 - config.beta) ** steps
    # A rate is never negative: without the clamps a falling trend drives level and
    # prediction below zero after a burst, and |0 - predicted| keeps the error band (and the
    # replicas sized from it) up long after the traffic is gone.
    predicted = state.forecast(dt)
    level = max(0.0, alpha * observed_rate + (1.0 - alpha) * predicted)
    faded = 1.0 if config.damping_s is None else math.exp(-dt / config.damping_s)
    trend = beta * (level - state.level) / dt + (1.0 - beta) * faded * state.trend
    error = alpha * abs(observed_rate - predicted) + (1.0 - alpha) * state.error
    return replace(state, level=level, trend=trend, error=error, time=now,
                   damping_s=config.damping_s)
