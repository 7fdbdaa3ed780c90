"""What the cluster gateway routes to, computed from Kubernetes objects (pure, no I/O).

The cluster gateway (:mod:`kubeplex.gateway.cluster`) keeps plain copies of three kinds of
objects from its watches and asks :func:`desired` what to route:

* **ModelServices**: each is one *route*, keyed ``namespace/name``; clients name it by
  ``spec.model.servedName`` (default: the object's name; OpenAI-style, may contain ``/``).
* **EndpointSlices** of the ModelService's Service (same name as the ModelService, built by
  ``kubeplex.operator._builders.service_manifest``; the slice's label
  ``kubernetes.io/service-name``): each ready endpoint is one replica, reached at
  ``http://<address>:<port "http">`` (the runtime's router, not the Service's virtual IP, so the
  gateway can balance by requests in flight).
* **Pods**, only with ``KUBEPLEX_URL_ANNOTATIONS=true`` (test harnesses whose fake KWOK pods have
  real runtimes on loopback): the replica's URL is the pod annotation ``kubeplex.io/router-url``
  instead, and it counts as ready once its ``kubeplex.io/control-url`` answers ``/readyz`` (the
  kubelet's readiness probe, which KWOK pods do not run).

Resolution (:func:`resolve`): a served name used in one namespace routes there. The same served
name in several watched namespaces is ambiguous: the request must name the namespace in the
``X-Kubeplex-Namespace`` header, else it is refused (400) with the candidates. Within one
namespace the operator serves only the oldest ModelService of a served name; so does the gateway.
A LoRA adapter's name (``spec.adapters[].name``) routes to its ModelService like its served name,
under the same rules (the operator refuses a ModelService whose adapter name an older one
serves; the gateway drops such names too).

:func:`held_alert` is the Alertmanager v4 message the gateway posts to the operator's
``/alerts`` while it holds requests for a ModelService (see ``autoscaler/alerts.py``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from kubeplex.autoscaler.alerts import REQUESTS_HELD_ALERT
from kubeplex.gateway._gateway import Route
from kubeplex.operator._runtime_client import CONTROL_URL_ANNOTATION, ROUTER_URL_ANNOTATION
from kubeplex.runtime.routing import DEFAULT_POLICY, POLICIES

__all__ = [
    "NAMESPACE_HEADER",
    "SERVICE_NAME_LABEL",
    "Endpoint",
    "ModelEntry",
    "PodURLs",
    "Resolution",
    "SliceEntry",
    "desired",
    "held_alert",
    "parse_endpointslice",
    "parse_modelservice",
    "parse_pod",
    "resolve",
]

#: The header that picks a namespace when a served name exists in several.
NAMESPACE_HEADER = "X-Kubeplex-Namespace"
#: The label the EndpointSlice controller puts on a Service's slices (Kubernetes API docs).
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: The name of the ModelService Service's port (``_builders.service_manifest``).
PORT_NAME = "http"
#: Alertmanager's endsAt while an alert fires (webhook v4).
FIRING_ENDS_AT = "0001-01-01T00:00:00Z"
#: Alertmanager fingerprints are 16 hex digits.
FINGERPRINT_DIGITS = 16


@dataclass(frozen=True)
class ModelEntry:
    """One ModelService, as the gateway needs it."""

    namespace: str
    name: str
    served: str
    created: str  # creationTimestamp (RFC 3339 sorts by time)
    replicas: int
    ready: int
    adapters: tuple[str, ...] = ()  # its LoRA adapters' names
    routing: str = DEFAULT_POLICY.value  # spec.routing
    #: spec.slo (seconds, percentile) for ``kubeplex load``'s verdicts; None: not set
    slo: tuple[float, float] | None = None
    desired: int = 0  # status.desiredReplicas
    last_scale: str | None = None  # status.lastScale.reason

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def route(self) -> Route:
        return Route(self.served, self.namespace, self.name, self.adapters, self.routing)


@dataclass(frozen=True)
class Endpoint:
    pod: str  # targetRef name (or the address when there is none)
    url: str  # http://address:port
    ready: bool


@dataclass(frozen=True)
class SliceEntry:
    namespace: str
    service: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class PodURLs:
    router: str | None
    control: str | None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def parse_modelservice(obj: Mapping[str, Any]) -> ModelEntry | None:
    """A ModelService object -> its entry; None while it is being deleted."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp") or not meta.get("name"):
        return None
    spec = obj.get("spec") or {}
    model = spec.get("model") or {}
    status = obj.get("status") or {}
    adapters = tuple(str(a["name"]) for a in spec.get("adapters") or ()
                     if isinstance(a, Mapping) and a.get("name"))
    routing = spec.get("routing")  # the CRD's enum; anything else (an old object): the default
    return ModelEntry(str(meta.get("namespace") or "default"), str(meta["name"]),
                      str(model.get("servedName") or meta["name"]),
                      str(meta.get("creationTimestamp") or ""),
                      _int(status.get("replicas")), _int(status.get("readyReplicas")), adapters,
                      routing if routing in POLICIES else DEFAULT_POLICY.value,
                      _slo(spec.get("slo")), _int(status.get("desiredReplicas")),
                      _reason(status.get("lastScale")))


