"""Adapters from the declared resources (:mod:`kubeplex.api`) to placement.

* :func:`model_shape` (a ModelService's latency/memory shape: ``spec.model.profile``, or the
  catalogue entry its URI names), :func:`model_demand` and :func:`pool_spec` (placement's own
  adapters in :mod:`kubeplex.placement.specs`, plus observed rates, nodes and GPUs);
* :class:`ReplicaTemplate`: the GPU group a new replica of a model gets, from the two sources
  the backends use: :func:`quick_template` (the smallest fitting shape, at once) and
  :func:`plan_pools` (the AlpaServe-style search: seconds per pool; co-located models get the
  memory share placement gave them, and their partners).

Errors are typed (:mod:`kubeplex.control.errors`): an unknown pool, an unknown profile, a model
that fits no group, each naming the model, the pool and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from kubeplex.api import GPUPool, ModelService
from kubeplex.control._types import PoolBudget
from kubeplex.control.errors import (
    DoesNotFitError,
    PlanningError,
    UnknownPoolError,
    UnknownProfileError,
    UnplacedError,
)
from kubeplex.placement import errors as placement_errors
from kubeplex.placement.groups import group_shapes as _shapes
from kubeplex.placement.llm import MODELS, ModelShape, model
from kubeplex.placement.planner import MEMORY_LIMIT, ModelDemand, Placement, PoolSpec, plan
from kubeplex.placement.specs import demand_from_service, pool_from_resource

__all__ = [
    "PoolPlan",
    "ReplicaTemplate",
    "model_demand",
    "model_shape",
    "plan_pools",
    "pool_budget",
    "pool_spec",
    "quick_template",
]


def _typed(exc: placement_errors.PlacementError, message: str) -> PlanningError:
    """Placement's error as the control layer's, keeping what kind of failure it was."""
    if isinstance(exc, placement_errors.UnplacedModelsError):
        return UnplacedError(message, exc.models, exc.pool)
    if isinstance(exc, placement_errors.UnknownProfileError):
        return UnknownProfileError(message)
    if isinstance(exc, placement_errors.DoesNotFitError):
        return DoesNotFitError(message)
    return PlanningError(message)


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
        except placement_errors.PlacementError as exc:
            raise UnknownProfileError(f"ModelService {svc.key}: spec.model.profile: {exc}"
                                      ) from exc
    uri = _normalized(source.uri)
    matches = sorted((name for name in MODELS if _normalized(name) in uri), key=len, reverse=True)
    if not matches:
        raise UnknownProfileError(
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
    except placement_errors.PlacementError as exc:
        raise _typed(exc, f"ModelService {svc.key}: {exc}") from exc
    return demand


def pool_spec(pool: GPUPool, nodes: int | None = None, gpus: int | None = None) -> PoolSpec:
    """The planner's view of ``pool``: ``nodes`` matching nodes observed (None in local mode:
    as many as ``maxGPUs`` needs); ``gpus``: GPUs observed allocatable in total, the budget
    then being the smaller of it and ``spec.maxGPUs``."""
    name = pool.metadata.name
    budget = pool.spec.max_gpus
    if gpus is not None:
        budget = gpus if budget is None else min(budget, gpus)
    if (nodes is not None and nodes < 1) or budget == 0:
        raise DoesNotFitError(f"GPUPool {name}: no GPUs to place on ({nodes} nodes, budget "
                              f"{budget}); add nodes or raise spec.maxGPUs")
    try:
        return replace(pool_from_resource(pool, nodes), max_gpus=budget)
    except placement_errors.PlacementError as exc:
        raise _typed(exc, f"GPUPool {name}: {exc}") from exc


def pool_budget(pool: GPUPool, max_gpus: int | None = None) -> PoolBudget:
    """The fleet plan's budget of ``pool`` (``max_gpus`` overrides ``spec.maxGPUs``, e.g. the
    GPUs observed on its nodes)."""
    size = pool.spec.warm_pool.size
    return PoolBudget(pool.metadata.name,
                      pool.spec.max_gpus if max_gpus is None else max_gpus,
                      None if size == "auto" else int(size),
                      tuple(pool.spec.warm_pool.preload_models))


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


def quick_template(svc: ModelService, pool: GPUPool) -> ReplicaTemplate:
    """The smallest group of ``pool`` that holds ``svc`` alone (tensor before pipeline,
    honouring a fixed ``spec.parallelism``): what a replica gets before placement has run."""
    model_shape(svc)  # an unknown profile fails here with the list of known ones
    demand = model_demand(svc)
    spec = pool_spec(pool, nodes=1)
    for tp, pp in _shapes(spec.gpus_per_node):
        if not demand.allows(tp, pp):
            continue
        try:
            if demand.min_share(spec.gpu, tp, pp) is not None:
                return ReplicaTemplate(svc.key, pool.metadata.name, tp, pp, MEMORY_LIMIT,
                                       svc.spec.priority)
        except placement_errors.PlacementError:
            continue
    fixed = "" if svc.spec.parallelism.tensor == svc.spec.parallelism.pipeline == "auto" \
        else " with the fixed spec.parallelism"
    raise DoesNotFitError(
        f"ModelService {svc.key}: {demand.model.name} fits no group of at most "
        f"{spec.gpus_per_node} {spec.gpu.name} GPUs on one node of GPUPool {pool.metadata.name}"
        f"{fixed}; use a pool with more or bigger GPUs per node, a shorter "
        "spec.model.maxModelLen, or parallelism auto")


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
    for tp, pp in _shapes(pool.gpus_per_node):
        if demand.min_share(pool.gpu, tp, pp) is not None:
            return tp, pp
    return hosting[0].tp, hosting[0].pp


def plan_pools(services: Sequence[ModelService], pools: Sequence[GPUPool],
               arrival_rates: Mapping[str, float] | None = None,
               nodes: Mapping[str, int] | None = None,
               gpus: Mapping[str, int] | None = None) -> dict[str, PoolPlan]:
    """Place every ModelService on its pool (keys: pool names; pools without models are left
    out). Every model is placed with at least one replica so its shape is known even when it
    may scale to zero. Raises :class:`UnknownPoolError` for a model naming no pool,
    :class:`DoesNotFitError` for one that fits no group, :class:`PlanningError` for duplicate
    ModelService keys."""
    by_name = {p.metadata.name: p for p in pools}
    keys = [s.key for s in services]
    if len(set(keys)) != len(keys):
        raise PlanningError(f"ModelService names must be unique, got {sorted(keys)}")
    grouped: dict[str, list[ModelService]] = {}
    for svc in services:
        if svc.spec.pool not in by_name:
            known = ", ".join(sorted(by_name)) or "none declared"
            raise UnknownPoolError(f"ModelService {svc.key}: spec.pool {svc.spec.pool!r} is not "
                                   f"a GPUPool (known: {known}); declare it or fix the name")
        grouped.setdefault(svc.spec.pool, []).append(svc)
    rates = arrival_rates or {}
    plans = {}
    for name, members in sorted(grouped.items()):
        spec = pool_spec(by_name[name], (nodes or {}).get(name), (gpus or {}).get(name))
        demands = [model_demand(s, rates.get(s.key), max(1, s.spec.scaling.min_replicas))
                   for s in members]
        try:
            placement = plan(spec, demands)
        except placement_errors.PlacementError as exc:
            raise _typed(exc, f"GPUPool {name}: {exc}") from exc
        templates = {}
        for svc, demand in zip(members, demands, strict=True):
            template = _replica_template(placement, demand, spec, svc.spec.priority)
            if template is None:
                raise DoesNotFitError(
                    f"ModelService {svc.key}: placement found no room for it in GPUPool {name} "
                    f"({spec.usable_gpus} usable {spec.gpu.name} GPUs, shared with "
                    f"{len(members) - 1} other models); raise maxGPUs or move models")
            templates[svc.key] = replace(template, pool=name)
        plans[name] = PoolPlan(name, spec, placement, templates)
    return plans
