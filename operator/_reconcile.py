"""One reconcile cycle of a GPUPool: observe -> control -> execute -> status.

The pool's daemon (``handlers.py``) takes a :class:`Snapshot` of kopf's indices (ModelServices,
ServingGroups, pods, nodes) and calls :func:`run_cycle` in a worker thread. Only this cycle
writes a pool's groups and pods, so there is one writer per pool and no races between
handlers. Steps:

1. **observe**: parse the pool and its ModelServices; resolve each servable one (replica
   template from :mod:`._placement`, then :func:`kubeplex.control.resolve_model`, cached per
   spec generation); a spec that cannot be served is Degraded with its typed reason and left
   out, the others go on; read metrics and held requests (:mod:`._observe`); build the
   :class:`~kubeplex.control.FleetState` (groups, free GPUs per node, names in use);
2. **control**: :func:`kubeplex.control.control_cycle`, the same code local mode runs: every
   model's scaling step and the fleet plan, with nodes and group names bound;
3. **execute**: each action becomes an executor call (:mod:`._executor`), run concurrently
   (one job per group at most); untouched groups advance through their lifecycle;
4. **status** of every ModelService and the pool; Events for scale changes, refusals and
   consolidations given up.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubeplex.api import (
    GPUPool,
    GPUPoolSpec,
    ModelService,
    ModelServiceSpec,
    ObjectMeta,
)
from kubeplex.api._types import parse_spec
from kubeplex.control import (
    Action,
    ActionKind,
    ControlMemory,
    DegradedReason,
    FleetPlan,
    FleetState,
    GroupId,
    GroupPhase,
    GroupView,
    ModelDecision,
    ModelKey,
    PlanningError,
    ReplicaTemplate,
    ResolvedModel,
    Shortfall,
    ShortfallCause,
    control_cycle,
    name_of,
    namespace_of,
    pool_budget,
    resolve_model,
)
from kubeplex.errors import KubeplexError
from kubeplex.operator._builders import POOL_LABEL, selector, service_manifest
from kubeplex.operator._executor import CLAIMED_AT, Executor, GroupObj, Hosted
from kubeplex.operator._inference_pool import sync_inference_pool
from kubeplex.operator._kube import KubeApi
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._observe import observe_models
from kubeplex.operator._placement import Templates
from kubeplex.operator._runtime_client import RuntimeClient
from kubeplex.operator._settings import Settings
from kubeplex.operator._status import condition, iso, merge_conditions, ready_string
from kubeplex.placement.planner import MEMORY_LIMIT

__all__ = ["Context", "CycleReport", "NodeState", "Snapshot", "run_cycle"]

log = logging.getLogger("kubeplex.operator")

#: Concurrent API writes of one cycle (shared by all pools; Services go to their own lane).
#: Measured on the test control plane (benchmarks/operator/scale.py): the API server's write
#: rate is flat from 8 to 32 concurrent writers.
WRITE_CONCURRENCY = 16
#: Threads for Service writes (``Context.service_lane``). A Service create with a cluster IP
#: is serialized by the API server's IP allocator: on the test control plane 210-221 creates/s
#: at 2 to 16 concurrent writers, where ConfigMaps go from 511 to 1,104/s
#: (benchmarks/operator/write_rates.py). Two threads reach that rate; on the writer threads,
#: a mass apply's Services held most of them waiting.
SERVICE_THREADS = 2
#: Shortest wait before re-checking a scale-down waiting on Services (with a grace of 0 the
#: next cycle would otherwise follow at once, again and again).
MIN_RECHECK_S = 0.5


@dataclass(frozen=True)
class NodeState:
    name: str
    gpus: int  # allocatable
    foreign_gpus: int = 0  # requested by pods kubeplex does not manage
    ready: bool = True


@dataclass
class Context:
    """The operator's dependencies (kept in kopf's ``memo``)."""

    settings: Settings
    kube: KubeApi
    runtime: RuntimeClient
    metrics: OperatorMetrics
    #: ``KUBEPLEX_AUTOSCALER``: autoscaler settings every ModelService gets (tests, demos).
    overrides: Mapping[str, float] = field(default_factory=dict)
    templates: Templates = field(default_factory=Templates)
    #: Threads for a cycle's independent API writes (the API round trip dominates a cycle).
    writers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(WRITE_CONCURRENCY, "kubeplex-write"))
    #: Pool -> what the control layer remembers between its cycles (in memory: a restarted
    #: operator starts afresh, which only delays a scale-down and allows one more
    #: consolidation try).
    memory: dict[str, ControlMemory] = field(default_factory=dict)
    #: ModelService key -> ((uid, template), resolved): resolved again only when its spec
    #: (a new generation) or its template changes.
    resolved: dict[str, tuple[tuple[str, ReplicaTemplate], ResolvedModel]] = field(
        default_factory=dict)
    #: ModelService key -> (uid, desiredReplicas) this operator last wrote to its status.
    #: kopf's index may still hold the status from before that write when the next cycle
    #: starts; the decision is compared with what was written, so it is recorded once.
    recorded: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: ModelService key -> (uid, whether its Service exists) as this operator last made it:
    #: the cycle creates or deletes a Service only when that changes (and once after a
    #: restart), not every interval.
    services: dict[str, tuple[str, bool]] = field(default_factory=dict)
    #: Threads for the cycles' Service writes (``SERVICE_THREADS``), beside ``writers``.
    service_lane: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(SERVICE_THREADS, "kubeplex-service"))
    #: Pods this process made and their watch has not shown yet (``Executor.pods_made``).
    pods_made: dict[str, float] = field(default_factory=dict)
    #: ModelService key -> (its spec's repr, the spec parsed): parsed again when it changes.
    specs: dict[str, tuple[str, ModelServiceSpec]] = field(default_factory=dict)
    #: Pool -> model -> the cold starts its last cycle saw finish (``Executor.cold_starts``),
    #: handed to the control layer by its next cycle.
    cold_starts: dict[str, dict[ModelKey, list[float]]] = field(default_factory=dict)
    #: New ModelServices whose first status the last cycle left to this one (it started their
    #: first group) -> (replicas, reason) of that decision, written as their lastScale.
    first_scale: dict[str, tuple[int, str]] = field(default_factory=dict)

    def resolve(self, svc: ModelService, template: ReplicaTemplate, gpu: Any) -> ResolvedModel:
        """``svc`` resolved (cached while its uid, spec and template stay the same)."""
        key = (svc.metadata.uid or "", template)
        found = self.resolved.get(svc.key)
        if found is not None and found[0] == key and found[1].spec == svc.spec:
            return found[1]
        model = resolve_model(svc, template, gpu, **self.overrides)
        self.resolved[svc.key] = (key, model)
        return model


@dataclass(frozen=True)
class Snapshot:
    """Plain copies of what kopf's indices held at the start of a cycle."""

    pool: dict[str, Any]
    msvcs: list[dict[str, Any]]
    groups: list[dict[str, Any]]  # this pool's ServingGroups
    nodes: list[dict[str, Any]]
    pods_by_node: Mapping[str, list[dict[str, Any]]]
    pods_by_group: Mapping[tuple[str, str], dict[str, Any]]
    names_taken: Mapping[str, set[str]]  # namespace -> every ServingGroup name there
    triggers: Mapping[str, str] = field(default_factory=dict)  # msvc key -> why now
    refused: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # key -> reason, msg
    lost_nodes: str | None = None  # nodes an older overlapping pool owns (``_conflicts``)


