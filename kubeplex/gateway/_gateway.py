"""The gateway: one OpenAI-compatible endpoint for every model, in front of the replicas.

It is the runtime's router (:class:`kubeplex.runtime.app.Runtime`: the same forwarding,
streaming pass-through, request ids, error bodies and ``kubeplex_router_*`` metrics), with
replicas instead of engines as upstreams:

* a request goes to a ready replica of its model chosen by the route's policy
  (:mod:`kubeplex.runtime.routing`, the ModelService's ``spec.routing``): by default
  ``prefix-aware`` (where its prompt prefix is cached, balanced against the prefill queued
  there and bounded to 1.25x the mean load), else ``least-loaded`` (fewest requests in flight
  through the gateway) or ``round-robin``; the policy sees what the gateway sent where, and
  when each answer's first bytes came back. Replicas marked down are skipped: a replica that refuses
  or resets a connection, cuts a response or answers 503 is out of routing at once and back
  when a probe of ``/health?model=NAME`` answers 200 (:mod:`kubeplex.gateway._health`), which
  also releases the requests held for its model;
* a request that was generating on a replica that fails or leaves *moves*: it resumes on
  another replica from the text already generated, and the client's stream goes on with no
  gap or repeat (:mod:`kubeplex.gateway._migration`; a leaving replica's requests move
  ``migration.migrate_after_s`` after :meth:`Gateway.remove`, so a drain does not wait for
  long generations);
* a model with no ready replica *holds* the request: at most ``hold_limit`` per model, each
  at most ``hold_timeout`` seconds, then ``503`` with ``Retry-After``; the first held request
  calls ``on_hold`` so the autoscaler scales from zero at once, and held requests are
  forwarded as soon as a replica is ready;
* a replica that refuses a request before any byte of the answer went out (``503``: it is
  draining, unloading the model or restarting its engine; or it cannot be reached) gets it
  sent once more, to another ready replica of the model, or, when there is none, held like a
  request at zero replicas (the autoscaler is told; a re-added replica is a new one). A
  response that has started streaming is never sent again. This closes the window between a
  replica leaving (the operator removes its model label and drains it) and the gateway seeing
  the endpoint update;
* arrivals, held requests and retries are counted per model
  (``kubeplex_gateway_arrivals_total``, ``kubeplex_gateway_held_requests``,
  ``kubeplex_gateway_retries_total``, labels ``namespace``, ``modelservice``, ``model``): the
  arrival-rate signal, even at zero replicas;
* ``GET /kubeplex/v1/status`` answers ``status_source()`` (local mode's state) for
  ``kubeplex status``; ``GET /healthz`` and ``GET /readyz`` are the probes.

Requests are routed by *route*: a key per ModelService. Local mode's routes are the served
names themselves (they are unique there); the cluster gateway
(:mod:`kubeplex.gateway.cluster`) keys them ``namespace/name`` and overrides
:meth:`Gateway._resolve` to pick one by the request's ``model`` and headers.

Scale-down calls :meth:`Gateway.remove` first (no new requests), then waits for
:meth:`Gateway.wait_idle` before the replica is drained, so no request is cut.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from kubeplex.gateway._adapters import adapter_cards
from kubeplex.gateway._health import ReplicaHealth
from kubeplex.gateway._load import LoadFollower
from kubeplex.gateway._migration import Handle, MigrationPolicy, Migrator
from kubeplex.gateway._resume import Resumable, resumable
from kubeplex.runtime._limits import BadRequestBody, parse_request
from kubeplex.runtime._limits import request_id as read_request_id
from kubeplex.runtime.app import Runtime
from kubeplex.runtime.config import RuntimeConfig
from kubeplex.runtime.kv_events import EngineLoad
from kubeplex.runtime.proxy import Target, error_response
from kubeplex.runtime.routing import (
    DEFAULT_POLICY,
    UNKNOWN_REQUEST,
    Request,
    Router,
    Ticket,
    request_of,
)
from kubeplex.runtime.upstream import Upstream

__all__ = ["METRIC_LABELS", "MOVE_CAUSES", "Gateway", "Replica", "Route"]

#: Labels of the ``kubeplex_gateway_*`` series: the contract the operator reads held requests by.
METRIC_LABELS = ("namespace", "modelservice", "model")
#: Why a request moved to another replica (the ``cause`` label of migrations).
MOVE_CAUSES = ("replica-failed", "replica-left")
#: Requests to paths ending so are chats: their prompt is the messages.
CHAT_SUFFIX = "/chat/completions"


@dataclass(frozen=True)
class Route:
    """What a route serves: the model clients name, and the ModelService serving it."""

    model: str  # the served name (the request's "model")
    namespace: str
    modelservice: str
    adapters: tuple[str, ...] = ()  # its LoRA adapters' names (also routed here)
    routing: str = DEFAULT_POLICY.value  # the ModelService's spec.routing

    @classmethod
    def of_key(cls, model: str, key: str, routing: str = DEFAULT_POLICY.value) -> Route:
        """From a ModelService key ``namespace/name`` (``name`` alone: namespace default)."""
        namespace, _, name = key.rpartition("/")
        return cls(model, namespace or "default", name, routing=routing)

    @property
    def labels(self) -> tuple[str, str, str]:
        return self.namespace, self.modelservice, self.model


class Replica(Upstream):
    """One replica of one model behind the gateway, the router's upstream for that model.

    ``route``: the gateway route it serves (default: the served name, as in local mode);
    ``cache_tokens``: its engine's KV capacity, the size of its prefix index (None: unknown)."""

    def __init__(self, model: str, group: str, base_url: str, route: str | None = None,
                 cache_tokens: int | None = None) -> None:
        super().__init__(base_url)
        self.name = model
        self.group = group
        self.route = route or model
        self.cache_tokens = cache_tokens
        #: Why routing skips this replica (None: it serves), and since when (monotonic).
        self.down: str | None = None
        self.down_since: float | None = None
        #: Resumable requests in flight here (moved when it leaves).
        self.streams: set[Handle] = set()

    def retry_after(self, now: float) -> int:
        return 1


