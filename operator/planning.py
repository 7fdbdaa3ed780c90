"""Plan and decide: the code local mode and the Kubernetes operator share.

Pure functions over frozen dataclasses: no kopf, kubernetes, HTTP, processes or clock reads
(time comes in as arguments). Two halves:

**Adapters** from the declared resources (:mod:`kubeplex.api`) to the decision core:

* :func:`model_shape` (ModelService -> placement model shape; ``spec.model.profile`` or the URI
  matched against the catalogue), :func:`model_demand` and :func:`pool_spec` (placement's
  own adapters in :mod:`kubeplex.placement.specs`, plus observed rates, nodes and GPUs);
* :func:`plan_pools` runs placement per pool and returns a :class:`PoolPlan` each: the
  placement (groups, predicted attainment, explanation) and one :class:`ReplicaTemplate` per
  model (the GPU shape a new replica of it gets). It raises :class:`PlanningError` naming the
  model and pool when a model names an unknown pool or fits no group of its pool, so a caller
  can refuse a bad spec before anything starts;
* :func:`autoscaler_config` (ModelService + template -> ``autoscaler.AutoscalerConfig``, with
  caller overrides for windows and timings) and :func:`observed_fleet` (the groups -> the
  replica counts of ``autoscaler.Observed``).

**The fleet plan**: :func:`fleet_plan` takes what runs (:class:`GroupView` per group, warm
standbys included), what each model should have (:class:`ModelTarget`, e.g. from the
autoscaler's ``Decision``: ``desired_replicas``, ``desired_warm``), the templates and each
pool's :class:`PoolBudget`, and returns a side-effect-free :class:`FleetPlan`: a list of
:class:`Action` (start / claim / start-warm / unload / drain / stop), each with a reason, plus
messages for what could not be planned (which pool, how many GPUs short, what to change).
Rules, in order, per pool:

1. Scale-down (every model first, so it can make room): replicas still starting are removed
   first, then groups where the model runs alone (draining frees GPUs), then the least loaded
   ready ones; a model that shares its group with others is *unloaded* from it (the group and
   its pod stay), a group left with no model is *drained* (no request is cut; the executor
   stops it once empty).
2. Scale-up: claim warm standbys preloaded with the model, then *add* it to a serving group
   with room (co-location: same ``tp x pp`` shape, every hosted model one of its placement
   ``partners``, memory shares within :data:`MEMORY_LIMIT`; existing groups first, then the
   groups this plan starts, so two partners scaling from zero start as one group), then claim
   empty standbys with the same GPU count, then cold-start new groups while the pool's GPU
   budget lasts (``max_gpus``; draining groups still hold their GPUs); if GPUs are short, warm
   standbys the model cannot use are stopped to make room; what still cannot be placed becomes
   a message, never a group that cannot run. Models go in priority order (then name).
3. Consolidation, only while the pool is stable (no scale action or message so far, nothing
   starting or loading): a model running alone in a group that holds more memory than its
   template gives it (started from the quick "alone" template before placement paired it)
   moves next to its placement partners, within ``max_moves``: *added* to a running group
   with room (no GPUs needed), else one new group *started* for it and its partners that are
   misplaced too, when the pool's free GPUs allow it now. The old groups are drained by a
   later plan's scale-down, once the new copies are ready: until then the plan waits rather
   than scaling the model down, so no model loses its last ready replica. A new copy still
   not ready :data:`CONSOLIDATION_TIMEOUT_S` after it started (given ``now``) is given up:
   its group drained (a started one) or the model unloaded from it (an added one), with a
   reason, and the model is not consolidated again for :data:`CONSOLIDATION_RETRY_S` (the
   caller passes back :attr:`FleetPlan.gave_up` as ``gave_up``).
4. Warm pool: keep ``PoolBudget.warm_size`` standbys (None: the sum of the models'
   ``ModelTarget.warm``), preloading the pool's ``preload`` models in turn (else the likeliest
   next scale-ups first: :func:`likeliest_models`), within the GPUs the replicas left. A claim
   then wakes the preloaded model on GPU, or routes it where the engine cannot sleep
   (:func:`claim_step`).

A model's replica is a serving group that hosts it; a group hosts several models when
placement co-located them. ``max_moves`` bounds how many running groups one plan changes in
place (bounded disruption). No action removes a ready replica to replace it: scale-down only
follows the targets (starting replicas go first), scale-up only adds, and consolidation
drains a model's old group only once its new copy is ready.

The executor (local processes or pods) applies the actions in order and reports back through
the next call's :class:`GroupView` list; running the plan on its own result yields no actions.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubeplex.api import GPUPool, ModelService
from kubeplex.autoscaler.policy import AutoscalerConfig, Starting
from kubeplex.errors import KubeplexError
from kubeplex.placement.errors import PlacementError
from kubeplex.placement.hardware import GPUSpec
from kubeplex.placement.llm import MODELS, LLMProfile, ModelShape, model
from kubeplex.placement.planner import MEMORY_LIMIT, ModelDemand, Placement, PoolSpec, plan
from kubeplex.placement.specs import demand_from_service, pool_from_resource

__all__ = [
    "CONSOLIDATION_RETRY_S",
    "CONSOLIDATION_TIMEOUT_S",
    "Action",
    "ActionKind",
    "ClaimStep",
    "FleetPlan",
    "GroupPhase",
    "GroupView",
    "ModelTarget",
    "PlanningError",
    "PoolBudget",
    "PoolPlan",
    "ReplicaTemplate",
    "autoscaler_config",
    "claim_step",
    "engine_max_num_seqs",
    "fleet_plan",
    "likeliest_models",
    "model_demand",
    "model_shape",
    "observed_fleet",
    "plan_pools",
    "pool_budget",
    "pool_spec",
]

#: A consolidation copy (a group started for a model and its partners, or a model added
#: beside one) still not ready this long after it started is given up (rule 3): ten times the
#: autoscaler's default cold start (``AutoscalerConfig.cold_start_s``, 60 s), room for a large
#: model's download and load, short enough that a copy that never comes up (an image or model
#: that cannot load, a node that went away) does not keep the model one replica over target.
CONSOLIDATION_TIMEOUT_S = 600.0
#: After a consolidation of a model was given up, it is not tried again for this long (the
#: same failure would repeat; placement or the fleet may have changed by then).
CONSOLIDATION_RETRY_S = 1800.0


class PlanningError(KubeplexError):
    """A declared model or pool that cannot be planned (unknown pool, fits no group, ...)."""


# ---- adapters: resources -> placement ----------------------------------------------------------

def _normalized(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def model_shape(svc: ModelService) -> ModelShape:
    """The placement catalogue's shape for ``svc``: ``spec.model.profile`` when given, else the
    catalogue entry whose name appears in the URI (``hf://meta-llama/Llama-3.1-8B-Instruct``
    -> ``llama-3.1-8b``; the longest match wins), as the CRD documents."""
    source = svc.spec.model
    if source.profile:
        try:
            return model(source.profile)
        except PlacementError as exc:
            raise PlanningError(f"ModelService {svc.key}: spec.model.profile: {exc}") from exc
    uri = _normalized(source.uri)
    matches = sorted((name for name in MODELS if _normalized(name) in uri), key=len, reverse=True)
    if not matches:
        raise PlanningError(
            f"ModelService {svc.key}: no latency profile for {source.uri!r}; set "
            f"spec.model.profile to one of {', '.join(MODELS)}")
    return MODELS[matches[0]]


def _with_profile(svc: ModelService) -> ModelService:
    """``svc`` with ``spec.model.profile`` filled in from the URI when it was left empty."""
    if svc.spec.model.profile:
        return svc
    source = replace(svc.spec.model, profile=model_shape(svc).name)
    return replace(svc, spec=replace(svc.spec, model=source))


def model_demand(svc: ModelService, arrival_rate: float | None = None,
                 min_replicas: int | None = None) -> ModelDemand:
    """The planner's view of ``svc`` (placement's own adapter, named by the service key), with
    ``arrival_rate`` overriding the declared ``spec.workload.requestsPerSecond`` (e.g. the
    measured rate) and ``min_replicas`` overriding ``spec.scaling.minReplicas`` (e.g. 1, to
    learn the shape of a model that may sit at zero)."""
    try:
        demand = demand_from_service(_with_profile(svc))
        if arrival_rate is not None:
            demand = replace(demand, arrival_rate=arrival_rate)
        if min_replicas is not None:
            demand = replace(demand, min_replicas=min_replicas)
    except PlacementError as exc:
        raise PlanningError(f"ModelService {svc.key}: {exc}") from exc
    return demand


def pool_spec(pool: GPUPool, nodes: int | None = None, gpus: int | None = None) -> PoolSpec:
    """The planner's view of ``pool`` (placement's adapter): ``nodes`` matching nodes observed
    (None in local mode: as many as ``maxGPUs`` needs); ``gpus``: GPUs observed allocatable in
    total, the budget then being the smaller of it and ``spec.maxGPUs``."""
    name = pool.metadata.name
    budget = pool.spec.max_gpus
    if gpus is not None:
        budget = gpus if budget is None else min(budget, gpus)
    if (nodes is not None and nodes < 1) or budget == 0:
        raise PlanningError(f"GPUPool {name}: no GPUs to place on ({nodes} nodes, budget "
                            f"{budget}); add nodes or raise spec.maxGPUs")
    try:
        return replace(pool_from_resource(pool, nodes), max_gpus=budget)
    except PlacementError as exc:
        raise PlanningError(f"GPUPool {name}: {exc}") from exc


@dataclass(frozen=True)
class ReplicaTemplate:
    """How one replica of ``model`` runs: a ``tp x pp`` group of ``pool`` with
    ``memory_share`` of each GPU's memory.

    Where placement co-locates the model with others (``partners``), the share is the one
    placement gave it there (less than :data:`MEMORY_LIMIT`), so a group started for it keeps
    room for them: the fleet plan adds a partner to such a group instead of starting another
    (statistical multiplexing). A model placed alone gets the whole :data:`MEMORY_LIMIT`.
    """

    model: str
    pool: str
    tp: int
    pp: int
    memory_share: float = MEMORY_LIMIT
    priority: int = 0
    partners: tuple[str, ...] = ()

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def shape(self) -> tuple[int, int]:
        return self.tp, self.pp


@dataclass(frozen=True)
class PoolPlan:
    """One pool's placement and the replica template of each of its models."""

    pool: str
    spec: PoolSpec
    placement: Placement
    templates: Mapping[str, ReplicaTemplate]


