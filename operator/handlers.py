"""kopf handlers of the kubeplex operator (``kopf run -m kubeplex.operator.handlers`` works;
``kubeplex operator`` runs the same registry with its settings).

Thin, as in kopf's examples: parse -> decide -> execute -> status, with the work in
:mod:`kubeplex.operator._reconcile`. Dependencies live in ``memo`` (set up at startup), never
in module globals:

* indices (kopf's in-memory caches of watched objects): ModelServices and ServingGroups by
  pool, pods by node and by group, nodes, pools;
* one daemon per GPUPool runs the pool cycle every ``KUBEPLEX_INTERVAL_SECONDS`` and at once
  when poked (a ModelService changed, an alert arrived, a group or pod changed);
* the ModelService handler checks the pool exists (the pool cycle keeps the Service). A
  deleted ModelService goes at once, without a finalizer (one API write less per object): its
  Service and groups follow by owner references (the garbage collector) and by the pool
  cycle, which drains the groups of models no longer declared; a pod going away drains its
  in-flight requests in its termination grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
import kubernetes

from kubeplex.api import GROUP, VERSION
from kubeplex.control import DegradedReason
from kubeplex.operator._builders import GROUP_LABEL, MANAGED_BY
from kubeplex.operator._conflicts import node_owners, served_name, served_name_conflicts
from kubeplex.operator._kube import Kube
from kubeplex.operator._memory import limit_arenas, trim
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._placement import Templates
from kubeplex.operator._reconcile import Context, Snapshot, run_cycle
from kubeplex.operator._runtime_client import RuntimeClient
from kubeplex.operator._server import start_servers
from kubeplex.operator._settings import Settings, parse_overrides
from kubeplex.operator._status import condition, merge_conditions

__all__: list[str] = []

log = logging.getLogger("kubeplex.operator")

#: HTTP connections to the API server (the pool cycles' writer threads and the handlers').
CONNECTIONS = 32
#: The metadata the pool cycle reads; the rest (managedFields above all) is not kept.
KEPT_METADATA = ("name", "namespace", "uid", "generation", "labels", "annotations",
                 "creationTimestamp", "deletionTimestamp")
#: kopf's diff-base annotation (the whole last-handled spec again), which operators before
#: :class:`NoDiffBase` wrote on every ModelService; left on old objects, never read.
DIFFBASE_ANNOTATION = "kubeplex.io/last-handled-configuration"


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff-base store for an operator without change handlers (everything is
    ``on.event``, keyed on the generation): kopf writes no copy of the spec into an
    annotation (one API write per ModelService less), and builds none per watch event (it
    builds the "essence" of every event, two deep copies and a diff of them, whatever the
    handlers: a sixth of the operator's CPU in a mass apply). Every body's essence is the
    same empty one, so no create or update cause could be seen."""

    def build(self, *, body: kopf.Body,
              extra_fields: Iterable[kopf.FieldSpec] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


# ---- startup / cleanup ----------------------------------------------------------------------

def _api_client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    config = kubernetes.client.Configuration.get_default_copy()
    # One connection per concurrent writer: kopf's workers plus one cycle per pool.
    config.connection_pool_maxsize = CONNECTIONS
    return kubernetes.client.ApiClient(config)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    limit_arenas()  # before the worker threads exist (see _memory)
    config: Settings = memo.get("settings") or Settings.from_env()
    memo.settings = config
    settings.persistence.finalizer = "kubeplex.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubeplex.io")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING  # kopf's own per-handler events: warnings only
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 16
    settings.peering.lifetime = config.peering_lifetime_s
    metrics = OperatorMetrics()
    kube = Kube(await asyncio.to_thread(_api_client),
                on_write=lambda verb, kind: metrics.api_writes.labels(verb, kind).inc())
    gateway_urls = None
    if config.gateway_service:  # every gateway replica, from its Service's EndpointSlices
        gateway_ns, gateway_name = config.gateway_service.split("/", 1)
        gateway_urls = functools.partial(kube.service_urls, gateway_ns, gateway_name,
                                         "/metrics")
    ctx = Context(config, kube, RuntimeClient(config, gateway_urls),
                  metrics, parse_overrides(config.autoscaler),
                  Templates(background=config.placement == "search"))
    memo.ctx = ctx
    memo.loop = asyncio.get_running_loop()
    memo.wakeups = {}
    memo.triggers = {}
    memo.pool_of = {}  # ModelService key -> pool, for alerts
    memo.seen = {}  # ModelService key -> (uid, generation) last handled
    memo.pools_seen = {}  # GPUPool name -> (uid, generation) last handled; None: gone
    memo.trimmed_at = 0.0  # time.monotonic() of the last malloc trim
    memo.wake = lambda pool: poke(memo, pool)
    memo.servers = await start_servers(config, metrics, memo)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for runner in memo.get("servers") or ():
        await runner.cleanup()
    if "ctx" in memo:
        memo.ctx.runtime.close()
        memo.ctx.templates.close()


