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
from pathlib import Path
from typing import Any

import pytest

from kubeplex.api import GPUPoolSpec, ModelServiceSpec
from kubeplex.api._types import parse_spec
from kubeplex.operator._builders import HostedModel, model_label
from kubeplex.operator._executor import (
    CHANGED_IN_PLACE,
    CLAIMED_AT,
    SLEEP,
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
from kubeplex.operator.planning import ReplicaTemplate
from kubeplex.runtime.harness import RuntimeProcess, model_entry

NOW = 1_800_000_000.0
SETTINGS = Settings(scrape="pods", url_annotations=True)


class Recorder:
    """The Kubernetes writes of the executor, kept in order."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.events: list[str] = []

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
    spec = parse_spec(ModelServiceSpec, {
        "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "profile": "llama-3.1-8b"},
        "engine": "sim", "pool": "p", "slo": {"ttftSeconds": 1.0}})
    return Hosted(HostedModel("chat", spec, 0.45), ReplicaTemplate("ns/chat", "p", 1, 1, 0.45),
                  "llama-3.1-8b", "uid-chat")


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
    warm = GroupObj.of(_group(True, annotations), _pod(rt, ready=not asleep), SETTINGS)
    assert warm.phase == "Warm" and warm.preloaded == ("chat",)
    ex.claim(warm, [_hosted()], "scale chat up 0 -> 1", NOW)
    claimed = GroupObj.of(_group(False, {**annotations, CLAIMED_AT: f"{NOW:.3f}"}),
                          _pod(rt, ready=True), SETTINGS)
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
        standby = GroupObj.of(_group(True, {}), _pod(rt, ready=True), SETTINGS)
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
        standby = GroupObj.of(_group(True, {}), _pod(rt, ready=True), SETTINGS)
        ex.advance(standby, [], NOW)
        assert kube.annotation(SLEEP) == "asleep"
        assert rt.engine("chat")["state"] == "sleeping"
        sleeping = [b for k, _n, b in kube.patches if k == "ServingGroup"
                    and b.get("spec", {}).get("models", [{}])[0].get("sleeping")]
        assert sleeping, kube.patches
        cycles = _claim_until_routed(ex, kube, rt, asleep=True)
        assert cycles >= 2  # one cycle wakes it, a later one routes it
        assert rt.engine("chat")["state"] == "ready"


def _hosted_as(name: str, profile: str = "llama-3.1-8b") -> Hosted:
    spec = parse_spec(ModelServiceSpec, {
        "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "profile": profile},
        "engine": "sim", "pool": "p", "slo": {"ttftSeconds": 1.0}})
    return Hosted(HostedModel(name, spec, 0.3), ReplicaTemplate(f"ns/{name}", "p", 1, 1, 0.3),
                  profile, f"uid-{name}")


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
        view = GroupObj.of(group, pod, SETTINGS)
        assert view.phase == "Ready" and view.loading == ()
        hosted = [_hosted_as("chat"), _hosted_as("adder")]
        ex.advance(view, hosted, NOW)
        assert any(k == "Pod" and b["metadata"]["labels"] == {model_label("adder"): None}
                   for k, _n, b in kube.patches), kube.patches
        names = {m["name"] for m in rt.status()["models"]}
        assert "adder" in names  # load requested
        # the next cycles see adder loading (no label) and label it once its engine is ready
        view = GroupObj.of(group, {**pod, "labels": {model_label("chat"): "true"}}, SETTINGS)
        assert view.loading == ("adder",)
        for cycle in range(1, 60):
            ex.advance(view, hosted, NOW + cycle)
            if kube.labelled("adder") and "coder" not in {m["name"] for m in
                                                           rt.status()["models"]}:
                break
            time.sleep(0.2)
        assert kube.labelled("adder")
        assert sorted(m["name"] for m in rt.status()["models"]) == ["adder", "chat"]
