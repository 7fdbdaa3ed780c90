"""Replica templates per pool: the slow placement loop beside the fast autoscaling loop.

A replica template (:class:`kubeplex.control.ReplicaTemplate`) says which ``tp x pp`` group a
new replica of a model gets. Two sources, both from the control layer:

* at once, :func:`kubeplex.control.quick_template`: the smallest group that holds the model;
* in the background, placement (:func:`kubeplex.control.plan_pools`, the AlpaServe search:
  seconds per pool) whenever the pool's inputs change (specs, nodes, GPUs); its templates
  replace the quick ones when it finishes. Only new replicas take a new shape.

A model that cannot be served (unknown profile, fits no group of the pool, or one placement
could give no replica at all beside the others) gets its typed
:class:`~kubeplex.control.PlanningError` instead of a template (Degraded); the others go on.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from kubeplex.api import GPUPool, GPUPoolSpec, ModelService, ModelServiceSpec
from kubeplex.control import (
    DoesNotFitError,
    PlanningError,
    ReplicaTemplate,
    UnplacedError,
    plan_pools,
    quick_template,
)

__all__ = ["Templates"]

log = logging.getLogger("kubeplex.operator")


_Quick = tuple[ModelServiceSpec, GPUPoolSpec, ReplicaTemplate | PlanningError]


@dataclass
class _PoolEntry:
    fingerprint: str = ""
    placed: dict[str, ReplicaTemplate] = field(default_factory=dict)
    #: Models placement could give no replica at all: Degraded until the pool changes.
    unplaced: dict[str, PlanningError] = field(default_factory=dict)
    note: str = ""
    running: concurrent.futures.Future[None] | None = None


class Templates:
    """Per-pool template cache with one background placement worker."""

    def __init__(self, background: bool = True, inline: bool = False) -> None:
        """``background``: place on a worker thread; else ``inline``: place within
        :meth:`resolve` (tests, small pools); neither: quick templates only."""
        self._inline = inline and not background
        self._pools: dict[str, _PoolEntry] = {}
        #: Pool -> ModelService key -> (its spec, the pool's spec, its quick template or why
        #: none): made again only when either spec changes.
        self._quick: dict[str, dict[str, _Quick]] = {}
        self._lock = threading.Lock()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "kubeplex-placement") \
            if background else None

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    def note(self, pool: str) -> str:
        entry = self._pools.get(pool)
        return entry.note if entry else ""

    def resolve(self, pool: GPUPool, services: Sequence[ModelService], nodes: int, gpus: int
                ) -> tuple[dict[str, ReplicaTemplate], dict[str, PlanningError]]:
        """Templates of the servable services, and why each of the others cannot be served."""
        templates: dict[str, ReplicaTemplate] = {}
        bad: dict[str, PlanningError] = {}
        known, self._quick[pool.metadata.name] = self._quick.get(pool.metadata.name, {}), {}
        for svc in services:
            quick = self._quick_template(svc, pool, known.get(svc.key))
            if isinstance(quick, PlanningError):
                bad[svc.key] = quick
            else:
                templates[svc.key] = quick
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
            for key, error in entry.unplaced.items():
                if templates.pop(key, None) is not None:
                    bad[key] = error
        return templates, bad

    def _quick_template(self, svc: ModelService, pool: GPUPool, known: _Quick | None
                        ) -> ReplicaTemplate | PlanningError:
        if known is not None and known[0] is svc.spec and known[1] == pool.spec:
            found = known[2]  # the same parsed spec (the cycle parses a changed one anew)
        else:
            try:
                found = quick_template(svc, pool)
            except PlanningError as e:
                found = e
        self._quick[pool.metadata.name][svc.key] = (svc.spec, pool.spec, found)
        return found

    def _place(self, entry: _PoolEntry, fingerprint: str, pool: GPUPool,
               services: Sequence[ModelService], nodes: int, gpus: int) -> None:
        name = pool.metadata.name
        try:
            plans = plan_pools(services, [pool], nodes={name: nodes}, gpus={name: gpus})
        except UnplacedError as e:
            with self._lock:
                if entry.fingerprint == fingerprint:
                    entry.placed, entry.note = {}, f"placement kept the smallest shapes: {e}"
                    entry.unplaced = {m: DoesNotFitError(
                        f"ModelService {m}: GPUPool {name} cannot give it a single replica "
                        f"beside the others ({e}); raise the pool's maxGPUs or nodes, or "
                        "lower other models' minReplicas") for m in e.models}
            return
        except PlanningError as e:
            with self._lock:
                entry.note = f"placement kept the smallest shapes: {e}"
            return
        except Exception:  # a bug in the search must not kill the worker
            log.exception("placement of pool %s failed", name)
            return
        with self._lock:
            if entry.fingerprint == fingerprint:
                entry.placed = dict(plans[name].templates) if name in plans else {}
                entry.unplaced = {}
                entry.note = plans[name].placement.explanation if name in plans else ""


def _fingerprint(pool: GPUPool, services: Sequence[ModelService], nodes: int,
                 gpus: int) -> str:
    data = {"pool": repr(pool.spec), "nodes": nodes, "gpus": gpus,
            "services": sorted((s.key, repr(s.spec)) for s in services)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

