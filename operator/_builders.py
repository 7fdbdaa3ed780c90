"""Pure builders of the objects the operator writes: ServingGroups, their pods, Services.

Every function returns a plain manifest (a dict the API accepts) from typed inputs, so the
shapes are unit-tested without a cluster and the executor only sends them.

Labels (the contract other components rely on):

* ``app.kubernetes.io/managed-by: kubeplex`` on everything the operator creates;
* ``kubeplex.io/pool``, ``kubeplex.io/group`` on groups and pods;
* ``kubeplex.io/warm: "true"`` on warm-pool pods not yet claimed;
* ``model.kubeplex.io/<ModelService name>: "true"`` on a pod once it serves that model. The
  ModelService's Service and its ``status.selector`` (hence ``/scale``) select on it, so a pod
  joins a model's Service exactly when this label appears.

A model's LoRA adapters (``spec.adapters``) go into its runtime config entry (``adapters``, with
the same sources as the model: pvc:// mounted, s3:// refused); the group records what its pod's
runtime was given in the ``kubeplex.io/adapters`` annotation (:func:`adapters_fingerprint`), so
a later change of ``spec.adapters`` is noticed (:mod:`kubeplex.operator._adapters`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubeplex.api import API_VERSION, Adapter, GPUPoolSpec
from kubeplex.control import ResolvedModel, UnsupportedSourceError
from kubeplex.operator._dra import use_claim
from kubeplex.operator._settings import Settings

__all__ = [
    "ADAPTERS",
    "GROUP_LABEL",
    "MANAGED_BY",
    "POOL_LABEL",
    "RUNTIME_CONFIG_ENV",
    "WARM_LABEL",
    "adapters_fingerprint",
    "model_label",
    "owner_ref",
    "pod_manifest",
    "runtime_adapters",
    "runtime_model",
    "selector",
    "service_manifest",
    "serving_group_manifest",
]

MANAGED_BY = ("app.kubernetes.io/managed-by", "kubeplex")
POOL_LABEL = "kubeplex.io/pool"
GROUP_LABEL = "kubeplex.io/group"
WARM_LABEL = "kubeplex.io/warm"
MODEL_LABEL_PREFIX = "model.kubeplex.io/"
#: On a ServingGroup: the fingerprint of the adapters its pod's runtime serves.
ADAPTERS = "kubeplex.io/adapters"
#: Hex digits of that fingerprint (a sha256 prefix: enough to tell two adapter lists apart).
FINGERPRINT_DIGITS = 16
#: The env var carrying the runtime config (JSON) into the pod; no ConfigMap, no extra RBAC.
RUNTIME_CONFIG_ENV = "KUBEPLEX_RUNTIME_CONFIG"
#: Where the pod writes that config for `kubeplex-runtime --config`.
RUNTIME_CONFIG_PATH = "/tmp/kubeplex-runtime.json"
#: The label name part is at most 63 characters (Kubernetes label syntax).
LABEL_NAME_MAX = 63
#: Where pvc:// model volumes are mounted in serving pods.
MODELS_MOUNT = "/models"
#: Readiness probe timings: the runtime answers /readyz 200 once every engine is ready.
READINESS_PERIOD_S = 2
#: Liveness allows a slow start (weights, CUDA graphs); /healthz answers while the process runs.
LIVENESS_PERIOD_S = 10
LIVENESS_FAILURES = 6
#: Seconds the kubelet waits after SIGTERM: the runtime drains in-flight requests first.
TERMINATION_GRACE_S = 60


def model_label(msvc: str) -> str:
    """``model.kubeplex.io/<name>``; names over 63 characters keep a prefix and a hash."""
    if len(msvc) > LABEL_NAME_MAX:
        digest = hashlib.sha256(msvc.encode()).hexdigest()[:8]
        msvc = f"{msvc[: LABEL_NAME_MAX - 9]}-{digest}"
    return MODEL_LABEL_PREFIX + msvc


def selector(msvc: str) -> str:
    """The ModelService's ``status.selector`` (a label selector string)."""
    return f"{model_label(msvc)}=true"


def owner_ref(kind: str, name: str, uid: str, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "name": name, "uid": uid,
            "controller": controller, "blockOwnerDeletion": True}


def _model_path(uri: str, field: str = "spec.model.uri") -> str:
    if uri.startswith("pvc://"):
        return f"{MODELS_MOUNT}/{uri.removeprefix('pvc://')}"
    if uri.startswith("s3://"):
        raise UnsupportedSourceError(
            f"{field} {uri!r}: the runtime loads hf://, file:// and pvc:// sources; "
            "copy the weights to a PersistentVolumeClaim and use pvc://CLAIM/PATH")
    return uri


def _adapter_path(uri: str) -> str:
    return _model_path(uri, "spec.adapters[].uri")


def runtime_adapters(adapters: Sequence[Adapter], engine: str,
                     path_of: Callable[[str], str]) -> list[dict[str, Any]]:
    """A model's ``adapters`` entry of the runtime config: ``path_of`` turns a vllm adapter's
    URI into what the runtime loads (the sim takes the URI as written)."""
    return [{"name": a.name, "path": a.uri if engine == "sim" else path_of(a.uri),
             "rank": a.rank} for a in adapters]


def adapters_fingerprint(models: Sequence[ResolvedModel]) -> str:
    """A short digest of the adapters of ``models`` ("" when none has any)."""
    pairs = [(m.served_name, [(a.name, a.uri, a.rank) for a in m.spec.adapters])
             for m in models if m.spec.adapters]
    if not pairs:
        return ""
    text = json.dumps(sorted(pairs), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_DIGITS]


