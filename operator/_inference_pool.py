"""One Gateway API Inference Extension ``InferencePool`` per served ModelService (opt-in).

With ``KUBEPLEX_INFERENCE_POOLS=true`` (chart: ``inferencePool.enabled``; the CRD
``inferencepools.inference.networking.k8s.io`` must be installed) the operator keeps, beside each
served ModelService's Service, an ``inference.networking.k8s.io/v1`` InferencePool of the same
name, owned by the ModelService (so it goes away with it):

* ``selector``: the ModelService's pod label ``model.kubeplex.io/<name>: "true"``, which the
  operator puts on a pod only once that model's engine is loaded and awake there and takes off
  before the model leaves (scale-down, unload, drain: phase 1 of the two-phase scale-down). A
  warm standby is not in the pool until a claim has loaded and woken the model; a pod being
  drained leaves the pool before its runtime stops serving;
* ``targetPorts``: the runtime router's port (``KUBEPLEX_RUNTIME_PORT``), which serves
  ``/v1/*`` and ``/metrics`` (``?model=`` scopes the metrics to this model for the picker);
* ``endpointPickerRef``: the Service of the endpoint picker (EPP) the pool's gateway asks,
  ``KUBEPLEX_INFERENCE_POOL_EPP`` (``{name}-epp:9002``: one EPP per pool, as the upstream
  ``inferencepool`` chart deploys it).

A ModelService that is not served (refused, Degraded) has no pool: one the operator made for it
is deleted (only one it owns). See docs/gateway.md for putting kubeplex behind an Inference
Extension gateway.
"""

from __future__ import annotations

from typing import Any

from kubeplex.operator._builders import MANAGED_BY, model_label, owner_ref
from kubeplex.operator._kube import KubeApi
from kubeplex.operator._settings import Settings

__all__ = ["INFERENCE_API", "inference_pool_manifest", "sync_inference_pool"]

INFERENCE_API = "inference.networking.k8s.io/v1"


def inference_pool_manifest(settings: Settings, namespace: str, msvc: str,
                            uid: str) -> dict[str, Any]:
    """The InferencePool of ModelService ``msvc`` (see the module doc)."""
    service, _, port = settings.inference_pool_epp.replace("{name}", msvc).rpartition(":")
    return {
        "apiVersion": INFERENCE_API,
        "kind": "InferencePool",
        "metadata": {"name": msvc, "namespace": namespace,
                     "labels": {MANAGED_BY[0]: MANAGED_BY[1]},
                     "ownerReferences": [owner_ref("ModelService", msvc, uid)]},
        "spec": {"selector": {"matchLabels": {model_label(msvc): "true"}},
                 "targetPorts": [{"number": settings.runtime_port}],
                 "endpointPickerRef": {"name": service, "port": {"number": int(port)}}},
    }


def sync_inference_pool(kube: KubeApi, settings: Settings, namespace: str, msvc: str, uid: str,
                        want: bool) -> None:
    """Create (or bring up to date) the ModelService's pool when served, else delete ours."""
    if not settings.inference_pools:
        return
    if not want:
        kube.delete_owned("InferencePool", namespace, msvc, uid)
        return
    body = inference_pool_manifest(settings, namespace, msvc, uid)
    if kube.create(body) is None:  # it exists: make its spec ours (settings may have changed)
        kube.patch("InferencePool", namespace, msvc, {"spec": body["spec"]})