def _replica_template(placement: Placement, demand: ModelDemand, pool: PoolSpec,
                      priority: int) -> ReplicaTemplate | None:
    """The template of ``demand``'s replicas: where placement co-locates it, the shape of that
    group and the memory share placement gave it there (its partners named); else
    :func:`_replica_shape` with the whole :data:`MEMORY_LIMIT`. None: placement left it out."""
    hosting = [g for g in placement.groups if any(h.name == demand.name for h in g.models)]
    shared = [g for g in hosting if len(g.models) > 1]
    if shared:
        group = shared[0]
        share = next(h.memory_share for h in group.models if h.name == demand.name)
        partners = tuple(sorted({h.name for g in shared for h in g.models} - {demand.name}))
        return ReplicaTemplate(demand.name, pool.name, group.tp, group.pp, share, priority,
                               partners)
    shape = _replica_shape(placement, demand, pool)
    if shape is None:
        return None
    return ReplicaTemplate(demand.name, pool.name, *shape, MEMORY_LIMIT, priority)


def _replica_shape(placement: Placement, demand: ModelDemand, pool: PoolSpec
                   ) -> tuple[int, int] | None:
    """``(tp, pp)`` of a replica of ``demand`` alone in its group: the shape placement gave it
    where it runs alone, else the smallest shape it fits alone."""
    hosting = [g for g in placement.groups if any(h.name == demand.name for h in g.models)]
    alone = [g for g in hosting if len(g.models) == 1]
    if alone:
        return alone[0].tp, alone[0].pp
    if not hosting:
        return None
    sizes = [1 << k for k in range(pool.gpus_per_node.bit_length())]
    for size in sizes:
        for pp in (p for p in sizes if p <= size):
            if demand.min_share(pool.gpu, size // pp, pp) is not None:
                return size // pp, pp
    return hosting[0].tp, hosting[0].pp


def plan_pools(services: Sequence[ModelService], pools: Sequence[GPUPool],
               arrival_rates: Mapping[str, float] | None = None,
               nodes: Mapping[str, int] | None = None,
               gpus: Mapping[str, int] | None = None) -> dict[str, PoolPlan]:
    """Place every ModelService on its pool (keys: pool names; pools without models are left
    out). Every model is placed with at least one replica so its shape is known even when it
    may scale to zero. Raises :class:`PlanningError` for an unknown pool, a model that fits
    no group, or duplicate ModelService keys."""
    by_name = {p.metadata.name: p for p in pools}
    keys = [s.key for s in services]
    if len(set(keys)) != len(keys):
        raise PlanningError(f"ModelService names must be unique, got {sorted(keys)}")
    grouped: dict[str, list[ModelService]] = {}
    for svc in services:
        if svc.spec.pool not in by_name:
            known = ", ".join(sorted(by_name)) or "none declared"
            raise PlanningError(f"ModelService {svc.key}: spec.pool {svc.spec.pool!r} is not a "
                                f"GPUPool (known: {known}); declare it or fix the name")
        grouped.setdefault(svc.spec.pool, []).append(svc)
    rates = arrival_rates or {}
    plans = {}
    for name, members in sorted(grouped.items()):
        spec = pool_spec(by_name[name], (nodes or {}).get(name), (gpus or {}).get(name))
        demands = [model_demand(s, rates.get(s.key), max(1, s.spec.scaling.min_replicas))
                   for s in members]
        try:
            placement = plan(spec, demands)
        except PlacementError as exc:
            raise PlanningError(f"GPUPool {name}: {exc}") from exc
        templates = {}
        for svc, demand in zip(members, demands, strict=True):
            template = _replica_template(placement, demand, spec, svc.spec.priority)
            if template is None:
                raise PlanningError(
                    f"ModelService {svc.key}: placement found no room for it in GPUPool {name} "
                    f"({spec.usable_gpus} usable {spec.gpu.name} GPUs, shared with "
                    f"{len(members) - 1} other models); raise maxGPUs or move models")
            templates[svc.key] = replace(template, pool=name)
        plans[name] = PoolPlan(name, spec, placement, templates)
    return plans


# ---- adapters: resources -> autoscaler ---------------------------------------------------------

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


# ---- the fleet ---------------------------------------------------------------------------------

class GroupPhase(enum.StrEnum):
    STARTING = "starting"    # serving group on its way (process/pod starting, model loading)
    READY = "ready"          # serving its models
    DRAINING = "draining"    # finishing in-flight requests; still holds its GPUs
    WARMING = "warming"      # warm standby on its way
    WARM = "warm"            # warm standby: runtime up, nothing routed (maybe preloaded)


@dataclass(frozen=True)
class GroupView:
    """One group as the executor sees it now.

    ``models``: models routed to it (or about to be, while starting). ``preloaded``: warm
    standbys' models loaded but not routed (asleep on GPU). ``load``: requests in it (waiting
    + running), so scale-down drains the least loaded. ``since``: when it entered its phase
    (the caller's clock); ``claimed``: a starting group that came from the warm pool.
    ``shape`` (``(tp, pp)``) and ``shares`` (each routed model's memory share, in the order
    of ``models``): what co-location needs to judge room in the group; a group without them
    (or one still unloading a model) is treated as full (nothing is added to it).
    ``loading``: models of ``models`` added to the running group and still loading (they count
    as starting replicas, the others as the group's phase says); ``loading_since``: when the
    latest of them was added (the caller's clock; 0: unknown, taken as ``since``).
    """

    id: str
    pool: str
    gpus: int
    phase: GroupPhase
    models: tuple[str, ...] = ()
    preloaded: tuple[str, ...] = ()
    load: float = 0.0
    since: float = 0.0
    claimed: bool = False
    shape: tuple[int, int] | None = None
    shares: tuple[float, ...] = ()
    loading: tuple[str, ...] = ()
    loading_since: float = 0.0

    @property
    def serving(self) -> bool:
        return self.phase in (GroupPhase.STARTING, GroupPhase.READY)

    @property
    def standby(self) -> bool:
        return self.phase in (GroupPhase.WARMING, GroupPhase.WARM)


@dataclass(frozen=True)
class ModelTarget:
    """What one model should have: replicas and warm standbys (and why, for messages).
    ``arrival_rate`` (requests/s, measured or declared) ranks models for warm preloads."""

    model: str
    replicas: int
    warm: int = 0
    reason: str = ""
    arrival_rate: float = 0.0


@dataclass(frozen=True)
class PoolBudget:
    """A pool's limits: ``max_gpus`` (None: unbounded), ``warm_size`` (None: auto, from the
    targets), models to preload into standbys (in turn)."""

    name: str
    max_gpus: int | None
    warm_size: int | None = None
    preload: tuple[str, ...] = ()


def pool_budget(pool: GPUPool, max_gpus: int | None = None) -> PoolBudget:
    """The budget of ``pool`` (``max_gpus`` overrides ``spec.maxGPUs``, e.g. observed GPUs)."""
    size = pool.spec.warm_pool.size
    return PoolBudget(pool.metadata.name,
                      pool.spec.max_gpus if max_gpus is None else max_gpus,
                      None if size == "auto" else int(size),
                      tuple(pool.spec.warm_pool.preload_models))


class ActionKind(enum.StrEnum):
    START = "start"            # cold-start a new group hosting ``model`` (+ ``with_models``)
    CLAIM = "claim"            # route ``model`` to warm standby ``group`` (wake or load it)
    START_WARM = "start-warm"  # start a warm standby (preloading ``model`` when given)
    ADD = "add"                # load ``model`` into serving ``group`` (co-location), route it
    UNLOAD = "unload"          # remove ``model`` from the shared ``group`` (drain it first)
    DRAIN = "drain"            # drain ``group`` (no new requests), then stop it
    STOP = "stop"              # stop warm standby ``group`` (nothing is routed to it)


@dataclass(frozen=True)
class Action:
    """One step. ``with_models``: the other models a new group (START) hosts from the start,
    co-located with ``model`` (each with its template's memory share)."""

    kind: ActionKind
    pool: str
    reason: str
    group: str | None = None
    model: str | None = None
    gpus: int = 0
    tp: int = 1
    pp: int = 1
    with_models: tuple[str, ...] = ()

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the action concerns (``model`` first)."""
        return (*((self.model,) if self.model else ()), *self.with_models)


@dataclass(frozen=True)
class FleetPlan:
    """The actions to apply in order, and what could not be planned (one line each)."""

    actions: tuple[Action, ...] = ()
    messages: tuple[str, ...] = ()
    #: Models whose consolidation this plan gave up (the caller remembers when, and passes
    #: it back as ``fleet_plan(gave_up=...)``).
    gave_up: tuple[str, ...] = ()

    def of_kind(self, kind: ActionKind) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind is kind)

    def message_for(self, model: str) -> str | None:
        """The budget message about ``model`` (for its Scaling condition), if any."""
        return next((m for m in self.messages if f"model {model}" in m), None)


#: Memory shares are rounded to 4 decimals by placement: a group is full past this slack.
SHARE_TOLERANCE = 1e-3


@dataclass
class _Hosting:
    """A serving group's models and their memory shares as this plan leaves them."""

    shape: tuple[int, int] | None
    models: list[str]
    shares: list[float]
    action: Action | None = None  # the START of a group this plan creates

    def room_for(self, template: ReplicaTemplate) -> bool:
        """Whether ``template.model`` may join: same shape, every hosted model a placement
        partner of it, and the shares still fit :data:`MEMORY_LIMIT`."""
        return (self.shape == template.shape and template.model not in self.models
                and len(self.shares) == len(self.models)
                and all(m in template.partners for m in self.models)
                and sum(self.shares) + template.memory_share <= MEMORY_LIMIT + SHARE_TOLERANCE)


@dataclass
class _Pool:
    """Mutable bookkeeping of one pool while planning."""

    budget: PoolBudget
    used: int
    max_moves: int | None = None
    warm: list[GroupView] = field(default_factory=list)
    hosting: dict[str, _Hosting] = field(default_factory=dict)
    new: list[_Hosting] = field(default_factory=list)
    moved: set[str] = field(default_factory=set)
    #: A consolidation move is under way (the model's new copy is not ready yet).
    moving: bool = False
    #: Models whose consolidation this plan gave up (:func:`_give_up`).
    gave_up: set[str] = field(default_factory=set)
    actions: list[Action] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def free(self) -> int | None:
        return None if self.budget.max_gpus is None else self.budget.max_gpus - self.used

    def fits(self, gpus: int) -> bool:
        free = self.free
        return free is None or free >= gpus

    def may_change(self, group: str) -> bool:
        """Within the disruption budget: running groups changed in place (ADD, UNLOAD)."""
        return (self.max_moves is None or group in self.moved
                or len(self.moved) < self.max_moves)

    def moves_left(self) -> bool:
        """Whether the disruption budget allows one more running group to change."""
        return self.max_moves is None or len(self.moved) < self.max_moves


def _scale_down(pool: _Pool, model: str, serving: list[GroupView], want: int,
                why: str) -> None:
    """Remove ``len(serving) - want`` replicas: starting ones first, then groups where the
    model runs alone (draining them frees GPUs), then the least loaded. A group that keeps
    other models only unloads it (within the move budget); one left empty is drained."""
    serving = [g for g in serving if g.id in pool.hosting]
    order = sorted(serving, key=lambda g: (g.phase is GroupPhase.READY,
                                           len(pool.hosting[g.id].models) > 1, g.load,
                                           -g.since, g.id))
    removed = 0
    for g in order:
        if removed == len(serving) - want:
            return
        hosting = pool.hosting[g.id]
        shared = len(hosting.models) > 1
        if shared and not pool.may_change(g.id):
            continue
        what = "starting" if g.phase is GroupPhase.STARTING else f"load {g.load:g}"
        reason = f"scale {model} down {len(serving)} -> {want} ({what}){why}"
        if shared:
            index = hosting.models.index(model)
            del hosting.models[index]
            if len(hosting.shares) > index:
                del hosting.shares[index]
            pool.moved.add(g.id)
            pool.actions.append(Action(ActionKind.UNLOAD, pool.budget.name,
                                       f"{reason}; {', '.join(hosting.models)} stay",
                                       g.id, model))
        else:
            del pool.hosting[g.id]
            pool.actions.append(Action(ActionKind.DRAIN, pool.budget.name, reason, g.id, model,
                                       g.gpus))
        removed += 1
    if removed < len(serving) - want:
        pool.messages.append(
            f"GPUPool {pool.budget.name}: model {model} scale-down to {want} waits: its other "
            f"replicas share groups that the move budget ({pool.max_moves}) leaves alone now")


def _claimable(pool: _Pool, template: ReplicaTemplate, preloaded: bool) -> list[GroupView]:
    """Warm standbys ``template.model`` can take: preloaded with it (ready ones first), or
    empty ones of the same GPU count."""
    if preloaded:
        fitting = [g for g in pool.warm if template.model in g.preloaded]
    else:
        fitting = [g for g in pool.warm if not g.preloaded and g.gpus == template.gpus]
    return sorted(fitting, key=lambda g: (g.phase is not GroupPhase.WARM, g.id))


def _claim(pool: _Pool, g: GroupView, template: ReplicaTemplate, have: int, want: int,
           why: str) -> None:
    model = template.model
    pool.warm.remove(g)
    pool.hosting[g.id] = _Hosting(template.shape, [model], [template.memory_share])
    pool.actions.append(Action(
        ActionKind.CLAIM, pool.budget.name, f"scale {model} up {have} -> {want}: claim warm "
        f"standby {g.id} ({'preloaded' if model in g.preloaded else 'load on claim'}){why}",
        g.id, model, g.gpus, template.tp, template.pp))


def _add(pool: _Pool, template: ReplicaTemplate, have: int, want: int, why: str) -> bool:
    """Add the model to a group with room (running groups first, fullest first; then groups
    this plan starts). False when none has room."""
    model = template.model
    running = sorted((gid for gid, h in pool.hosting.items()
                      if h.room_for(template) and pool.may_change(gid)),
                     key=lambda gid: (-sum(pool.hosting[gid].shares), gid))
    if running:
        gid = running[0]
        hosting = pool.hosting[gid]
        others = ", ".join(hosting.models)
        hosting.models.append(model)
        hosting.shares.append(template.memory_share)
        pool.moved.add(gid)
        pool.actions.append(Action(
            ActionKind.ADD, pool.budget.name, f"scale {model} up {have} -> {want}: load it "
            f"into {gid} beside {others} (co-located by placement, memory share "
            f"{template.memory_share:g}){why}", gid, model, 0, template.tp, template.pp))
        return True
    new = next((h for h in pool.new if h.room_for(template)), None)
    if new is None or new.action is None:
        return False
    new.models.append(model)
    new.shares.append(template.memory_share)
    new.action = replace(new.action, with_models=(*new.action.with_models, model),
                         reason=f"{new.action.reason}; co-locating {model} ({have} -> {want}"
                                f"{why})")
    return True


def _scale_up(pool: _Pool, template: ReplicaTemplate, have: int, want: int,
              targets: Mapping[str, ModelTarget], why: str) -> None:
    """Add ``want - have`` replicas: preloaded warm standbys, then room in groups of its
    placement partners, then empty standbys, then cold starts within the GPU budget."""
    need = want - have
    name, model = pool.budget.name, template.model
    for g in _claimable(pool, template, preloaded=True)[:need]:
        _claim(pool, g, template, have, want, why)
        need -= 1
    while need > 0 and _add(pool, template, have, want, why):
        need -= 1
    for g in _claimable(pool, template, preloaded=False)[:need]:
        _claim(pool, g, template, have, want, why)
        need -= 1
    while need > 0:
        if not pool.fits(template.gpus):
            # Standbys no one is about to claim for this model: stop them to make room.
            spare = [g for g in pool.warm if model not in g.preloaded
                     and not any(targets.get(p, ModelTarget(p, 0)).warm for p in g.preloaded)]
            spare = spare or [g for g in pool.warm if model not in g.preloaded]
            if not spare:
                break
            victim = spare[-1]
            pool.warm.remove(victim)
            pool.used -= victim.gpus
            pool.actions.append(Action(ActionKind.STOP, name, f"free {victim.gpus} GPUs of warm "
                                       f"standby {victim.id} for a replica of {model}",
                                       victim.id, None, victim.gpus))
            continue
        pool.used += template.gpus
        start = Action(ActionKind.START, name, f"scale {model} up {have} -> {want}: cold start "
                       f"({template.tp}x{template.pp} GPUs){why}", None, model, template.gpus,
                       template.tp, template.pp)
        pool.new.append(_Hosting(template.shape, [model], [template.memory_share], start))
        need -= 1
    if need > 0:
        placed = want - need
        pool.messages.append(
            f"GPUPool {name}: model {model} wants {want} replicas but only {placed} fit: "
            f"{need} more need {need * template.gpus} GPUs, {pool.free} of {pool.budget.max_gpus} "
            f"are free; raise spec.maxGPUs of GPUPool {name} or lower maxReplicas")


def _warm_pool(pool: _Pool, templates: Sequence[ReplicaTemplate],
               targets: Mapping[str, ModelTarget]) -> None:
    name = pool.budget.name
    wanted = pool.budget.warm_size
    asking = [t.model for t in templates if targets.get(t.model, ModelTarget(t.model, 0)).warm]
    if wanted is None:
        wanted = sum(targets[m].warm for m in asking)
    by_model = {t.model: t for t in templates}
    rotation = [m for m in pool.budget.preload if m in by_model] or likeliest_models(
        asking or list(by_model), targets)
    if len(pool.warm) > wanted:
        extra = sorted(pool.warm, key=lambda g: (any(p in rotation for p in g.preloaded),
                                                 g.phase is GroupPhase.WARM, g.id))
        for g in extra[:len(pool.warm) - wanted]:
            pool.actions.append(Action(ActionKind.STOP, name, f"warm pool of {name} wants "
                                       f"{wanted}, has {len(pool.warm)}", g.id, None, g.gpus))
        return
    if not rotation:
        return
    have = len(pool.warm)
    preloaded = [p for g in pool.warm for p in g.preloaded]
    for i in range(wanted - have):
        # The next model of the rotation that has the fewest standbys preloaded.
        model = min(rotation, key=lambda m: (preloaded.count(m), rotation.index(m)))
        template = by_model[model]
        if not pool.fits(template.gpus):
            pool.messages.append(
                f"GPUPool {name}: warm pool wants {wanted} standbys, has {have + i}: "
                f"{pool.free} of {pool.budget.max_gpus} GPUs free, a standby of {model} needs "
                f"{template.gpus}; the replicas come first")
            return
        preloaded.append(model)
        pool.used += template.gpus
        pool.actions.append(Action(ActionKind.START_WARM, name, f"warm pool of {name} wants "
                                   f"{wanted}, has {have + i}; preload {model} (the likeliest "
                                   "next scale-up)", None, model, template.gpus,
                                   template.tp, template.pp))


def _misplaced(g: GroupView, template: ReplicaTemplate) -> bool:
    """``g`` runs ``template.model`` alone with more memory than placement gives it there
    (started from the quick "alone" template before placement paired it), so no partner can
    join it: a candidate for consolidation."""
    return (bool(template.partners) and g.models == (template.model,)
            and len(g.shares) == 1 and g.shape == template.shape
            and g.shares[0] > template.memory_share + SHARE_TOLERANCE)


def _moving_in(template: ReplicaTemplate, serving: Sequence[GroupView]) -> list[GroupView]:
    """A consolidation of ``template.model`` under way: its new copies (beside a partner,
    still starting or loading) when a ready misplaced copy exists, else none (the misplaced
    one is drained only once a new one is ready: the plan waits instead of scaling down)."""
    model = template.model
    old = any(_misplaced(g, template) and g.phase is GroupPhase.READY
              and model not in g.loading for g in serving)
    new = [g for g in serving if (g.phase is GroupPhase.STARTING or model in g.loading)
           and any(p in g.models for p in template.partners)]
    return new if old else []


def _started_at(g: GroupView, model: str) -> float:
    """When ``model``'s copy in ``g`` started: the group's start, or when it was added."""
    if g.phase is GroupPhase.READY and model in g.loading and g.loading_since:
        return g.loading_since
    return g.since


def _give_up(pool: _Pool, model: str, stuck: Sequence[GroupView], now: float) -> None:
    """Consolidation copies of ``model`` not ready after :data:`CONSOLIDATION_TIMEOUT_S`: a
    group started for it (and its partners) is drained, a model added to a partner's group is
    unloaded from it; the old copy keeps serving. Recorded in ``pool.gave_up``."""
    for g in stuck:
        hosting = pool.hosting.get(g.id)
        if hosting is None:
            continue  # already drained by this plan (a partner's give-up)
        starting = g.phase is GroupPhase.STARTING
        who = ", ".join(hosting.models) if starting else model
        why = (f"consolidation of {who} given up: the new copy in {g.id} is not ready after "
               f"{now - _started_at(g, model):.0f} s (limit {CONSOLIDATION_TIMEOUT_S:.0f} s); "
               f"the old copy keeps serving, no retry for {CONSOLIDATION_RETRY_S:.0f} s")
        if starting:
            del pool.hosting[g.id]
            pool.gave_up.update(hosting.models)
            pool.actions.append(Action(ActionKind.DRAIN, pool.budget.name, why, g.id, model))
        elif model in hosting.models and not pool.may_change(g.id):
            pool.moving = True  # out of moves this plan: keep waiting, give up next time
        elif model in hosting.models:
            index = hosting.models.index(model)
            del hosting.models[index]
            if len(hosting.shares) > index:
                del hosting.shares[index]
            pool.moved.add(g.id)
            pool.gave_up.add(model)
            pool.actions.append(Action(ActionKind.UNLOAD, pool.budget.name,
                                       f"{why}; {', '.join(hosting.models)} stay", g.id, model))


def _consolidate(pool: _Pool, groups: Sequence[GroupView],
                 templates: Sequence[ReplicaTemplate]) -> None:
    """Move models that run alone in groups placement would share (see :func:`_misplaced`)
    next to their partners, within the move budget: ADD into a running group with room (no
    GPUs needed), else START one group for the model and its misplaced partners if the pool
    has the GPUs now. The old groups are drained by the scale-down of a later plan, once the
    new copies are ready (``_moving_in`` holds the scale-down until then)."""
    name = pool.budget.name
    by_model = {t.model: t for t in templates}
    misplaced = {t.model: g for t in templates for g in groups
                 if g.serving and g.phase is GroupPhase.READY and _misplaced(g, t)}
    done: set[str] = set()
    for template in templates:
        model = template.model
        old = misplaced.get(model)
        if old is None or model in done or not pool.moves_left():
            continue
        why = (f"consolidate: placement co-locates {model} with "
               f"{', '.join(template.partners)}; {old.id} runs it alone")
        into = sorted((g for g in groups if g.phase is GroupPhase.READY and g.id != old.id
                       and g.id in pool.hosting and not g.loading
                       and pool.hosting[g.id].room_for(template)),
                      key=lambda g: (-sum(pool.hosting[g.id].shares), g.id))
        if into:
            target = into[0]
            hosting = pool.hosting[target.id]
            others = ", ".join(hosting.models)
            hosting.models.append(model)
            hosting.shares.append(template.memory_share)
            pool.moved.add(target.id)
            done.add(model)
            pool.actions.append(Action(
                ActionKind.ADD, name, f"{why}: load it into {target.id} beside {others}, then "
                f"drain {old.id}", target.id, model, 0, template.tp, template.pp))
            continue
        new = _Hosting(template.shape, [model], [template.memory_share])
        for partner in template.partners:
            other = by_model.get(partner)
            if (other is not None and partner in misplaced and partner not in done
                    and new.room_for(other)):
                new.models.append(partner)
                new.shares.append(other.memory_share)
        if len(new.models) < 2 or not pool.fits(template.gpus):
            continue  # nothing to gain alone, or the GPUs are not free now: try later
        pool.used += template.gpus
        pool.moved.add(f"consolidate:{model}")  # counts against the move budget
        done.update(new.models)
        pool.actions.append(Action(
            ActionKind.START, name, f"{why}: start {', '.join(new.models)} together "
            f"({template.tp}x{template.pp} GPUs, {pool.free} left free), then drain "
            f"{', '.join(misplaced[m].id for m in new.models)}", None, model, template.gpus,
            template.tp, template.pp, tuple(new.models[1:])))


def likeliest_models(models: Iterable[str], targets: Mapping[str, ModelTarget]) -> list[str]:
    """``models`` in the order warm standbys preload them: the most likely next scale-up
    first (the highest arrival rate, then the most replicas wanted, then the name)."""
    def rank(m: str) -> tuple[float, int, str]:
        t = targets.get(m, ModelTarget(m, 0))
        return -t.arrival_rate, -t.replicas, m
    return sorted(models, key=rank)


class ClaimStep(enum.StrEnum):
    """What claiming a warm standby for a model does next (:func:`claim_step`)."""

    WAKE = "wake"    # the model is preloaded and asleep: wake it (GPU sleep mode)
    LOAD = "load"    # not preloaded (or lost): load it through the control API
    ROUTE = "route"  # loaded and awake (an engine that cannot sleep stays loaded): route it
    WAIT = "wait"    # loading or waking: ask again next time


def claim_step(engine_state: str | None) -> ClaimStep:
    """The next step of a warm claim from the runtime's state of the model's engine (None:
    the runtime does not host it). GPU engines preloaded into a standby sleep there, so a claim
    wakes them; the sim engine and vLLM on CPU cannot sleep (the runtime answers the sleep
    with 409), so they stay loaded but unrouted and a claim just routes them."""
    if engine_state is None or engine_state in ("failed", "stopped"):
        return ClaimStep.LOAD
    if engine_state == "sleeping":
        return ClaimStep.WAKE
    if engine_state == "ready":
        return ClaimStep.ROUTE
    return ClaimStep.WAIT


def fleet_plan(groups: Sequence[GroupView], targets: Mapping[str, ModelTarget],
               templates: Mapping[str, ReplicaTemplate],
               budgets: Iterable[PoolBudget], max_moves: int | None = None,
               now: float | None = None, gave_up: Mapping[str, float] | None = None
               ) -> FleetPlan:
    """The actions that take ``groups`` to ``targets`` within the budgets (module docstring).

    Models without a target keep their current replicas; groups of pools without a budget are
    left alone. ``max_moves`` bounds how many running groups of a pool one plan changes in
    place (ADD, UNLOAD); new groups, claims and drains of single-model groups do not count.
    ``now`` (the clock of the views' ``since``): consolidation copies not ready after
    :data:`CONSOLIDATION_TIMEOUT_S` are given up (None: never). ``gave_up``: model -> when
    its consolidation was given up (from earlier plans' :attr:`FleetPlan.gave_up`); such a
    model is not consolidated again for :data:`CONSOLIDATION_RETRY_S`.
    """
    actions: list[Action] = []
    messages: list[str] = []
    given_up: list[str] = []
    paused = {m for m, t in (gave_up or {}).items()
              if now is None or now - t < CONSOLIDATION_RETRY_S}
    for budget in sorted(budgets, key=lambda b: b.name):
        members = [g for g in groups if g.pool == budget.name]
        pool = _Pool(budget, used=sum(g.gpus for g in members), max_moves=max_moves,
                     warm=[g for g in members if g.standby],
                     hosting={g.id: _Hosting(g.shape, list(g.models), list(g.shares))
                              for g in members if g.serving})
        mine = sorted((t for t in templates.values() if t.pool == budget.name),
                      key=lambda t: (-t.priority, t.model))
        ups = []
        for template in mine:  # scale-downs first: they may make room for scale-ups
            target = targets.get(template.model)
            if target is None:
                continue
            serving = [g for g in members if g.serving and template.model in g.models]
            why = f": {target.reason}" if target.reason else ""
            moving = (_moving_in(template, serving) if target.replicas == len(serving) - 1
                      else [])
            stuck = [g for g in moving if now is not None
                     and now - _started_at(g, template.model) > CONSOLIDATION_TIMEOUT_S]
            if stuck:
                _give_up(pool, template.model, stuck, now or 0.0)
            elif moving:
                pool.moving = True  # consolidating: drain the old copy once the new is ready
            elif target.replicas < len(serving):
                _scale_down(pool, template.model, serving, max(0, target.replicas), why)
            elif target.replicas > len(serving):
                ups.append((template, len(serving), target.replicas, why))
        for template, have, want, why in ups:
            _scale_up(pool, template, have, want, targets, why)
        pool.actions += [h.action for h in pool.new if h.action is not None]
        settled = all(g.phase is not GroupPhase.STARTING and not g.loading
                      for g in members if g.serving)
        if not (pool.actions or pool.messages or pool.moving) and settled:
            _consolidate(pool, members, [t for t in mine if t.model in targets
                                         and t.model not in paused])
        _warm_pool(pool, mine, targets)
        drained = {a.group for a in pool.actions if a.kind is ActionKind.DRAIN}
        actions += [a for a in pool.actions
                    if not (a.kind is ActionKind.UNLOAD and a.group in drained)]
        messages += pool.messages
        given_up += sorted(pool.gave_up)
    return FleetPlan(tuple(actions), tuple(messages), tuple(given_up))


def observed_fleet(groups: Sequence[GroupView], model: str, budget: PoolBudget | None = None
                   ) -> dict[str, Any]:
    """The fleet part of ``autoscaler.Observed`` for ``model``: ``ready``, ``starting``
    (:class:`~kubeplex.autoscaler.policy.Starting` with its start time and whether it came
    from the warm pool), ``warm_available`` (standbys of its pool it could claim) and
    ``free_gpus`` (None without a budget). Use as ``Observed(scrapes=..., **fields)``."""
    serving = [g for g in groups if g.serving and model in g.models]
    pool = serving[0].pool if serving else (budget.name if budget else None)
    warm = [g for g in groups if g.standby and g.pool == pool
            and (model in g.preloaded or not g.preloaded)]
    free = None
    if budget is not None and budget.max_gpus is not None:
        free = max(0, budget.max_gpus - sum(g.gpus for g in groups if g.pool == budget.name))
    return {
        "ready": sum(1 for g in serving if g.phase is GroupPhase.READY
                     and model not in g.loading),
        "starting": tuple(Starting(g.since, g.claimed) for g in serving
                          if g.phase is GroupPhase.STARTING or model in g.loading),
        "warm_available": len(warm),
        "free_gpus": free,
    }
