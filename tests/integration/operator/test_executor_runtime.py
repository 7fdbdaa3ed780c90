"""The executor against a real ``kubeplex-runtime`` (sim engine): warm standbys with a
preloaded model, and groups changed in place kept in sync with their runtime.

The operator's executor puts a warm pod's preloaded model to sleep once the pod is up, and a
claim wakes it. Where the engine cannot sleep (the sim without ``sleepMode``, like vLLM on CPU)
the runtime answers the sleep with 409: the model stays loaded, unrouted, and the claim
routes it as it is, without a load. Both paths run here against a real runtime process; the
Kubernetes writes go to a recorder (what was patched is what the test checks).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubeplex.api import Adapter, GPUPoolSpec, ModelService, from_dict
from kubeplex.api._types import parse_spec
from kubeplex.control import ReplicaTemplate, resolve_model
from kubeplex.operator._adapters import ADAPTERS_ERROR
from kubeplex.operator._builders import (
    ADAPTERS,
    adapters_fingerprint,
    model_label,
    runtime_model,
)
from kubeplex.operator._executor import (
    CHANGED_IN_PLACE,
    CLAIMED_AT,
    DRAIN_ASKED,
    DRAIN_STARTED,
    SLEEP,
    UNLOAD_WAITING,
    UNLOADING,
    Executor,
    GroupObj,
    Hosted,
)
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._runtime_client import (
    CONTROL_URL_ANNOTATION,
    ROUTER_URL_ANNOTATION,
    RuntimeClient,
)
from kubeplex.operator._settings import Settings
from kubeplex.placement.hardware import gpu
from kubeplex.runtime.harness import RuntimeProcess, model_entry

NOW = 1_800_000_000.0
SETTINGS = Settings(scrape="pods", url_annotations=True)


class Recorder:
    """The Kubernetes writes of the executor, kept in order."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.events: list[str] = []
        #: Service -> the pods its EndpointSlices list (what kube-proxy still sends to).
        self.endpoints: dict[str, set[str]] = {}

    def endpoint_pods(self, namespace: str, service: str) -> set[str] | None:
        return set(self.endpoints.get(service, ()))

    def annotations(self) -> dict[str, str]:
        """The group's annotations after every patch so far (None removes one)."""
        out: dict[str, str] = {}
        for k, _n, b in self.patches:
            if k == "ServingGroup":
                for key, value in b.get("metadata", {}).get("annotations", {}).items():
                    if value is None:
                        out.pop(key, None)
                    else:
                        out[key] = value
        return out

    def deleted(self) -> bool:
        return any(b.get("deleted") for _k, _n, b in self.patches)

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        return obj

    def patch(self, kind: str, namespace: str | None, name: str, body: dict[str, Any],
              status: bool = False) -> None:
        if not status:
            self.patches.append((kind, name, body))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.patches.append((kind, name, {"deleted": True}))

    def event(self, obj_kind: str, namespace: str | None, name: str, uid: str, reason: str,
              message: str, warning: bool = False) -> None:
        self.events.append(reason)

    def annotation(self, key: str) -> str | None:
        values = [b["metadata"]["annotations"][key] for k, _n, b in self.patches
                  if k == "ServingGroup" and key in b.get("metadata", {}).get("annotations", {})]
        return values[-1] if values else None

    def labelled(self, model: str) -> bool:
        return any(k == "Pod" and b.get("metadata", {}).get("labels", {}).get(
            model_label(model)) == "true" for k, _n, b in self.patches)


def _hosted() -> Hosted:
    return _hosted_as("chat", share=0.45)


def _group(warm: bool, annotations: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "warm-p-0", "namespace": "ns", "uid": "g",
                         "annotations": annotations,
                         "creationTimestamp": "2027-01-15T08:00:00Z"},
            "spec": {"nodeName": "n", "tensorParallel": 1, "pipelineParallel": 1,
                     "warm": warm, "models": [{"modelService": "chat", "servedName": "chat",
                                               "memoryShare": 0.45}]},
            "status": {"phase": "Warm" if warm else "Loading"}}


def _pod(rt: RuntimeProcess, ready: bool) -> dict[str, Any]:
    return {"node": "n", "ready": ready, "deleting": False, "labels": {},
            "annotations": {ROUTER_URL_ANNOTATION: rt.url, CONTROL_URL_ANNOTATION: rt.control}}


@pytest.fixture
def executor() -> Iterator[tuple[Executor, Recorder]]:
    kube, runtime = Recorder(), RuntimeClient(SETTINGS)
    pool = parse_spec(GPUPoolSpec, {"gpu": {"product": "H100-80GB"}, "gpusPerNode": 8})
    yield Executor(SETTINGS, kube, runtime, OperatorMetrics(), "p", pool), kube  # type: ignore[arg-type]
    runtime.close()


