"""An in-memory fake of the operator's Kubernetes writes and builders of the plain objects
kopf's indices hold, for unit tests of the pool cycle (tests/unit/operator). The fake makes
every pod scheduled and ready on its planned node (as KWOK does)."""


from __future__ import annotations

import copy
import datetime
from collections.abc import Callable
from typing import Any

from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._placement import Templates
from kubeplex.operator._reconcile import Context, Snapshot
from kubeplex.operator._runtime_client import RuntimeClient
from kubeplex.operator._settings import Settings

NOW = 1_800_000_000.0


class FakeKube:
    """Objects by (kind, namespace, name); every write is recorded. ``clock``: what stamps a
    created object (default: :data:`NOW`)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or (lambda: NOW)
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.events: list[tuple[str, str]] = []

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if key in self.objects:
            return None
        stored = copy.deepcopy(obj)
        stored["metadata"]["uid"] = f"uid-{key[2]}"
        stored["metadata"]["creationTimestamp"] = datetime.datetime.fromtimestamp(
            self.clock(), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.objects[key] = stored
        self.writes.append(("create", key[0], key[2]))
        return stored

    def patch(self, kind: str, namespace: str | None, name: str, body: dict[str, Any],
              status: bool = False) -> None:
        key = (kind, namespace, name)
        if key not in self.objects:
            return
        _merge(self.objects[key], body)
        self.writes.append(("patch-status" if status else "patch", kind, name))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        if self.objects.pop((kind, namespace, name), None) is not None:
            self.writes.append(("delete", kind, name))

    def event(self, obj_kind: str, namespace: str | None, name: str, uid: str, reason: str,
              message: str, warning: bool = False) -> None:
        self.events.append((reason, message))

    def endpoint_pods(self, namespace: str, service: str) -> set[str] | None:
        return set()  # every EndpointSlice update has arrived

    def delete_owned_service(self, namespace: str, name: str, owner_uid: str) -> None:
        svc = self.objects.get(("Service", namespace, name))
        if svc and any(r.get("uid") == owner_uid
                       for r in svc["metadata"].get("ownerReferences") or ()):
            self.delete("Service", namespace, name)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for (k, _n, _m), o in sorted(self.objects.items()) if k == kind]


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, dict):  # a merge patch: nulls delete, also in a new object
            if not isinstance(into.get(k), dict):
                into[k] = {}
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def nodes(n: int, gpus: int = 8) -> list[dict[str, Any]]:
    return [{"name": f"node-{i}", "labels": {"gpu": "h100"},
             "allocatable": {"nvidia.com/gpu": str(gpus)}, "ready": True} for i in range(n)]


def pool(warm: int = 0, max_gpus: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeSelector": {"gpu": "h100"}, "gpu": {
        "product": "H100-80GB", "resourceName": "nvidia.com/gpu"}, "gpusPerNode": 8,
        "tolerations": [], "warmPool": {"size": warm, "gpusPerPod": 1, "preloadModels": []}}
    if max_gpus is not None:
        spec["maxGPUs"] = max_gpus
    return {"metadata": {"name": "p", "uid": "pool-uid", "generation": 1}, "spec": spec,
            "status": {}}


def msvc(name: str, replicas: int | None, ns: str = "ns", **model: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}",
                         "generation": 1},
            "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                               "profile": "llama-3.1-8b", "dtype": "auto", "engineArgs": [],
                               **model},
                     "engine": "sim", "pool": "p",
                     "slo": {"ttftSeconds": 0.5, "percentile": 95, "attainment": 0.99},
                     "scaling": {"minReplicas": 0, "maxReplicas": 8, "replicas": replicas,
                                 "prewarm": 0, "scaleToZeroAfterSeconds": 300,
                                 "targetQueuePerReplica": 8},
                     "workload": {"requestsPerSecond": 1, "burstiness": 1, "promptTokens": 512,
                                  "outputTokens": 128},
                     "parallelism": {"tensor": 1, "pipeline": 1}, "priority": 100},
            "status": {}}


def snapshot(kube: FakeKube, pool_obj: dict[str, Any], msvcs: list[dict[str, Any]],
             node_list: list[dict[str, Any]]) -> Snapshot:
    """What kopf's indices would hold: the fake's groups and (ready) pods."""
    groups = kube.of("ServingGroup")
    pods = {}
    for p in kube.of("Pod"):
        meta = p["metadata"]
        pods[(meta["namespace"], meta["name"])] = {
            "name": meta["name"], "namespace": meta["namespace"],
            "node": p["spec"]["affinity"]["nodeAffinity"][
                "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
                "matchFields"][0]["values"][0],
            "labels": meta["labels"], "annotations": meta.get("annotations", {}),
            "ip": "10.0.0.1", "ready": True, "deleting": False, "managed": True,
            "done": False, "gpus": {}}
    for m in msvcs:  # statuses written by earlier cycles
        stored = kube.objects.get(("ModelService", m["metadata"]["namespace"],
                                   m["metadata"]["name"]))
        if stored:
            m["status"] = copy.deepcopy(stored.get("status", {}))
    stored_pool = kube.objects.get(("GPUPool", None, "p"))
    if stored_pool:
        pool_obj["status"] = copy.deepcopy(stored_pool.get("status", {}))
    names: dict[str, set[str]] = {}
    for g in groups:
        names.setdefault(g["metadata"]["namespace"], set()).add(g["metadata"]["name"])
    return Snapshot(pool_obj, msvcs, groups, node_list, {}, pods, names)


def context(kube: FakeKube) -> Context:
    settings = Settings(scrape="off")
    return Context(settings, kube, RuntimeClient(settings), OperatorMetrics(),
                   templates=Templates(background=False))


def register(kube: FakeKube, *objs: dict[str, Any]) -> None:
    for o in objs:
        kube.objects[("ModelService", o["metadata"]["namespace"], o["metadata"]["name"])] = \
            copy.deepcopy(o)
    kube.objects[("GPUPool", None, "p")] = pool()


