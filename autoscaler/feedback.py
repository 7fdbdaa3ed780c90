"""SLO feedback: a provisioning margin from the measured attainment, in bounded steps.

The queueing model can be optimistic for reasons the speed measurement cannot see (heavy-tailed
prompts blocking a replica, bursts within a scrape interval). This stage watches the outcome:

* it **accumulates** the TTFT histogram's requests at or below the SLO, and all of them, since
  the start of an observation period, with the share of infeasible requests (their prompt
  alone takes longer than the SLO to prefill at the measured speed, never at the feedback's)
  the capacity stage estimated; over the period, at most the requests that missed
  (:attr:`FeedbackState.counted`: the counted attainment cannot exceed 100%);
* when a period lasts a stable window and holds :data:`MIN_REQUESTS` requests, or fewer that
  already show the attainment below the percentile beyond doubt (:func:`evident_shortfall`:
  a burst of a hundred requests with a third of them late need not wait for 500), the
  attainment among the requests the SLO can count is compared with the percentile:
  - **below**, and so is the record of the last :data:`RELAX_PERIODS` periods (this one
    included: a percentile is a long-run share, and one period of a bursty mix below it,
    after periods above, is noise; it took a step and gave it back every few minutes on
    two tenants' clumps of long prompts), while the model said the ready replicas suffice:
    the factor is scaled by :data:`STEP`, and the control law divides its replicas by the
    factor (one step: about 10% more replicas, at least one; the model and what one replica
    can serve unchanged);
  - a step is then **on trial**: its period is judged once it holds enough requests
    (:func:`trial_requests`) that the gain the step must bring is :data:`GAIN_Z` standard
    errors of the measured attainment; that gain (:func:`needed_gain`) is the shortfall's
    share such that the steps left down to the speed floor, each as good, would close it.
    A step that brought less is **undone**, and no step is tried for :data:`BLOCK_PERIODS`
    periods: those misses do not respond to capacity (the decision says so); this is what
    keeps the feedback from ratcheting toward an SLO no replica count meets (a step that
    changed nothing passes by chance in ~2% of trials), while a step that wins back a small
    but sufficient share is kept and the next one tried;
  - **met** for :data:`RELAX_PERIODS` periods in a row: one step back toward the model.

All pure: the caller passes the scrapes and ``now`` and keeps the :class:`FeedbackState`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kubeplex.autoscaler.metrics import TTFT, Scrape
from kubeplex.autoscaler.signals import TEST_Z, bucket_increase, histogram_fraction_at

__all__ = ["BLOCK_PERIODS", "GAIN_Z", "MIN_REQUESTS", "RELAX_PERIODS", "STEP",
           "FeedbackState", "evident_shortfall", "needed_gain", "observe", "step",
           "trial_requests"]

#: One step scales the factor the replicas are divided by: about 10% more replicas.
STEP = 0.9
#: Requests a period needs before its attainment is judged (the attainment of 500 requests
#: near 99% has a standard error under half a point).
MIN_REQUESTS = 500
#: A trial is judged when the gain it needs is this many standard errors of the measured
#: attainment (one-sided: a step that changed nothing passes by chance in ~2% of trials).
GAIN_Z = TEST_Z
#: After an undone step, no step is tried for this many periods.
BLOCK_PERIODS = 10
#: Periods in a row with the SLO met before one step is taken back.
RELAX_PERIODS = 5


@dataclass(frozen=True)
class FeedbackState:
    """The margin factor (<= 1: the replicas are divided by it) and the current period."""

    factor: float = 1.0
    since: float | None = None
    seen: float | None = None
    good: float = 0.0
    total: float = 0.0
    infeasible: float = 0.0
    #: Counted attainment of the period that led to the last step (None: no step on trial).
    trial: float | None = None
    blocked_until: float | None = None
    met: int = 0
    #: (met, counted) requests of the last judged periods, oldest first (at most
    #: :data:`RELAX_PERIODS`): the record a shortfall is judged on.
    record: tuple[tuple[float, float], ...] = ()
    #: What the last judged period said (for the decision's reason; empty: nothing to say).
    note: str = ""

    @property
    def counted_requests(self) -> float:
        """The period's requests the SLO counts: all but the estimated infeasible, and at
        least those met (an infeasible request misses, so more infeasible than misses is the
        estimate's error; capped over the whole period, since a scrape interval without a
        miss says nothing about the estimate)."""
        return max(self.good, self.total - self.infeasible)

    @property
    def counted(self) -> float | None:
        """The period's attainment among the requests the SLO counts, at most 100% (None: no
        request yet)."""
        if self.total <= 0:
            return None
        counted = self.counted_requests
        return self.good / counted if counted > 0 else 1.0


def observe(state: FeedbackState, scrapes: Sequence[Scrape], slo_s: float,
            infeasible_share: float, now: float) -> FeedbackState:
    """Add the first tokens of the scrapes newer than the last ones counted."""
    ordered = sorted(scrapes, key=lambda s: s.time)
    if not ordered:
        return state
    newest = ordered[-1].time
    if state.seen is None:
        return replace(state, since=now, seen=newest)
    window = [s for s in ordered if s.time >= state.seen]
    if len(window) < 2:
        return state
    increase = bucket_increase([s.histograms.get(TTFT, {}) for s in window])
    total = increase[-1][1] if increase else 0.0
    attained = histogram_fraction_at(slo_s, increase) if total > 0 else None
    if attained is None:
        return replace(state, seen=newest)
    return replace(state, seen=newest, good=state.good + attained * total,
                   total=state.total + total,
                   infeasible=state.infeasible + infeasible_share * total)


def evident_shortfall(attainment: float, requests: float, quantile: float) -> bool:
    """Whether ``requests`` already show the attainment below ``quantile``: the Wilson score
    upper bound of a binomial proportion, at :data:`GAIN_Z` standard errors, lies under it
    (40 requests with 30 misses against a p95 target do; 40 with 3 do not)."""
    if requests <= 0:
        return False
    z2 = GAIN_Z ** 2
    spread = GAIN_Z * math.sqrt(attainment * (1 - attainment) / requests
                                + z2 / (4 * requests * requests))
    upper = (attainment + z2 / (2 * requests) + spread) / (1 + z2 / requests)
    return upper < quantile


def needed_gain(shortfall: float, factor: float, floor: float) -> float:
    """The least gain a step must bring for the steps left to the floor, each as good, to
    close ``shortfall``: ``shortfall / (1 + steps left)``, the step just taken included."""
    left = max(0, math.floor(math.log(max(floor, 1e-9) / factor) / math.log(STEP) + 1e-9))
    return shortfall / (1 + left)


def trial_requests(attainment: float, gain: float) -> float:
    """Requests a trial's period needs before its attainment is judged: enough that ``gain``
    is :data:`GAIN_Z` standard errors of a binomial attainment near ``attainment``."""
    return GAIN_Z ** 2 * attainment * (1 - attainment) / max(gain, 1e-9) ** 2


def step(state: FeedbackState, quantile: float, model_suffices: bool, floor: float,
         period_s: float, now: float) -> FeedbackState:
    """Judge the period when it is complete (see the module docstring); else unchanged."""
    if state.since is None or now - state.since < period_s or state.total <= 0:
        return state
    counted_n = state.counted_requests
    counted = state.counted or 0.0
    if state.total < MIN_REQUESTS and not evident_shortfall(counted, counted_n, quantile):
        return state
    if state.trial is not None and counted < quantile:
        needed = needed_gain(quantile - state.trial, state.factor, floor)
        if counted_n < trial_requests(state.trial, needed):
            return state  # not yet enough requests to tell the gain a step needs from none
    record = (*state.record, (state.good, counted_n))[-RELAX_PERIODS:]
    fresh = replace(state, since=now, good=0.0, total=0.0, infeasible=0.0, note="",
                    record=record)
    if counted >= quantile:
        met = state.met + 1
        if met >= RELAX_PERIODS and state.factor < 1.0:
            return replace(fresh, factor=min(1.0, state.factor / STEP), met=0, trial=None)
        return replace(fresh, met=met, trial=None)
    fresh = replace(fresh, met=0)
    if state.trial is not None and counted - state.trial < needed:
        return replace(fresh, factor=min(1.0, state.factor / STEP), trial=None,
                       blocked_until=now + BLOCK_PERIODS * period_s,
                       note=(f"SLO feedback: a step to more capacity did not help "
                             f"({state.trial:.1%} -> {counted:.1%} of the requests the SLO "
                             f"counts); undone, the misses do not respond to capacity"))
    blocked = state.blocked_until is not None and now < state.blocked_until
    met_n, counted_all = (math.fsum(column) for column in zip(*record, strict=True))
    if blocked or not model_suffices or state.factor <= floor or (
            counted_all > 0 and met_n / counted_all >= quantile):
        return replace(fresh, trial=None)
    return replace(fresh, factor=max(floor, state.factor * STEP), trial=counted,
                   note=f"SLO feedback: {counted:.1%} of the counted requests met the SLO "
                        f"(< {quantile:.0%}) although the model said the replicas suffice")