@dataclass
class _Routed:
    """One request in flight, as its route's policy accounts for it: the router, what it
    asks for, and its ticket on the replica serving it now."""

    router: Router
    request: Request
    ticket: Ticket | None = None


class Gateway(Runtime):
    """The runtime's router over local-mode replicas (see the module docstring)."""

    def __init__(self, models: Mapping[str, str], *, hold_timeout: float, hold_limit: int,
                 retry_after: Callable[[str], float],
                 on_hold: Callable[[str], None] | None = None,
                 status_source: Callable[[], dict[str, Any]] | None = None,
                 migration: MigrationPolicy | None = None) -> None:
        """``models``: served name -> ModelService key (each served name is a route).
        ``retry_after(route)``: seconds a refused client should wait (the expected start
        time). ``on_hold(route)`` is called for every request that starts waiting.
        ``migration``: when requests move between replicas (default: :class:`MigrationPolicy`).
        """
        self.routes: dict[str, Route] = {}
        self.hold_timeout = hold_timeout
        self.hold_limit = hold_limit
        self.expected_start = retry_after
        self.on_hold = on_hold
        self.status_source = status_source
        self.replicas: dict[str, list[Replica]] = {}
        #: route -> its routing policy and what it knows of the route's replicas.
        self.routers: dict[str, Router] = {}
        #: request id -> its routing bookkeeping while it is in flight (moves look it up).
        self._routed: dict[str, _Routed] = {}
        self.held: dict[str, int] = {}
        #: route -> wall-clock time (s) its current hold episode began (while requests wait).
        self.hold_since: dict[str, float] = {}
        #: Why /readyz answers 503 (None: ready); the cluster gateway sets it until synced.
        self.not_ready: str | None = None
        #: route -> an event set (and replaced) whenever its replicas or the route change.
        self._changed: dict[str, asyncio.Event] = {}
        super().__init__(RuntimeConfig(models=(), device="cpu"))
        self.replica_health = ReplicaHealth(lambda: self.proxy.session, self._replica_up)
        self.loads = LoadFollower(lambda: self.proxy.session, self._engine_load)
        #: Whether prefix-aware routes follow their replicas' engine load (kubeplex.gateway._load).
        self.follow_engine_load = True
        self.migrator = Migrator(self.proxy, migration or MigrationPolicy(), self._replacement,
                                 self._replica_failed, self._count_move, self._first_output)
        #: Replica id -> the timer that moves its requests (it left routing).
        self._evacuations: dict[int, asyncio.TimerHandle] = {}
        registry = self.metrics.registry
        self.arrivals = Counter("kubeplex_gateway_arrivals", "Requests that arrived at the "
                                "gateway for the model (held or not).", METRIC_LABELS,
                                registry=registry)
        self.held_gauge = Gauge("kubeplex_gateway_held_requests", "Requests the gateway "
                                "holds while the model has no ready replica.", METRIC_LABELS,
                                registry=registry)
        self.replica_gauge = Gauge("kubeplex_gateway_replicas", "Ready replicas the gateway "
                                   "routes the model to.", METRIC_LABELS, registry=registry)
        self.retries = Counter("kubeplex_gateway_retries", "Requests sent once more (to another "
                               "replica, or held) after a replica refused them before "
                               "answering (503: draining, unloading, restarting).",
                               METRIC_LABELS, registry=registry)
        self.migrations = Counter("kubeplex_gateway_migrations", "Requests moved to another "
                                  "replica mid-generation, resumed from the text generated so "
                                  "far (cause: replica-failed, replica-left).",
                                  (*METRIC_LABELS, "cause"), registry=registry)
        self.set_routes({m: Route.of_key(m, key) for m, key in models.items()})

    # ---- routes ---------------------------------------------------------------------------
    def set_routes(self, routes: Mapping[str, Route]) -> None:
        """Serve exactly these routes: new ones start with no replica, gone ones lose theirs
        (their held requests are answered at once)."""
        for name in [r for r in self.routes if r not in routes]:
            self._forget_series(self.routes.pop(name))
            for replica in self.replicas.pop(name, ()):
                self.loads.forget(replica)
            self.routers.pop(name, None)
            self._notify(name)  # wake its held requests: they find the route gone
        for name, route in routes.items():
            old = self.routes.get(name)
            if old == route:
                continue
            if old is not None:
                self._forget_series(old)
            self.routes[name] = route
            replicas = self.replicas.setdefault(name, [])
            if old is None or old.routing != route.routing:
                self.routers[name] = router = Router(route.routing)
                for replica in replicas:
                    router.add(replica, replica.cache_tokens)
                    self._follow_load(replica, router)
            self.held.setdefault(name, 0)
            self._notify(name)
            self.arrivals.labels(*route.labels)
            self.retries.labels(*route.labels)
            for cause in MOVE_CAUSES:
                self.migrations.labels(*route.labels, cause)
            self.held_gauge.labels(*route.labels).set(self.held[name])
            self.replica_gauge.labels(*route.labels).set(sum(r.down is None for r in replicas))

    def _forget_series(self, route: Route) -> None:
        for metric in (self.arrivals, self.held_gauge, self.replica_gauge, self.retries):
            metric.remove(*route.labels)
        for cause in MOVE_CAUSES:
            self.migrations.remove(*route.labels, cause)

    # ---- replicas -------------------------------------------------------------------------
    def add(self, replica: Replica) -> None:
        """Route ``replica.route``'s requests to ``replica`` too (and release held ones)."""
        name = replica.route
        self.replicas[name].append(replica)
        self.routers[name].add(replica, replica.cache_tokens)
        self._follow_load(replica, self.routers[name])
        self._replicas_changed(name)

    def set_follow_engine_load(self, on: bool) -> None:
        """Follow the replicas' engine load or not (off: every prefix-aware route routes on
        the gateway's own view; benchmarks compare the two)."""
        self.follow_engine_load = on
        for route, replicas in self.replicas.items():
            for replica in replicas:
                self._follow_load(replica, self.routers[route])

    def _follow_load(self, replica: Replica, router: Router) -> None:
        """Follow ``replica``'s engine load while its route's policy counts queues."""
        if router.uses_prefixes and self.follow_engine_load:
            self.loads.follow(replica)
        else:
            self.loads.forget(replica)
            router.forget_load(replica)

    def _engine_load(self, replica: object, load: EngineLoad | None) -> None:
        router = self.routers.get(replica.route) if isinstance(replica, Replica) else None
        if router is None:
            return
        if load is None:
            router.forget_load(replica)
        else:
            router.observe(replica, load=load)

    def remove(self, route: str, group: str) -> Replica | None:
        """Stop routing ``route`` to ``group``; returns the replica (to wait for it).

        Its resumable requests in flight move to other replicas ``migrate_after_s`` later
        (those still running then), so waiting for it takes at most that long for them."""
        replicas = self.replicas.get(route, [])
        kept = [r for r in replicas if r.group != group]
        gone = next((r for r in replicas if r.group == group), None)
        if gone is not None and route in self.routers:
            self.routers[route].remove(gone)
        if route in self.routes:
            self.replicas[route] = kept
            self._replicas_changed(route)
        if gone is not None:
            self.replica_health.forget(gone)
            self.loads.forget(gone)
            if gone.streams and self.migrator.policy.enabled:
                self._evacuations[id(gone)] = asyncio.get_running_loop().call_later(
                    self.migrator.policy.migrate_after_s, self._evacuate, gone)
        return gone

    def _evacuate(self, replica: Replica) -> None:
        self._evacuations.pop(id(replica), None)
        self.migrator.evacuate(replica)

    def _replica_failed(self, replica: object, reason: str) -> None:
        if isinstance(replica, Replica) and self.replica_health.mark_down(replica, reason):
            self._replicas_changed(replica.route, notify=False)

    def _replica_up(self, replica: object) -> None:
        if isinstance(replica, Replica) and replica in self.replicas.get(replica.route, ()):
            self._replicas_changed(replica.route)

    def _count_move(self, route: str, cause: str) -> None:
        if route in self.routes:
            self.migrations.labels(*self.routes[route].labels, cause).inc()

    def _replicas_changed(self, route: str, notify: bool = True) -> None:
        """Update the ready-replica gauge; wake held requests when one may serve now."""
        if route not in self.routes:
            return
        up = sum(r.down is None for r in self.replicas[route])
        self.replica_gauge.labels(*self.routes[route].labels).set(up)
        if notify:
            self._notify(route)

    def refuse_new(self) -> None:
        """Shutting down: new requests get 503, held ones are answered 503 now."""
        self.draining = True
        for route in list(self._changed):
            self._notify(route)

    def in_flight_of(self, group: str) -> int:
        return sum(r.in_flight for rs in self.replicas.values() for r in rs if r.group == group)

    def _notify(self, route: str) -> None:
        """Wake the requests held for ``route``: its replicas (or the route) changed."""
        event = self._changed.pop(route, None)
        if event is not None:
            event.set()
        if route in self.routes:
            self._changed[route] = asyncio.Event()

    def _pick(self, route: str, request: Request = UNKNOWN_REQUEST) -> Replica | None:
        """The replica of ``route`` that is up that the route's policy picks for ``request``."""
        replicas = [r for r in self.replicas.get(route) or () if r.down is None]
        if not replicas:
            return None
        return replicas[self.routers[route].choose(replicas, request, time.monotonic()).index]

    def _send(self, routed: _Routed, replica: Replica | None) -> None:
        """``routed``'s request goes to ``replica`` now (None: it is over): the policy hears of
        it, and of the end of its previous attempt."""
        now = time.monotonic()
        if routed.ticket is not None:
            routed.router.done(routed.ticket, now)
        routed.ticket = None if replica is None else routed.router.sent(replica, routed.request,
                                                                         now)

    def _first_output(self, request_id: str) -> None:
        """The replica serving ``request_id`` sent its first bytes: its prefill is over."""
        routed = self._routed.get(request_id)
        if routed is not None and routed.ticket is not None:
            routed.router.started(routed.ticket, time.monotonic())

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting down"
        if self.not_ready is not None:
            return False, self.not_ready
        return True, f"{len(self.routes)} model(s) routed"

    # ---- routing --------------------------------------------------------------------------
    def _router_app(self) -> web.Application:
        app = super()._router_app()
        app.router.add_get("/kubeplex/v1/status", self.gateway_status)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    def _unknown(self, model: object, request_id: str) -> web.Response:
        names = sorted({n for r in self.routes.values() for n in (r.model, *r.adapters)})
        body = {"error": {"message": f"The model `{model}` does not exist. Models: "
                                     f"{', '.join(names) or '(none)'}.",
                          "type": "NotFoundError", "param": "model", "code": 404}}
        return web.json_response(body, status=404, headers={"X-Request-Id": request_id})

    def _resolve(self, model: object, request: web.Request,
                 request_id: str) -> str | web.Response:
        """The route of a request for ``model``, or the error answer (here: 404)."""
        if isinstance(model, str) and model in self.routes:
            return model
        adapter_of = next((name for name, r in self.routes.items() if model in r.adapters), None)
        return adapter_of or self._unknown(model, request_id)  # an adapter: its model's route

    def _unavailable(self, message: str, retry_after: float, request_id: str) -> web.Response:
        body = {"error": {"message": message, "type": "ServiceUnavailableError",
                          "param": None, "code": 503}}
        headers = {"Retry-After": str(max(1, math.ceil(retry_after))),
                   "X-Request-Id": request_id}
        return web.json_response(body, status=503, headers=headers)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        request_id = read_request_id(request.headers)
        arrived = time.monotonic()
        body = await request.read()
        try:
            parsed = parse_request(body)
            plan = resumable(request.path, parsed.fields, self.migrator.policy.resume_plain) \
                if self.migrator.policy.enabled else "migration is off"
        except BadRequestBody as exc:
            self.metrics.count("", "400")
            return error_response(400, str(exc), "BadRequestError", param=exc.param,
                                  request_id=request_id)
        model = parsed.model
        route = self._resolve(model, request, request_id)
        if isinstance(route, web.Response):
            self.metrics.requests.labels("", str(route.status)).inc()
            return route
        self.arrivals.labels(*self.routes[route].labels).inc()
        if self.draining:
            self.metrics.requests.labels(model, "503").inc()
            return self._unavailable("kubeplex is shutting down", 1, request_id)
        router = self.routers[route]
        routed = _Routed(router, request_of(parsed.fields, request.path.endswith(CHAT_SUFFIX),
                                            hashed=router.uses_prefixes))
        self._routed[request_id] = routed
        try:
            return await self._forward(request, route, model, routed, plan, body, request_id,
                                       arrived)
        finally:
            self._send(routed, None)
            if self._routed.get(request_id) is routed:
                del self._routed[request_id]

    async def _forward(self, request: web.Request, route: str, model: str, routed: _Routed,
                       plan: Resumable | str, body: bytes, request_id: str,
                       arrived: float) -> web.StreamResponse:
        """Pick a replica (or hold), then proxy the request or hand it to the migrator."""
        replica = self._pick(route, routed.request)
        if replica is None:
            replica, refusal = await self._hold(route, arrived, request_id, routed.request)
            if replica is None:
                self.metrics.requests.labels(model, "503").inc()
                return refusal
        self._send(routed, replica)
        if not isinstance(plan, str):
            return await self.migrator.forward(request, route, replica, plan, body,
                                               request_id, arrived)

        async def elsewhere(refused: Target) -> Target | None:
            self._replica_failed(refused, "refused a request")
            other = await self._retry(route, arrived, request_id)
            self._send(routed, other)
            return other

        return await self.proxy.forward(request, replica, body, request_id, arrived,
                                        fallback=elsewhere,
                                        first_byte=lambda: self._first_output(request_id))

    async def _replacement(self, route: str, request_id: str) -> Replica | None:
        """Where a moving request goes next (held from now if no replica is up)."""
        replica = await self._retry(route, time.monotonic(), request_id)
        routed = self._routed.get(request_id)
        if routed is not None:
            self._send(routed, replica)
        return replica

    async def _retry(self, route: str, arrived: float, request_id: str) -> Replica | None:
        """Where a refused or moving request goes instead: a replica that is up, else held
        until one is (None: nowhere; the refusal goes to the client)."""
        if self.draining or route not in self.routes:
            return None
        routed = self._routed.get(request_id)
        request = routed.request if routed is not None else UNKNOWN_REQUEST
        replica = self._pick(route, request)
        if replica is None:
            replica, _ = await self._hold(route, arrived, request_id, request)
        if replica is not None and route in self.routes:
            self.retries.labels(*self.routes[route].labels).inc()
        return replica

    async def _hold(self, route: str, arrived: float, request_id: str,
                    request: Request = UNKNOWN_REQUEST) -> tuple[Replica | None, web.Response]:
        """Wait for a replica of ``route`` that is up (bounded count and time)."""
        wait = self.expected_start(route)
        model = self.routes[route].model
        if self.held[route] >= self.hold_limit:
            return None, self._unavailable(
                f"model {model} is starting and {self.held[route]} requests already wait for "
                f"it (the limit); retry later", wait, request_id)
        self._count_held(route, +1)
        if self.on_hold is not None:
            self.on_hold(route)
        try:
            deadline = arrived + self.hold_timeout
            while (left := deadline - time.monotonic()) > 0 and not self.draining:
                if route not in self.routes:
                    return None, self._unavailable(
                        f"model {model} was removed while the request waited", wait, request_id)
                replica = self._pick(route, request)
                if replica is not None:
                    return replica, web.Response()
                try:
                    await asyncio.wait_for(self._changed[route].wait(), left)
                except TimeoutError:
                    break
            return None, self._unavailable(
                f"model {model} has no ready replica after {self.hold_timeout:g} s of waiting; "
                "it is scaling from zero, retry later", wait, request_id)
        finally:
            self._count_held(route, -1)

    def _count_held(self, route: str, step: int) -> None:
        self.held[route] += step
        if self.held[route] == 0:
            self.hold_since.pop(route, None)
        else:
            self.hold_since.setdefault(route, time.time())
        if route in self.routes:
            self.held_gauge.labels(*self.routes[route].labels).set(self.held[route])

    async def list_models(self, request: web.Request) -> web.Response:
        data = [{"id": r.model, "object": "model", "created": 0, "owned_by": "kubeplex",
                 "root": f"{r.namespace}/{r.modelservice}", "parent": None,
                 "replicas": sum(rep.down is None for rep in self.replicas[name])}
                for name, r in sorted(self.routes.items(), key=lambda item: item[1].labels)]
        data += adapter_cards(self.routes, self.replicas)
        return web.json_response({"object": "list", "data": data})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def gateway_status(self, request: web.Request) -> web.Response:
        state = self.status_source() if self.status_source is not None else {}
        return web.json_response(state)

    # ---- serving --------------------------------------------------------------------------
    async def close(self) -> None:
        for timer in self._evacuations.values():
            timer.cancel()
        self._evacuations.clear()
        await self.replica_health.close()
        await self.loads.close()
        await super().close()

    async def open(self, host: str, port: int) -> web.AppRunner:
        """Start serving on ``host:port`` (the caller cleans the runner up)."""
        await self.start()
        runner = web.AppRunner(self.router_app, access_log=None, handle_signals=False,
                               shutdown_timeout=5.0)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=1024).start()
        return runner