def runtime_model(m: ResolvedModel, tp: int, pp: int) -> dict[str, Any]:
    """One entry of the runtime config's ``models`` (also the control API's load body)."""
    spec = m.spec
    return {
        "name": m.served_name,
        "engine": spec.engine,
        "model": m.shape.name if spec.engine == "sim" else _model_path(spec.model.uri),
        "tensorParallel": tp,
        "pipelineParallel": pp,
        "memoryShare": m.memory_share,
        "maxModelLen": spec.model.max_model_len,
        "adapters": runtime_adapters(spec.adapters, spec.engine, _adapter_path),
        "args": [*(["--dtype", spec.model.dtype] if spec.engine == "vllm" else []),
                 *spec.model.engine_args],
    }


def serving_group_manifest(namespace: str, name: str, pool: str, node: str, tp: int, pp: int,
                           models: Sequence[ResolvedModel], warm: bool,
                           owners: Sequence[dict[str, Any]]) -> dict[str, Any]:
    fingerprint = adapters_fingerprint(models)
    return {
        "apiVersion": API_VERSION,
        "kind": "ServingGroup",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {MANAGED_BY[0]: MANAGED_BY[1], POOL_LABEL: pool,
                                **({WARM_LABEL: "true"} if warm else {})},
                     **({"annotations": {ADAPTERS: fingerprint}} if fingerprint else {}),
                     "ownerReferences": list(owners)},
        "spec": {"pool": pool, "nodeName": node, "gpus": tp * pp, "tensorParallel": tp,
                 "pipelineParallel": pp, "warm": warm,
                 "models": [{"modelService": m.name, "servedName": m.served_name,
                             "memoryShare": m.memory_share} for m in models]},
    }


def pod_manifest(settings: Settings, namespace: str, name: str, pool: str, pool_spec: GPUPoolSpec,
                 node: str, tp: int, pp: int, config_models: Sequence[dict[str, Any]],
                 serving: Sequence[str], warm: bool, group_uid: str,
                 image: str | None = None) -> dict[str, Any]:
    """The pod of one group: the runtime with the group's config, pinned to the planned node,
    with the group's GPUs as the pool's extended resource or, for a DRA pool, a claim from the
    group's ResourceClaimTemplate (:mod:`kubeplex.operator._dra`).

    ``serving``: ModelService names whose model label the pod carries from the start (a cold
    pod serves its models once its readiness probe passes; a claimed warm pod gets the label
    only after the model is loaded).
    """
    gpus = tp * pp
    resource = pool_spec.gpu.resource_name
    config = {"models": list(config_models), "gpu": pool_spec.gpu.product}
    labels = {MANAGED_BY[0]: MANAGED_BY[1], POOL_LABEL: pool, GROUP_LABEL: name,
              **{model_label(m): "true" for m in serving}}
    if warm:
        labels[WARM_LABEL] = "true"
    volumes, mounts = [], []
    sources = [str(m["model"]) for m in config_models]
    sources += [str(a["path"]) for m in config_models for a in m.get("adapters") or ()]
    claims = sorted({path.split("/")[2] for path in sources
                     if path.startswith(MODELS_MOUNT + "/")})
    for i, claim in enumerate(claims):
        volumes.append({"name": f"models-{i}", "persistentVolumeClaim": {
            "claimName": claim, "readOnly": True}})
        mounts.append({"name": f"models-{i}", "mountPath": f"{MODELS_MOUNT}/{claim}",
                       "readOnly": True})
    tolerations = [{k: v for k, v in {
        "key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect,
        "tolerationSeconds": t.toleration_seconds}.items() if v is not None}
        for t in pool_spec.tolerations]
    port, control = settings.runtime_port, settings.control_port
    container = {
        "name": "runtime",
        "image": image or settings.runtime_image,
        "command": ["/bin/sh", "-c",
                    f'printf "%s" "${RUNTIME_CONFIG_ENV}" > {RUNTIME_CONFIG_PATH} && exec '
                    f"kubeplex-runtime --config {RUNTIME_CONFIG_PATH} --host 0.0.0.0 "
                    f"--port {port} --control-port {control}"],
        "env": [{"name": RUNTIME_CONFIG_ENV, "value": json.dumps(config, sort_keys=True)}],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"},
                  {"name": "control", "containerPort": control, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "control"},
                           "periodSeconds": READINESS_PERIOD_S},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "control"},
                          "periodSeconds": LIVENESS_PERIOD_S,
                          "failureThreshold": LIVENESS_FAILURES},
        "resources": {"requests": {"cpu": settings.cpu_request,
                                   "memory": settings.memory_request, resource: str(gpus)},
                      "limits": {resource: str(gpus)}},
        "volumeMounts": mounts,
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "labels": labels,
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(port)},
            "ownerReferences": [owner_ref("ServingGroup", name, group_uid)],
        },
        "spec": {
            "containers": [container],
            "volumes": volumes,
            "tolerations": tolerations,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [{
                    "key": "metadata.name", "operator": "In", "values": [node]}]}]}}},
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        },
    }
    if pool_spec.gpu.device_class_name is not None:  # DRA: the group's claim template
        return use_claim(pod, resource, name)
    return pod


def service_manifest(namespace: str, msvc: str, uid: str, port: int,
                     labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ModelService's Service: port 80 (http) to the runtime's router on its pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": msvc, "namespace": namespace,
                     "labels": {MANAGED_BY[0]: MANAGED_BY[1], **(labels or {})},
                     "ownerReferences": [owner_ref("ModelService", msvc, uid)]},
        "spec": {"selector": {model_label(msvc): "true"},
                 "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]},
    }
