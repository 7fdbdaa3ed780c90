"""The gateway: one OpenAI-compatible endpoint for every model, in front of the replicas.

It is the runtime's router (:class:`kubeplex.runtime.app.Runtime`: the same forwarding,
streaming pass-through, request ids, error bodies and ``kubeplex_router_*`` metrics), with
replicas instead of engines as upstreams:

* a request goes to the ready replica of its model with the fewest requests in flight through
  the gateway (the least queued work);
* a model with no ready replica *holds* the request: at most ``hold_limit`` per model, each
  at most ``hold_timeout`` seconds, then ``503`` with ``Retry-After``; the first held request
  calls ``on_hold`` so the autoscaler scales from zero at once, and held requests are
  forwarded as soon as a replica is ready;
* arrivals and held requests are counted per model (``kubeplex_gateway_arrivals_total``,
  ``kubeplex_gateway_held_requests``): the arrival-rate signal, even at zero replicas;
* ``GET /kubeplex/v1/status`` answers ``status_source()`` (local mode's state) for
  ``kubeplex status``.

Scale-down calls :meth:`Gateway.remove` first (no new requests), then waits for
:meth:`Gateway.wait_idle` before the replica is drained, so no request is cut.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from kubeplex.runtime.app import Runtime
from kubeplex.runtime.config import RuntimeConfig
from kubeplex.runtime.upstream import Upstream

__all__ = ["Gateway", "Replica"]


class Replica(Upstream):
    """One replica of one model behind the gateway, the router's upstream for that model."""

    def __init__(self, model: str, group: str, base_url: str) -> None:
        super().__init__(base_url)
        self.name = model
        self.group = group

    def retry_after(self, now: float) -> int:
        return 1