def poke(memo: kopf.Memo, pool: str | None) -> None:
    """Wake the pool's daemon now (alerts also record a trigger in ``memo.triggers``).

    Sync handlers run in worker threads: the event is set from the operator's loop."""
    if not pool:
        return
    event = memo.wakeups.setdefault(pool, asyncio.Event())
    try:
        in_loop = asyncio.get_running_loop() is memo.loop
    except RuntimeError:
        in_loop = False
    if in_loop:
        event.set()
    else:
        memo.loop.call_soon_threadsafe(event.set)


# ---- indices --------------------------------------------------------------------------------
# Index and wake-up handlers are coroutines: kopf runs a plain function in a worker thread,
# a hop per watch event (tens of thousands in a mass apply) for a few microseconds of work.

def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the indices keep of an object: a copy of the fields the cycle reads (the index
    holds one per ModelService, ServingGroup and pool, so their size is the operator's)."""
    meta = {k: copy.deepcopy(v) for k, v in body["metadata"].items() if k in KEPT_METADATA}
    annotations = meta.get("annotations")
    if annotations and DIFFBASE_ANNOTATION in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items()
                               if k != DIFFBASE_ANNOTATION}
    return {"metadata": meta,
            "spec": copy.deepcopy(dict(body.get("spec") or {})),
            "status": copy.deepcopy(dict(body.get("status") or {}))}


@kopf.index(GROUP, VERSION, "modelservices")
async def msvc_by_pool(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    return {spec.get("pool"): _plain(body)}


@kopf.index(GROUP, VERSION, "servinggroups")
async def groups_by_pool(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    return {spec.get("pool"): _plain(body)}


@kopf.index(GROUP, VERSION, "gpupools")
async def pools(body: kopf.Body, name: str, **_: Any) -> dict[str, Any]:
    return {name: _plain(body)}


@kopf.index("", "v1", "nodes")
async def nodes(name: str, labels: kopf.Labels, status: kopf.Status, spec: kopf.Spec,
                **_: Any) -> dict[str, Any]:
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or ())
    return {name: {"name": name, "labels": dict(labels),
                   "allocatable": dict(status.get("allocatable") or {}),
                   "ready": ready and not spec.get("unschedulable")}}


def _pod_info(name: str, namespace: str | None, meta: Mapping[str, Any], spec: Mapping[str, Any],
              status: Mapping[str, Any]) -> dict[str, Any]:
    gpus: dict[str, int] = {}
    for c in spec.get("containers") or ():
        for res, qty in ((c.get("resources") or {}).get("limits") or {}).items():
            if "/" in res and str(qty).isdigit():
                gpus[res] = gpus.get(res, 0) + int(qty)
    phase = status.get("phase")
    labels = dict(meta.get("labels") or {})
    return {
        "name": name, "namespace": namespace, "node": spec.get("nodeName"),
        "labels": labels,  # annotations: only ours (the runtime URLs of test harnesses)
        "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                        if k.startswith("kubeplex.io/")},
        "ip": status.get("podIP"), "phase": phase, "done": phase in ("Succeeded", "Failed"),
        "deleting": bool(meta.get("deletionTimestamp")),
        "ready": any(c.get("type") == "Ready" and c.get("status") == "True"
                     for c in status.get("conditions") or ()),
        "managed": labels.get(MANAGED_BY[0]) == MANAGED_BY[1] and GROUP_LABEL in labels,
        "gpus": gpus,
    }


@kopf.index("", "v1", "pods")
async def pods_by_node(name: str, namespace: str | None, meta: kopf.Meta, spec: kopf.Spec,
                       status: kopf.Status, **_: Any) -> dict[Any, Any] | None:
    info = _pod_info(name, namespace, meta, spec, status)
    if not info["node"] or not info["gpus"]:
        return None
    return {info["node"]: info}


@kopf.index("", "v1", "pods", labels={GROUP_LABEL: kopf.PRESENT})
async def pods_by_group(name: str, namespace: str | None, meta: kopf.Meta, spec: kopf.Spec,
                        status: kopf.Status, labels: kopf.Labels,
                        **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[GROUP_LABEL]): _pod_info(name, namespace, meta, spec, status)}