def _slo(slo: Any) -> tuple[float, float] | None:
    """spec.slo as (TTFT seconds, percentile; the CRD's default 95), None when unusable."""
    if not isinstance(slo, Mapping):
        return None
    try:
        ttft, percentile = float(slo["ttftSeconds"]), float(slo.get("percentile", 95))
    except (KeyError, TypeError, ValueError):
        return None
    return (ttft, percentile) if ttft > 0 and 0 < percentile < 100 else None


def _reason(last_scale: Any) -> str | None:
    reason = last_scale.get("reason") if isinstance(last_scale, Mapping) else None
    return reason if isinstance(reason, str) else None


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def parse_endpointslice(obj: Mapping[str, Any]) -> SliceEntry | None:
    """An EndpointSlice -> its Service and endpoints (None: not a Service's slice, or no
    ``http`` port). ``ready`` follows ``conditions.ready`` (unset means ready, per the API)
    and is false while the endpoint terminates."""
    meta = obj.get("metadata") or {}
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    ports = [p for p in obj.get("ports") or () if p.get("name") == PORT_NAME and p.get("port")]
    if not service or not ports:
        return None
    port = int(ports[0]["port"])
    endpoints = []
    for ep in obj.get("endpoints") or ():
        conditions = ep.get("conditions") or {}
        ready = conditions.get("ready") is not False and not conditions.get("terminating")
        pod = (ep.get("targetRef") or {}).get("name")
        for address in ep.get("addresses") or ():
            endpoints.append(Endpoint(str(pod or address), f"http://{_host(address)}:{port}",
                                      ready))
    return SliceEntry(str(meta.get("namespace") or "default"), str(service), tuple(endpoints))


