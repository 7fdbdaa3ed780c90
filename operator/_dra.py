"""GPUs through Dynamic Resource Allocation (``resource.k8s.io/v1``) instead of a device plugin.

A GPUPool with ``spec.gpu.deviceClassName`` takes its GPUs as ResourceClaims (pure builders
here, no I/O):

* each serving group gets a ResourceClaimTemplate of its own name (owned by its ServingGroup,
  so it goes with it) asking for exactly ``tensor x pipeline`` devices of that DeviceClass
  (:func:`claim_template_manifest`);
* its pod names the template in ``spec.resourceClaims`` and the runtime container uses the
  claim (``resources.claims``) instead of requesting the extended resource
  (:func:`use_claim`); the controller-manager makes the pod's ResourceClaim from the template,
  and the scheduler allocates devices on the planned node before binding the pod;
* a node's GPUs are the devices the pool's driver publishes for it in ResourceSlices, counting
  each pool of slices at its newest generation only (:func:`node_devices`; the DRA rule for a
  pool being republished).

Limits: other workloads' claims on the same devices are not subtracted from a node's count
(the scheduler still refuses to double-allocate: such a pod stays Pending and the next cycle
sees it), and every device of the driver counts as one GPU (DeviceClass selectors are not
evaluated).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubeplex.api import API_VERSION

__all__ = ["CLAIM_NAME", "RESOURCE_API", "claim_template_manifest", "node_devices", "use_claim"]

RESOURCE_API = "resource.k8s.io/v1"
#: The pod's name for its GPU claim (``spec.resourceClaims[].name``), also the request's.
CLAIM_NAME = "gpus"


def claim_template_manifest(namespace: str, group: str, group_uid: str, device_class: str,
                            gpus: int) -> dict[str, Any]:
    """The ResourceClaimTemplate of one serving group: ``gpus`` devices of ``device_class``."""
    return {
        "apiVersion": RESOURCE_API,
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": group, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "kubeplex"},
                     "ownerReferences": [{"apiVersion": API_VERSION, "kind": "ServingGroup",
                                          "name": group, "uid": group_uid, "controller": True,
                                          "blockOwnerDeletion": True}]},
        "spec": {"spec": {"devices": {"requests": [{
            "name": CLAIM_NAME,
            "exactly": {"deviceClassName": device_class, "allocationMode": "ExactCount",
                        "count": gpus}}]}}},
    }


def use_claim(pod: dict[str, Any], resource_name: str, template: str) -> dict[str, Any]:
    """``pod`` taking its GPUs from a claim made from ``template`` instead of requesting the
    extended resource ``resource_name`` (a new manifest; the input is not changed)."""
    spec = dict(pod["spec"])
    containers = []
    for c in spec["containers"]:
        resources = {kind: {k: v for k, v in (c.get("resources") or {}).get(kind, {}).items()
                            if k != resource_name}
                     for kind in ("requests", "limits")}
        containers.append({**c, "resources": {**resources, "claims": [{"name": CLAIM_NAME}]}})
    spec["containers"] = containers
    spec["resourceClaims"] = [{"name": CLAIM_NAME, "resourceClaimTemplateName": template}]
    return {**pod, "spec": spec}


def node_devices(slices: Iterable[Mapping[str, Any]], driver: str) -> dict[str, int]:
    """Devices of ``driver`` per node in these ResourceSlices (plain API dicts): slices of one
    pool count at the pool's newest generation only; slices not tied to one node (shared
    devices: ``allNodes``, ``nodeSelector``) are not a node's GPUs."""
    pools: dict[str, tuple[int, list[Mapping[str, Any]]]] = {}
    for s in slices:
        spec = s.get("spec") or {}
        if spec.get("driver") != driver or not spec.get("nodeName"):
            continue
        pool = spec.get("pool") or {}
        name, generation = str(pool.get("name", "")), int(pool.get("generation", 0))
        newest, members = pools.get(name, (generation, []))
        if generation > newest:
            newest, members = generation, []
        if generation == newest:
            members.append(spec)
        pools[name] = (newest, members)
    counts: dict[str, int] = {}
    for _generation, members in pools.values():
        for spec in members:
            node = str(spec["nodeName"])
            counts[node] = counts.get(node, 0) + len(spec.get("devices") or ())
    return counts
