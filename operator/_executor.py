"""Applies a fleet plan (:func:`kubeplex.control.fleet_plan`) and moves groups through their life.

A group's phase is derived each cycle from its objects (so a restarted operator picks up
where the last one stopped): ``Pending`` (no pod, or not scheduled), ``Loading`` (pod starting,
or a claimed warm pod loading its model), ``Ready``, ``Warm`` (an unclaimed warm pod, ready or
asleep), ``Draining`` (leaving: its pods carry no model label any more, the runtime finishes
in-flight requests, then group and pod are deleted), ``Lost`` (its pod was deleted or failed
after it served: the group is deleted with a ``ReplicaLost`` Event and the control layer,
which no longer counts it, replaces it: a warm standby first).

Co-location: a group hosts every model of its ServingGroup's ``spec.models`` (one runtime
config entry each, with its memory share). A model *joins* a running group (ADD): it is written
to ``spec.models``, loaded through the runtime's control API, and its model label goes on the
pod once its engine is ready (the pod then joins that model's Service too). A model *leaves* a
shared group (UNLOAD): its label is removed first (its Service stops sending), it is taken out
of ``spec.models`` and named in ``kubeplex.io/unloading`` until the runtime has drained and
unloaded it (``DELETE /kubeplex/v1/models/{name}``); the pod keeps serving the others. A pod is
deleted only when its group has no model left (drain).

Scale-down is two-phase, because removing a label takes a while to reach kube-proxy and the
gateways (through the Service's EndpointSlices), and requests that still arrive at a draining
engine would fail: phase 1 takes the label off (and records ``kubeplex.io/drain-started``, or
the model in ``kubeplex.io/unload-waiting`` with ``kubeplex.io/unlabelled-at``); phase 2, in a
later cycle, asks the runtime to drain or unload once the model's EndpointSlices no longer list
the pod or ``KUBEPLEX_ENDPOINT_GRACE_SECONDS`` have passed, whichever comes first (recorded in
``kubeplex.io/drain-asked``, or by leaving ``unload-waiting``). Both phases live in
annotations, so an operator restarted between them carries on.

Warm standbys preload their pool's likeliest model (``spec.models`` of a warm group, not
routed) and put it to sleep once ready (``kubeplex.io/sleep``: ``asleep``, or ``unsupported``
when the runtime answers 409: the sim engine and vLLM on CPU cannot sleep and stay loaded); a
claim then wakes it, routes it as it is, or loads it
(:func:`~kubeplex.control.claim_step`).

Every step is idempotent: objects have deterministic names, creates tolerate 409, deletes 404,
and a claim is recorded on the group (``kubeplex.io/claimed-at``) before the pod is touched.
"""

from __future__ import annotations

import calendar
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubeplex.api import GPUPoolSpec
from kubeplex.control import ClaimStep, ModelKey, ResolvedModel, claim_step
from kubeplex.operator import _adapters
from kubeplex.operator._builders import (
    WARM_LABEL,
    model_label,
    owner_ref,
    pod_manifest,
    runtime_model,
    serving_group_manifest,
)
from kubeplex.operator._dra import claim_template_manifest
from kubeplex.operator._kube import KubeApi
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._runtime_client import PodEndpoints, RuntimeClient
from kubeplex.operator._settings import Settings
from kubeplex.operator._status import iso

__all__ = ["ADDED_AT", "CHANGED_IN_PLACE", "CLAIMED_AT", "DRAIN_ASKED", "DRAIN_STARTED", "SLEEP",
           "UNLABELLED_AT", "UNLOADING", "UNLOAD_WAITING", "Executor", "GroupObj", "Hosted",
           "pod_ready"]

log = logging.getLogger("kubeplex.operator")