def _claim_until_routed(ex: Executor, kube: Recorder, rt: RuntimeProcess,
                        asleep: bool) -> int:
    """Claim the standby, then advance it as the next cycles would; the cycles it took."""
    annotations = {SLEEP: "asleep"} if asleep else {}
    warm = GroupObj.of(_group(True, annotations), _pod(rt, ready=not asleep), SETTINGS, NOW)
    assert warm.phase == "Warm" and warm.preloaded == ("chat",)
    ex.claim(warm, [_hosted()], "scale chat up 0 -> 1", NOW)
    claimed = GroupObj.of(_group(False, {**annotations, CLAIMED_AT: f"{NOW:.3f}"}),
                          _pod(rt, ready=True), SETTINGS, NOW)
    assert claimed.phase == "Loading"
    for cycle in range(1, 40):
        ex.advance(claimed, [_hosted()], NOW + cycle)
        if kube.labelled("chat"):
            return cycle
        rt_state = rt.engine("chat")["state"]
        assert rt_state in ("ready", "sleeping"), rt_state
    raise AssertionError(f"never routed: {rt.status()}")


def test_engine_that_cannot_sleep_stays_loaded_and_the_claim_routes_it(
        executor: tuple[Executor, Recorder], tmp_path: Path) -> None:
    ex, kube = executor
    with RuntimeProcess({"models": [model_entry("chat", "sim")]}, tmp_path) as rt:
        standby = GroupObj.of(_group(True, {}), _pod(rt, ready=True), SETTINGS, NOW)
        ex.advance(standby, [], NOW)
        assert kube.annotation(SLEEP) == "unsupported"  # the runtime answered 409
        assert rt.engine("chat")["state"] == "ready"
        restarts = rt.engine("chat")["restarts"]
        cycles = _claim_until_routed(ex, kube, rt, asleep=False)
        assert cycles == 1  # routed as it is: no load, no wake
        assert rt.engine("chat")["restarts"] == restarts and len(rt.status()["models"]) == 1


def test_sleeping_preload_is_woken_by_the_claim(executor: tuple[Executor, Recorder],
                                                tmp_path: Path) -> None:
    ex, kube = executor
    config = {"models": [model_entry("chat", "sim", sleepMode=True)]}
    with RuntimeProcess(config, tmp_path) as rt:
        standby = GroupObj.of(_group(True, {}), _pod(rt, ready=True), SETTINGS, NOW)
        ex.advance(standby, [], NOW)
        assert kube.annotation(SLEEP) == "asleep"
        assert rt.engine("chat")["state"] == "sleeping"
        sleeping = [b for k, _n, b in kube.patches if k == "ServingGroup"
                    and b.get("spec", {}).get("models", [{}])[0].get("sleeping")]
        assert sleeping, kube.patches
        cycles = _claim_until_routed(ex, kube, rt, asleep=True)
        assert cycles >= 2  # one cycle wakes it, a later one routes it
        assert rt.engine("chat")["state"] == "ready"


def _hosted_as(name: str, profile: str = "llama-3.1-8b", share: float = 0.3) -> Hosted:
    """A sim model of namespace ``ns`` as the control layer resolves it."""
    svc = from_dict({"apiVersion": "kubeplex.io/v1alpha1", "kind": "ModelService",
                     "metadata": {"name": name, "namespace": "ns"},
                     "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                                        "profile": profile},
                              "engine": "sim", "pool": "p", "slo": {"ttftSeconds": 1.0}}})
    assert isinstance(svc, ModelService)
    model = resolve_model(svc, ReplicaTemplate(svc.key, "p", 1, 1, share), gpu("H100-80GB"))
    return Hosted(model, f"uid-{name}")


def test_a_group_changed_in_place_is_resynced_after_a_runtime_restart(
        executor: tuple[Executor, Recorder], tmp_path: Path) -> None:
    """The pod started with chat + coder; coder was unloaded and adder added in place. A
    container restart brings the start config back: coder is unloaded again, adder reloaded
    (out of its Service until it is ready)."""
    ex, kube = executor
    config = {"models": [model_entry("chat", "sim", memory_share=0.3),
                         model_entry("coder", "sim", memory_share=0.3)]}
    with RuntimeProcess(config, tmp_path) as rt:
        group = _group(False, {CHANGED_IN_PLACE: "true"})
        group["spec"]["models"] = [
            {"modelService": m, "servedName": m, "memoryShare": 0.3} for m in ("chat", "adder")]
        pod = {**_pod(rt, ready=True), "labels": {model_label("chat"): "true",
                                                   model_label("adder"): "true"}}
        view = GroupObj.of(group, pod, SETTINGS, NOW)
        assert view.phase == "Ready" and view.loading == ()
        hosted = [_hosted_as("chat"), _hosted_as("adder")]
        ex.advance(view, hosted, NOW)
        assert any(k == "Pod" and b["metadata"]["labels"] == {model_label("adder"): None}
                   for k, _n, b in kube.patches), kube.patches
        names = {m["name"] for m in rt.status()["models"]}
        assert "adder" in names  # load requested
        # the next cycles see adder loading (no label) and label it once its engine is ready
        view = GroupObj.of(group, {**pod, "labels": {model_label("chat"): "true"}}, SETTINGS, NOW)
        assert view.loading == ("adder",)
        for cycle in range(1, 60):
            ex.advance(view, hosted, NOW + cycle)
            if kube.labelled("adder") and "coder" not in {m["name"] for m in
                                                           rt.status()["models"]}:
                break
            time.sleep(0.2)
        assert kube.labelled("adder")
        assert sorted(m["name"] for m in rt.status()["models"]) == ["adder", "chat"]


