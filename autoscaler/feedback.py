"""SLO feedback: the measured attainment corrects the latency model, in bounded steps.

The queueing model can be optimistic for reasons the speed measurement cannot see (heavy-tailed
prompts blocking a replica, bursts within a scrape interval). This stage watches the outcome:

* it **accumulates** the TTFT histogram's requests at or below the SLO, and all of them, since
  the start of an observation period, with the share of infeasible requests (their prompt
  alone takes longer than the SLO to prefill) the capacity stage estimated;
* when a period holds :data:`MIN_REQUESTS` requests and lasts a stable window, the
  attainment among the requests the SLO can count is compared with the percentile:
  - **below** while the model said the ready replicas suffice: the model's speed is scaled by
    :data:`STEP` (one step: about 10% more replicas);
  - but a step that did not help (the next period's attainment rose by less than
    :data:`MIN_GAIN_SHARE` of the shortfall) is **undone**, and no step is tried for
    :data:`BLOCK_PERIODS` periods: those misses do not respond to capacity (the decision says
    so); this is what keeps the feedback from ratcheting toward an SLO no replica count meets;
  - **met** for :data:`RELAX_PERIODS` periods in a row: one step back toward the model.

All pure: the caller passes the scrapes and ``now`` and keeps the :class:`FeedbackState`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from kubeplex.autoscaler.signals import TTFT, Scrape, bucket_increase, histogram_fraction_at

__all__ = ["BLOCK_PERIODS", "MIN_GAIN_SHARE", "MIN_REQUESTS", "RELAX_PERIODS", "STEP",
           "FeedbackState", "observe", "step"]

#: One step scales the model's speed by this: about 10% more replicas.
STEP = 0.9
#: Requests a period needs before its attainment is judged (the attainment of 500 requests
#: near 99% has a standard error under half a point).
MIN_REQUESTS = 500
#: A step must win back at least this share of the shortfall it answered, or it is undone.
MIN_GAIN_SHARE = 1 / 3
#: After an undone step, no step is tried for this many periods.
BLOCK_PERIODS = 10
#: Periods in a row with the SLO met before one step is taken back.
RELAX_PERIODS = 5


@dataclass(frozen=True)
class FeedbackState:
    """The factor on the model's speed (<= 1) and the current observation period."""

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
    #: What the last judged period said (for the decision's reason; empty: nothing to say).
    note: str = ""


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


def step(state: FeedbackState, quantile: float, model_suffices: bool, floor: float,
         period_s: float, now: float) -> FeedbackState:
    """Judge the period when it is complete (see the module docstring); else unchanged."""
    if state.since is None or now - state.since < period_s or state.total < MIN_REQUESTS:
        return state
    counted = min(1.0, state.good / max(1e-9, state.total - state.infeasible))
    fresh = replace(state, since=now, good=0.0, total=0.0, infeasible=0.0, note="")
    if counted >= quantile:
        met = state.met + 1
        if met >= RELAX_PERIODS and state.factor < 1.0:
            return replace(fresh, factor=min(1.0, state.factor / STEP), met=0, trial=None)
        return replace(fresh, met=met, trial=None)
    fresh = replace(fresh, met=0)
    if state.trial is not None and counted - state.trial < MIN_GAIN_SHARE * (quantile
                                                                              - state.trial):
        return replace(fresh, factor=min(1.0, state.factor / STEP), trial=None,
                       blocked_until=now + BLOCK_PERIODS * period_s,
                       note=(f"SLO feedback: a step to more capacity did not help "
                             f"({state.trial:.1%} -> {counted:.1%} of the requests the SLO "
                             f"counts); undone, the misses do not respond to capacity"))
    blocked = state.blocked_until is not None and now < state.blocked_until
    if blocked or not model_suffices or state.factor <= floor:
        return replace(fresh, trial=None)
    return replace(fresh, factor=max(floor, state.factor * STEP), trial=counted,
                   note=f"SLO feedback: {counted:.1%} of the counted requests met the SLO "
                        f"(< {quantile:.0%}) although the model said the replicas suffice")