# ---- the pool daemon ------------------------------------------------------------------------

def _snapshot(pool: str, triggers: dict[str, str], kw: Mapping[str, Any]) -> Snapshot | None:
    pool_store = kw["pools"].get(pool)
    if not pool_store:
        return None
    pool_body = next(iter(pool_store))
    groups_index = kw["groups_by_pool"]
    names: dict[str, set[str]] = {}
    for store in groups_index.values():
        for g in store:
            names.setdefault(g["metadata"]["namespace"], set()).add(g["metadata"]["name"])
    msvcs = list(kw["msvc_by_pool"].get(pool, ()))
    # Served names are unique per namespace across pools: judge against every ModelService.
    conflicts = served_name_conflicts(m for store in kw["msvc_by_pool"].values() for m in store)
    mine = {f"{m['metadata'].get('namespace')}/{m['metadata']['name']}" for m in msvcs}
    all_nodes = [next(iter(s)) for s in kw["nodes"].values() if s]
    owners = node_owners((next(iter(s)) for s in kw["pools"].values() if s), all_nodes)
    return Snapshot(
        pool=pool_body,
        msvcs=msvcs,
        groups=list(groups_index.get(pool, ())),
        nodes=[n for n in all_nodes if owners.usable(pool, n["name"])],
        pods_by_node={k: list(v) for k, v in kw["pods_by_node"].items()},
        pods_by_group={k: next(iter(v)) for k, v in kw["pods_by_group"].items() if v},
        names_taken=names,
        triggers=triggers,
        refused={k: (c.reason, c.message) for k, c in conflicts.items() if k in mine},
        lost_nodes=owners.message(pool),
    )


@kopf.daemon(GROUP, VERSION, "gpupools", cancellation_timeout=10.0)
async def pool_daemon(name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped,
                      **kwargs: Any) -> None:
    ctx: Context = memo.ctx
    wake = memo.wakeups.setdefault(name, asyncio.Event())
    while not stopped:
        wake.clear()
        triggers = memo.triggers.pop(name, {})
        snap = _snapshot(name, triggers, kwargs)
        wait_s = ctx.settings.interval_s
        if snap is not None:
            for m in snap.msvcs:
                memo.pool_of[f"{m['metadata']['namespace']}/{m['metadata']['name']}"] = name
            try:
                report = await asyncio.to_thread(run_cycle, ctx, snap, time.time())
                wait_s = min(wait_s, report.recheck_s or wait_s)
            except Exception as e:  # one bad cycle must not stop the pool: log, count, retry
                ctx.metrics.errors.labels(pool=name, kind=type(e).__name__).inc()
                log.exception("pool %s: cycle failed", name)
            # The cycles' garbage (parsed answers, copies) goes back to the system, once per
            # interval whatever the number of pools (a trim walks every arena).
            if time.monotonic() - memo.trimmed_at >= ctx.settings.interval_s:
                memo.trimmed_at = time.monotonic()
                await asyncio.to_thread(trim)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=wait_s)


# ---- ModelService ---------------------------------------------------------------------------