def _shared(rt: RuntimeProcess, annotations: dict[str, str], models: tuple[str, ...],
            labelled: tuple[str, ...]) -> GroupObj:
    group = _group(False, annotations)
    group["metadata"]["name"] = "chat-coder-0"
    group["spec"]["models"] = [{"modelService": m, "servedName": m, "memoryShare": 0.3}
                               for m in models]
    pod = {**_pod(rt, ready=True), "labels": {model_label(m): "true" for m in labelled}}
    return GroupObj.of(group, pod, SETTINGS, NOW)


def _two_models(tmp_path: Path) -> RuntimeProcess:
    return RuntimeProcess({"models": [model_entry("chat", "sim", memory_share=0.3),
                                      model_entry("coder", "sim", memory_share=0.3)]}, tmp_path)


def test_an_unload_waits_until_the_service_dropped_the_pod(
        executor: tuple[Executor, Recorder], tmp_path: Path) -> None:
    """Phase 1 takes coder's label off and leaves its engine serving; phase 2 unloads it
    only once coder's EndpointSlices stop listing the pod (requests still in flight to the
    pod through a stale endpoint would otherwise be refused)."""
    ex, kube = executor
    with _two_models(tmp_path) as rt:
        kube.endpoints = {"coder": {"chat-coder-0"}, "chat": {"chat-coder-0"}}
        view = _shared(rt, {}, ("chat", "coder"), ("chat", "coder"))
        ex.change(view, [], ["coder"], "scale coder down 1 -> 0", NOW)
        assert any(k == "Pod" and b["metadata"]["labels"] == {model_label("coder"): None}
                   for k, _n, b in kube.patches)
        assert kube.annotations()[UNLOAD_WAITING] == "coder=coder"
        assert rt.engine("coder")["state"] == "ready"  # still serving stale endpoints
        assert ex.waiting_on_services  # the pool re-checks after the grace, not the interval
        for t in (0.5, 1.0):  # the Service still lists the pod, within the grace
            view = _shared(rt, kube.annotations(), ("chat",), ("chat",))
            ex.waiting_on_services = False
            ex.advance(view, [_hosted_as("chat")], NOW + t)
            assert rt.engine("coder")["state"] == "ready"
            assert ex.waiting_on_services
        kube.endpoints["coder"] = set()  # the EndpointSlice update arrived
        ex.waiting_on_services = False
        for cycle in range(40):
            view = _shared(rt, kube.annotations(), ("chat",), ("chat",))
            ex.advance(view, [_hosted_as("chat")], NOW + 1.1 + cycle * 0.01)
            if UNLOADING not in kube.annotations():
                break
            time.sleep(0.2)
        assert [m["name"] for m in rt.status()["models"]] == ["chat"]
        assert UNLOAD_WAITING not in kube.annotations()
        assert not ex.waiting_on_services  # nothing left to wait for


def test_an_unload_goes_on_after_the_grace_when_the_slices_never_update(
        executor: tuple[Executor, Recorder], tmp_path: Path) -> None:
    ex, kube = executor
    with _two_models(tmp_path) as rt:
        kube.endpoints = {"coder": {"chat-coder-0"}}
        ex.change(_shared(rt, {}, ("chat", "coder"), ("chat", "coder")), [], ["coder"],
                  "scale coder down 1 -> 0", NOW)
        view = _shared(rt, kube.annotations(), ("chat",), ("chat",))
        ex.advance(view, [_hosted_as("chat")], NOW + SETTINGS.endpoint_grace_s)
        assert kube.annotations().get(UNLOAD_WAITING) is None
        state = next((m["state"] for m in rt.status()["models"] if m["name"] == "coder"),
                     "gone")
        assert state in ("draining", "stopped", "gone"), state