CLAIMED_AT = "kubeplex.io/claimed-at"
#: Phase 1 of a drain: when the pod's model labels came off.
DRAIN_STARTED = "kubeplex.io/drain-started"
#: Phase 2 of a drain: when the runtime was asked to drain (its Services had dropped the pod).
DRAIN_ASKED = "kubeplex.io/drain-asked"
#: Unloads still in phase 1 (``model=servedName``, comma-separated): label off, the runtime not
#: asked yet; and when the last label came off.
UNLOAD_WAITING = "kubeplex.io/unload-waiting"
UNLABELLED_AT = "kubeplex.io/unlabelled-at"
#: Models (ModelService names, comma-separated) being drained and unloaded from the group.
UNLOADING = "kubeplex.io/unloading"
#: A warm standby's preloaded model: ``asleep`` or ``unsupported`` (the engine cannot sleep).
SLEEP = "kubeplex.io/sleep"
#: Set on a group whose models changed in place: its pod's runtime config (fixed at start) no
#: longer matches, so after a container restart the operator re-syncs the runtime.
CHANGED_IN_PLACE = "kubeplex.io/changed-in-place"
#: When a model was last added to the running group (``control.GroupView.loading_since``:
#: a consolidation copy that never becomes ready is given up after a bound).
ADDED_AT = "kubeplex.io/added-at"
#: A drain gives up waiting for the runtime after this long (the runtime's own default grace
#: is 30 s; the pod's terminationGracePeriodSeconds covers the rest on delete).
DRAIN_GIVE_UP_S = 45.0
#: How long a pod this process made may take to show in its watch before the group is
#: given another (a mass apply's watch events queue for seconds).
POD_SHOWS_S = 30.0


@dataclass(frozen=True)
class Hosted:
    """A model a group hosts (resolved by the control layer) and its ModelService's uid."""

    model: ResolvedModel
    uid: str


def _epoch(stamp: str | None, default: float) -> float:
    if not stamp:
        return default
    try:
        return float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return default


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


def _entry(model: ResolvedModel) -> dict[str, Any]:
    """One ``spec.models`` entry of a ServingGroup."""
    return {"modelService": model.name, "servedName": model.served_name,
            "memoryShare": model.memory_share}


def pod_ready(pod: Mapping[str, Any] | None) -> bool:
    return bool(pod and pod.get("ready") and not pod.get("deleting"))


@dataclass(frozen=True)
class GroupObj:
    """One ServingGroup with its pod, as the executor needs it."""

    namespace: str
    name: str
    uid: str
    node: str
    tp: int
    pp: int
    models: tuple[str, ...]
    warm: bool
    phase: str
    old_phase: str | None
    created: float
    annotations: Mapping[str, str]
    pod: Mapping[str, Any] | None
    endpoints: PodEndpoints
    ready_since: str | None
    #: ``spec.models`` as written (routed models, or a warm standby's preloaded one).
    entries: tuple[Mapping[str, Any], ...] = ()
    owners: tuple[Mapping[str, Any], ...] = ()

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def preloaded(self) -> tuple[str, ...]:
        return tuple(e["modelService"] for e in self.entries) if self.warm else ()

    @property
    def shares(self) -> dict[str, float]:
        return {e["modelService"]: float(e.get("memoryShare", 1.0)) for e in self.entries}

    @property
    def loading(self) -> tuple[str, ...]:
        """Routed models whose engine is not serving yet (no model label on the pod)."""
        labels = (self.pod or {}).get("labels") or {}
        return tuple(m for m in self.models if model_label(m) not in labels)

    @property
    def added_at(self) -> float:
        """When a model was last added to the running group (0: never, or unknown)."""
        return _float(self.annotations.get(ADDED_AT), 0.0)

    @property
    def unloading(self) -> tuple[str, ...]:
        return tuple(m for m in self.annotations.get(UNLOADING, "").split(",") if m)

    @property
    def unload_waiting(self) -> dict[str, str]:
        """Unloads in phase 1: model -> the name its runtime serves it under."""
        pairs = (p.partition("=") for p in self.annotations.get(UNLOAD_WAITING, "").split(","))
        return {m: served or m for m, _, served in pairs if m}

    @classmethod
    def of(cls, group: Mapping[str, Any], pod: Mapping[str, Any] | None,
           settings: Settings, now: float) -> GroupObj:
        meta, spec, status = group["metadata"], group["spec"], group.get("status") or {}
        annotations = meta.get("annotations") or {}
        entries = tuple(spec.get("models") or ())
        warm = bool(spec.get("warm"))
        models = () if warm else tuple(m["modelService"] for m in entries)
        labels = (pod or {}).get("labels") or {}
        if meta.get("deletionTimestamp") or status.get("phase") == "Draining":
            phase = "Draining"
        elif status.get("readySince") and (pod is None or pod.get("done")):
            phase = "Lost"  # its pod was deleted or failed after it served: replace it
        elif pod is None or not pod.get("node"):
            phase = "Pending"
        elif warm and annotations.get(SLEEP) == "asleep" and not pod.get("deleting"):
            phase = "Warm"  # asleep (the runtime counts a sleeping engine as ready)
        elif not pod_ready(pod):
            phase = "Loading"
        elif warm:
            phase = "Warm"
        elif models and all(model_label(m) not in labels for m in models):
            phase = "Loading"  # a claimed warm pod still loading its model
        else:
            phase = "Ready"  # models added to it since load beside the others (``loading``)
        return cls(meta["namespace"], meta["name"], meta.get("uid", ""),
                   spec.get("nodeName") or "", int(spec["tensorParallel"]),
                   int(spec["pipelineParallel"]), models, warm, phase, status.get("phase"),
                   _epoch(meta.get("creationTimestamp"), now), annotations, pod,
                   PodEndpoints.of(settings, pod.get("ip") if pod else None,
                                   (pod or {}).get("annotations") or {}),
                   status.get("readySince"), entries,
                   tuple(meta.get("ownerReferences") or ()))


