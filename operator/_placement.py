"""Replica templates per pool: the slow placement loop beside the fast autoscaling loop.

A replica template (:class:`kubeplex.operator.planning.ReplicaTemplate`) says which
``tp x pp`` group a new replica of a model gets. Two sources, both through the shared
adapters of :mod:`kubeplex.operator.planning`:

* at once, the **quick template**: the smallest group whose memory share holds the model (its
  placement demand's ``min_share``), honouring a fixed ``spec.parallelism``;
* in the background, **placement** (:func:`~kubeplex.operator.planning.plan_pools`, the
  AlpaServe search: seconds per pool) whenever the pool's inputs change (specs, nodes, GPUs);
  its templates replace the quick ones when it finishes. Only new replicas take a new shape.

A model that cannot be served (unknown profile, fits no group of the pool) gets a Degraded
reason instead of a template; the other models of the pool go on.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from kubeplex.api import GPUPool, ModelService
from kubeplex.operator.planning import (
    PlanningError,
    ReplicaTemplate,
    model_demand,
    model_shape,
    plan_pools,
    pool_spec,
)
from kubeplex.placement.errors import PlacementError
from kubeplex.placement.planner import MEMORY_LIMIT

__all__ = ["Templates", "quick_template"]

log = logging.getLogger("kubeplex.operator")


def quick_template(svc: ModelService, pool: GPUPool) -> ReplicaTemplate:
    """The smallest fitting shape (tensor before pipeline); :class:`PlanningError` if none."""
    model_shape(svc)  # an unknown profile fails here with the list of known ones
    demand = model_demand(svc)
    spec = pool_spec(pool, nodes=1)
    sizes = [1 << k for k in range(spec.gpus_per_node.bit_length())]
    for size in sizes:
        for pp in (p for p in sizes if p <= size):
            tp = size // pp
            if not demand.allows(tp, pp):
                continue
            try:
                if demand.min_share(spec.gpu, tp, pp) is not None:
                    return ReplicaTemplate(svc.key, pool.metadata.name, tp, pp, MEMORY_LIMIT,
                                           svc.spec.priority)
            except PlacementError:
                continue
    raise PlanningError(
        f"ModelService {svc.key}: {demand.model.name} fits no group of at most "
        f"{spec.gpus_per_node} {spec.gpu.name} GPUs on one node of GPUPool {pool.metadata.name}"
        f"{'' if _auto(svc) else ' with the fixed spec.parallelism'}; use "
        "a pool with more or bigger GPUs per node, a shorter spec.model.maxModelLen, or "
        "parallelism auto")


def _auto(svc: ModelService) -> bool:
    return svc.spec.parallelism.tensor == "auto" and svc.spec.parallelism.pipeline == "auto"


@dataclass
class _PoolEntry:
    fingerprint: str = ""
    placed: dict[str, ReplicaTemplate] = field(default_factory=dict)
    note: str = ""
    running: concurrent.futures.Future[None] | None = None


class Templates:
    """Per-pool template cache with one background placement worker."""

    def __init__(self, background: bool = True, inline: bool = False) -> None:
        """``background``: place on a worker thread; else ``inline``: place within
        :meth:`resolve` (tests, small pools); neither: quick templates only."""
        self._inline = inline and not background
        self._pools: dict[str, _PoolEntry] = {}
        self._lock = threading.Lock()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "kubeplex-placement") \
            if background else None

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    def note(self, pool: str) -> str:
        entry = self._pools.get(pool)
        return entry.note if entry else ""

    def resolve(self, pool: GPUPool, services: Sequence[ModelService], nodes: int,
                gpus: int) -> tuple[dict[str, ReplicaTemplate], dict[str, str]]:
        """Templates of the servable services and Degraded messages of the others."""
        templates: dict[str, ReplicaTemplate] = {}
        bad: dict[str, str] = {}
        for svc in services:
            try:
                templates[svc.key] = quick_template(svc, pool)
            except (PlanningError, PlacementError) as e:
                bad[svc.key] = str(e)
        good = [s for s in services if s.key in templates]
        name = pool.metadata.name
        if self._inline:
            entry = self._pools.setdefault(name, _PoolEntry())
            fingerprint = _fingerprint(pool, good, nodes, gpus)
            if fingerprint != entry.fingerprint and good and nodes > 0:
                entry.fingerprint = fingerprint
                self._place(entry, fingerprint, pool, good, nodes, gpus)
        with self._lock:
            entry = self._pools.setdefault(name, _PoolEntry())
            fingerprint = _fingerprint(pool, good, nodes, gpus)
            idle = entry.running is None or entry.running.done()
            if fingerprint != entry.fingerprint and good and nodes > 0 and idle:
                entry.fingerprint = fingerprint  # a change meanwhile is placed next time
                if self._worker is not None:
                    entry.running = self._worker.submit(self._place, entry, fingerprint, pool,
                                                        good, nodes, gpus)
            for key, placed in entry.placed.items():
                if key in templates:
                    templates[key] = placed
        return templates, bad

    def _place(self, entry: _PoolEntry, fingerprint: str, pool: GPUPool,
               services: Sequence[ModelService], nodes: int, gpus: int) -> None:
        name = pool.metadata.name
        try:
            plans = plan_pools(services, [pool], nodes={name: nodes}, gpus={name: gpus})
        except (PlanningError, PlacementError) as e:
            with self._lock:
                entry.note = f"placement kept the smallest shapes: {e}"
            return
        except Exception:  # a bug in the search must not kill the worker
            log.exception("placement of pool %s failed", name)
            return
        with self._lock:
            if entry.fingerprint == fingerprint:
                entry.placed = dict(plans[name].templates) if name in plans else {}
                entry.note = plans[name].placement.explanation if name in plans else ""


def _fingerprint(pool: GPUPool, services: Sequence[ModelService], nodes: int,
                 gpus: int) -> str:
    data = {"pool": repr(pool.spec), "nodes": nodes, "gpus": gpus,
            "services": sorted((s.key, repr(s.spec)) for s in services)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

