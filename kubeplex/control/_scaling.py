"""Adapters from a ModelService to the autoscaler, and the per-model scaling step.

* :func:`resolve_model`: a ModelService with its replica template, resolved once per spec
  generation into a :class:`ResolvedModel` (shape, template, autoscaler config, served name);
  a spec that cannot be served raises a typed :class:`~kubeplex.control.errors.PlanningError`.
* :func:`scale_model`: one evaluation of one model, the same in both backends: the scrape
  history (one horizon), the fleet counts (:func:`observed_fleet`), the autoscaler's
  :func:`~kubeplex.autoscaler.policy.decide`, the manual pin rule, the arrival-rate fallback
  and the SLO status rule, returning a :class:`ModelDecision` and the model's next
  :class:`ModelMemory`.

**The measured cold start.** The autoscaler weighs scale-ups and holds against a cold start
(``AutoscalerConfig.cold_start_s``: 60 s unless the backend sets it). How long one takes
depends on the cluster (image pulls, weight downloads, a GPU node to free), so each model's
memory keeps its own: the backend times each group that starts cold (not claimed from the
warm pool, not a model loaded into a running group) from its creation to its first Ready,
and hands the times finished since the last cycle in ``ModelInputs.cold_starts``. Once
:data:`COLD_STARTS_NEEDED` are known, the median of the last :data:`COLD_STARTS_KEPT`
replaces the configured value; the decision carries the one it planned with
(``ModelDecision.cold_start_s``), which the backends show in the status.

**The manual pin rule.** While ``spec.scaling.replicas`` is set (``kubectl scale`` sets it
through ``/scale``), that count is the desired replicas whatever the metrics say (the
autoscaler still runs, so the observed signals stay fresh). Remove the field to hand control
back.
"""

from __future__ import annotations

import enum
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubeplex.api import ModelService, ModelServiceSpec
from kubeplex.autoscaler import policy
from kubeplex.autoscaler.metrics import Scrape, with_held
from kubeplex.autoscaler.policy import (
    AutoscalerConfig,
    AutoscalerState,
    Decision,
    Observed,
    Starting,
    decide,
)
from kubeplex.autoscaler.signals import NoData, Signals
from kubeplex.control._placing import ReplicaTemplate, model_shape
from kubeplex.control._types import (
    GroupIndex,
    GroupPhase,
    GroupView,
    ModelKey,
    ModelTarget,
    PoolBudget,
)
from kubeplex.control.errors import PlanningError, UnsupportedSourceError
from kubeplex.errors import KubeplexError
from kubeplex.placement.hardware import GPUSpec
from kubeplex.placement.llm import LLMProfile, ModelShape

__all__ = [
    "HISTORY_WINDOWS",
    "ModelDecision",
    "ModelInputs",
    "ModelMemory",
    "ResolvedModel",
    "SloStatus",
    "autoscaler_config",
    "check_source",
    "engine_max_num_seqs",
    "observed_fleet",
    "resolve_model",
    "scale_model",
    "slo_status",
]

#: Scrapes older than the longer of the stable and panic windows times this are dropped: the
#: windows need a scrape at or before their start, and a missed scrape or two must not leave a
#: window without one.
HISTORY_WINDOWS = 2.0
#: Cold starts each model remembers, and how many it takes before their median replaces the
#: configured cold start (one slow image pull among three does not move a median).
COLD_STARTS_KEPT, COLD_STARTS_NEEDED = 8, 3


# ---- resources -> autoscaler -------------------------------------------------------------------

def engine_max_num_seqs(engine_args: Sequence[str]) -> int | None:
    """The engine's concurrent-sequence limit when ``engineArgs`` set ``--max-num-seqs``.

    A replica admits at most that many requests at once, which bounds its service rate far
    below the latency model's default batch: capacity estimates must know it.
    """
    for index, arg in enumerate(engine_args):
        flag, _, value = arg.partition("=")
        if flag != "--max-num-seqs":
            continue
        if not value and index + 1 < len(engine_args):
            value = engine_args[index + 1]
        try:
            limit = int(value)
        except ValueError:
            raise PlanningError(f"engineArgs: --max-num-seqs needs a positive integer, "
                                f"got {value!r}") from None
        if limit < 1:
            raise PlanningError(f"engineArgs: --max-num-seqs must be >= 1, got {limit}")
        return limit
    return None