class Executor:
    def __init__(self, settings: Settings, kube: KubeApi, runtime: RuntimeClient,
                 metrics: OperatorMetrics, pool: str, pool_spec: GPUPoolSpec,
                 pods_made: dict[str, float] | None = None) -> None:
        self.settings, self.kube, self.runtime, self.metrics = settings, kube, runtime, metrics
        self.pool, self.pool_spec = pool, pool_spec
        #: "namespace/name" -> time.monotonic() when this process made that group's pod: the
        #: pod watch may show it only seconds later (a mass apply), and the group is not
        #: given a second one meanwhile (a controller's expectations).
        self.pods_made = {} if pods_made is None else pods_made
        # No HTTP to pods when signals are off (fake clusters whose pods run nothing).
        self.talk_to_pods = settings.scrape != "off"
        # Set when a scale-down waits for Services to drop a pod (phase 1 done, phase 2 not
        # yet): the pool's next cycle should come after the endpoint grace, not the interval.
        self.waiting_on_services = False
        #: Model -> the cold starts this cycle saw finish (seconds from the group's creation
        #: to its first Ready), for the next cycle's ``ModelInputs.cold_starts`` (the cycle's
        #: jobs append from their threads: ``setdefault`` and ``append`` are atomic).
        self.cold_starts: dict[ModelKey, list[float]] = {}

    # ---- plan steps ----------------------------------------------------------------------
    def start(self, namespace: str, name: str, node: str, tp: int, pp: int,
              hosted: Sequence[Hosted], warm: bool, pool_uid: str) -> None:
        """Create a group hosting ``hosted`` (co-located when several; a warm standby when
        ``warm``: ``hosted`` is then preloaded, not routed)."""
        serving = [] if warm else list(hosted)
        owners = ([owner_ref("ModelService", h.model.name, h.uid, controller=i == 0)
                   for i, h in enumerate(serving)] if serving
                  else [owner_ref("GPUPool", self.pool, pool_uid)])
        body = serving_group_manifest(namespace, name, self.pool, node, tp, pp,
                                      [h.model for h in hosted], warm, owners)
        created = self.kube.create(body)
        if created is None:
            return  # exists already (an earlier, interrupted cycle): advance() finishes it
        self.metrics.cold_starts.labels(pool=self.pool).inc()
        self._create_pod(namespace, name, created["metadata"]["uid"], node, tp, pp, hosted,
                         warm)  # the status follows from the pod in the next cycles (advance)

    def claim(self, view: GroupObj, hosted: Sequence[Hosted],
              reason: str, now: float) -> None:
        if len(hosted) != 1:
            return
        model, uid = hosted[0].model, hosted[0].uid
        self.kube.patch("ServingGroup", view.namespace, view.name, {
            "metadata": {"labels": {WARM_LABEL: None},
                         "annotations": {CLAIMED_AT: f"{now:.3f}"},
                         "ownerReferences": [owner_ref("ModelService", model.name, uid)]},
            "spec": {"warm": False, "models": [_entry(model)]}})
        if view.pod is not None:
            self.kube.patch("Pod", view.namespace, view.name,
                            {"metadata": {"labels": {WARM_LABEL: None}}})
        self.metrics.warm_claims.labels(pool=self.pool).inc()
        self.kube.event("ModelService", view.namespace, model.name, uid, "WarmClaim", reason)
        self._group_status(view.namespace, view.name, "Loading", view.ready_since, [model.name])
        if model.name not in view.preloaded:
            self._load(view, hosted[0])  # a preloaded model is woken (or routed) by advance()

    def change(self, view: GroupObj, add: Sequence[Hosted], remove: Sequence[str],
               reason: str, now: float) -> None:
        """Co-location in a running group: ``remove`` models (label off, drain + unload in the
        runtime) and ``add`` others (load; labelled once ready). The pod stays."""
        labels: dict[str, Any] = {model_label(m): None for m in remove}
        if labels and view.pod is not None:
            self.kube.patch("Pod", view.namespace, view.name, {"metadata": {"labels": labels}})
        entries = [e for e in view.entries if e["modelService"] not in remove]
        entries += [_entry(h.model) for h in add if h.model.name not in view.models]
        owners = [o for o in view.owners if o.get("name") not in remove or o.get("controller")]
        owners += [owner_ref("ModelService", h.model.name, h.uid, controller=False)
                   for h in add if not any(o.get("name") == h.model.name for o in owners)]
        added = {h.model.name for h in add}
        unloading = sorted({*view.unloading, *remove} - added)
        waiting = {m: served for m, served in view.unload_waiting.items() if m not in added}
        waiting.update({name: next((e.get("servedName") or name for e in view.entries
                                    if e["modelService"] == name), name) for name in remove})
        annotations: dict[str, Any] = {
            UNLOADING: ",".join(unloading) or None, CHANGED_IN_PLACE: "true",
            UNLOAD_WAITING: ",".join(f"{m}={v}" for m, v in sorted(waiting.items())) or None}
        if remove:
            annotations[UNLABELLED_AT] = f"{now:.3f}"
            self.waiting_on_services = True
        if added - set(view.models):
            annotations[ADDED_AT] = f"{now:.3f}"
        self.kube.patch("ServingGroup", view.namespace, view.name, {
            "metadata": {"annotations": annotations, "ownerReferences": owners},
            "spec": {"models": entries}})
        models = [e["modelService"] for e in entries]
        self._group_status(view.namespace, view.name, view.phase, view.ready_since, models)
        # The runtime unloads them in a later cycle, once their Services dropped the pod.
        for h in add:
            self._load(view, h)
        for h in add:
            self.kube.event("ModelService", view.namespace, h.model.name, h.uid, "CoLocated",
                            f"loading into {view.name} beside {', '.join(view.models)}: "
                            f"{reason}")
        log.info("group %s/%s: +%s -%s: %s", view.namespace, view.name,
                 [h.model.name for h in add], list(remove), reason)

    def drain(self, view: GroupObj, reason: str, now: float) -> None:
        if view.phase != "Draining":
            if view.pod is not None:
                labels = {model_label(m): None for m in view.models}
                self.kube.patch("Pod", view.namespace, view.name,
                                {"metadata": {"labels": {**labels, WARM_LABEL: None}}})
            self.kube.patch("ServingGroup", view.namespace, view.name,
                            {"metadata": {"annotations": {DRAIN_STARTED: f"{now:.3f}"}}})
            self._group_status(view.namespace, view.name, "Draining", view.ready_since,
                               list(view.models))
            log.info("draining %s/%s: %s", view.namespace, view.name, reason)
            if not self.talk_to_pods or view.pod is None:
                self._delete(view)
            else:  # the runtime drains in a later cycle, once the Services dropped the pod
                self.waiting_on_services = True
            return
        self._finish_drain(view, now)

    # ---- lifecycle -------------------------------------------------------------------------
    def advance(self, view: GroupObj, hosted: Sequence[Hosted],
                now: float) -> None:
        if view.phase == "Draining":
            self._finish_drain(view, now)
            return
        if view.phase == "Lost":
            self._forget_lost(view, hosted)
            return
        key = f"{view.namespace}/{view.name}"
        if view.pod is not None:
            self.pods_made.pop(key, None)  # shown: no longer expected
        if view.pod is None:
            if view.models and len(hosted) != len(view.models):
                return  # its model is gone: the plan drains it
            if time.monotonic() - self.pods_made.get(key, -math.inf) >= POD_SHOWS_S:
                self._create_pod(view.namespace, view.name, view.uid, view.node, view.tp,
                                 view.pp, hosted, view.warm)  # else made, not shown yet
        elif view.phase == "Loading" and CLAIMED_AT in view.annotations and hosted:
            self._finish_claim(view, hosted, now)
            return
        elif view.phase == "Ready" and view.loading and hosted:
            self._finish_loads(view, [h for h in hosted if h.model.name in view.loading])
        elif view.phase == "Warm" and view.preloaded and SLEEP not in view.annotations:
            self._put_to_sleep(view)
        elif (view.phase == "Ready" and CHANGED_IN_PLACE in view.annotations
              and not view.unloading):
            self._resync(view, hosted)
        if view.unloading and view.pod is not None:
            self._finish_unloads(view, now)
        if view.phase == "Ready" and (adapters := _adapters.change_patch(view, hosted)):
            self.kube.patch("ServingGroup", view.namespace, view.name, {"metadata": {
                "annotations": {**adapters, CHANGED_IN_PLACE: "true"}}})  # resynced next
        if view.phase != view.old_phase:
            if (view.phase == "Ready" and view.ready_since is None and not view.warm
                    and CLAIMED_AT not in view.annotations):  # a cold start's first Ready
                took = max(0.0, now - view.created)
                self.metrics.cold_start_seconds.observe(took)
                for h in hosted:
                    self.cold_starts.setdefault(h.model.key, []).append(took)
            since = iso(now) if view.phase in ("Ready", "Warm") else view.ready_since
            self._group_status(view.namespace, view.name, view.phase, since, list(view.models))

    def _forget_lost(self, view: GroupObj, hosted: Sequence[Hosted]) -> None:
        """A group whose pod was deleted or failed after it served is deleted, so the control
        layer no longer counts it and replaces its replicas (a warm standby first, then a cold
        start) instead of waiting for a new pod in its place."""
        self.kube.delete("Pod", view.namespace, view.name)  # a failed pod, if one is left
        self.kube.delete("ServingGroup", view.namespace, view.name)
        what = ", ".join(view.models) or "a warm standby"
        log.warning("group %s/%s (%s) lost its pod on %s; replacing it", view.namespace,
                    view.name, what, view.node)
        for h in hosted:
            self.kube.event("ModelService", view.namespace, h.model.name, h.uid, "ReplicaLost",
                            f"the pod of {view.name} on {view.node or 'its node'} was deleted "
                            "or failed after it served; the plan replaces it (a warm standby "
                            "first)", warning=True)

    def _engine_ready(self, view: GroupObj, hosted: Hosted) -> bool:
        """Whether ``hosted``'s engine serves in the pod's runtime; otherwise take the next
        step of getting it there (:func:`claim_step`: wake a sleeping one, load a missing one,
        route one that stayed loaded because it cannot sleep)."""
        if not self.talk_to_pods:
            return True
        if not view.endpoints.control:
            return False
        status = self.runtime.status(view.endpoints.control)
        if status is None:
            return False
        engines = {e.get("name"): e for e in status.get("models", ())}
        engine = engines.get(hosted.model.served_name)
        step = claim_step(None if engine is None else str(engine.get("state")))
        if step is ClaimStep.LOAD:
            self._load(view, hosted)  # never loaded, or a restart lost it: ask (again)
        elif step is ClaimStep.WAKE:
            self.runtime.wake(view.endpoints.control, hosted.model.served_name)
        return step is ClaimStep.ROUTE

    def _finish_loads(self, view: GroupObj, added: Sequence[Hosted]) -> None:
        """Label the pod for models added to it whose engines are ready (joins Services)."""
        ready = [h for h in added if self._engine_ready(view, h)]
        if ready:
            self.kube.patch("Pod", view.namespace, view.name, {"metadata": {"labels": {
                model_label(h.model.name): "true" for h in ready}}})

    def _resync(self, view: GroupObj, hosted: Sequence[Hosted]) -> None:
        """A group changed in place no longer matches the config its pod started with, and a
        container restart brings that config back: load what the runtime lost (its label
        comes off until it is ready again) and unload what it hosts but the group does not."""
        if not self.talk_to_pods or not view.endpoints.control:
            return
        status = self.runtime.status(view.endpoints.control)
        if status is None:
            return
        running = {str(e.get("name")): str(e.get("state")) for e in status.get("models", ())}
        _adapters.resync(self, view, hosted, status)  # spec.adapters changed since the start
        lost = [h for h in hosted if h.model.served_name not in running]
        if lost:
            self.kube.patch("Pod", view.namespace, view.name, {"metadata": {"labels": {
                model_label(h.model.name): None for h in lost}}})
            for h in lost:
                self._load(view, h)
        wanted = {e.get("servedName") or e["modelService"] for e in view.entries}
        for name, state in running.items():
            if name not in wanted and state != "draining":
                self.runtime.unload(view.endpoints.control, name)
        if lost or set(running) - wanted:
            log.info("group %s/%s: runtime re-synced (lost %s, extra %s)", view.namespace,
                     view.name, [h.model.name for h in lost], sorted(set(running) - wanted))

    def _left_services(self, view: GroupObj, models: Sequence[str], since: float,
                       now: float) -> bool:
        """Whether the Services of ``models`` no longer send to the pod: their EndpointSlices
        do not list it, or ``endpoint_grace_s`` passed since its labels came off."""
        if now - since >= self.settings.endpoint_grace_s:
            return True
        for model in models:
            pods = self.kube.endpoint_pods(view.namespace, model)
            if pods is None or view.name in pods:
                self.waiting_on_services = True
                return False
        return True

    def _finish_unloads(self, view: GroupObj, now: float) -> None:
        """Phase 2 of unloads whose Services dropped the pod (ask the runtime); forget unloads
        the runtime has finished; ask again where a restart lost one."""
        if self.talk_to_pods and not view.endpoints.control:
            return
        left = list(view.unloading)
        waiting = {m: v for m, v in view.unload_waiting.items() if m in left}
        if self.talk_to_pods and view.endpoints.control:
            status = self.runtime.status(view.endpoints.control)
            if status is None:
                return
            hosted = {str(e.get("name")): str(e.get("state")) for e in status.get("models", ())}
            since = _float(view.annotations.get(UNLABELLED_AT), 0.0)
            if waiting and self._left_services(view, sorted(waiting), since, now):
                waiting = {}  # phase 2: the loop below asks the runtime
            for name in list(left):
                served = waiting.get(name) or next(
                    (e.get("servedName") or name for e in view.entries
                     if e["modelService"] == name), name)
                if served not in hosted and name not in hosted:
                    left.remove(name)
                    waiting.pop(name, None)
                elif name not in waiting and hosted.get(served) != "draining":
                    self.runtime.unload(view.endpoints.control, served)
        else:
            left, waiting = [], {}
        if left != list(view.unloading) or waiting != view.unload_waiting:
            self.kube.patch("ServingGroup", view.namespace, view.name, {"metadata": {
                "annotations": {UNLOADING: ",".join(left) or None,
                                UNLOAD_WAITING: ",".join(f"{m}={v}" for m, v
                                                         in sorted(waiting.items())) or None,
                                **({} if waiting else {UNLABELLED_AT: None})}}})

    def _put_to_sleep(self, view: GroupObj) -> None:
        """Put a warm standby's preloaded model to sleep (GPU engines); an engine that cannot
        sleep (the runtime answers 409: sim, vLLM on CPU) stays loaded, unrouted."""
        if not self.talk_to_pods or not view.endpoints.control:
            return
        entry = view.entries[0]
        code = self.runtime.sleep(view.endpoints.control,
                                  entry.get("servedName") or entry["modelService"])
        if code == 200:
            state = "asleep"
            self.kube.patch("ServingGroup", view.namespace, view.name, {"spec": {"models": [
                {**entry, "sleeping": True}]}})
        elif code == 409:
            state = "unsupported"
        else:
            return  # not reachable yet: try again next cycle
        self.kube.patch("ServingGroup", view.namespace, view.name,
                        {"metadata": {"annotations": {SLEEP: state}}})

    def _finish_claim(self, view: GroupObj, hosted: Sequence[Hosted],
                      now: float) -> None:
        model = hosted[0].model
        if not self._engine_ready(view, hosted[0]):
            return
        self.kube.patch("Pod", view.namespace, view.name,
                        {"metadata": {"labels": {model_label(model.name): "true"}}})
        claimed = float(view.annotations.get(CLAIMED_AT, now))
        took = max(0.0, now - claimed)
        self.metrics.claim_seconds.observe(took)
        self._group_status(view.namespace, view.name, "Ready", iso(now), [model.name],
                           message=f"claimed from the warm pool; ready {took:.2f} s after "
                                   "the claim")

    def _load(self, view: GroupObj, hosted: Hosted) -> None:
        if self.talk_to_pods and view.endpoints.control:
            self.runtime.load(view.endpoints.control,
                              runtime_model(hosted.model, view.tp, view.pp))

    def _finish_drain(self, view: GroupObj, now: float) -> None:
        """Phase 2 of a drain once the Services dropped the pod (ask the runtime to drain),
        then delete the group once nothing is in flight (or after :data:`DRAIN_GIVE_UP_S`)."""
        done = view.pod is None or not self.talk_to_pods or not view.endpoints.control
        if not done and view.endpoints.control:
            asked = view.annotations.get(DRAIN_ASKED)
            if asked is None:
                started = _float(view.annotations.get(DRAIN_STARTED), 0.0)
                if self._left_services(view, view.models, started, now):
                    self.runtime.drain(view.endpoints.control)
                    self.kube.patch("ServingGroup", view.namespace, view.name, {
                        "metadata": {"annotations": {DRAIN_ASKED: f"{now:.3f}"}}})
                return  # the next cycle sees the runtime draining
            status = self.runtime.status(view.endpoints.control)
            done = (status is None or status.get("state") == "drained"
                    or not status.get("inFlight")
                    or now - _float(asked, now) > DRAIN_GIVE_UP_S)
        if done:
            self._delete(view)

    def _delete(self, view: GroupObj) -> None:
        self.kube.delete("Pod", view.namespace, view.name)
        self.kube.delete("ServingGroup", view.namespace, view.name)

    def _create_pod(self, namespace: str, name: str, uid: str, node: str, tp: int, pp: int,
                    hosted: Sequence[Hosted], warm: bool) -> None:
        config = [runtime_model(h.model, tp, pp) for h in hosted]
        if (device_class := self.pool_spec.gpu.device_class_name) is not None:  # DRA
            self.kube.create(claim_template_manifest(namespace, name, uid, device_class, tp * pp))
        self.kube.create(pod_manifest(
            self.settings, namespace, name, self.pool, self.pool_spec, node, tp, pp, config,
            [] if warm else [h.model.name for h in hosted], warm, uid,
            image=self.pool_spec.warm_pool.image if warm else None))
        self.pods_made[f"{namespace}/{name}"] = time.monotonic()

    def _group_status(self, namespace: str, name: str, phase: str, ready_since: str | None,
                      models: Sequence[str], message: str | None = None) -> None:
        status: dict[str, Any] = {"phase": phase, "podName": name, "models": ",".join(models)}
        if ready_since:
            status["readySince"] = ready_since
        if message:  # only a claim says more; it became Ready when its ready_since says
            status["conditions"] = [{"type": "Ready", "status": "True", "reason": "WarmClaim",
                                     "message": message, "lastTransitionTime": ready_since}]
        self.kube.patch("ServingGroup", namespace, name, {"status": status}, status=True)
