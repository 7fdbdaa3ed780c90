"""The runtime process: router (``--port``) and control API (``--control-port``) over engines.

Router (OpenAI-compatible, what the Service exposes):
    POST /v1/completions, /v1/chat/completions, /v1/embeddings, /v1/responses, /v1/rerank
         forwarded to the engine named by ``model`` (a hosted model or its LoRA adapter);
         streams (SSE) pass through chunk by chunk; ``X-Request-Id`` is kept or made, sent to
         the engine and returned. 404 lists the hosted models; 503 + Retry-After while the
         runtime drains or the model's engine is not ready (starting, restarting, asleep).
    GET  /v1/models   the hosted models.      GET /metrics   engines' vllm:* + kubeplex_*.
    GET  /kubeplex/v1/load/NAME   the model's engine queue as server-sent events (the sim's;
         404 for an engine that publishes none): what the gateway's prefix-aware routing
         follows (kubeplex.runtime.kv_events).
    GET  /health[?model=NAME]   200 while the process runs; with ``model``: 200 only while
         that model's engine serves (the gateway's per-model probe of a replica it marked
         down), else 503 (404: not hosted). Bodies over 64 MiB get 413, bodies nested deeper
         than 64 levels or without a string ``model`` 400, all as OpenAI JSON errors.

Control API (not exposed by the Service; see runtime_image/README.md for bodies):
    GET    /kubeplex/v1/status                  models, engine states, in-flight counts
    POST   /kubeplex/v1/models[?wait=true]      load a model (body: one config-file model)
    DELETE /kubeplex/v1/models/{name}           drain the model, then unload it
    POST   /kubeplex/v1/models/{name}/sleep[?level=1|2]   409 when the engine cannot sleep
    POST   /kubeplex/v1/models/{name}/wake
    PUT    /kubeplex/v1/models/{name}/adapters  its LoRA adapters (kubeplex.runtime.adapters)
    POST   /kubeplex/v1/drain[?wait=true]       stop accepting, finish in-flight, stop engines
    GET    /healthz   200 while the process runs
    GET    /readyz    200 unless draining, or an engine is starting (with the pod), or no
                      engine serves (every one restarting); asleep and unloading engines
                      count as ready, and so does a pod whose other models serve while one
                      engine restarts (the gateway routes around that model meanwhile)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubeplex.runtime._limits import (
    MAX_BODY_BYTES,
    BadRequestBody,
    json_errors,
    parse_json,
    parse_request,
)
from kubeplex.runtime._limits import request_id as read_request_id
from kubeplex.runtime.adapters import adapter_cards, add_control_routes, engine_for
from kubeplex.runtime.config import ModelConfig, RuntimeConfig, parse_model
from kubeplex.runtime.departures import Departures
from kubeplex.runtime.engines import launch, resolve_device
from kubeplex.runtime.errors import (
    EngineStateError,
    ModelConflictError,
    RuntimeConfigError,
    RuntimeError_,
    UnknownModelError,
)
from kubeplex.runtime.kv_events import LOAD_PATH
from kubeplex.runtime.metrics import (
    RouterMetrics,
    merge_expositions,
    only_model,
    with_model_name,
)
from kubeplex.runtime.proxy import Proxy, error_response
from kubeplex.runtime.supervisor import Engine, EngineState

__all__ = ["DRAIN_RETRY_AFTER_SECONDS", "Runtime"]

#: Retry-After while the runtime drains: the pod is going away, so retry soon (elsewhere).
DRAIN_RETRY_AFTER_SECONDS = 1
#: Timeout of one engine /metrics scrape inside the runtime's /metrics (seconds).
ENGINE_SCRAPE_TIMEOUT_SECONDS = 2.0
#: Timeout of an engine's /sleep or /wake_up call (a level-2 wake reloads weights).
ENGINE_SLEEP_TIMEOUT_SECONDS = 300.0
#: OpenAI-style requests routed by their body's ``model`` (pass-through: the engine answers).
ROUTED_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses",
                "/v1/rerank")
#: Engine states that keep the runtime ready: serving, asleep or being unloaded on
#: purpose (see :meth:`Runtime.ready`).
READY_STATES = (EngineState.READY, EngineState.SLEEPING, EngineState.DRAINING)
#: The sim engines' shared device (:mod:`kubeplex.runtime.sim.device`), in :attr:`workdir`.
SIM_DEVICE_FILE = "sim-device"


def _control_error(status: int, message: str) -> dict[str, str]:
    """The control API's error shape (also for the web framework's own 404, 405, 413)."""
    return {"error": message, "kind": "HTTPError"}


class Runtime:
    """Engines plus the two HTTP apps; one per process."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.device = resolve_device(config)
        self.engines: dict[str, Engine] = {}
        self.metrics = RouterMetrics()
        self.draining = False
        self.drained = asyncio.Event()
        #: Models loaded through the control API while the runtime was ready: their start does
        #: not make /readyz fail (a shared pod keeps serving its other models meanwhile).
        self.late_loads: set[str] = set()
        self._drain_task: asyncio.Task[None] | None = None
        #: This process's scratch directory (the sim engines' shared device file), made on
        #: first use, removed by :meth:`close`.
        self.workdir: str | None = None
        #: Forwards requests to the engines (public: gateways built on Runtime use it too).
        self.proxy = Proxy(self.metrics)
        #: Models and adapters unloaded a moment ago: 503 + Retry-After, not 404.
        self.departures = Departures()
        self.router_app = self._router_app()
        self.control_app = self._control_app()

    # ---- lifecycle ------------------------------------------------------------------
    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The pooled HTTP session to the engines (the proxy's; None until started)."""
        return self.proxy.session

    async def start(self) -> None:
        """Open the upstream connection pool and start every configured engine."""
        await self.proxy.open()
        try:
            for model in self.config.models:
                self._add_engine(model)
        except RuntimeError_:
            await self.close()
            raise

    def _add_engine(self, model: ModelConfig) -> Engine:
        if self.session is None:
            raise EngineStateError("the runtime is not started")
        launch(model, self.config, 0, self.device)  # refuse what cannot start (400 / exit 2)
        engine = Engine(model, self.config, self.device, self.session,
                        on_change=self._engine_changed,
                        shared_device=self._sim_device() if model.engine == "sim" else None)
        self.engines[model.name] = engine
        engine.start()
        return engine

    def _sim_device(self) -> str:
        """The booking file of the simulated GPU group all sim engines here share."""
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="kubeplex-runtime-")
        return os.path.join(self.workdir, SIM_DEVICE_FILE)

    def _engine_changed(self, engine: Engine) -> None:
        self.metrics.engine_ready.labels(engine.name).set(engine.state is EngineState.READY)
        self.metrics.engine_restarts.labels(engine.name).set(engine.restarts)

    async def close(self) -> None:
        await asyncio.gather(*(e.stop() for e in self.engines.values()))
        await self.proxy.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def in_flight(self) -> int:
        return sum(e.in_flight for e in self.engines.values())

    def ready(self) -> tuple[bool, str]:
        """``/readyz``: whether this pod is healthy and can take the work it is given.

        Routing is by the pod's model labels (one Service per model), not by readiness, so
        readiness says *healthy*, not *serving every model*: an engine counts when it serves
        (ready), is asleep on purpose (a warm standby's preloaded model: Ready means healthy and
        claimable; a wake is one control-API call away), is being unloaded on purpose (the pod
        keeps serving its other models), or is a model loaded into a ready pod that is still
        starting, or is restarting after it served and died while another engine of the pod
        serves (the gateway probes each model and routes around the restarting one; taking the
        pod out of its Services would cut the healthy models too). Not ready: the runtime
        drains, or an engine is starting with the pod, or one never came up (crash loop), or
        every engine is restarting.
        """
        if self.draining:
            return False, "draining"
        serving = any(e.state in READY_STATES for e in self.engines.values())
        # Engines that served and died: restarting them is the runtime's own business.
        restarting = [e for e in self.engines.values() if e.state is EngineState.RESTARTING
                      and e.startup_seconds is not None]
        waiting = [f"{e.name}: {e.state}" for e in self.engines.values()
                   if e.state not in READY_STATES
                   and not (e.state is EngineState.STARTING and e.name in self.late_loads)
                   and not (e in restarting and serving)]
        if waiting:
            return False, "not ready: " + ", ".join(waiting)
        counts: dict[str, int] = {}
        for e in self.engines.values():
            counts[str(e.state)] = counts.get(str(e.state), 0) + 1
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return True, f"{len(self.engines)} model(s){': ' + states if states else ''}"

    def begin_drain(self) -> asyncio.Task[None]:
        """Stop accepting requests now; the returned task finishes the drain (idempotent)."""
        self.draining = True
        self.metrics.draining.set(1)
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain())
        return self._drain_task

    async def drain(self) -> dict[str, Any]:
        """Stop accepting, wait for in-flight requests (up to the grace), stop the engines."""
        await asyncio.shield(self.begin_drain())
        return self.status()

    async def _drain(self) -> None:
        started = time.monotonic()
        grace = self.config.drain_grace_seconds
        print(f"kubeplex-runtime: draining {self.in_flight} in-flight request(s), grace "
              f"{grace:g}s", file=sys.stderr, flush=True)
        waits = [e.wait_idle(grace) for e in self.engines.values()]
        finished = all(await asyncio.gather(*waits))
        abandoned = self.in_flight
        await asyncio.gather(*(e.stop() for e in self.engines.values()))
        print(f"kubeplex-runtime: drained in {time.monotonic() - started:.1f}s"
              f"{'' if finished else f', {abandoned} request(s) cut at the grace period'}",
              file=sys.stderr, flush=True)
        self.drained.set()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        ready, reason = self.ready()
        state = "drained" if self.drained.is_set() else "draining" if self.draining \
            else "serving"
        return {"state": state, "ready": ready, "reason": reason, "device": self.device,
                "inFlight": self.in_flight,
                "models": [e.status(now) for e in self.engines.values()]}

    # ---- router ---------------------------------------------------------------------
    def _router_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors()])
        for path in ROUTED_PATHS:
            app.router.add_post(path, self.forward)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_get("/health", self.health)
        app.router.add_get(LOAD_PATH + "/{name:.+}", self.load_stream)
        return app

    async def load_stream(self, request: web.Request) -> web.StreamResponse:
        """A hosted model's engine load (:mod:`kubeplex.runtime.kv_events`), forwarded as it
        streams: the sim engine publishes it; vLLM does not (404, and the gateway routes on
        its own view)."""
        name = request.match_info["name"]
        engine = engine_for(self.engines, name)
        if engine is None:
            return self._not_hosted(name, "-")
        if engine.model.engine != "sim":
            return error_response(404, f"model {engine.name}'s {engine.model.engine} engine "
                                       "publishes no load", "NotFoundError")
        if self.session is None or engine.state is not EngineState.READY:
            return error_response(503, f"model {engine.name} is not serving ({engine.state})",
                                  "ServiceUnavailableError",
                                  retry_after=engine.retry_after(time.monotonic()))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        try:
            async with self.session.get(engine.base_url + LOAD_PATH,
                                        timeout=aiohttp.ClientTimeout(total=None)) as upstream:
                if upstream.status != 200:
                    return error_response(502, f"engine {engine.name} answered its load "
                                               f"stream with {upstream.status}",
                                          "BadGatewayError")
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
        except (aiohttp.ClientError, ConnectionResetError):
            pass  # the engine or the follower went away: the stream ends
        return response

    async def health(self, request: web.Request) -> web.Response:
        """``/health``: 200 while the process runs; ``?model=NAME``: whether it serves NAME."""
        name = request.query.get("model")
        if name is None:
            return web.json_response({"status": "ok"})
        engine = engine_for(self.engines, name)
        if engine is None:
            return self._not_hosted(name, "-")
        if self.draining or engine.state is not EngineState.READY:
            state = "draining" if self.draining else str(engine.state)
            return error_response(503, f"model {name} is not serving ({state})",
                                  "ServiceUnavailableError",
                                  retry_after=engine.retry_after(time.monotonic()))
        return web.json_response({"status": "ok", "model": name})

    def _not_hosted(self, model: object, request_id: str) -> web.Response:
        names = [*self.engines, *(card["id"] for card in adapter_cards(self.engines))]
        hosted = ", ".join(sorted(names)) or "(none)"
        return error_response(404, f"The model `{model}` is not hosted here. Hosted models: "
                                f"{hosted}.", "NotFoundError", param="model",
                           request_id=request_id)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        request_id = read_request_id(request.headers)
        arrived = time.monotonic()
        body = await request.read()
        try:
            model = parse_request(body).model
        except BadRequestBody as exc:
            self.metrics.count("", "400")
            return error_response(400, str(exc), "BadRequestError", param=exc.param,
                                  request_id=request_id)
        engine = engine_for(self.engines, model)  # a hosted model's, or its LoRA adapter's
        if self.draining:
            self.metrics.count(engine.name if engine else "", "503")
            return error_response(503, "this replica is draining; retry on another one",
                                  "ServiceUnavailableError",
                                  retry_after=DRAIN_RETRY_AFTER_SECONDS, request_id=request_id)
        if engine is None:
            if self.departures.recent(model, arrived):  # it left a moment ago: retry elsewhere
                self.metrics.count("", "503")
                return error_response(503, f"model {model} was just taken off this replica; "
                                           "retry (another replica serves it)",
                                      "ServiceUnavailableError",
                                      retry_after=DRAIN_RETRY_AFTER_SECONDS,
                                      request_id=request_id)
            self.metrics.count("", "404")
            return self._not_hosted(model, request_id)
        if engine.state is not EngineState.READY:
            self.metrics.count(engine.name, "503")
            return error_response(503, f"model {engine.name} is not ready ({engine.state}: "
                                       f"{engine.message})", "ServiceUnavailableError",
                                  retry_after=engine.retry_after(arrived), request_id=request_id)
        return await self.proxy.forward(request, engine, body, request_id, arrived)

    async def list_models(self, request: web.Request) -> web.Response:
        data = [{"id": e.name, "object": "model", "created": 0, "owned_by": "kubeplex",
                 "root": e.model.model, "parent": None,
                 "max_model_len": e.model.max_model_len}
                for e in self.engines.values()]
        return web.json_response({"object": "list", "data": data + adapter_cards(self.engines)})

    async def _engine_metrics(self, engine: Engine) -> str:
        if self.session is None or engine.state not in (EngineState.READY, EngineState.SLEEPING,
                                                        EngineState.DRAINING):
            return ""
        try:
            async with self.session.get(
                    engine.base_url + "/metrics",
                    timeout=aiohttp.ClientTimeout(total=ENGINE_SCRAPE_TIMEOUT_SECONDS)) as resp:
                return await resp.text() if resp.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError):
            return ""

    async def metrics_handler(self, request: web.Request) -> web.Response:
        """Every engine's ``vllm:*`` series plus the router's; ``?model=NAME`` (a hosted model
        or adapter): that model's engine and router series only (an endpoint picker's view
        of this pod, e.g. the Inference Extension's EPP of that model's InferencePool)."""
        scope = request.query.get("model")
        engines = list(self.engines.values())
        if scope is not None:
            engine = engine_for(self.engines, scope)
            if engine is None:
                return self._not_hosted(scope, uuid.uuid4().hex)
            engines = [engine]
        texts = await asyncio.gather(*(self._engine_metrics(e) for e in engines))
        router = generate_latest(self.metrics.registry).decode()
        if scope is not None:
            router = only_model(router, engines[0].name)
        body = merge_expositions(with_model_name(text, e.name)
                                 for text, e in zip(texts, engines, strict=True)) + router
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---- control API ----------------------------------------------------------------
    def _control_app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors(_control_error), self._errors])
        r = app.router
        r.add_get("/kubeplex/v1/status", self.status_handler)
        r.add_post("/kubeplex/v1/models", self.load_handler)
        # Served names may contain '/' (org/model): the segment pattern spans slashes.
        r.add_delete("/kubeplex/v1/models/{name:.+}", self.unload_handler)
        r.add_post("/kubeplex/v1/models/{name:.+}/sleep", self.sleep_handler)
        r.add_post("/kubeplex/v1/models/{name:.+}/wake", self.wake_handler)
        r.add_post("/kubeplex/v1/drain", self.drain_handler)
        add_control_routes(self, r)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except RuntimeError_ as exc:
            return web.json_response({"error": str(exc), "kind": type(exc).__name__},
                                     status=exc.http_status)
        return response

    def _engine(self, request: web.Request) -> Engine:
        name = request.match_info["name"]
        engine = self.engines.get(name)
        if engine is None:
            hosted = ", ".join(sorted(self.engines)) or "(none)"
            raise UnknownModelError(f"model {name!r} is not hosted here; hosted: {hosted}")
        return engine

    @staticmethod
    def _wait(request: web.Request) -> bool:
        return request.query.get("wait", "false").lower() in ("1", "true", "yes")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, reason = self.ready()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def status_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def load_handler(self, request: web.Request) -> web.Response:
        if self.draining:
            raise EngineStateError("the runtime is draining; it loads no more models")
        try:
            data = parse_json(await request.read())
        except BadRequestBody as exc:
            raise RuntimeConfigError(f"the body must be one model of the config file, as JSON: "
                                     f"{exc}") from exc
        model = parse_model(data, "model")
        if model.name in self.engines:
            raise ModelConflictError(f"model {model.name!r} is already hosted; unload it first")
        if self.engines and self.ready()[0]:
            self.late_loads.add(model.name)
        self.config = self.config.with_model(model)
        engine = self._add_engine(model)
        self.departures.back([model.name, *(a.name for a in model.adapters)])
        if self._wait(request):
            ready = await engine.wait_ready(self.config.ready_timeout_seconds)
            return web.json_response(engine.status(time.monotonic()), status=201 if ready
                                     else 504)
        return web.json_response(engine.status(time.monotonic()), status=202)

    async def unload_handler(self, request: web.Request) -> web.Response:
        engine = self._engine(request)
        engine.mark(EngineState.DRAINING, "unloading: finishing in-flight requests")
        drained = await engine.wait_idle(self.config.drain_grace_seconds)
        abandoned = engine.in_flight
        await engine.stop()
        self.engines.pop(engine.name, None)
        self.departures.note([engine.name, *(a.name for a in engine.model.adapters)],
                             time.monotonic())
        self.late_loads.discard(engine.name)
        self.config = self.config.without_model(engine.name)
        self.metrics.forget(engine.name)
        return web.json_response({"name": engine.name, "unloaded": True, "drained": drained,
                                  "abandonedRequests": abandoned})

    async def _engine_call(self, engine: Engine, path: str) -> None:
        if self.session is None:
            raise EngineStateError("the runtime is not started")
        async with self.session.post(
                engine.base_url + path,
                timeout=aiohttp.ClientTimeout(total=ENGINE_SLEEP_TIMEOUT_SECONDS)) as resp:
            if resp.status != 200:
                raise EngineStateError(f"engine {engine.name} answered {path} with "
                                       f"{resp.status}: {(await resp.text())[:500]}")

    async def sleep_handler(self, request: web.Request) -> web.Response:
        engine = self._engine(request)
        level = request.query.get("level", "1")
        if level not in ("1", "2"):
            raise RuntimeConfigError(f"level: must be 1 or 2, got {level!r}")
        if not engine.can_sleep:
            why = ("vLLM sleep mode needs a GPU" if engine.model.engine == "vllm"
                   else "the sim engine sleeps only with sleepMode: true")
            raise ModelConflictError(f"model {engine.name} cannot sleep: its {engine.model.engine}"
                                     f" engine runs without sleep mode ({why})")
        if engine.state is not EngineState.READY:
            raise EngineStateError(f"model {engine.name} is {engine.state}, not ready; "
                                   "only a ready engine can sleep")
        engine.mark(EngineState.SLEEPING, "going to sleep: finishing in-flight requests")
        await engine.wait_idle(self.config.drain_grace_seconds)
        try:
            await self._engine_call(engine, f"/sleep?level={level}")
        except (EngineStateError, aiohttp.ClientError):
            engine.mark(EngineState.READY, "sleep failed; still awake")
            raise
        engine.sleep_level = int(level)
        engine.mark(EngineState.SLEEPING, f"asleep (level {level})")
        return web.json_response(engine.status(time.monotonic()))

    async def wake_handler(self, request: web.Request) -> web.Response:
        engine = self._engine(request)
        if engine.state is not EngineState.SLEEPING or not engine.sleep_level:
            raise EngineStateError(f"model {engine.name} is {engine.state}, not asleep")
        started = time.monotonic()
        await self._engine_call(engine, "/wake_up")
        engine.sleep_level = 0
        engine.mark(EngineState.READY, f"awake (woke in {time.monotonic() - started:.2f}s)")
        return web.json_response(engine.status(time.monotonic()))

    async def drain_handler(self, request: web.Request) -> web.Response:
        task = self.begin_drain()
        if self._wait(request):
            await asyncio.shield(task)
            return web.json_response(self.status())
        return web.json_response(self.status(), status=202)

    # ---- serving --------------------------------------------------------------------
    async def serve(self, host: str, port: int, control_port: int,
                    stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (SIGTERM): then drain and return."""
        await self.start()
        router = web.AppRunner(self.router_app, access_log=None, handle_signals=False,
                               shutdown_timeout=self.config.drain_grace_seconds)
        control = web.AppRunner(self.control_app, access_log=None, handle_signals=False)
        await router.setup()
        await control.setup()
        try:
            await web.TCPSite(router, host, port, backlog=1024).start()
            await web.TCPSite(control, host, control_port).start()
            print(f"kubeplex-runtime: router on http://{host}:{port}, control API on "
                  f"http://{host}:{control_port}, {len(self.engines)} model(s) on "
                  f"{self.device}", file=sys.stderr, flush=True)
            await stop.wait()
            await self.drain()
        finally:
            await router.cleanup()
            await control.cleanup()
            with contextlib.suppress(Exception):
                await self.close()
