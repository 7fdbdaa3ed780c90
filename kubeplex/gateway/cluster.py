"""``kubeplex gateway``: local mode's gateway (:class:`~kubeplex.gateway._gateway.Gateway`)
with endpoints discovered from Kubernetes, as the Helm chart deploys it.

* **Discovery.** Watches (list + watch, in threads, with the official ``kubernetes`` client like
  the operator) of ModelServices and of their Services' EndpointSlices, and with
  ``KUBEPLEX_URL_ANNOTATIONS=true`` of the serving pods; what to route follows from them
  (:mod:`kubeplex.gateway._discovery`). ``/readyz`` answers 503 until every watch
  has listed once.
* **Routing.** A request names a served name (``model``); with several watched namespaces
  serving the same name, the ``X-Kubeplex-Namespace`` header picks one (else 400). The ready
  replica with the fewest requests in flight gets it.
* **Scale from zero.** A ModelService with no ready replica has its requests held (at most
  ``KUBEPLEX_MAX_HELD_REQUESTS``, each at most ``KUBEPLEX_HOLD_TIMEOUT_SECONDS``, then 503 +
  Retry-After). The first held request of an episode posts the ``KubeplexRequestsHeld`` alert to
  the operator's ``/alerts`` (``KUBEPLEX_OPERATOR_URL``; bearer token from the alert Secret), so
  it evaluates the ModelService at once instead of at its next cycle; while requests stay held
  the alert is re-posted every :data:`REPOST_S` with the same startsAt (the operator drops the
  repeats; a restarted operator sees it again).
* **Signals.** ``/metrics``: ``kubeplex_gateway_arrivals_total``,
  ``kubeplex_gateway_held_requests``, ``kubeplex_gateway_replicas``,
  ``kubeplex_gateway_retries_total`` (a replica refused with 503 before answering: the request
  went once more to another replica, or was held; labels ``namespace``,
  ``modelservice``, ``model``), ``kubeplex_gateway_scale_signals_total{outcome}``, and the
  router's ``kubeplex_router_*``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from kubeplex.api import GROUP, VERSION
from kubeplex.gateway import DEFAULT_MIGRATE_AFTER_SECONDS, Gateway, MigrationPolicy, Replica
from kubeplex.gateway._discovery import (
    NAMESPACE_HEADER,
    SERVICE_NAME_LABEL,
    ModelEntry,
    PodURLs,
    SliceEntry,
    desired,
    held_alert,
    parse_endpointslice,
    parse_modelservice,
    parse_pod,
    resolve,
)
from kubeplex.operator._builders import MANAGED_BY
from kubeplex.operator._settings import parse_env, read_token
from kubeplex.operator.errors import ConfigError

__all__ = ["GATEWAY_ENV_DOCS", "RBAC_NEEDED", "ClusterGateway", "GatewaySettings", "KubeGateway",
           "serve"]

log = logging.getLogger("kubeplex.gateway")

#: Variable -> (field, default, help); the chart sets these (helm/kubeplex/templates/gateway.yaml).
GATEWAY_ENV_DOCS: dict[str, tuple[str, str, str]] = {
    "KUBEPLEX_GATEWAY_PORT": ("port", "8080", "Port of /v1/*, /metrics, /healthz, /readyz."),
    "KUBEPLEX_BIND_ADDRESS": ("bind_address", "0.0.0.0", "Address the gateway binds."),
    "KUBEPLEX_HOLD_TIMEOUT_SECONDS": ("hold_timeout_s", "300",
                                      "Seconds a request waits for a first ready replica, "
                                      "then 503 + Retry-After."),
    "KUBEPLEX_MAX_HELD_REQUESTS": ("max_held", "1000",
                                   "Requests held per model at zero replicas; more get 503."),
    "KUBEPLEX_WATCH_NAMESPACES": ("watch_namespaces", "",
                                  "Comma-separated namespaces to route; empty: all."),
    "KUBEPLEX_OPERATOR_URL": ("operator_url", "",
                              "The operator's webhook base URL (POST /alerts on a hold); "
                              "empty: the operator finds out at its next cycle."),
    "KUBEPLEX_ALERT_TOKEN": ("alert_token", "", "Bearer token for the operator's /alerts."),
    "KUBEPLEX_ALERT_TOKEN_FILE": ("alert_token_file", "",
                                  "File holding that token (the mounted alert Secret)."),
    "KUBEPLEX_MIGRATE_AFTER_SECONDS": ("migrate_after_s", "5",
                                       "Seconds a replica leaving routing (scale-down, drain) "
                                       "keeps its in-flight generations before they resume on "
                                       "another replica."),
    "KUBEPLEX_RESUME_PLAIN_REQUESTS": ("resume_plain", "true",
                                       "Send plain (non-streaming) requests to the replica as "
                                       "streams so they too resume mid-generation; false "
                                       "saves the engine an SSE event per token (a plain "
                                       "request cut by a failure then starts again)."),
    "KUBEPLEX_URL_ANNOTATIONS": ("url_annotations", "false",
                                 "Route to the pods' kubeplex.io/router-url annotations "
                                 "(test harnesses that run runtimes off-cluster)."),
}
#: (apiGroup, resource, verb) of every API call below (the Helm chart grants exactly these;
#: URL-annotation mode, for test harnesses only, also lists and watches pods).
RBAC_NEEDED: frozenset[tuple[str, str, str]] = frozenset({
    (GROUP, "modelservices", "list"), (GROUP, "modelservices", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
})
#: Retry-After (s) of a refused held request: a cold start of a small model takes tens of
#: seconds (DESIGN.md, "Numbers worth knowing"); clients come back and find it held again.
RETRY_AFTER_S = 10.0
#: Seconds between re-posts of the held alert while requests stay held.
REPOST_S = 15.0
#: Timeout (s) of one POST to the operator.
POST_TIMEOUT_S = 5.0
#: The probe loop's period (s): URL-annotation readiness probes and alert re-posts.
TICK_S = 0.25
#: Timeout (s) of one /readyz probe of an off-cluster runtime.
PROBE_TIMEOUT_S = 1.0
#: A watch request's server-side timeout (s); the watch then resumes from its last version.
WATCH_TIMEOUT_S = 60
#: Wait (s) before listing again after a failed list or watch.
WATCH_BACKOFF_S = (0.5, 10.0)
#: Serving pods carry this label (``_builders``); URL-annotation mode watches only those.
POD_SELECTOR = "kubeplex.io/group"


@dataclass(frozen=True)
class GatewaySettings:
    port: int = 8080
    bind_address: str = "0.0.0.0"
    hold_timeout_s: float = 300.0
    max_held: int = 1000
    watch_namespaces: tuple[str, ...] = ()
    operator_url: str = ""
    alert_token: str = ""
    alert_token_file: str = ""
    migrate_after_s: float = DEFAULT_MIGRATE_AFTER_SECONDS
    resume_plain: bool = True
    url_annotations: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        """From ``KUBEPLEX_*`` variables; a bad value raises :class:`ConfigError` naming it."""
        s = cls(**parse_env(cls, GATEWAY_ENV_DOCS, env))  # type: ignore[arg-type]
        if not 0 < s.port < 65536:
            raise ConfigError(f"KUBEPLEX_GATEWAY_PORT={s.port}: must be a TCP port (1-65535)")
        if not 0 < s.hold_timeout_s < float("inf"):
            raise ConfigError(f"KUBEPLEX_HOLD_TIMEOUT_SECONDS={s.hold_timeout_s:g}: must be a "
                              "finite number > 0")
        if s.max_held < 0:
            raise ConfigError(f"KUBEPLEX_MAX_HELD_REQUESTS={s.max_held}: must be >= 0 "
                              "(0: never hold, answer 503 at once)")
        if not 0 <= s.migrate_after_s < float("inf"):
            raise ConfigError(f"KUBEPLEX_MIGRATE_AFTER_SECONDS={s.migrate_after_s:g}: must be a "
                              "finite number of seconds >= 0")
        if s.operator_url and not s.operator_url.startswith(("http://", "https://")):
            raise ConfigError(f"KUBEPLEX_OPERATOR_URL={s.operator_url!r}: must be an http:// or "
                              "https:// URL (the operator Service's webhook port)")
        return s

    def token(self) -> str:
        return read_token(self.alert_token, self.alert_token_file)


class KubeGateway(Gateway):
    """The gateway with routes keyed ``namespace/name``: requests resolve by served name and
    the optional ``X-Kubeplex-Namespace`` header."""

    def _resolve(self, model: object, request: web.Request,
                 request_id: str) -> str | web.Response:
        found = resolve(model, request.headers.get(NAMESPACE_HEADER), self.routes)
        if found.route is not None:
            return found.route
        kind = "NotFoundError" if found.status == 404 else "BadRequestError"
        body = {"error": {"message": found.message, "type": kind, "param": "model",
                          "code": found.status}}
        return web.json_response(body, status=found.status, headers={"X-Request-Id": request_id})


Deliver = Callable[[str, list[dict[str, Any]]], None]


class _Watch(threading.Thread):
    """List, then watch from the listed version, forever: ``deliver("RESET", items)`` after
    every list, ``deliver(type, [obj])`` per change (raw API dicts)."""

    def __init__(self, name: str, list_fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], deliver: Deliver, failed: Callable[[str], None],
                 stop: threading.Event) -> None:
        super().__init__(name=f"watch-{name}", daemon=True)
        self.what, self.list_fn, self.args, self.kwargs = name, list_fn, args, kwargs
        self.deliver, self.failed, self.stop = deliver, failed, stop

    def run(self) -> None:
        self.backoff = WATCH_BACKOFF_S[0]
        while not self.stop.is_set():
            try:
                self._list_and_watch()
            except ApiException as e:
                if e.status == 410:  # the version expired: list again at once
                    continue
                self.failed(f"{e.status} {e.reason}")
            except Exception as e:  # a watch thread must outlive any failure
                self.failed(f"{type(e).__name__}: {e}")
            self.stop.wait(self.backoff)
            self.backoff = min(self.backoff * 2, WATCH_BACKOFF_S[1])

    def _list_and_watch(self) -> None:
        listed = self.list_fn(*self.args, **self.kwargs, _preload_content=False)
        body = json.loads(listed.data)
        version = body["metadata"]["resourceVersion"]
        self.deliver("RESET", body.get("items") or [])
        self.backoff = WATCH_BACKOFF_S[0]  # listing works: a later failure starts over
        while not self.stop.is_set():
            stream = k8s_watch.Watch().stream(  # type: ignore[no-untyped-call]
                self.list_fn, *self.args, **self.kwargs, resource_version=version,
                timeout_seconds=WATCH_TIMEOUT_S, allow_watch_bookmarks=True, deserialize=False)
            for event in stream:
                obj = event.get("object") or {}
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self.deliver(event["type"], [obj])
                if self.stop.is_set():
                    return


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


class ClusterGateway:
    """The gateway plus the watches that keep its routes and replicas current."""

    def __init__(self, settings: GatewaySettings, api_client: k8s.ApiClient) -> None:
        self.settings = settings
        self.api_client = api_client
        self.gateway = KubeGateway({}, hold_timeout=settings.hold_timeout_s,
                                   hold_limit=settings.max_held,
                                   retry_after=lambda route: RETRY_AFTER_S,
                                   on_hold=self._on_hold, status_source=self.status,
                                   migration=MigrationPolicy(
                                       migrate_after_s=settings.migrate_after_s,
                                       resume_plain=settings.resume_plain))
        self.gateway.not_ready = "waiting for the first lists of ModelServices and endpoints"
        self.models: dict[tuple[str, str], ModelEntry] = {}
        self.slices: dict[tuple[str, str], SliceEntry] = {}
        self.pods: dict[tuple[str, str], PodURLs] | None = \
            {} if settings.url_annotations else None
        self.probed: set[str] = set()
        self.listed: set[str] = set()  # "kind:namespace" of the watches that listed once
        self.expected: set[str] = set()  # ... of every watch
        self.source = f"http://{socket.gethostname()}:{settings.port}/"
        self.repost_s = REPOST_S
        self._posted: dict[str, tuple[float, float]] = {}  # route -> (episode, posted at)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = threading.Event()
        self.signals = Counter("kubeplex_gateway_scale_signals",
                               "KubeplexRequestsHeld posts to the operator, by outcome.",
                               ["outcome"], registry=self.gateway.metrics.registry)

    # ---- watches ----------------------------------------------------------------------------
    def _watches(self) -> list[tuple[str, str | None, Callable[..., Any], tuple[Any, ...],
                                     dict[str, Any]]]:
        """(kind, namespace or None for all, list function, its args and kwargs)."""
        custom = k8s.CustomObjectsApi(self.api_client)
        discovery = k8s.DiscoveryV1Api(self.api_client)
        core = k8s.CoreV1Api(self.api_client)
        slices = {"label_selector": f"{SERVICE_NAME_LABEL},{MANAGED_BY[0]}={MANAGED_BY[1]}"}
        pods = {"label_selector": POD_SELECTOR}
        out: list[tuple[str, str | None, Callable[..., Any], tuple[Any, ...],
                        dict[str, Any]]] = []
        for ns in self.settings.watch_namespaces:
            out += [("modelservices", ns, custom.list_namespaced_custom_object,
                     (GROUP, VERSION, ns, "modelservices"), {}),
                    ("endpointslices", ns, discovery.list_namespaced_endpoint_slice, (ns,),
                     slices),
                    ("pods", ns, core.list_namespaced_pod, (ns,), pods)]
        if not self.settings.watch_namespaces:
            out += [("modelservices", None, custom.list_cluster_custom_object,
                     (GROUP, VERSION, "modelservices"), {}),
                    ("endpointslices", None, discovery.list_endpoint_slice_for_all_namespaces,
                     (), slices),
                    ("pods", None, core.list_pod_for_all_namespaces, (), pods)]
        return [w for w in out if w[0] != "pods" or self.pods is not None]

    def start_watches(self, loop: asyncio.AbstractEventLoop) -> None:
        """One thread per watch; events reach :meth:`apply` on ``loop``."""
        watches = self._watches()
        self.expected = {f"{kind}:{ns or '*'}" for kind, ns, *_ in watches}
        for kind, ns, fn, args, kwargs in watches:
            name = f"{kind}:{ns or '*'}"

            def deliver(event: str, objs: list[dict[str, Any]], kind: str = kind,
                        ns: str | None = ns) -> None:
                loop.call_soon_threadsafe(self.apply, kind, event, objs, ns)

            def failed(message: str, name: str = name) -> None:
                loop.call_soon_threadsafe(self.watch_failed, name, message)

            _Watch(name, fn, args, kwargs, deliver, failed, self._stop).start()

    def watch_failed(self, name: str, message: str) -> None:
        """A list or watch failed (it retries with backoff): log it, and say it on /readyz
        while the gateway has not synced."""
        log.warning("watch %s failed (%s); retrying", name, message)
        if self.gateway.not_ready is not None:
            self.gateway.not_ready = f"cannot list {name}: {message}"

    def apply(self, kind: str, event: str, objs: Iterable[Mapping[str, Any]],
              scope: str | None = None) -> None:
        """One list or watch event (on the event loop), then route accordingly."""
        store: dict[tuple[str, str], Any] = (
            self.models if kind == "modelservices" else self.slices
            if kind == "endpointslices" else self.pods if self.pods is not None else {})
        if event == "RESET":
            for key in [k for k in store if scope is None or k[0] == scope]:
                del store[key]
            self.listed.add(f"{kind}:{scope or '*'}")
        for obj in objs:
            key = _key(obj)
            parsed: Any = None
            if event != "DELETED":
                parsed = (parse_modelservice(obj) if kind == "modelservices" else
                          parse_endpointslice(obj) if kind == "endpointslices" else
                          parse_pod(obj))
            if parsed is None:
                store.pop(key, None)
            else:
                store[key] = parsed
        self.sync()

    def sync(self) -> None:
        """Make the gateway's routes and replicas what the objects say."""
        routes, replicas = desired(self.models.values(), self.slices.values(), self.pods,
                                   self.probed)
        gw = self.gateway
        gw.set_routes(routes)
        for route, want in replicas.items():
            have = {r.group: r.base_url for r in gw.replicas.get(route, [])}
            for pod, url in have.items():
                if want.get(pod) != url:
                    gw.remove(route, pod)
                    log.info("%s: replica %s left (%s)", route, pod, url)
            for pod, url in want.items():
                if have.get(pod) != url:
                    gw.add(Replica(routes[route].model, pod, url, route=route))
                    log.info("%s: replica %s ready at %s", route, pod, url)
        if gw.not_ready is not None and self.listed >= self.expected:
            gw.not_ready = None
            log.info("discovery synced: %d model(s): %s", len(routes), ", ".join(sorted(routes)))

    # ---- scale from zero ----------------------------------------------------------------------
    def _on_hold(self, route: str) -> None:
        since = self.gateway.hold_since.get(route)
        if since is not None and self._posted.get(route, (None, 0.0))[0] != since:
            self._post_soon(route, since)

    def _post_soon(self, route: str, since: float) -> None:
        self._posted[route] = (since, time.monotonic())
        task = asyncio.get_running_loop().create_task(self._post(route, since))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, route: str, since: float) -> None:
        target = self.gateway.routes.get(route)
        session = self.gateway.session
        if not self.settings.operator_url or target is None or session is None:
            return
        body = held_alert(target, self.gateway.held.get(route, 0), since, self.source)
        token = self.settings.token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = self.settings.operator_url.rstrip("/") + "/alerts"
        try:
            async with session.post(url, json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S)) as r:
                answer = (await r.text())[:300]
                ok = r.status == 200
        except (aiohttp.ClientError, TimeoutError) as e:
            self.signals.labels("failed").inc()
            log.warning("%s: could not tell the operator (%s): %s", route, url,
                        type(e).__name__)
            return
        self.signals.labels("sent" if ok else "refused").inc()
        if ok:
            log.info("%s: requests held; told the operator: %s", route, answer)
        else:
            log.warning("%s: the operator refused the held alert (%d): %s", route, r.status,
                        answer)

    async def _probe(self, session: aiohttp.ClientSession, control: str) -> None:
        try:
            async with session.get(control.rstrip("/") + "/readyz",
                                   timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as r:
                if r.status == 200:
                    self.probed.add(control)
        except (aiohttp.ClientError, TimeoutError):
            return

    async def tick(self) -> None:
        """Every :data:`TICK_S`: probe new off-cluster runtimes; re-post held alerts."""
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for route, (since, posted) in list(self._posted.items()):
                if self.gateway.hold_since.get(route) != since:
                    del self._posted[route]  # the episode ended
                elif now - posted >= self.repost_s:
                    self._post_soon(route, since)
            if self.pods is None or self.gateway.session is None:
                continue
            controls = {p.control for p in self.pods.values() if p.control}
            before = set(self.probed)
            self.probed &= controls
            await asyncio.gather(*(self._probe(self.gateway.session, c)
                                   for c in controls - self.probed))
            if self.probed != before:
                self.sync()

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """``GET /kubeplex/v1/status``: each route with its replicas and held requests, and
        the ModelService's own replica counts (``status.replicas``/``readyReplicas``). Also
        what ``kubeplex load`` judges a run with, under local mode's names: ``name``,
        ``ready``, ``starting``, ``desired``, ``decision`` (the last scale's reason),
        ``sloTTFT`` and ``percentile`` (absent when the ModelService has no SLO)."""
        gw = self.gateway
        models = []
        for key, r in sorted(gw.routes.items()):
            entry = self.models.get((r.namespace, r.modelservice))
            models.append({
                "model": r.model, "namespace": r.namespace, "modelService": r.modelservice,
                "routing": r.routing, "held": gw.held.get(key, 0),
                "modelServiceReplicas": entry.replicas if entry else 0,
                "modelServiceReady": entry.ready if entry else 0,
                "replicas": {x.group: {"url": x.base_url, "inFlight": x.in_flight,
                                       "down": x.down}
                             for x in gw.replicas.get(key, [])},
                **(_verdict_fields(r.model, entry) if entry else {})})
        return {"kind": "cluster-gateway", "ready": gw.not_ready or True, "models": models}


def _verdict_fields(served: str, entry: ModelEntry) -> dict[str, Any]:
    """A route's ModelService as ``kubeplex load`` reads local mode's status."""
    fields: dict[str, Any] = {
        "name": served, "ready": entry.ready, "starting": max(entry.replicas - entry.ready, 0),
        "desired": entry.desired, "decision": entry.last_scale}
    if entry.slo is not None:
        fields["sloTTFT"], fields["percentile"] = entry.slo
    return fields


async def serve(settings: GatewaySettings, api_client: k8s.ApiClient,
                stop: asyncio.Event) -> None:
    """Run the cluster gateway until ``stop`` is set; then refuse new requests and let the
    in-flight ones finish (the aiohttp runner's shutdown timeout)."""
    cg = ClusterGateway(settings, api_client)
    runner = await cg.gateway.open(settings.bind_address, settings.port)
    log.info("gateway on %s:%d (namespaces: %s; operator: %s)", settings.bind_address,
             settings.port, ",".join(settings.watch_namespaces) or "all",
             settings.operator_url or "none: no immediate scale-from-zero signal")
    cg.start_watches(asyncio.get_running_loop())
    ticker = asyncio.create_task(cg.tick())
    try:
        await stop.wait()
    finally:
        cg.stop()
        cg.gateway.refuse_new()
        ticker.cancel()
        await runner.cleanup()
        await cg.gateway.close()