def parse_pod(obj: Mapping[str, Any]) -> PodURLs:
    """A pod's runtime URLs from its annotations (URL-annotation mode)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return PodURLs(annotations.get(ROUTER_URL_ANNOTATION),
                   annotations.get(CONTROL_URL_ANNOTATION))


def _winners(models: Iterable[ModelEntry]) -> dict[str, ModelEntry]:
    """route key -> entry, keeping the oldest ModelService of each (namespace, served name);
    an adapter name already taken in its namespace (a served name, or an older ModelService's
    adapter) is dropped from the younger one."""
    first: dict[tuple[str, str], ModelEntry] = {}
    ordered = sorted(models, key=lambda m: (m.created, m.name))
    for m in ordered:
        first.setdefault((m.namespace, m.served), m)
    taken = set(first)
    out: dict[str, ModelEntry] = {}
    for m in ordered:
        if first[m.namespace, m.served] is not m:
            continue
        kept = tuple(a for a in m.adapters if (m.namespace, a) not in taken)
        taken.update((m.namespace, a) for a in kept)
        out[m.key] = replace(m, adapters=kept)
    return out


def desired(models: Iterable[ModelEntry], slices: Iterable[SliceEntry],
            pods: Mapping[tuple[str, str], PodURLs] | None = None,
            probed: frozenset[str] | set[str] = frozenset(),
            ) -> tuple[dict[str, Route], dict[str, dict[str, str]]]:
    """Routes (key ``namespace/name`` -> :class:`Route`) and their ready replicas (route key ->
    pod -> URL). ``pods`` (namespace, pod) -> URLs switches to URL-annotation mode: a replica
    then needs its router annotation and a control URL in ``probed`` (answered /readyz)."""
    winners = _winners(models)
    routes = {key: m.route for key, m in winners.items()}
    replicas: dict[str, dict[str, str]] = {key: {} for key in routes}
    for s in slices:
        key = f"{s.namespace}/{s.service}"
        if key not in replicas:
            continue
        for ep in s.endpoints:
            if not ep.ready:
                continue
            url: str | None = ep.url
            if pods is not None:
                urls = pods.get((s.namespace, ep.pod))
                url = urls.router if urls and urls.control in probed else None
            if url:
                replicas[key][ep.pod] = url
    return routes, replicas


@dataclass(frozen=True)
class Resolution:
    """The route of a request, or why there is none (``status`` 404 or 400)."""

    route: str | None
    status: int = 200
    message: str = ""


def resolve(model: object, namespace: str | None, routes: Mapping[str, Route]) -> Resolution:
    """Which route serves ``model`` (the request's ``model``), given the optional namespace
    header value."""
    served = sorted({r.model for r in routes.values()} | {a for r in routes.values()
                                                           for a in r.adapters})
    listing = ", ".join(served) or "(none)"
    if not isinstance(model, str):
        return Resolution(None, 404, f"The model `{model}` does not exist. Models: {listing}.")
    candidates = sorted(k for k, r in routes.items() if r.model == model) or sorted(
        k for k, r in routes.items() if model in r.adapters)  # served names win over adapters
    if namespace:
        candidates = [k for k in candidates if routes[k].namespace == namespace]
        if not candidates:
            return Resolution(None, 404, f"The model `{model}` does not exist in namespace "
                                         f"{namespace} ({NAMESPACE_HEADER}). Models: {listing}.")
    if not candidates:
        return Resolution(None, 404, f"The model `{model}` does not exist. Models: {listing}.")
    if len(candidates) > 1:
        spaces = ", ".join(routes[k].namespace for k in candidates)
        return Resolution(None, 400, f"The model `{model}` is served in several namespaces "
                                     f"({spaces}); name one in the {NAMESPACE_HEADER} header.")
    return Resolution(candidates[0])


def fingerprint(route: Route) -> str:
    """One alert identity per (namespace, modelservice)."""
    digest = hashlib.sha256(f"{REQUESTS_HELD_ALERT}/{route.namespace}/{route.modelservice}"
                            .encode()).hexdigest()
    return digest[:FINGERPRINT_DIGITS]


def _rfc3339(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s)) + \
        f".{int(epoch_s % 1 * 1000):03d}Z"


def held_alert(route: Route, held: int, since: float, source: str) -> dict[str, Any]:
    """The Alertmanager v4 message for "``held`` requests wait for ``route`` since ``since``
    (epoch s)". One firing per hold episode: the operator's ledger drops repeats with the
    same fingerprint and startsAt, a new episode (new startsAt) triggers again."""
    labels = {"alertname": REQUESTS_HELD_ALERT, "namespace": route.namespace,
              "modelservice": route.modelservice, "model_name": route.model,
              "kubeplex_receiver": "operator", "severity": "info"}
    alert = {"status": "firing", "labels": labels,
             "annotations": {"summary": f"{held} request(s) held by the gateway: "
                                        f"{route.namespace}/{route.modelservice} has no ready "
                                        "replica"},
             "startsAt": _rfc3339(since), "endsAt": FIRING_ENDS_AT, "generatorURL": source,
             "fingerprint": fingerprint(route)}
    group = {"alertname": REQUESTS_HELD_ALERT, "namespace": route.namespace,
             "modelservice": route.modelservice}
    return {"version": "4", "groupKey": "{}:" + ",".join(f'{k}="{v}"' for k, v in group.items()),
            "truncatedAlerts": 0, "status": "firing", "receiver": "kubeplex-gateway",
            "groupLabels": group, "commonLabels": labels, "commonAnnotations": {},
            "externalURL": source, "alerts": [alert]}