@kopf.on.event(GROUP, VERSION, "modelservices")
async def modelservice_event(type: str | None, name: str, namespace: str | None, uid: str,
                             spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
                             memo: kopf.Memo, **kwargs: Any) -> None:
    """A ModelService appeared or its spec changed (a new generation): check its pool exists
    and wake the pool. An event handler, not create/update: kopf then writes no diff-base
    annotation per change (one API write less per ModelService and per spec change); status
    writes and annotations (same generation) are ignored here."""
    ctx: Context = memo.ctx
    namespace = namespace or "default"
    key, generation = f"{namespace}/{name}", meta.get("generation")
    if type == "DELETED":
        _forget(memo, namespace, name, spec, kwargs["msvc_by_pool"])
        return
    if meta.get("deletionTimestamp"):  # held by someone else's finalizer: drain it now
        poke(memo, spec.get("pool"))
        return
    if memo.seen.get(key) == (uid, generation):
        return
    memo.seen[key] = (uid, generation)
    # The Service is the pool cycle's (created for a ModelService it serves, none while it is
    # refused: _reconcile._service_jobs).
    pool = spec.get("pool")
    if not kwargs["pools"].get(pool):
        reason = DegradedReason.UNKNOWN_POOL
        conds = [condition("Degraded", True, reason,
                           f"GPUPool {pool!r} does not exist; create it or set spec.pool to one "
                           f"of: {', '.join(sorted(kwargs['pools'])) or '(none yet)'}",
                           generation),
                 condition("Ready", False, reason, "cannot be served; see Degraded",
                           generation)]
        await asyncio.to_thread(ctx.kube.patch, "ModelService", namespace, name, {"status": {
            "conditions": merge_conditions(status.get("conditions"), conds, time.time()),
            "observedGeneration": generation, "ready": "0/0", "sloStatus": "Unknown"}},
            status=True)
        await asyncio.to_thread(ctx.kube.event, "ModelService", namespace, name, uid, reason,
                                conds[0]["message"], warning=True)
        return
    memo.pool_of[key] = pool
    poke(memo, pool)


def _forget(memo: kopf.Memo, namespace: str, name: str, spec: Mapping[str, Any],
            msvc_by_pool: Mapping[str, Any]) -> None:
    """A ModelService is gone: its pool drains its groups next cycle, and the operator drops
    what it kept of it."""
    key = f"{namespace}/{name}"
    poke(memo, spec.get("pool"))
    memo.ctx.resolved.pop(key, None)  # its scaling memory goes next cycle
    memo.seen.pop(key, None)
    memo.ctx.services.pop(key, None)  # the Service goes with its owner
    memo.ctx.specs.pop(key, None)
    memo.ctx.first_scale.pop(key, None)
    # A ModelService refused for using this one's served name may proceed now.
    gone = served_name({"metadata": {"name": name}, "spec": dict(spec)})
    for other_pool, store in msvc_by_pool.items():
        if any(m["metadata"].get("namespace") == namespace and served_name(m) == gone
               and m["metadata"]["name"] != name for m in store):
            poke(memo, other_pool)


# ---- what else wakes a pool -----------------------------------------------------------------

@kopf.on.event(GROUP, VERSION, "servinggroups")
async def group_event(spec: kopf.Spec, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    if type in ("DELETED", "ADDED"):
        poke(memo, spec.get("pool"))


@kopf.on.event("", "v1", "pods", labels={GROUP_LABEL: kopf.PRESENT})
async def pod_event(labels: kopf.Labels, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    pool = labels.get("kubeplex.io/pool")
    if pool:
        poke(memo, pool)


@kopf.on.event(GROUP, VERSION, "gpupools")
async def pool_changed(type: str | None, name: str, uid: str, meta: kopf.Meta, memo: kopf.Memo,
                       **kwargs: Any) -> None:
    """A GPUPool appeared, went or has a new spec (its own status writes are not changes):
    wake every pool, since node ownership between overlapping pools may have moved."""
    seen = memo.pools_seen
    version = None if type == "DELETED" else (uid, meta.get("generation"))
    if seen.get(name, ()) == version:
        return
    seen[name] = version
    for pool in {name, *kwargs["pools"]}:
        poke(memo, pool)