@dataclass(frozen=True)
class CycleReport:
    plan: FleetPlan
    desired: dict[str, int]
    degraded: dict[str, str]
    #: Seconds until the pool should run again, when sooner than the interval (a scale-down
    #: waits for Services to drop a pod); None: the interval.
    recheck_s: float | None = None


def _key(obj: Mapping[str, Any]) -> str:
    m = obj["metadata"]
    return f"{m.get('namespace')}/{m['name']}"


def _selected(node: Mapping[str, Any], selector_: Mapping[str, str]) -> bool:
    labels = node.get("labels") or {}
    return all(labels.get(k) == v for k, v in selector_.items())


def _gpus(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def node_states(snap: Snapshot, spec: GPUPoolSpec,
                devices: Mapping[str, int] | None = None) -> list[NodeState]:
    """The pool's nodes; ``foreign_gpus`` counts every pod on the node except this pool's own
    groups (counted from the groups, pods or not): other workloads and other pools.
    ``devices``: a DRA pool's GPUs per node (from ResourceSlices, ``_dra``) instead of the
    nodes' allocatable extended resource."""
    resource = spec.gpu.resource_name
    pool = snap.pool["metadata"]["name"]
    out = []
    for n in snap.nodes:
        if not _selected(n, spec.node_selector):
            continue
        gpus = (devices.get(n["name"], 0) if devices is not None
                else _gpus((n.get("allocatable") or {}).get(resource, 0)))
        if gpus <= 0:
            continue
        foreign = sum(p["gpus"].get(resource, 0) for p in snap.pods_by_node.get(n["name"], ())
                      if not p["done"] and not (p["managed"]
                                                and p["labels"].get(POOL_LABEL) == pool))
        out.append(NodeState(n["name"], gpus, foreign, bool(n.get("ready"))))
    return out


def _service(ctx: Context, m: Mapping[str, Any]) -> ModelService:
    """``m`` parsed; its spec parsed again only when it changed (parsing every spec every
    cycle was a quarter of a pool cycle's CPU)."""
    text = repr(m["spec"])
    known = ctx.specs.get(_key(m))
    if known is not None and known[0] == text:
        spec = known[1]
    else:
        spec = parse_spec(ModelServiceSpec, m["spec"])
        ctx.specs[_key(m)] = (text, spec)
    return ModelService(ObjectMeta.from_dict(m["metadata"]), spec)


def _view(g: GroupObj, pool: str, load: float) -> GroupView:
    """The control layer's view of one group (model keys, phase, shares, node)."""
    if g.phase == "Draining":
        phase = GroupPhase.DRAINING
    elif g.warm:
        phase = GroupPhase.WARM if g.phase == "Warm" else GroupPhase.WARMING
    else:
        phase = GroupPhase.READY if g.phase == "Ready" else GroupPhase.STARTING
    shares = g.shares
    return GroupView(f"{g.namespace}/{g.name}", pool, g.gpus, phase,
                     tuple(f"{g.namespace}/{m}" for m in g.models),
                     tuple(f"{g.namespace}/{m}" for m in g.preloaded), load, g.created,
                     CLAIMED_AT in g.annotations,
                     None if g.unloading else (g.tp, g.pp),  # changing: no room to judge
                     tuple(shares.get(m, 1.0) for m in g.models),
                     tuple(f"{g.namespace}/{m}" for m in g.loading),
                     g.added_at, g.node or None)


def _free_per_node(ready_nodes: Sequence[NodeState], groups: Iterable[GroupObj]
                   ) -> dict[str, int]:
    """GPUs free on each ready node: allocatable, less other workloads and this pool's
    groups (draining ones still hold theirs)."""
    free = {n.name: n.gpus - n.foreign_gpus for n in ready_nodes}
    for g in groups:
        if g.node in free and g.phase != "Lost":
            free[g.node] -= g.gpus
    return free


def run_cycle(ctx: Context, snap: Snapshot, now: float) -> CycleReport:
    """One pool cycle (blocking; run it in a worker thread)."""
    started = time.perf_counter()
    pool_name = snap.pool["metadata"]["name"]
    pool = GPUPool(ObjectMeta.from_dict(snap.pool["metadata"]),
                   parse_spec(GPUPoolSpec, snap.pool["spec"]))
    gpu = pool.spec.gpu.spec()
    driver = pool.spec.gpu.dra_driver  # DRA: the nodes' GPUs are their published devices
    nodes = node_states(snap, pool.spec, (ctx.kube.device_counts(driver) or {})
                        if driver is not None else None)
    ready_nodes = [n for n in nodes if n.ready]
    objs = {f"{g['metadata']['namespace']}/{g['metadata']['name']}": GroupObj.of(
        g, snap.pods_by_group.get((g["metadata"]["namespace"], g["metadata"]["name"])),
        ctx.settings, now) for g in snap.groups}

    # ---- observe: parse, resolve (templates from placement), metrics -------------------------
    degraded: dict[str, tuple[str, str]] = {}
    services: dict[str, ModelService] = {}
    live = [m for m in snap.msvcs if not m["metadata"].get("deletionTimestamp")]
    for m in live:
        try:
            svc = _service(ctx, m)
            services[svc.key] = svc
        except (KubeplexError, KeyError, TypeError, ValueError) as e:
            degraded[_key(m)] = (DegradedReason.INVALID_SPEC, f"{e}; fix the spec")
    for key, refusal in snap.refused.items():  # e.g. a duplicate servedName: not served
        if services.pop(key, None) is not None:
            degraded[key] = refusal
    node_gpus = sum(n.gpus - n.foreign_gpus for n in ready_nodes)
    t0 = time.perf_counter()
    templates, refused = ctx.templates.resolve(pool, list(services.values()), len(ready_nodes),
                                               node_gpus)
    ctx.metrics.placement_seconds.observe(time.perf_counter() - t0)
    for key, error in refused.items():
        degraded[key] = (error.reason, str(error))
    models: dict[ModelKey, ResolvedModel] = {}
    for key, template in templates.items():
        try:
            models[key] = ctx.resolve(services[key], template, gpu)
        except PlanningError as e:
            degraded[key] = (e.reason, str(e))
    budget_gpus = node_gpus if pool.spec.max_gpus is None else min(node_gpus,
                                                                    pool.spec.max_gpus)
    budget = pool_budget(pool, budget_gpus)
    # The gateway: read at most once per half interval for all pools (RuntimeClient caches).
    held = ctx.runtime.held_requests(now) if models else None
    if held is not None and held.problem:
        log.warning("pool %s: %s; %s", pool_name, held.problem, held.caveat)
    inputs, load = observe_models(ctx.settings, ctx.runtime, models, objs, snap.triggers, held,
                                  ctx.cold_starts.pop(pool_name, {}), now)
    fleet = FleetState(  # a lost group holds nothing: its replicas are replaced
        groups=tuple(_view(g, pool_name, load.get(gid, 0.0)) for gid, g in objs.items()
                     if g.phase != "Lost"),
        models=models, budgets=(budget,), present={_key(m) for m in live},
        nodes={pool_name: _free_per_node(ready_nodes, objs.values())},
        taken=snap.names_taken)

    # ---- control -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    result = control_cycle(fleet, inputs, ctx.memory.get(pool_name, ControlMemory()), now)
    ctx.memory[pool_name] = result.memory
    ctx.metrics.placement_seconds.observe(time.perf_counter() - t0)
    ctx.metrics.evaluations.labels(trigger="timer").inc(
        sum(1 for k in models if k not in snap.triggers))
    ctx.metrics.evaluations.labels(trigger="alert").inc(
        sum(1 for k in models if k in snap.triggers))
    plan = result.plan
    uids = {_key(m): str(m["metadata"].get("uid", "")) for m in snap.msvcs}
    for key, why in plan.gave_up.items():
        ctx.kube.event("ModelService", namespace_of(key), name_of(key), uids.get(key, ""),
                       "ConsolidationGivenUp", why, warning=True)

    # ---- execute -----------------------------------------------------------------------------
    ex = Executor(ctx.settings, ctx.kube, ctx.runtime, ctx.metrics, pool_name, pool.spec,
                  ctx.pods_made)
    jobs = _plan_jobs(ex, plan, objs, {k: Hosted(m, uids.get(k, "")) for k, m in models.items()},
                      str(snap.pool["metadata"].get("uid", "")), now)
    service_jobs = _service_jobs(ctx, live, snap.refused, degraded)

    # ---- status (written with the plan's writes: each job touches one object) ---------------
    # A new ModelService whose first group this cycle starts would get a first status
    # ("0 of 1 ready", nothing placed) stale at once: the next cycle, woken by the new group,
    # writes it with the group placed and this decision as its lastScale (one write less per
    # ModelService, in a mass apply the API server's busiest moment). Once only: a start that
    # keeps failing does not hold the status back; a refused or short model is reported now.
    # ``ctx.first_scale`` is shared by the pools' concurrent cycles: each takes and puts back
    # only its own ModelServices' entries.
    starting = {m for a in plan.actions if a.kind is ActionKind.START for m in a.models}
    first_scale = {k: v for m in live
                   if (v := ctx.first_scale.pop(k := _key(m), None)) is not None}
    deferred = {k: (d.desired, d.reason) for m in live
                if (k := _key(m)) in starting and not m.get("status") and k not in degraded
                and plan.shortfall_of(k) is None and k not in first_scale
                and (d := result.decisions.get(k)) is not None}
    ctx.first_scale.update(deferred)
    replicas: dict[str, tuple[int, int, int]] = {}
    stages: dict[str, tuple[tuple[str, int], ...]] = {}
    hosting, warm_in = _by_model(objs.values())
    for m in live:
        mkey = _key(m)
        ns, name = mkey.split("/", 1)
        mine = hosting.get(mkey, [])
        warm = warm_in.get(ns, 0)
        found = result.decisions.get(mkey)
        serving, ready_count = _replica_counts(name, mine)
        replicas[mkey] = (found.desired if found else 0, ready_count, warm)
        if found:
            stages[mkey] = found.decision.changes()
        if mkey in deferred:
            continue
        jobs.append(functools.partial(_model_status, ctx, m, serving, ready_count, found,
                                      degraded.get(mkey), plan.shortfall_of(mkey), warm, now,
                                      first_scale.get(mkey)))
    ctx.metrics.export_services(pool_name, {
        key: (model.served_name, model.spec) for key, model in models.items()}, replicas, stages)
    jobs.append(functools.partial(_pool_status, ctx, snap.pool, ready_nodes,
                                  list(objs.values()), budget_gpus, plan.messages,
                                  ctx.templates.note(pool_name), now, snap.lost_nodes))
    _run_all(ctx, jobs, service_jobs)
    if ex.cold_starts:
        ctx.cold_starts[pool_name] = ex.cold_starts

    elapsed = time.perf_counter() - started
    if plan.actions:
        log.info("pool %s: %d models, %d actions, %d jobs in %.2f s", pool_name, len(models),
                 len(plan.actions), len(jobs), elapsed)
    ctx.metrics.reconciles.labels(pool=pool_name).inc()
    ctx.metrics.reconcile_seconds.labels(pool=pool_name).observe(elapsed)
    return CycleReport(plan, {k: d.desired for k, d in result.decisions.items()},
                       {k: v[1] for k, v in degraded.items()},
                       recheck_s=(max(ctx.settings.endpoint_grace_s, MIN_RECHECK_S)
                                  if ex.waiting_on_services else None))


def _plan_jobs(ex: Executor, plan: FleetPlan, objs: Mapping[GroupId, GroupObj],
               hosted: Mapping[ModelKey, Hosted], pool_uid: str, now: float
               ) -> list[Callable[[], None]]:
    """One executor job per group the plan touches (adds and unloads of a group in one
    change), then a lifecycle step for every other group."""
    jobs: list[Callable[[], None]] = []
    touched: set[GroupId] = set()
    changes: dict[GroupId, tuple[list[Hosted], list[str], list[str]]] = {}
    for action in plan.actions:
        gid = action.group or ""
        h = hosted.get(action.model) if action.model else None
        if action.kind in (ActionKind.DRAIN, ActionKind.STOP):
            if gid in objs and gid not in touched:
                jobs.append(functools.partial(ex.drain, objs[gid], action.reason, now))
                touched.add(gid)
                changes.pop(gid, None)
        elif action.kind in (ActionKind.ADD, ActionKind.UNLOAD) and action.model:
            if gid not in objs or gid in touched:
                continue
            add, remove, why = changes.setdefault(gid, ([], [], []))
            if action.kind is ActionKind.ADD and h is not None:
                add.append(h)
            elif action.kind is ActionKind.UNLOAD:
                remove.append(name_of(action.model))
            why.append(action.reason)
        elif action.kind is ActionKind.CLAIM and h is not None and gid in objs \
                and gid not in touched:
            jobs.append(functools.partial(ex.claim, objs[gid], [h], action.reason, now))
            touched.add(gid)
        elif action.kind in (ActionKind.START, ActionKind.START_WARM) and h is not None:
            jobs.append(_start_job(ex, action, h, hosted, pool_uid))
    for gid, (add, remove, why) in changes.items():
        if add or remove:
            jobs.append(functools.partial(ex.change, objs[gid], add, remove, "; ".join(why),
                                          now))
            touched.add(gid)
    for gid, g in objs.items():
        if gid not in touched:
            mine = [h for m in g.models if (h := hosted.get(f"{g.namespace}/{m}"))]
            jobs.append(functools.partial(ex.advance, g, mine, now))
    return jobs


def _start_job(ex: Executor, action: Action, h: Hosted, hosted: Mapping[ModelKey, Hosted],
               pool_uid: str) -> Callable[[], None]:
    """The job creating the group the plan bound for ``action`` (its node and name)."""
    others = [x for m in action.with_models if (x := hosted.get(m)) is not None]
    return functools.partial(ex.start, namespace_of(action.group or ""),
                             name_of(action.group or ""), action.node or "",
                             action.tp, action.pp, [h, *others],
                             action.kind is ActionKind.START_WARM, pool_uid)


def _service_jobs(ctx: Context, live: Iterable[Mapping[str, Any]],
                  refused: Mapping[str, tuple[str, str]],
                  degraded: Mapping[str, tuple[str, str]]) -> list[Callable[[], None]]:
    """Each served ModelService gets its Service (same name, selecting its pods); a refused
    one (a duplicate servedName, or Degraded: a spec that cannot be served) gets none: the
    Service the operator made for it earlier is deleted (only one it owns), and made again
    once it is served."""
    jobs: list[Callable[[], None]] = []
    for m in live:
        key, uid = _key(m), str(m["metadata"].get("uid", ""))
        want = key not in refused and key not in degraded
        if ctx.services.get(key) == (uid, want):
            continue
        jobs.append(functools.partial(_sync_service, ctx, key, uid, want))
    return jobs


def _sync_service(ctx: Context, key: str, uid: str, want: bool) -> None:
    ns, name = key.split("/", 1)
    if want:
        ctx.kube.create(service_manifest(ns, name, uid, ctx.settings.runtime_port))
    else:
        ctx.kube.delete_owned_service(ns, name, uid)
    sync_inference_pool(ctx.kube, ctx.settings, ns, name, uid, want)  # opt-in, beside it
    ctx.services[key] = (uid, want)


def _run_all(ctx: Context, jobs: Sequence[Callable[[], None]],
             service_jobs: Sequence[Callable[[], None]]) -> None:
    """Run independent API writes on the context's writer threads, Service writes in its
    Service lane; re-raise the first error once all have finished (a failed write is retried
    by the next cycle)."""
    futures = [ctx.service_lane.submit(job) for job in service_jobs]
    futures += [ctx.writers.submit(job) for job in jobs]
    errors = [e for f in futures if (e := f.exception()) is not None]
    if errors:
        raise errors[0]


#: The Scaling condition's reason (and Event) for each kind of shortfall of a model.
SHORTFALL_REASONS = {ShortfallCause.GPU_BUDGET: "InsufficientGPUs",
                     ShortfallCause.NO_NODE: "InsufficientGPUs",
                     ShortfallCause.MOVE_BUDGET: "WaitingForMoves"}


def _observed(decision: ModelDecision, now: float) -> dict[str, Any] | None:
    """``status.observed``: what the metrics said at this decision."""
    sig = decision.signals
    if sig is None:
        return None
    observed: dict[str, Any] = {"queue": round(sig.waiting, 3),
                                "arrivalRate": round(sig.arrival_rate, 3), "time": iso(now)}
    if sig.ttft_quantile is not None:
        observed["ttftSeconds"] = round(sig.ttft_quantile, 4)
    if sig.kv_usage is not None:
        observed["kvCacheUsage"] = round(sig.kv_usage, 4)
    if decision.cold_starts_measured:
        observed["coldStartSeconds"] = round(decision.cold_start_s, 1)
    return observed


def _model_status(ctx: Context, m: Mapping[str, Any], serving: Sequence[GroupObj], ready: int,
                  decision: ModelDecision | None, degraded: tuple[str, str] | None,
                  shortfall: Shortfall | None, warm: int, now: float,
                  first_scale: tuple[int, str] | None = None) -> None:
    """Write ``m``'s status if it changed. ``first_scale``: (replicas, reason) of the cycle
    that started a new ModelService's first group and left its first status to this one."""
    meta, old = m["metadata"], m.get("status") or {}
    name, ns, gen = meta["name"], meta["namespace"], meta.get("generation")
    desired = decision.desired if decision else 0
    old_conds = old.get("conditions") or ()
    conds = []
    if degraded:
        conds.append(condition("Degraded", True, degraded[0], degraded[1], gen))
        conds.append(condition("Ready", False, degraded[0], "cannot be served; see Degraded",
                               gen))
    else:
        conds.append(condition("Degraded", False, "AsExpected", "the spec can be served", gen))
        ok = (ready >= desired and ready >= 1) or desired == 0
        conds.append(condition(
            "Ready", ok, ("ScaledToZero" if desired == 0 else "ReplicasReady") if ok
            else "ReplicasStarting", f"{ready} of {desired} replicas ready", gen))
    short = SHORTFALL_REASONS.get(shortfall.cause) if shortfall is not None else None
    if shortfall is not None and short is not None:
        conds.append(condition("Scaling", True, short, shortfall.message, gen))
    elif decision is not None and len(serving) != desired:
        conds.append(condition("Scaling", True, "Scaling",
                               f"{len(serving)} -> {desired} replicas: {decision.reason}", gen))
    else:
        conds.append(condition("Scaling", False, "Stable",
                               decision.reason if decision else "not evaluated", gen))
    status: dict[str, Any] = {
        "replicas": len(serving), "readyReplicas": ready, "desiredReplicas": desired,
        "ready": ready_string(ready, desired), "selector": selector(name),
        "warmReplicas": warm,
        "placement": [{"group": g.name, "node": g.node, "tensorParallel": g.tp,
                       "pipelineParallel": g.pp, "memoryShare": g.shares.get(name, MEMORY_LIMIT),
                       "phase": "Loading" if name in g.loading else g.phase}
                      for g in sorted(serving, key=lambda g: g.name)],
        "observedGeneration": gen,
        "sloStatus": str(decision.slo) if decision else "Unknown",
    }
    observed = _observed(decision, now) if decision else None
    if observed:
        status["observed"] = observed
    key, uid = f"{ns}/{name}", str(meta.get("uid", ""))
    written = ctx.recorded.get(key)
    before = written[1] if written and written[0] == uid else old.get("desiredReplicas")
    if decision and before is not None and before != desired:
        status["lastScale"] = {"time": iso(now), "from": before, "to": desired,
                               "reason": decision.reason[:1024]}
        ctx.metrics.decisions.labels(direction="up" if desired > before else "down").inc()
        ctx.kube.event("ModelService", ns, name, meta["uid"], "Scaled",
                       f"{before} -> {desired}: {decision.reason}")
    elif first_scale is not None and not old:
        status["lastScale"] = {"time": iso(now), "from": 0, "to": first_scale[0],
                               "reason": first_scale[1][:1024]}
    status["conditions"] = merge_conditions(old_conds, conds, now)
    if degraded and not _has(old_conds, "Degraded", degraded[0]):
        ctx.kube.event("ModelService", ns, name, meta["uid"], degraded[0], degraded[1],
                       warning=True)
    if shortfall is not None and short is not None and not _has(old_conds, "Scaling", short):
        ctx.kube.event("ModelService", ns, name, meta["uid"], short, shortfall.message,
                       warning=True)
    if _changed(old, status):
        ctx.kube.patch("ModelService", ns, name, {"status": status}, status=True)
    ctx.recorded[key] = (uid, desired)


def _has(conds: Iterable[Mapping[str, Any]], kind: str, reason: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" and c.get("reason") == reason
               for c in conds)


def _by_model(groups: Iterable[GroupObj]) -> tuple[dict[str, list[GroupObj]], dict[str, int]]:
    """The groups hosting each model (by key) and the warm groups of each namespace."""
    hosting: dict[str, list[GroupObj]] = {}
    warm: dict[str, int] = {}
    for g in groups:
        for name in g.models:
            hosting.setdefault(f"{g.namespace}/{name}", []).append(g)
        if g.warm:
            warm[g.namespace] = warm.get(g.namespace, 0) + 1
    return hosting, warm


def _replica_counts(name: str, groups: Sequence[GroupObj]) -> tuple[list[GroupObj], int]:
    """A ModelService's replicas (its groups not draining) and how many serve it now."""
    serving = [g for g in groups if g.phase not in ("Draining", "Lost")]
    return serving, sum(1 for g in serving if g.phase == "Ready" and name not in g.loading)


def _pool_status(ctx: Context, pool: Mapping[str, Any], ready_nodes: Sequence[NodeState],
                 groups: Iterable[GroupObj], total: int, messages: Sequence[str], note: str,
                 now: float, lost_nodes: str | None = None) -> None:
    old = pool.get("status") or {}
    gen = pool["metadata"].get("generation")
    groups = [g for g in groups if g.phase != "Lost"]
    warm = [g for g in groups if g.warm]
    allocated = sum(g.gpus for g in groups if not g.warm)
    warm_gpus = sum(g.gpus for g in warm)
    conds = [condition("Ready", bool(ready_nodes), "NodesReady" if ready_nodes else "NoNodes",
                       f"{len(ready_nodes)} ready node(s) with GPUs match the nodeSelector"
                       + (f"; {note}" if note else "") if ready_nodes else
                       "no ready node with GPUs matches spec.nodeSelector; label nodes or fix "
                       "the selector", gen),
             condition("Degraded", bool(messages), "InsufficientGPUs" if messages
                       else "AsExpected", "; ".join(messages) or "every plan fits", gen),
             condition("Overlapping", bool(lost_nodes), "NodesOfOlderPool" if lost_nodes
                       else "NoOverlap", lost_nodes or "no other pool selects its nodes", gen)]
    if lost_nodes and not _has(old.get("conditions") or (), "Overlapping", "NodesOfOlderPool"):
        ctx.kube.event("GPUPool", None, pool["metadata"]["name"],
                       str(pool["metadata"].get("uid", "")), "Overlapping", lost_nodes,
                       warning=True)
    free = max(0, total - allocated - warm_gpus)
    claimed = sum(1 for g in groups if g.phase == "Loading" and CLAIMED_AT in g.annotations)
    ctx.metrics.export_pool(pool["metadata"]["name"],
                            {"total": total, "allocated": allocated, "warm": warm_gpus,
                             "free": free}, {"idle": len(warm), "claimed": claimed})
    status = {"nodes": len(ready_nodes), "totalGPUs": total, "allocatedGPUs": allocated,
              "warmGPUs": warm_gpus, "freeGPUs": free,
              "warmPods": len(warm), "groups": len(groups) - len(warm),
              "observedGeneration": gen,
              "conditions": merge_conditions(old.get("conditions"), conds, now)}
    if _changed(old, status):
        ctx.kube.patch("GPUPool", None, pool["metadata"]["name"], {"status": status},
                       status=True)


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(old.get(k) != v for k, v in new.items())
