"""The operator and local mode run one control layer: on the same declared model and the same
observed metrics, their cycles reach the same decisions and the same plan.

Each backend runs its own code end to end except the process/pod I/O: the operator's
``run_cycle`` writes to an in-memory Kubernetes (``operator_fakes.FakeKube``, pods ready once
created, as KWOK makes them) and reads ``/metrics`` through its real ``RuntimeClient``; local
mode's ``LocalMode.tick`` reads ``/metrics`` through its real scrape code and applies the plan
with its own ``_apply``, with the runtime processes not spawned (a started group's process
is up at the next tick, where ``_started`` times and routes it as ``_start`` does; a drained
one is gone). Both HTTP clients get the same scripted ``/metrics`` text (httpx's
``MockTransport``)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import yaml
from operator_fakes import FakeKube, nodes

from kubeplex.api._validate import validate_object
from kubeplex.control import GroupPhase
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._placement import Templates
from kubeplex.operator._reconcile import Context, Snapshot, run_cycle
from kubeplex.operator._runtime_client import RuntimeClient
from kubeplex.operator._settings import Settings
from kubeplex.operator.local import LocalMode

SCENARIO = """
apiVersion: kubeplex.io/v1alpha1
kind: GPUPool
metadata: {name: p}
spec:
  nodeSelector: {gpu: h100}
  gpu: {product: H100-80GB}
  gpusPerNode: 8
  maxGPUs: 8
  warmPool: {size: 0}
---
apiVersion: kubeplex.io/v1alpha1
kind: ModelService
metadata: {name: chat, namespace: default, uid: uid-chat, generation: 1}
spec:
  model: {uri: "hf://meta-llama/Llama-3.1-8B-Instruct", profile: llama-3.1-8b}
  engine: sim
  pool: p
  slo: {ttftSeconds: 0.5, percentile: 95}
  scaling: {minReplicas: 1, maxReplicas: 4, scaleToZeroAfterSeconds: 60}