def autoscaler_config(svc: ModelService, template: ReplicaTemplate, gpu: GPUSpec,
                      **overrides: Any) -> AutoscalerConfig:
    """The autoscaler's settings for ``svc``: SLO, bounds, scale-to-zero delay, queue target,
    the latency profile of its replica shape, the declared token sizes. ``overrides`` set any
    other :class:`~kubeplex.autoscaler.policy.AutoscalerConfig` field (windows, start times)."""
    spec = svc.spec
    values: dict[str, Any] = {
        "slo_ttft_s": spec.slo.ttft_seconds,
        "percentile": spec.slo.percentile,
        "min_replicas": spec.scaling.min_replicas,
        "max_replicas": spec.scaling.max_replicas,
        "gpus_per_replica": template.gpus,
        "profile": LLMProfile(model_shape(svc), gpu, template.tp, template.pp),
        "mean_prompt_tokens": float(spec.workload.prompt_tokens),
        "mean_output_tokens": float(spec.workload.output_tokens),
        "target_queue_per_replica": float(spec.scaling.target_queue_per_replica),
        "scale_to_zero_after_s": float(spec.scaling.scale_to_zero_after_seconds),
        "prewarm": spec.scaling.prewarm,
    }
    max_num_seqs = engine_max_num_seqs(spec.model.engine_args)
    if max_num_seqs is not None:
        values["max_num_seqs"] = max_num_seqs
    values.update(overrides)
    try:
        return AutoscalerConfig(**values)
    except KubeplexError as exc:
        raise PlanningError(f"ModelService {svc.key}: {exc}") from exc


def check_source(svc: ModelService) -> None:
    """A model or LoRA adapter source the runtime cannot load is refused before any replica
    starts: real engines load ``hf://``, ``file://`` and ``pvc://`` sources (the sim engine
    loads none)."""
    sources = [("spec.model.uri", svc.spec.model.uri),
               *(("spec.adapters[].uri", a.uri) for a in svc.spec.adapters)]
    for where, uri in sources:
        if svc.spec.engine != "sim" and uri.startswith("s3://"):
            raise UnsupportedSourceError(
                f"ModelService {svc.key}: {where} {uri!r}: the runtime loads hf://, file:// "
                "and pvc:// sources; copy the weights to a PersistentVolumeClaim and use "
                "pvc://CLAIM/PATH")


@dataclass(frozen=True)
class ResolvedModel:
    """A ModelService as the control layer uses it, resolved once per spec generation."""

    key: ModelKey
    spec: ModelServiceSpec
    shape: ModelShape
    template: ReplicaTemplate
    config: AutoscalerConfig

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def namespace(self) -> str:
        return self.key.partition("/")[0]

    @property
    def served_name(self) -> str:
        """The name clients use: ``spec.model.servedName``, else the ModelService's name."""
        return self.spec.model.served_name or self.name

    @property
    def memory_share(self) -> float:
        return self.template.memory_share


def resolve_model(svc: ModelService, template: ReplicaTemplate, gpu: GPUSpec,
                  **overrides: Any) -> ResolvedModel:
    """``svc`` with its template and autoscaler config (``overrides``: windows and start
    times of the backend); raises a typed :class:`PlanningError` when it cannot be served."""
    check_source(svc)
    return ResolvedModel(svc.key, svc.spec, model_shape(svc), template,
                         autoscaler_config(svc, template, gpu, **overrides))


# ---- the per-model step ------------------------------------------------------------------------

def observed_fleet(groups: Sequence[GroupView] | GroupIndex, model: ModelKey,
                   budget: PoolBudget | None = None) -> dict[str, Any]:
    """The fleet part of ``autoscaler.Observed`` for ``model``: ``ready``, ``starting``
    (:class:`~kubeplex.autoscaler.policy.Starting` with its start time and whether it came
    from the warm pool), ``warm_available`` (standbys of its pool and namespace it could claim)
    and ``free_gpus`` (None without a budget). Use as ``Observed(scrapes=..., **fields)``."""
    index = groups if isinstance(groups, GroupIndex) else GroupIndex.of(groups)
    serving = index.serving.get(model, ())
    pool = serving[0].pool if serving else (budget.name if budget else None)
    namespace = model.partition("/")[0]
    warm = [g for g in index.standbys.get((pool or "", namespace), ())
            if model in g.preloaded or not g.preloaded]
    free = None
    if budget is not None and budget.max_gpus is not None:
        free = max(0, budget.max_gpus - index.gpus.get(budget.name, 0))
    return {
        "ready": sum(1 for g in serving if g.phase is GroupPhase.READY
                     and model not in g.loading),
        "starting": tuple(Starting(g.since, g.claimed) for g in serving
                          if g.phase is GroupPhase.STARTING or model in g.loading),
        "warm_available": len(warm),
        "free_gpus": free,
    }


class SloStatus(enum.StrEnum):
    """``status.sloStatus``: how the measured TTFT percentile compares with the SLO."""

    MET = "Met"
    AT_RISK = "AtRisk"
    VIOLATED = "Violated"
    IDLE = "Idle"        # no traffic
    UNKNOWN = "Unknown"  # no data yet


def slo_status(signals: Signals | NoData | None, config: AutoscalerConfig,
               scaled_to_zero: bool) -> SloStatus:
    """The one SLO-status rule: from the signals when there are any (the autoscaler's rule:
    Idle without traffic, Unknown without first tokens, else the percentile against the SLO),
    else Idle for a model at zero that stays there, Unknown otherwise."""
    if isinstance(signals, Signals):
        return SloStatus(policy.slo_status(signals, config))
    return SloStatus.IDLE if scaled_to_zero else SloStatus.UNKNOWN


