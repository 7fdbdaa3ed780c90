"""One reconcile cycle of a GPUPool: observe -> decide -> plan -> execute -> status.

The pool's daemon (``handlers.py``) takes a :class:`Snapshot` of kopf's indices (ModelServices,
ServingGroups, pods, nodes) and calls :func:`run_cycle` in a worker thread. Only this cycle
writes a pool's groups and pods, so there is one writer per pool and no races between
handlers. Steps:

1. parse the pool and its ModelServices; a spec that cannot be served is Degraded (with how
   to fix it) and left out, the others go on;
2. per ModelService: signals and the autoscaler's desired replicas (:mod:`._autoscale`);
3. the fleet plan (:func:`kubeplex.operator.planning.fleet_plan`): start (several co-located
   models in one group where placement packs them) / claim warm / add to a running group /
   unload from a shared group / drain, bounded by the pool's free GPUs and
   :data:`MAX_MOVES` in-place changes per cycle. Co-location stays within a namespace (a pod
   joins the Services of its namespace only): placement gets the namespace as each model's
   ``colocation_key`` and never pairs models of different ones;
4. the executor (:mod:`._executor`) applies it, then advances every group's lifecycle
   (pod created, ready, warm claim loading, draining, deleted);
5. status of every ModelService, ServingGroup and the pool; Events for scale changes.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from kubeplex.api import (
    GPUPool,
    GPUPoolSpec,
    ModelService,
    ModelServiceSpec,
    ObjectMeta,
)
from kubeplex.api._types import parse_spec
from kubeplex.errors import KubeplexError
from kubeplex.operator._autoscale import Evaluation, Scaler
from kubeplex.operator._builders import (
    POOL_LABEL,
    HostedModel,
    runtime_model,
    selector,
    service_manifest,
)
from kubeplex.operator._executor import CLAIMED_AT, Executor, GroupObj, Hosted
from kubeplex.operator._inference_pool import sync_inference_pool
from kubeplex.operator._kube import KubeApi
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._placement import Templates
from kubeplex.operator._runtime_client import RuntimeClient
from kubeplex.operator._settings import Settings
from kubeplex.operator._status import condition, iso, merge_conditions, ready_string
from kubeplex.operator.errors import UnservableError
from kubeplex.operator.planning import (
    CONSOLIDATION_RETRY_S,
    Action,
    ActionKind,
    FleetPlan,
    GroupPhase,
    GroupView,
    ModelTarget,
    fleet_plan,
    model_shape,
    observed_fleet,
    pool_budget,
)

__all__ = ["Context", "CycleReport", "NodeState", "Snapshot", "group_name", "run_cycle"]

log = logging.getLogger("kubeplex.operator")

#: A replica alone on its group gets vLLM's default --gpu-memory-utilization.
MEMORY_SHARE = 0.9
#: Concurrent API writes of one cycle (shared by all pools).
WRITE_CONCURRENCY = 8
#: Object names used as DNS labels: at most 63 characters.
DNS_LABEL_MAX = 63
#: Running groups one cycle changes in place (models added or unloaded): bounded disruption.
MAX_MOVES = 4
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
    scaler: Scaler = field(default_factory=Scaler)
    templates: Templates = field(default_factory=Templates)
    #: Threads for a cycle's independent API writes (the API round trip dominates a cycle).
    writers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(WRITE_CONCURRENCY, "kubeplex-write"))
    #: ModelService key -> (uid, desiredReplicas) this operator last wrote to its status.
    #: kopf's index may still hold the status from before that write when the next cycle
    #: starts; the decision is compared with what was written, so it is recorded once.
    recorded: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: ModelService key -> (uid, whether its Service exists) as this operator last made it:
    #: the cycle creates or deletes a Service only when that changes (and once after a
    #: restart), not every interval.
    services: dict[str, tuple[str, bool]] = field(default_factory=dict)
    #: ModelService key -> when its consolidation was last given up (``fleet_plan(gave_up=)``;
    #: lost on restart, which allows one more try).
    gave_up: dict[str, float] = field(default_factory=dict)


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


def _service(m: Mapping[str, Any]) -> ModelService:
    return ModelService(ObjectMeta.from_dict(m["metadata"]),
                        parse_spec(ModelServiceSpec, m["spec"]))


def _planning_view(g: GroupObj, pool: str, load: float) -> GroupView:
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
                     g.added_at)


def _best_fit(free: dict[str, int], gpus: int) -> str | None:
    fitting = [n for n, f in free.items() if f >= gpus]
    if not fitting:
        return None
    node = min(fitting, key=lambda n: (free[n], n))  # best fit keeps big holes for big groups
    free[node] -= gpus
    return node


def group_name(base: str, taken: set[str]) -> str:
    """``<base>-<n>`` with the lowest free ``n``, cut to a DNS label (deterministic, so a
    re-run after a crash finds the object it made instead of making another)."""
    n = 0
    while True:
        suffix = f"-{n}"
        head = re.sub(r"[^a-z0-9-]", "-", base.lower())[: DNS_LABEL_MAX - len(suffix)]
        name = head.rstrip("-") + suffix
        if name not in taken:
            taken.add(name)
            return name
        n += 1


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
    objs = {(g["metadata"]["namespace"], g["metadata"]["name"]): GroupObj.of(
        g, snap.pods_by_group.get((g["metadata"]["namespace"], g["metadata"]["name"])),
        ctx.settings) for g in snap.groups}

    # ---- parse; templates (placement) ------------------------------------------------------
    degraded: dict[str, tuple[str, str]] = {}
    services: dict[str, ModelService] = {}
    live = [m for m in snap.msvcs if not m["metadata"].get("deletionTimestamp")]
    for m in live:
        try:
            svc = _service(m)
            services[svc.key] = svc
        except (KubeplexError, KeyError, TypeError, ValueError) as e:
            degraded[_key(m)] = ("InvalidSpec", f"{e}; fix the spec")
    for key, refusal in snap.refused.items():  # e.g. a duplicate servedName: not served
        if services.pop(key, None) is not None:
            degraded[key] = refusal
    node_gpus = sum(n.gpus - n.foreign_gpus for n in ready_nodes)
    t0 = time.perf_counter()
    templates, bad = ctx.templates.resolve(pool, list(services.values()), len(ready_nodes),
                                           node_gpus)
    ctx.metrics.placement_seconds.observe(time.perf_counter() - t0)
    for key, message in bad.items():
        degraded[key] = ("UnknownProfile" if "profile" in message else "DoesNotFit", message)
    for key in list(templates):
        try:
            _check_source(services[key])
        except UnservableError as e:
            degraded[key] = (e.reason, e.message)
            del templates[key]

    # ---- observe + decide (autoscaler) -------------------------------------------------------
    budget_gpus = node_gpus if pool.spec.max_gpus is None else min(node_gpus,
                                                                    pool.spec.max_gpus)
    budget = replace(pool_budget(pool), max_gpus=budget_gpus)
    load: dict[tuple[str, str], float] = {}
    views = [_planning_view(g, pool_name, load.get(k, 0.0)) for k, g in objs.items()]
    evaluations: dict[str, Evaluation] = {}
    targets: dict[str, ModelTarget] = {}
    # The gateway: read at most once per half interval for all pools (RuntimeClient caches).
    held = ctx.runtime.held_requests(now) if templates else None
    if held is not None and held.problem:
        log.warning("pool %s: %s; %s", pool_name, held.problem, held.caveat)
    for key, template in templates.items():
        svc = services[key]
        ns, name = key.split("/", 1)
        ready = [g for g in objs.values() if g.namespace == ns and name in g.models
                 and g.phase == "Ready"]
        served = HostedModel(name, svc.spec, MEMORY_SHARE).served_name
        if ctx.settings.scrape == "pods":
            texts = [(g.name, text) for g in ready if g.endpoints.router
                     and (text := ctx.runtime.metrics(g.endpoints.router)) is not None]
            ctx.scaler.record(key, served, texts, now)
        elif ctx.settings.scrape == "prometheus" and ready:
            scrape = ctx.runtime.prometheus(ctx.settings.prometheus_url, served, ns, now)
            if scrape is not None:
                ctx.scaler.record_scrape(key, scrape)
        trigger = snap.triggers.get(key)
        fleet = observed_fleet(views, key, budget)
        try:
            ev = ctx.scaler.evaluate(svc, template, gpu, fleet, trigger, now, held)
        except KubeplexError as e:
            degraded[key] = ("InvalidSpec", f"{e}; fix the spec")
            continue
        evaluations[key] = ev
        rate = float((ev.observed or {}).get("arrivalRate")
                     or svc.spec.workload.requests_per_second)
        targets[key] = ModelTarget(key, ev.desired, ev.warm, ev.reason, rate)
        ctx.metrics.evaluations.labels(trigger="alert" if trigger else "timer").inc()

    # ---- plan ---------------------------------------------------------------------------------
    t0 = time.perf_counter()
    # Placement pairs models of one namespace only (colocation_key): a pod joins the
    # Services of its own namespace.
    usable = {k: t for k, t in templates.items() if k in targets}
    plan = fleet_plan(views, targets, usable, [budget], MAX_MOVES, now,
                      {k: t for k, t in ctx.gave_up.items() if k in usable})
    for key in plan.gave_up:
        ctx.gave_up[key] = now
        reason = next((a.reason for a in plan.actions if key in a.reason),
                      f"consolidation of {key} given up")
        ns, name = key.split("/", 1)
        ctx.kube.event("ModelService", ns, name, _uid(snap, key), "ConsolidationGivenUp",
                       reason, warning=True)
    for key in [k for k, t in ctx.gave_up.items() if now - t >= CONSOLIDATION_RETRY_S]:
        del ctx.gave_up[key]
    ctx.metrics.placement_seconds.observe(time.perf_counter() - t0)

    # ---- execute ------------------------------------------------------------------------------
    ex = Executor(ctx.settings, ctx.kube, ctx.runtime, ctx.metrics, pool_name, pool.spec)
    free = {n.name: n.gpus - n.foreign_gpus for n in ready_nodes}
    for g in objs.values():
        if g.node in free:
            free[g.node] -= g.gpus
    taken = {ns: set(names) for ns, names in snap.names_taken.items()}
    messages = list(plan.messages)

    def hosted(key: str) -> Hosted | None:
        svc, template = services.get(key), usable.get(key)
        if svc is None or template is None:
            return None
        shape = model_shape(svc)
        return Hosted(HostedModel(svc.metadata.name, svc.spec, template.memory_share),
                      template, shape.name, _uid(snap, key))

    # Decisions (nodes, names) are made here in order; the API writes then run concurrently
    # (one job per group at most, so no two jobs touch the same object).
    jobs: list[Callable[[], None]] = _service_jobs(ctx, live, snap.refused, degraded)
    touched: set[tuple[str, str]] = set()
    # Deleted ModelServices: the plan knows nothing of them. A group left with none of its
    # models is drained; a shared group that keeps others unloads the deleted ones.
    present = {_key(m) for m in live}
    changes: dict[tuple[str, str], tuple[list[Hosted], list[str], list[str]]] = {}
    for k, g in objs.items():
        gone = [m for m in g.models if f"{k[0]}/{m}" not in present]
        if any(f"{k[0]}/{m}" not in present for m in g.preloaded):
            # A standby preloaded with a deleted model: stopped (the delete waits for it).
            jobs.append(functools.partial(ex.drain, g, f"{', '.join(g.preloaded)} deleted",
                                          now))
            touched.add(k)
        elif g.models and len(gone) == len(g.models):
            jobs.append(functools.partial(ex.drain, g, f"{', '.join(g.models)} deleted", now))
            touched.add(k)
        elif gone and g.phase != "Draining":
            changes[k] = ([], gone, [f"{', '.join(gone)} deleted"])
    for action in plan.actions:
        h = hosted(action.model) if action.model else None
        gk = _split(action.group)
        if action.kind in (ActionKind.DRAIN, ActionKind.STOP):
            if gk in objs and gk not in touched:
                jobs.append(functools.partial(ex.drain, objs[gk], action.reason, now))
                touched.add(gk)
                changes.pop(gk, None)
        elif action.kind in (ActionKind.ADD, ActionKind.UNLOAD) and action.model:
            if gk not in objs or gk in touched or gk[0] != _split(action.model)[0]:
                continue
            add, remove, why = changes.setdefault(gk, ([], [], []))
            if action.kind is ActionKind.ADD and h is not None:
                add.append(h)
            elif action.kind is ActionKind.UNLOAD:
                remove.append(_split(action.model)[1])
            why.append(action.reason)
        elif action.kind is ActionKind.CLAIM and h is not None:
            if gk in objs and gk not in touched and gk[0] == _split(action.model)[0]:
                # Services are per namespace: only a standby of the model's namespace fits.
                jobs.append(functools.partial(ex.claim, objs[gk], [h], action.reason, now))
                touched.add(gk)
            elif job := _cold(ex, h, action, free, taken, messages, snap, pool_name):
                jobs.append(job)
        elif action.kind in (ActionKind.START, ActionKind.START_WARM) and h is not None:
            ns = _split(action.model)[0]
            extra = [x for m in action.with_models
                     if _split(m)[0] == ns and (x := hosted(m)) is not None]
            if job := _cold(ex, h, action, free, taken, messages, snap, pool_name, extra):
                jobs.append(job)
    for k, (add, remove, why) in changes.items():
        if k not in touched and (add or remove):
            jobs.append(functools.partial(ex.change, objs[k], add, remove, "; ".join(why), now))
            touched.add(k)
    for k, g in objs.items():
        if k not in touched:
            jobs.append(functools.partial(
                ex.advance, g, [h for m in g.models if (h := hosted(f"{k[0]}/{m}"))], now))
    _run_all(ctx, jobs)

    # ---- status -------------------------------------------------------------------------------
    statuses: list[Callable[[], None]] = []
    replicas: dict[str, tuple[int, int, int]] = {}
    for m in live:
        mkey = _key(m)
        ns, name = mkey.split("/", 1)
        mine = [g for g in objs.values() if g.namespace == ns and name in g.models]
        warm = sum(1 for g in objs.values() if g.warm and g.namespace == ns)
        found = evaluations.get(mkey)
        serving, ready_count = _replica_counts(name, mine)
        replicas[mkey] = (found.desired if found else 0, ready_count, warm)
        short = next((msg for msg in messages if f"model {mkey} " in msg), None)
        statuses.append(functools.partial(_model_status, ctx, m, serving, ready_count, found,
                                          degraded.get(mkey), short, warm, now))
    ctx.metrics.export_services(pool_name, {
        key: (HostedModel(key.split("/", 1)[1], services[key].spec, MEMORY_SHARE).served_name,
              services[key].spec) for key in targets}, replicas)
    statuses.append(functools.partial(_pool_status, ctx, snap.pool, ready_nodes,
                                      list(objs.values()), budget_gpus, messages,
                                      ctx.templates.note(pool_name), now, snap.lost_nodes))
    _run_all(ctx, statuses)

    elapsed = time.perf_counter() - started
    ctx.metrics.reconciles.labels(pool=pool_name).inc()
    ctx.metrics.reconcile_seconds.labels(pool=pool_name).observe(elapsed)
    return CycleReport(plan, {k: e.desired for k, e in evaluations.items()},
                       {k: v[1] for k, v in degraded.items()},
                       recheck_s=(max(ctx.settings.endpoint_grace_s, MIN_RECHECK_S)
                                  if ex.waiting_on_services else None))


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


def _split(group_id: str | None) -> tuple[str, str]:
    ns, _, name = (group_id or "/").partition("/")
    return ns, name


def _uid(snap: Snapshot, key: str) -> str:
    return next((str(m["metadata"].get("uid", "")) for m in snap.msvcs if _key(m) == key), "")


def _check_source(svc: ModelService) -> None:
    """Model and adapter sources the runtime cannot load become Degraded before any pod
    starts (``runtime_model`` raises UnservableError naming the field)."""
    runtime_model(HostedModel(svc.metadata.name, svc.spec, MEMORY_SHARE), 1, 1, "")


def _run_all(ctx: Context, jobs: Sequence[Callable[[], None]]) -> None:
    """Run independent API writes on the context's writer threads; re-raise the first error
    once all have finished (a failed write is retried by the next cycle)."""
    futures = [ctx.writers.submit(job) for job in jobs]
    errors = [e for f in futures if (e := f.exception()) is not None]
    if errors:
        raise errors[0]


def _cold(ex: Executor, h: Hosted, action: Action, free: dict[str, int],
          taken: dict[str, set[str]], messages: list[str], snap: Snapshot,
          pool: str, extra: Sequence[Hosted] = ()) -> Callable[[], None] | None:
    """The job starting a group for ``action`` (``h``, and the models co-located with it in
    ``extra``) on the best-fitting node (chosen now), or None with a message saying why no
    node fits."""
    gpus = h.template.gpus
    node = _best_fit(free, gpus)
    ns = _split(h.template.model)[0]
    warm = action.kind is ActionKind.START_WARM
    if node is None:
        largest = max(free.values(), default=0)
        messages.append(
            f"GPUPool {pool}: model {h.template.model} needs a node with {gpus} free GPUs for "
            f"{'a warm standby' if warm else 'a replica'}; the largest free block is "
            f"{max(0, largest)}; add nodes to the pool or free GPUs on one node")
        return None
    base = f"warm-{pool}" if warm else "-".join(x.model.name for x in (h, *extra))
    name = group_name(base, taken.setdefault(ns, set()))
    return functools.partial(ex.start, ns, name, node, h.template.tp, h.template.pp,
                             [h, *extra], warm, str(snap.pool["metadata"].get("uid", "")))


def _model_status(ctx: Context, m: Mapping[str, Any], serving: Sequence[GroupObj], ready: int,
                  ev: Evaluation | None, degraded: tuple[str, str] | None,
                  shortfall: str | None, warm: int, now: float) -> None:
    meta, old = m["metadata"], m.get("status") or {}
    name, ns, gen = meta["name"], meta["namespace"], meta.get("generation")
    desired = ev.desired if ev else 0
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
    if shortfall is not None:
        conds.append(condition("Scaling", True, "InsufficientGPUs", shortfall, gen))
    elif ev is not None and len(serving) != desired:
        conds.append(condition("Scaling", True, "Scaling",
                               f"{len(serving)} -> {desired} replicas: {ev.reason}", gen))
    else:
        conds.append(condition("Scaling", False, "Stable",
                               ev.reason if ev else "not evaluated", gen))
    status: dict[str, Any] = {
        "replicas": len(serving), "readyReplicas": ready, "desiredReplicas": desired,
        "ready": ready_string(ready, desired), "selector": selector(name),
        "warmReplicas": warm,
        "placement": [{"group": g.name, "node": g.node, "tensorParallel": g.tp,
                       "pipelineParallel": g.pp, "memoryShare": g.shares.get(name, MEMORY_SHARE),
                       "phase": "Loading" if name in g.loading else g.phase}
                      for g in sorted(serving, key=lambda g: g.name)],
        "observedGeneration": gen,
        "sloStatus": ev.slo_status if ev else "Unknown",
    }
    if ev and ev.observed:
        status["observed"] = ev.observed
    key, uid = f"{ns}/{name}", str(meta.get("uid", ""))
    written = ctx.recorded.get(key)
    before = written[1] if written and written[0] == uid else old.get("desiredReplicas")
    if ev and before is not None and before != desired:
        status["lastScale"] = {"time": iso(now), "from": before, "to": desired,
                               "reason": ev.reason[:1024]}
        ctx.metrics.decisions.labels(direction="up" if desired > before else "down").inc()
        ctx.kube.event("ModelService", ns, name, meta["uid"], "Scaled",
                       f"{before} -> {desired}: {ev.reason}")
    status["conditions"] = merge_conditions(old_conds, conds, now)
    if degraded and not _has(old_conds, "Degraded", degraded[0]):
        ctx.kube.event("ModelService", ns, name, meta["uid"], degraded[0], degraded[1],
                       warning=True)
    if shortfall is not None and not _has(old_conds, "Scaling", "InsufficientGPUs"):
        ctx.kube.event("ModelService", ns, name, meta["uid"], "InsufficientGPUs", shortfall,
                       warning=True)
    if _changed(old, status):
        ctx.kube.patch("ModelService", ns, name, {"status": status}, status=True)
    ctx.recorded[key] = (uid, desired)


def _has(conds: Iterable[Mapping[str, Any]], kind: str, reason: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" and c.get("reason") == reason
               for c in conds)


def _replica_counts(name: str, groups: Sequence[GroupObj]) -> tuple[list[GroupObj], int]:
    """A ModelService's replicas (its groups not draining) and how many serve it now."""
    serving = [g for g in groups if g.phase != "Draining"]
    return serving, sum(1 for g in serving if g.phase == "Ready" and name not in g.loading)


def _pool_status(ctx: Context, pool: Mapping[str, Any], ready_nodes: Sequence[NodeState],
                 groups: Iterable[GroupObj], total: int, messages: Sequence[str], note: str,
                 now: float, lost_nodes: str | None = None) -> None:
    old = pool.get("status") or {}
    gen = pool["metadata"].get("generation")
    groups = list(groups)
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