def test_a_drain_asks_the_runtime_only_in_phase_two_even_across_a_restart(
        executor: tuple[Executor, Recorder], tmp_path: Path) -> None:
    ex, kube = executor
    with RuntimeProcess({"models": [model_entry("chat", "sim")]}, tmp_path) as rt:
        kube.endpoints = {"chat": {"warm-p-0"}}
        view = GroupObj.of(_group(False, {}), {**_pod(rt, ready=True), "labels": {
            model_label("chat"): "true"}}, SETTINGS, NOW)
        assert view.phase == "Ready"
        ex.drain(view, "scale chat down 2 -> 1", NOW)
        assert DRAIN_STARTED in kube.annotations() and DRAIN_ASKED not in kube.annotations()
        assert rt.status()["state"] == "serving"
        assert ex.waiting_on_services
        # The operator restarts: a new executor reads the phase from the annotations.
        kube2 = Recorder()
        kube2.endpoints = kube.endpoints
        runtime2 = RuntimeClient(SETTINGS)
        ex2 = Executor(SETTINGS, kube2, runtime2, OperatorMetrics(), "p",  # type: ignore[arg-type]
                       ex.pool_spec)
        group = _group(False, kube.annotations())
        group["status"]["phase"] = "Draining"
        draining = GroupObj.of(group, _pod(rt, ready=True), SETTINGS, NOW)
        assert draining.phase == "Draining"
        ex2.advance(draining, [], NOW + 1)  # still listed, within the grace: no drain yet
        assert rt.status()["state"] == "serving" and not kube2.deleted()
        kube.endpoints["chat"] = set()
        ex2.advance(draining, [], NOW + 1.5)
        assert DRAIN_ASKED in kube2.annotations()
        assert rt.status()["state"] in ("draining", "drained")
        group = _group(False, {**kube.annotations(), **kube2.annotations()})
        group["status"]["phase"] = "Draining"
        for cycle in range(40):
            ex2.advance(GroupObj.of(group, _pod(rt, ready=True), SETTINGS, NOW), [],
                        NOW + 2 + cycle * 0.01)
            if kube2.deleted():
                break
            time.sleep(0.1)
        runtime2.close()
        assert kube2.deleted()


def _with_adapters(hosted: Hosted, *adapters: tuple[str, int]) -> Hosted:
    spec = replace(hosted.model.spec, adapters=tuple(
        Adapter(name, f"hf://org/{name}", rank) for name, rank in adapters))
    return replace(hosted, model=replace(hosted.model, spec=spec))


def test_a_change_of_spec_adapters_reaches_the_running_runtime(
        executor: tuple[Executor, Recorder], tmp_path: Path) -> None:
    """spec.adapters gains one and loses one: the group notes the change (fingerprint,
    changed in place), the next cycle makes the runtime serve exactly the new list; a rank
    the engine was not started for is refused and said on the group and in an Event."""
    ex, kube = executor
    start = _with_adapters(_hosted(), ("sql", 16), ("chat-lora", 16))
    entry = runtime_model(start.model, 1, 1)
    with RuntimeProcess({"models": [entry]}, tmp_path) as rt:
        annotations = {ADAPTERS: adapters_fingerprint([start.model])}
        pod = {**_pod(rt, ready=True), "labels": {model_label("chat"): "true"}}
        view = GroupObj.of(_group(False, annotations), pod, SETTINGS, NOW)
        assert view.phase == "Ready"
        ex.advance(view, [start], NOW)
        assert kube.patches == []  # nothing changed: no write, no runtime call
        changed = _with_adapters(_hosted(), ("sql", 16), ("poem", 8))
        ex.advance(view, [changed], NOW + 1)
        noted = kube.annotations()
        assert noted[CHANGED_IN_PLACE] == "true"
        assert noted[ADAPTERS] == adapters_fingerprint([changed.model])
        assert [a["name"] for a in rt.engine("chat")["config"]["adapters"]] == ["sql",
                                                                                "chat-lora"]
        view = GroupObj.of(_group(False, noted), pod, SETTINGS, NOW)
        ex.advance(view, [changed], NOW + 2)
        assert [a["name"] for a in rt.engine("chat")["config"]["adapters"]] == ["sql", "poem"]
        models = {m["id"] for m in httpx.get(rt.url + "/v1/models", timeout=10).json()["data"]}
        assert models == {"chat", "sql", "poem"}
        assert ADAPTERS_ERROR not in kube.annotations()
        too_big = _with_adapters(_hosted(), ("sql", 16), ("wide", 64))
        for cycle in (3, 4):
            ex.advance(GroupObj.of(_group(False, kube.annotations()), pod, SETTINGS, NOW),
                       [too_big], NOW + cycle)
        assert "--max-lora-rank 16" in kube.annotations()[ADAPTERS_ERROR]
        assert kube.events.count("AdaptersNotApplied") == 1  # once per distinct refusal
        assert [a["name"] for a in rt.engine("chat")["config"]["adapters"]] == ["sql", "poem"]