---
apiVersion: local.kubeplex.io/v1alpha1
kind: LocalSettings
spec: {stableWindowSeconds: 20, panicWindowSeconds: 6, scaleDownDelaySeconds: 20}
"""
KEY = "default/chat"
T0 = 1_800_000_000.0
STEP_S = 2.0
CYCLES = 60


def metrics_text(t: float) -> str:
    """One replica's vLLM metrics at ``t`` seconds into the scenario: quiet, then a burst of
    queued requests with slow first tokens (20-50 s), then quiet again."""
    busy = 20 <= t < 50
    done = int(t * (4 if busy else 1))
    slow = int(t * 3) if busy else 0  # first tokens past the SLO during the burst
    return "\n".join([
        "# TYPE vllm:num_requests_waiting gauge",
        f'vllm:num_requests_waiting{{model_name="chat"}} {12 if busy else 0}',
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{model_name="chat"}} {8 if busy else 1}',
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{model_name="chat"}} {done}',
        "# TYPE vllm:time_to_first_token_seconds histogram",
        f'vllm:time_to_first_token_seconds_bucket{{le="0.25",model_name="chat"}} {done - slow}',
        f'vllm:time_to_first_token_seconds_bucket{{le="2.5",model_name="chat"}} {done}',
        f'vllm:time_to_first_token_seconds_bucket{{le="+Inf",model_name="chat"}} {done}',
        f'vllm:time_to_first_token_seconds_count{{model_name="chat"}} {done}',
        f'vllm:time_to_first_token_seconds_sum{{model_name="chat"}} {done * 0.1}',
        ""])


class Clock:
    t = 0.0


def transport(clock: Clock) -> httpx.MockTransport:
    """What every runtime answers: the scripted metrics, and a drained status."""
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, text=metrics_text(clock.t))
        if request.url.path == "/kubeplex/v1/status":
            return httpx.Response(200, json={"state": "drained", "inFlight": 0, "models": []})
        return httpx.Response(202 if request.url.path.endswith("/drain") else 404)
    return httpx.MockTransport(handle)


def _decided(desired: int, actions: Any) -> tuple[int, tuple[tuple[str, str | None], ...]]:
    return desired, tuple(sorted((str(a.kind), a.model) for a in actions))


def operator_cycles(docs: list[dict[str, Any]], overrides: dict[str, float],
                    clock: Clock) -> tuple[list[tuple[int, Any]], float | None]:
    """The decisions of each cycle, and the cold start the status says was measured."""
    pool_doc, msvc_doc = docs[0], docs[1]
    kube = FakeKube(clock=lambda: T0 + clock.t)
    kube.objects[("ModelService", "default", "chat")] = copy.deepcopy(msvc_doc)
    kube.objects[("GPUPool", None, "p")] = copy.deepcopy(pool_doc)
    settings = Settings(scrape="pods", endpoint_grace_s=0.0)
    runtime = RuntimeClient(settings)
    runtime.client = httpx.Client(transport=transport(clock))
    ctx = Context(settings, kube, runtime, OperatorMetrics(), overrides,
                  Templates(background=False, inline=True))
    out = []
    for n in range(CYCLES):
        clock.t = n * STEP_S
        pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): {
            "name": p["metadata"]["name"], "namespace": p["metadata"]["namespace"],
            "node": "node-0", "labels": p["metadata"]["labels"], "annotations": {},
            "ip": "10.0.0.1", "ready": True, "deleting": False, "managed": True,
            "done": False, "gpus": {}} for p in kube.of("Pod")}
        groups = kube.of("ServingGroup")
        names = {"default": {g["metadata"]["name"] for g in groups}}
        msvc = copy.deepcopy(msvc_doc)
        msvc["status"] = copy.deepcopy(kube.objects[("ModelService", "default", "chat")]
                                       .get("status", {}))
        snap = Snapshot(copy.deepcopy(pool_doc), [msvc], groups, nodes(1), {}, pods, names)
        report = run_cycle(ctx, snap, T0 + clock.t)
        out.append(_decided(report.desired[KEY], report.plan.actions))
    runtime.close()
    status = kube.objects[("ModelService", "default", "chat")]["status"]
    return out, status.get("observed", {}).get("coldStartSeconds")


def local_cycles(path: Path, clock: Clock,
                 workdir: Path) -> tuple[list[tuple[int, Any]], float | None]:
    local = LocalMode.prepare([path], workdir=workdir)
    applied: list[Any] = []
    apply = local._apply

    def record(action: Any, now: float) -> None:
        applied.append(action)
        apply(action, now)

    def never_spawn(coro: Coroutine[Any, Any, None]) -> None:
        coro.close()  # no runtime process: the loop below finishes what it would do

    local._apply = record  # type: ignore[method-assign]
    local._spawn_task = never_spawn  # type: ignore[method-assign]
    out = []

    async def cycles() -> None:
        local._client = httpx.AsyncClient(transport=transport(clock))
        for n in range(CYCLES):
            clock.t = n * STEP_S
            now = T0 + clock.t
            for group in list(local.groups.values()):
                if group.phase is GroupPhase.STARTING:  # its process came up
                    group.ready_seconds = now - group.since
                    local._started(group, [local.runs[key] for key in group.models], now)
                elif group.phase is GroupPhase.DRAINING:  # drained and stopped
                    del local.groups[group.id]
            applied.clear()
            await local.tick(now)
            decision = local.runs[KEY].decision
            assert decision is not None
            out.append(_decided(decision.desired, applied))
        await local._client.aclose()

    asyncio.run(cycles())
    last = local.runs[KEY].decision
    assert last is not None
    return out, last.cold_start_s if last.cold_starts_measured else None


def test_operator_and_local_mode_reach_the_same_decisions(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO)
    docs = [validate_object(d)[0] for d in list(yaml.safe_load_all(SCENARIO))[:2]]
    local = LocalMode.prepare([path], workdir=tmp_path / "prepared")
    config = local.runs[KEY].config  # the operator gets local mode's windows and timings
    overrides = {"stable_window_s": config.stable_window_s,
                 "panic_window_s": config.panic_window_s,
                 "scale_down_delay_s": config.scale_down_delay_s,
                 "cold_start_s": config.cold_start_s, "warm_start_s": config.warm_start_s,
                 "stale_after_s": config.stale_after_s}

    local_seq, local_cold = local_cycles(path, Clock(), tmp_path / "local")
    operator_seq, operator_cold = operator_cycles(docs, overrides, Clock())

    assert local_seq == operator_seq
    # Both timed the same cold starts (a group starts in one cycle and is Ready the next) and
    # planned with them.
    assert local_cold == operator_cold == STEP_S
    desired = [d for d, _ in operator_seq]
    # the scenario exercises the law: it scales up during the burst and back down after it
    assert max(desired) > 1 and desired[-1] < max(desired)
    kinds = {kind for _, actions in operator_seq for kind, _m in actions}
    assert {"start", "drain"} <= kinds
