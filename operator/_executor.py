"""Applies a fleet plan (:mod:`kubeplex.operator.planning`) and moves groups through their life.

A group's phase is derived each cycle from its objects (so a restarted operator picks up
where the last one stopped): ``Pending`` (no pod, or not scheduled), ``Loading`` (pod starting,
or a claimed warm pod loading its model), ``Ready``, ``Warm`` (an unclaimed warm pod, ready),
``Draining`` (leaving: its pods carry no model label any more, the runtime finishes in-flight
requests, then group and pod are deleted).

Every step is idempotent: objects have deterministic names, creates tolerate 409, deletes 404,
and a claim is recorded on the group (``kubeplex.io/claimed-at``) before the pod is touched.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubeplex.api import GPUPoolSpec
from kubeplex.operator._builders import (
    WARM_LABEL,
    HostedModel,
    model_label,
    owner_ref,
    pod_manifest,
    runtime_model,
    serving_group_manifest,
)
from kubeplex.operator._kube import KubeApi
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._runtime_client import PodEndpoints, RuntimeClient
from kubeplex.operator._settings import Settings
from kubeplex.operator._status import iso
from kubeplex.operator.planning import ReplicaTemplate

__all__ = ["CLAIMED_AT", "DRAIN_STARTED", "Executor", "GroupObj", "Hosted", "pod_ready"]

log = logging.getLogger("kubeplex.operator")

CLAIMED_AT = "kubeplex.io/claimed-at"
DRAIN_STARTED = "kubeplex.io/drain-started"
#: A drain gives up waiting for the runtime after this long (the runtime's own default grace
#: is 30 s; the pod's terminationGracePeriodSeconds covers the rest on delete).
DRAIN_GIVE_UP_S = 45.0


@dataclass(frozen=True)
class Hosted:
    """A model a group hosts: runtime view, replica template, latency profile, owner uid."""

    model: HostedModel
    template: ReplicaTemplate
    profile: str
    uid: str


def _epoch(stamp: str | None, default: float) -> float:
    if not stamp:
        return default
    try:
        return float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return default


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

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @classmethod
    def of(cls, group: Mapping[str, Any], pod: Mapping[str, Any] | None,
           settings: Settings) -> GroupObj:
        meta, spec, status = group["metadata"], group["spec"], group.get("status") or {}
        annotations = meta.get("annotations") or {}
        models = tuple(m["modelService"] for m in spec.get("models") or ())
        warm = bool(spec.get("warm")) and not models
        if meta.get("deletionTimestamp") or status.get("phase") == "Draining":
            phase = "Draining"
        elif pod is None or not pod.get("node"):
            phase = "Pending"
        elif not pod_ready(pod):
            phase = "Loading"
        elif warm:
            phase = "Warm"
        elif any(model_label(m) not in (pod.get("labels") or {}) for m in models):
            phase = "Loading"  # a claimed warm pod still loading its model
        else:
            phase = "Ready"
        now = time.time()
        return cls(meta["namespace"], meta["name"], meta.get("uid", ""),
                   spec.get("nodeName") or "", int(spec["tensorParallel"]),
                   int(spec["pipelineParallel"]), models, warm, phase, status.get("phase"),
                   _epoch(meta.get("creationTimestamp"), now), annotations, pod,
                   PodEndpoints.of(settings, pod.get("ip") if pod else None,
                                   (pod or {}).get("annotations") or {}),
                   status.get("readySince"))


class Executor:
    def __init__(self, settings: Settings, kube: KubeApi, runtime: RuntimeClient,
                 metrics: OperatorMetrics, pool: str, pool_spec: GPUPoolSpec) -> None:
        self.settings, self.kube, self.runtime, self.metrics = settings, kube, runtime, metrics
        self.pool, self.pool_spec = pool, pool_spec
        # No HTTP to pods when signals are off (fake clusters whose pods run nothing).
        self.talk_to_pods = settings.scrape != "off"

    # ---- plan steps ----------------------------------------------------------------------
    def start(self, namespace: str, name: str, node: str, tp: int, pp: int,
              hosted: Sequence[Hosted], warm: bool, pool_uid: str) -> None:
        """Create a group (a warm standby when ``warm``: ``hosted`` is then not routed)."""
        serving = [] if warm else list(hosted)
        owners = ([owner_ref("ModelService", h.model.name, h.uid, controller=i == 0)
                   for i, h in enumerate(serving)] if serving
                  else [owner_ref("GPUPool", self.pool, pool_uid)])
        body = serving_group_manifest(namespace, name, self.pool, node, tp, pp,
                                      [h.model for h in serving], warm, owners)
        created = self.kube.create(body)
        if created is None:
            return  # exists already (an earlier, interrupted cycle): advance() finishes it
        self.metrics.cold_starts.labels(pool=self.pool).inc()
        self._create_pod(namespace, name, created["metadata"]["uid"], node, tp, pp, serving,
                         warm)
        self._group_status(namespace, name, "Pending", None, [h.model.name for h in serving])

    def claim(self, view: GroupObj, hosted: Sequence[Hosted],
              reason: str, now: float) -> None:
        if len(hosted) != 1:
            return
        model, uid = hosted[0].model, hosted[0].uid
        self.kube.patch("ServingGroup", view.namespace, view.name, {
            "metadata": {"labels": {WARM_LABEL: None},
                         "annotations": {CLAIMED_AT: f"{now:.3f}"},
                         "ownerReferences": [owner_ref("ModelService", model.name, uid)]},
            "spec": {"warm": False, "models": [{"modelService": model.name,
                                                "servedName": model.served_name,
                                                "memoryShare": model.memory_share}]}})
        if view.pod is not None:
            self.kube.patch("Pod", view.namespace, view.name,
                            {"metadata": {"labels": {WARM_LABEL: None}}})
        self.metrics.warm_claims.labels(pool=self.pool).inc()
        self.kube.event("ModelService", view.namespace, model.name, uid, "WarmClaim", reason)
        self._group_status(view.namespace, view.name, "Loading", view.ready_since, [model.name])
        self._load(view, hosted[0])

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
            if self.talk_to_pods and view.endpoints.control:
                self.runtime.drain(view.endpoints.control)
            log.info("draining %s/%s: %s", view.namespace, view.name, reason)
            if not self.talk_to_pods or view.pod is None:
                self._delete(view)
            return
        self._finish_drain(view, now)

    # ---- lifecycle -------------------------------------------------------------------------
    def advance(self, view: GroupObj, hosted: Sequence[Hosted],
                now: float) -> None:
        if view.phase == "Draining":
            self._finish_drain(view, now)
            return
        if view.pod is None:
            if view.models and len(hosted) != len(view.models):
                return  # its model is gone: the plan drains it
            self._create_pod(view.namespace, view.name, view.uid, view.node, view.tp, view.pp,
                             hosted, view.warm)
        elif view.phase == "Loading" and CLAIMED_AT in view.annotations and hosted:
            self._finish_claim(view, hosted, now)
            return
        if view.phase != view.old_phase:
            since = iso(now) if view.phase in ("Ready", "Warm") else view.ready_since
            self._group_status(view.namespace, view.name, view.phase, since, list(view.models))

    def _finish_claim(self, view: GroupObj, hosted: Sequence[Hosted],
                      now: float) -> None:
        model = hosted[0].model
        if self.talk_to_pods:
            if not view.endpoints.control:
                return
            status = self.runtime.status(view.endpoints.control)
            engines = {e.get("name"): e for e in (status or {}).get("models", ())}
            engine = engines.get(model.served_name)
            if engine is None:
                self._load(view, hosted[0])  # a restart lost the request: ask again
                return
            if engine.get("state") != "ready":
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
                              runtime_model(hosted.model, view.tp, view.pp, hosted.profile))

    def _finish_drain(self, view: GroupObj, now: float) -> None:
        started = float(view.annotations.get(DRAIN_STARTED, now))
        done = view.pod is None or not self.talk_to_pods or not view.endpoints.control
        if not done and view.endpoints.control:
            status = self.runtime.status(view.endpoints.control)
            done = (status is None or status.get("state") == "drained"
                    or not status.get("inFlight") or now - started > DRAIN_GIVE_UP_S)
        if done:
            self._delete(view)

    def _delete(self, view: GroupObj) -> None:
        self.kube.delete("Pod", view.namespace, view.name)
        self.kube.delete("ServingGroup", view.namespace, view.name)

    def _create_pod(self, namespace: str, name: str, uid: str, node: str, tp: int, pp: int,
                    hosted: Sequence[Hosted], warm: bool) -> None:
        config = [runtime_model(h.model, tp, pp, h.profile) for h in hosted]
        self.kube.create(pod_manifest(
            self.settings, namespace, name, self.pool, self.pool_spec, node, tp, pp, config,
            [h.model.name for h in hosted], warm, uid, image=self.pool_spec.warm_pool.image
            if warm else None))

    def _group_status(self, namespace: str, name: str, phase: str, ready_since: str | None,
                      models: Sequence[str], message: str | None = None) -> None:
        status: dict[str, Any] = {"phase": phase, "podName": name, "models": ",".join(models)}
        if ready_since:
            status["readySince"] = ready_since
        if message:
            status["conditions"] = [{"type": "Ready", "status": "True", "reason": "WarmClaim",
                                     "message": message, "lastTransitionTime": iso(time.time())}]
        self.kube.patch("ServingGroup", namespace, name, {"status": status}, status=True)