@dataclass(frozen=True)
class ModelInputs:
    """What the backend read for one model this cycle.

    ``scrape``: the merged metric scrape of its replicas (None: none taken, e.g. no ready
    replica). ``held``: requests the gateway holds for it, stamped into the scrape
    (:func:`~kubeplex.autoscaler.metrics.with_held`); ``held_caveat``: why that count may be
    wrong (added to the reason; the scrape then goes without it). ``trigger``: the alert
    that asked for this evaluation. ``no_new_replica``: why no replica may start now (e.g. a
    start just failed and backs off): the target then stays at the current replicas.
    ``cold_starts``: the model's cold starts that finished since the last cycle, in seconds
    (the module docstring).
    """

    scrape: Scrape | None = None
    held: int = 0
    held_caveat: str | None = None
    trigger: str | None = None
    no_new_replica: str | None = None
    cold_starts: tuple[float, ...] = ()


@dataclass(frozen=True)
class ModelMemory:
    """What one model's scaling remembers between cycles (start from ``ModelMemory()``)."""

    state: AutoscalerState = field(default_factory=AutoscalerState)
    scrapes: tuple[Scrape, ...] = ()
    #: The latest measured cold starts (seconds), oldest first.
    cold_starts: tuple[float, ...] = ()

    def cold_start_s(self) -> float | None:
        """The median measured cold start; None until :data:`COLD_STARTS_NEEDED` are known."""
        if len(self.cold_starts) < COLD_STARTS_NEEDED:
            return None
        return statistics.median(self.cold_starts)


@dataclass(frozen=True)
class ModelDecision:
    """One model's decision this cycle: the replicas and warm standbys it should have, why,
    the autoscaler's full :class:`~kubeplex.autoscaler.policy.Decision` (stages, signals),
    the SLO status and the arrival rate (measured, else declared) that ranks warm preloads."""

    key: ModelKey
    current: int
    desired: int
    warm: int
    reason: str
    decision: Decision
    slo: SloStatus
    arrival_rate: float
    pinned: int | None = None
    #: The cold start the autoscaler planned with, and how many measured ones gave it (0:
    #: the configured value).
    cold_start_s: float = 0.0
    cold_starts_measured: int = 0

    @property
    def signals(self) -> Signals | None:
        found = self.decision.signals
        return found if isinstance(found, Signals) else None

    def target(self) -> ModelTarget:
        return ModelTarget(self.key, self.desired, self.warm, self.reason, self.arrival_rate)


def _history(scrapes: tuple[Scrape, ...], new: Scrape | None, config: AutoscalerConfig,
             now: float) -> tuple[Scrape, ...]:
    horizon = max(config.stable_window_s, config.panic_window_s) * HISTORY_WINDOWS
    kept = (*scrapes, new) if new is not None else scrapes
    return tuple(s for s in kept if now - s.time <= horizon)


def scale_model(model: ResolvedModel, groups: Sequence[GroupView] | GroupIndex,
                budget: PoolBudget | None, inputs: ModelInputs, memory: ModelMemory, now: float
                ) -> tuple[ModelDecision, ModelMemory]:
    """One evaluation of ``model`` (module docstring); pure: the clock is ``now``. ``groups``:
    the fleet's groups, or their :class:`GroupIndex` (built once for many models)."""
    new = inputs.scrape  # with the gateway's held requests, when their count is known
    if new is not None and not inputs.held_caveat:
        new = with_held(new, inputs.held)
    scrapes = _history(memory.scrapes, new, model.config, now)
    index = groups if isinstance(groups, GroupIndex) else GroupIndex.of(groups)
    if inputs.cold_starts:
        memory = replace(memory, cold_starts=(*memory.cold_starts,
                                              *inputs.cold_starts)[-COLD_STARTS_KEPT:])
    config, measured = model.config, memory.cold_start_s()
    if measured is not None and measured != config.cold_start_s:
        config = replace(config, cold_start_s=measured)
    fleet = observed_fleet(index, model.key, budget)
    observed = Observed(scrapes=scrapes, trigger=inputs.trigger, held_requests=inputs.held,
                        **fleet)
    decision = decide(observed, config, memory.state, now)
    desired, reason = decision.desired_replicas, decision.reason
    if inputs.held_caveat:
        reason = f"{reason} ({inputs.held_caveat})"
    pinned = model.spec.scaling.replicas
    if pinned is not None:
        desired, reason = pinned, f"pinned to spec.scaling.replicas={pinned} (autoscaler: {reason})"
    serving = len(index.serving.get(model.key, ()))
    if inputs.no_new_replica and desired > serving:
        desired, reason = serving, f"hold at {serving}: {inputs.no_new_replica} ({reason})"
    signals = decision.signals if isinstance(decision.signals, Signals) else None
    rate = signals.arrival_rate if signals is not None \
        else model.spec.workload.requests_per_second
    status = slo_status(decision.signals, model.config,
                        scaled_to_zero=observed.current == 0 and desired == 0)
    result = ModelDecision(model.key, observed.current, desired, decision.desired_warm, reason,
                           decision, status, rate, pinned, config.cold_start_s,
                           0 if measured is None else len(memory.cold_starts))
    return result, replace(memory, state=decision.state, scrapes=scrapes)
