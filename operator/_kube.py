"""The Kubernetes writes the operator makes, behind one small interface.

:class:`Kube` is the only module that calls the ``kubernetes`` client, so the RBAC the
operator needs is the list of calls here (``tests/unit/test_operator_rbac.py`` checks the
Helm chart's rules against :data:`RBAC_NEEDED`). Every write is idempotent: create answers
409 -> fine, delete answers 404 -> fine.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from kubeplex.api import GROUP, VERSION
from kubeplex.operator._dra import node_devices
from kubeplex.operator.errors import OperatorError

__all__ = ["RBAC_INFERENCE_POOLS", "RBAC_NEEDED", "Kube", "KubeApi"]

log = logging.getLogger("kubeplex.operator")

#: (apiGroup, resource, verb) the operator's own calls need (kopf's watches add list/watch
#: of what it serves, patch for finalizers and its progress annotations, and events).
RBAC_NEEDED: frozenset[tuple[str, str, str]] = frozenset({
    # kopf: watch and annotate/finalize the served resources
    *((GROUP, r, v) for r in ("modelservices", "gpupools", "servinggroups")
      for v in ("list", "watch", "patch")),
    ("", "pods", "list"), ("", "pods", "watch"), ("", "nodes", "list"), ("", "nodes", "watch"),
    # this module
    (GROUP, "servinggroups", "create"), (GROUP, "servinggroups", "delete"),
    (GROUP, "servinggroups/status", "patch"), (GROUP, "modelservices/status", "patch"),
    (GROUP, "gpupools/status", "patch"),
    ("", "pods", "create"), ("", "pods", "patch"), ("", "pods", "delete"),
    ("", "services", "create"), ("", "services", "patch"), ("", "services", "get"),
    # a refused ModelService's Service (Kube.delete_owned_service)
    ("", "services", "delete"),
    ("", "events", "create"),
    # two-phase scale-down: has the model's Service dropped the pod yet (Kube.endpoint_pods);
    # every gateway replica's held requests (Kube.service_urls)
    ("discovery.k8s.io", "endpointslices", "list"),
    # GPUPools that take GPUs through DRA (operator/_dra.py): a claim template per group,
    # and the devices the drivers publish per node
    ("resource.k8s.io", "resourceclaimtemplates", "create"),
    ("resource.k8s.io", "resourceslices", "list"),
})
#: The calls of KUBEPLEX_INFERENCE_POOLS=true (operator/_inference_pool.py); the chart grants
#: them with inferencePool.enabled only.
RBAC_INFERENCE_POOLS: frozenset[tuple[str, str, str]] = frozenset(
    ("inference.networking.k8s.io", "inferencepools", verb)
    for verb in ("create", "patch", "get", "delete"))


class KubeApi(Protocol):
    """What the executor needs (a fake implements it in unit tests)."""

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None: ...
    def patch(self, kind: str, namespace: str | None, name: str, body: dict[str, Any],
              status: bool = False) -> None: ...
    def delete(self, kind: str, namespace: str, name: str) -> None: ...
    def event(self, obj_kind: str, namespace: str | None, name: str, uid: str, reason: str,
              message: str, warning: bool = False) -> None: ...
    def endpoint_pods(self, namespace: str, service: str) -> set[str] | None: ...
    def delete_owned_service(self, namespace: str, name: str, owner_uid: str) -> None: ...
    def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str) -> None: ...
    def device_counts(self, driver: str) -> dict[str, int] | None: ...


_PLURALS = {"ServingGroup": "servinggroups", "ModelService": "modelservices",
            "GPUPool": "gpupools"}
#: Namespaced kinds of other API groups the operator writes: kind -> (group, version, plural).
_FOREIGN = {"InferencePool": ("inference.networking.k8s.io", "v1", "inferencepools"),
            "ResourceClaimTemplate": ("resource.k8s.io", "v1", "resourceclaimtemplates")}
#: Writes whose answer the operator does not read: the client then skips turning the JSON
#: into its model objects (for a Pod that costs more CPU than the request itself).
NO_ANSWER: dict[str, Any] = {"_preload_content": False}


def _done(response: Any) -> None:
    """Read a raw answer (``NO_ANSWER``) to its end, so its connection goes back to the pool
    (an unread one would be dropped, and every write would pay a new TLS handshake)."""
    response.data  # noqa: B018 - reading it releases the connection


class Kube:
    """The real client (``kubernetes`` 37, synchronous; called from worker threads)."""

    def __init__(self, api_client: k8s.ApiClient, component: str = "kubeplex-operator",
                 on_write: Callable[[str, str], None] | None = None) -> None:
        """``on_write(verb, kind)`` is called before every write (the writes counter)."""
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.discovery = k8s.DiscoveryV1Api(api_client)
        self.component = component
        self.on_write = on_write or (lambda verb, kind: None)

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        kind, meta = obj["kind"], obj["metadata"]
        ns = meta.get("namespace")
        self.on_write("create", kind)
        try:
            if kind in _PLURALS:
                created: Any = self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, ns, _PLURALS[kind], obj, **NO_ANSWER)
                return dict(json.loads(created.data))
            if kind in _FOREIGN:
                group, version, plural = _FOREIGN[kind]
                try:
                    _done(self.custom.create_namespaced_custom_object(
                        group, version, ns, plural, obj, **NO_ANSWER))
                except ApiException as e:
                    if e.status == 404:
                        raise OperatorError(
                            f"the API server does not serve {plural}.{group}/{version} (404): "
                            f"install its CRD, or turn off what creates {kind}s") from None
                    raise
                return obj
            body: Any = obj  # the client accepts plain dicts as well as its models
            if kind == "Pod":
                _done(self.core.create_namespaced_pod(ns, body, **NO_ANSWER))
                return obj
            if kind == "Service":
                _done(self.core.create_namespaced_service(ns, body, **NO_ANSWER))
                return obj
        except ApiException as e:
            if e.status == 409:
                return None
            raise
        raise ValueError(f"cannot create kind {kind}")

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            svc = self.core.read_namespaced_service(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        out: Any = k8s.ApiClient().sanitize_for_serialization(svc)  # type: ignore[no-untyped-call]
        return dict(out)

    def patch(self, kind: str, namespace: str | None, name: str, body: dict[str, Any],
              status: bool = False) -> None:
        ns = namespace or "default"
        self.on_write("patch", f"{kind}/status" if status else kind)
        try:
            if kind == "GPUPool":
                _done(self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, "gpupools", name, body, **NO_ANSWER))
            elif kind in _PLURALS:
                fn = (self.custom.patch_namespaced_custom_object_status if status
                      else self.custom.patch_namespaced_custom_object)
                _done(fn(GROUP, VERSION, ns, _PLURALS[kind], name, body, **NO_ANSWER))
            elif kind == "Pod":
                _done(self.core.patch_namespaced_pod(name, ns, body, **NO_ANSWER))
            elif kind == "Service":
                _done(self.core.patch_namespaced_service(name, ns, body, **NO_ANSWER))
            elif kind in _FOREIGN:
                group, version, plural = _FOREIGN[kind]
                _done(self.custom.patch_namespaced_custom_object(group, version, ns, plural,
                                                                 name, body, **NO_ANSWER))
            else:
                raise ValueError(f"cannot patch kind {kind}")
        except ApiException as e:
            if e.status != 404:
                raise

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.on_write("delete", kind)
        try:
            if kind in _PLURALS:
                _done(self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, _PLURALS[kind], name,
                    propagation_policy="Background", **NO_ANSWER))
            elif kind == "Pod":
                _done(self.core.delete_namespaced_pod(name, namespace, **NO_ANSWER))
            else:
                raise ValueError(f"cannot delete kind {kind}")
        except ApiException as e:
            if e.status != 404:
                raise

    def delete_owned_service(self, namespace: str, name: str, owner_uid: str) -> None:
        """Delete the Service if an owner reference names ``owner_uid`` (one the operator made
        for that ModelService; a user's Service of the same name stays). Absent: nothing."""
        svc = self.get_service(namespace, name)
        if svc is None or not any(ref.get("uid") == owner_uid for ref in
                                  (svc.get("metadata") or {}).get("ownerReferences") or ()):
            return
        self.on_write("delete", "Service")
        try:  # the uid precondition: never a Service re-created since the read
            self.core.delete_namespaced_service(
                name, namespace, body=k8s.V1DeleteOptions(
                    preconditions=k8s.V1Preconditions(uid=svc["metadata"]["uid"])))
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str) -> None:
        """Delete a namespaced object of another API group (an InferencePool) if an owner
        reference names ``owner_uid``; a user's object of the same name stays."""
        group, version, plural = _FOREIGN[kind]
        try:
            obj: Any = self.custom.get_namespaced_custom_object(group, version, namespace,
                                                                plural, name)
            if not any(ref.get("uid") == owner_uid for ref in
                       (obj.get("metadata") or {}).get("ownerReferences") or ()):
                return
            self.custom.delete_namespaced_custom_object(
                group, version, namespace, plural, name,
                body=k8s.V1DeleteOptions(
                    preconditions=k8s.V1Preconditions(uid=obj["metadata"]["uid"])))
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def device_counts(self, driver: str) -> dict[str, int] | None:
        """Devices of ``driver`` per node, from its ResourceSlices (DRA; the newest generation
        of each pool); None when they cannot be listed."""
        try:
            listed: Any = self.custom.list_cluster_custom_object(
                "resource.k8s.io", "v1", "resourceslices", field_selector=f"spec.driver={driver}")
        except ApiException as e:
            log.warning("could not list ResourceSlices of driver %s: %s", driver, e.reason)
            return None
        return node_devices(listed.get("items") or (), driver)

    def endpoint_pods(self, namespace: str, service: str) -> set[str] | None:
        """Names of the pods the Service's EndpointSlices list (in any condition); None when
        they cannot be read (the caller then waits out its grace instead)."""
        try:
            slices = self.discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"kubernetes.io/service-name={service}")
        except ApiException as e:
            log.warning("could not list EndpointSlices of %s/%s: %s", namespace, service,
                        e.reason)
            return None
        return {str(ep.target_ref.name) for s in slices.items for ep in (s.endpoints or ())
                if ep.target_ref is not None and ep.target_ref.kind == "Pod"}

    def service_urls(self, namespace: str, service: str, path: str,
                     port_name: str = "http") -> list[str]:
        """``http://<address>:<port><path>`` for every ready address of the Service's
        EndpointSlices (the port named ``port_name``, else the slice's only port): each
        replica behind it, e.g. every gateway pod. An API error raises OperatorError."""
        try:
            slices = self.discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"kubernetes.io/service-name={service}")
        except ApiException as e:
            raise OperatorError(f"listing its EndpointSlices failed: {e.status} {e.reason}; "
                                "the operator needs list on discovery.k8s.io endpointslices "
                                f"in namespace {namespace}") from None
        urls: set[str] = set()
        for s in slices.items:
            ports = list(s.ports or ())
            port = next((p.port for p in ports if p.name == port_name), None)
            if port is None and len(ports) == 1:
                port = ports[0].port
            if port is None:
                continue
            for ep in s.endpoints or ():
                if ep.conditions is not None and ep.conditions.ready is False:
                    continue  # nil means unknown: counted as ready (the API's advice)
                for address in ep.addresses or ():
                    host = f"[{address}]" if ":" in address else address
                    urls.add(f"http://{host}:{port}{path}")
        return sorted(urls)

    def event(self, obj_kind: str, namespace: str | None, name: str, uid: str, reason: str,
              message: str, warning: bool = False) -> None:
        now = dt.datetime.now(dt.UTC)
        ns = namespace or "default"
        self.on_write("create", "Event")
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(generate_name=f"{name}.", namespace=ns),
            involved_object=k8s.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=obj_kind, name=name,
                namespace=namespace, uid=uid),
            reason=reason, message=message[:1024], type="Warning" if warning else "Normal",
            source=k8s.V1EventSource(component=self.component),
            first_timestamp=now, last_timestamp=now, count=1)
        try:
            _done(self.core.create_namespaced_event(ns, body, **NO_ANSWER))
        except ApiException as e:  # events are best effort: never fail a reconcile on them
            log.warning("could not post event %s on %s/%s: %s", reason, ns, name, e.reason)