class Gateway(Runtime):
    """The runtime's router over local-mode replicas (see the module docstring)."""

    def __init__(self, models: Mapping[str, str], *, hold_timeout: float, hold_limit: int,
                 retry_after: Callable[[str], float],
                 on_hold: Callable[[str], None] | None = None,
                 status_source: Callable[[], dict[str, Any]] | None = None) -> None:
        """``models``: served name -> ModelService key. ``retry_after(model)``: seconds a
        refused client should wait (the expected start time)."""
        self.models = dict(models)
        self.hold_timeout = hold_timeout
        self.hold_limit = hold_limit
        self.expected_start = retry_after
        self.on_hold = on_hold
        self.status_source = status_source
        self.replicas: dict[str, list[Replica]] = {m: [] for m in self.models}
        self.held: dict[str, int] = dict.fromkeys(self.models, 0)
        self._ready: dict[str, asyncio.Event] = {m: asyncio.Event() for m in self.models}
        super().__init__(RuntimeConfig(models=(), device="cpu"))
        registry = self.metrics.registry
        self.arrivals = Counter("kubeplex_gateway_arrivals", "Requests that arrived at the "
                                "gateway for the model (held or not).", ["model"],
                                registry=registry)
        self.held_gauge = Gauge("kubeplex_gateway_held_requests", "Requests the gateway "
                                "holds while the model has no ready replica.", ["model"],
                                registry=registry)
        self.replica_gauge = Gauge("kubeplex_gateway_replicas", "Ready replicas the gateway "
                                   "routes the model to.", ["model"], registry=registry)
        for name in self.models:
            self.arrivals.labels(name)
            self.held_gauge.labels(name).set(0)
            self.replica_gauge.labels(name).set(0)

    # ---- replicas -------------------------------------------------------------------------
    def add(self, replica: Replica) -> None:
        """Route ``replica.name``'s requests to ``replica`` too (and release held ones)."""
        self.replicas[replica.name].append(replica)
        self.replica_gauge.labels(replica.name).set(len(self.replicas[replica.name]))
        self._ready[replica.name].set()

    def remove(self, model: str, group: str) -> Replica | None:
        """Stop routing ``model`` to ``group``; returns the replica (to wait for it)."""
        kept = [r for r in self.replicas[model] if r.group != group]
        gone = next((r for r in self.replicas[model] if r.group == group), None)
        self.replicas[model] = kept
        self.replica_gauge.labels(model).set(len(kept))
        if not kept:
            self._ready[model].clear()
        return gone

    def refuse_new(self) -> None:
        """Shutting down: new requests get 503, held ones are answered 503 now."""
        self.draining = True
        for event in self._ready.values():
            event.set()

    def in_flight_of(self, group: str) -> int:
        return sum(r.in_flight for rs in self.replicas.values() for r in rs if r.group == group)

    def _pick(self, model: str) -> Replica | None:
        replicas = self.replicas.get(model) or []
        return min(replicas, key=lambda r: r.in_flight) if replicas else None

    # ---- routing --------------------------------------------------------------------------
    def _router_app(self) -> web.Application:
        app = super()._router_app()
        app.router.add_get("/kubeplex/v1/status", self.gateway_status)
        return app

    def _unknown(self, model: object, request_id: str) -> web.Response:
        body = {"error": {"message": f"The model `{model}` does not exist. Models: "
                                     f"{', '.join(sorted(self.models)) or '(none)'}.",
                          "type": "NotFoundError", "param": "model", "code": 404}}
        return web.json_response(body, status=404, headers={"X-Request-Id": request_id})

    def _unavailable(self, message: str, retry_after: float, request_id: str) -> web.Response:
        body = {"error": {"message": message, "type": "ServiceUnavailableError",
                          "param": None, "code": 503}}
        headers = {"Retry-After": str(max(1, math.ceil(retry_after))),
                   "X-Request-Id": request_id}
        return web.json_response(body, status=503, headers=headers)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        arrived = time.monotonic()
        body = await request.read()
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            self.metrics.requests.labels("", "400").inc()
            body_error = {"error": {"message": "the body must be a JSON object with a 'model' "
                                               "field", "type": "BadRequestError",
                                    "param": None, "code": 400}}
            return web.json_response(body_error, status=400,
                                     headers={"X-Request-Id": request_id})
        if not isinstance(model, str) or model not in self.models:
            self.metrics.requests.labels("", "404").inc()
            return self._unknown(model, request_id)
        self.arrivals.labels(model).inc()
        if self.draining:
            self.metrics.requests.labels(model, "503").inc()
            return self._unavailable("kubeplex is shutting down", 1, request_id)
        replica = self._pick(model)
        if replica is None:
            replica, refusal = await self._hold(model, arrived, request_id)
            if replica is None:
                self.metrics.requests.labels(model, "503").inc()
                return refusal
        return await self.proxy.forward(request, replica, body, request_id, arrived)

    async def _hold(self, model: str, arrived: float,
                    request_id: str) -> tuple[Replica | None, web.Response]:
        """Wait for a ready replica of ``model`` (bounded count and time)."""
        wait = self.expected_start(model)
        if self.held[model] >= self.hold_limit:
            return None, self._unavailable(
                f"model {model} is starting and {self.held[model]} requests already wait for "
                f"it (the limit); retry later", wait, request_id)
        self.held[model] += 1
        self.held_gauge.labels(model).set(self.held[model])
        if self.on_hold is not None:
            self.on_hold(model)
        try:
            deadline = arrived + self.hold_timeout
            while (left := deadline - time.monotonic()) > 0 and not self.draining:
                try:
                    await asyncio.wait_for(self._ready[model].wait(), left)
                except TimeoutError:
                    break
                replica = self._pick(model)
                if replica is not None:
                    return replica, web.Response()
            return None, self._unavailable(
                f"model {model} has no ready replica after {self.hold_timeout:g} s of waiting; "
                "it is scaling from zero, retry later", wait, request_id)
        finally:
            self.held[model] -= 1
            self.held_gauge.labels(model).set(self.held[model])

    async def list_models(self, request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "kubeplex",
                 "root": key, "parent": None, "replicas": len(self.replicas[name])}
                for name, key in sorted(self.models.items())]
        return web.json_response({"object": "list", "data": data})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def gateway_status(self, request: web.Request) -> web.Response:
        state = self.status_source() if self.status_source is not None else {}
        return web.json_response(state)

    # ---- serving --------------------------------------------------------------------------
    async def open(self, host: str, port: int) -> web.AppRunner:
        """Start serving on ``host:port`` (the caller cleans the runner up)."""
        await self.start()
        runner = web.AppRunner(self.router_app, access_log=None, handle_signals=False,
                               shutdown_timeout=5.0)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=1024).start()
        return runner
