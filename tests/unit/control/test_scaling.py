"""The per-model scaling step (``kubeplex.control.scale_model``) and model resolution: one
history horizon, the pin rule, the arrival-rate fallback, one SLO-status rule, the hold on a
backing-off start, and typed refusals. Pure: a fake clock, no I/O."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from kubeplex.api import ModelService, from_dict
from kubeplex.autoscaler.metrics import (
    COMPLETIONS,
    GATEWAY_INSTANCE,
    HELD,
    RUNNING,
    TTFT,
    WAITING,
    Scrape,
)
from kubeplex.autoscaler.signals import NoData
from kubeplex.control import (
    COLD_STARTS_KEPT,
    COLD_STARTS_NEEDED,
    HISTORY_WINDOWS,
    DegradedReason,
    GroupPhase,
    GroupView,
    ModelInputs,
    ModelMemory,
    PlanningError,
    ReplicaTemplate,
    SloStatus,
    UnknownProfileError,
    UnsupportedSourceError,
    resolve_model,
    scale_model,
    slo_status,
)
from kubeplex.placement.hardware import gpu

KEY = "ns/chat"
T0 = 1_000.0


def service(**spec: Any) -> ModelService:
    body: dict[str, Any] = {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                                      "profile": "llama-3.1-8b"},
                            "engine": "sim", "pool": "p", "slo": {"ttftSeconds": 0.5},
                            "workload": {"requestsPerSecond": 7}, **spec}
    svc = from_dict({"apiVersion": "kubeplex.io/v1alpha1", "kind": "ModelService",
                     "metadata": {"name": "chat", "namespace": "ns"}, "spec": body})
    assert isinstance(svc, ModelService)
    return svc


def resolved(**spec: Any) -> Any:
    svc = service(**spec)
    return resolve_model(svc, ReplicaTemplate(KEY, "p", 1, 1), gpu("H100-80GB"),
                         stable_window_s=10, panic_window_s=3)


def ready(n: int) -> tuple[GroupView, ...]:
    return tuple(GroupView(f"ns/chat-{i}", "p", 1, GroupPhase.READY, (KEY,)) for i in range(n))


def scrape(t: float, done: float, waiting: float = 0, slow: float = 0) -> Scrape:
    return Scrape(t, {WAITING: {"a": waiting}, RUNNING: {"a": 1.0}, COMPLETIONS: {"a": done}},
                  {TTFT: {"a": ((0.25, done - slow), (2.5, done), (float("inf"), done))}})


def test_the_pin_wins_over_the_autoscaler_and_says_so() -> None:
    model = resolved(scaling={"replicas": 3})
    decision, _ = scale_model(model, ready(1), None, ModelInputs(), ModelMemory(), T0)
    assert decision.desired == 3 and decision.pinned == 3
    assert decision.reason.startswith("pinned to spec.scaling.replicas=3 (autoscaler: ")


def test_no_metrics_holds_and_falls_back_to_the_declared_rate() -> None:
    model = resolved()
    decision, memory = scale_model(model, ready(2), None, ModelInputs(), ModelMemory(), T0)
    assert decision.desired == 2 and decision.signals is None
    assert decision.arrival_rate == 7.0  # declared spec.workload.requestsPerSecond
    assert decision.slo is SloStatus.UNKNOWN and memory.scrapes == ()


def test_a_measured_zero_rate_is_zero_not_the_declared_rate() -> None:
    model = resolved()
    memory = ModelMemory()
    for n in range(4):
        _, memory = scale_model(model, ready(1), None,
                                ModelInputs(scrape(T0 + n, done=10)), memory, T0 + n)
    decision, _ = scale_model(model, ready(1), None, ModelInputs(scrape(T0 + 4, done=10)),
                              memory, T0 + 4)
    assert decision.signals is not None and decision.arrival_rate == 0.0


def test_the_gateways_held_requests_are_stamped_into_the_scrape_when_known() -> None:
    """The held count goes into the scrape kept (arrivals count where they enter: the
    gateway); a count with a caveat (the gateway could not be read) stays out of it."""
    model = resolved()
    _, memory = scale_model(model, ready(1), None, ModelInputs(scrape(T0, done=5), held=4),
                            ModelMemory(), T0)
    assert memory.scrapes[-1].series(HELD) == {GATEWAY_INSTANCE: 4.0}
    assert memory.scrapes[-1].series(COMPLETIONS) == {"a": 5.0}
    _, memory = scale_model(model, ready(1), None, ModelInputs(
        scrape(T0 + 1, done=6), held=4, held_caveat="gateway unreachable"), memory, T0 + 1)
    assert memory.scrapes[-1].series(HELD) == {}


def test_history_keeps_the_longer_window_twice_over() -> None:
    model = resolved()
    horizon = max(model.config.stable_window_s, model.config.panic_window_s) * HISTORY_WINDOWS
    memory = ModelMemory()
    for n in range(30):
        _, memory = scale_model(model, ready(1), None, ModelInputs(scrape(T0 + n, done=n)),
                                memory, T0 + n)
    assert memory.scrapes[-1].time == T0 + 29
    assert all(T0 + 29 - s.time <= horizon for s in memory.scrapes)
    assert memory.scrapes[0].time == T0 + 29 - horizon


def test_held_requests_scale_from_zero_and_a_caveat_is_in_the_reason() -> None:
    model = resolved(scaling={"minReplicas": 0})
    inputs = ModelInputs(held=3, held_caveat="held requests assumed 0: gateway down")
    decision, _ = scale_model(model, (), None, inputs, ModelMemory(), T0)
    assert decision.desired == 1
    assert decision.reason.endswith("(held requests assumed 0: gateway down)")


def test_a_backing_off_start_holds_the_scale_up_with_why() -> None:
    model = resolved(scaling={"minReplicas": 0})
    inputs = ModelInputs(held=3, no_new_replica="its last start failed, next try in 8 s")
    decision, _ = scale_model(model, (), None, inputs, ModelMemory(), T0)
    assert decision.desired == 0
    assert decision.reason.startswith("hold at 0: its last start failed, next try in 8 s")


def test_slow_first_tokens_are_violated_and_scale_up() -> None:
    model = resolved()
    memory = ModelMemory()
    decision = None
    for n in range(12):
        decision, memory = scale_model(
            model, ready(1), None,
            ModelInputs(scrape(T0 + n, done=5 * n, waiting=20, slow=4 * n)), memory, T0 + n)
    assert decision is not None
    assert decision.slo is SloStatus.VIOLATED and decision.desired > 1


@pytest.mark.parametrize(("scaled_to_zero", "expected"), [(True, SloStatus.IDLE),
                                                         (False, SloStatus.UNKNOWN)])
def test_without_signals_idle_only_at_zero(scaled_to_zero: bool, expected: SloStatus) -> None:
    assert slo_status(NoData("no scrape"), resolved().config, scaled_to_zero) is expected


def test_refusals_are_typed() -> None:
    with pytest.raises(UnknownProfileError) as unknown:
        resolved(model={"uri": "hf://x/y", "profile": "no-such-model"})
    assert unknown.value.reason is DegradedReason.UNKNOWN_PROFILE
    with pytest.raises(UnsupportedSourceError) as s3:
        resolved(engine="vllm", model={"uri": "s3://bucket/llama", "profile": "llama-3.1-8b"})
    assert s3.value.reason is DegradedReason.UNSUPPORTED_SOURCE and "pvc://" in str(s3.value)
    with pytest.raises(PlanningError) as bad:
        resolved(model={"uri": "hf://a/b", "profile": "llama-3.1-8b",
                        "engineArgs": ["--max-num-seqs", "lots"]})
    assert bad.value.reason is DegradedReason.INVALID_SPEC


def test_resolution_is_served_name_and_share_of_its_template() -> None:
    model = resolved(model={"uri": "hf://a/b", "profile": "llama-3.1-8b",
                            "servedName": "org/llama"})
    assert (model.name, model.namespace, model.served_name) == ("chat", "ns", "org/llama")
    assert model.memory_share == model.template.memory_share
    assert model.shape.name == "llama-3.1-8b"


def test_the_median_measured_cold_start_replaces_the_configured_one() -> None:
    model = resolved()
    assert model.config.cold_start_s == 60.0
    decision, memory = scale_model(model, ready(1), None, ModelInputs(), ModelMemory(), T0)
    assert (decision.cold_start_s, decision.cold_starts_measured) == (60.0, 0)
    decision, memory = scale_model(model, ready(1), None, ModelInputs(cold_starts=(200.0, 30.0)),
                                   memory, T0 + 1)
    assert (decision.cold_start_s, decision.cold_starts_measured) == (60.0, 0)  # too few yet
    assert 2 < COLD_STARTS_NEEDED <= 4
    for n, took in enumerate((190.0, 185.0), 2):
        decision, memory = scale_model(model, ready(1), None, ModelInputs(cold_starts=(took,)),
                                       memory, T0 + n)
    assert memory.cold_starts == (200.0, 30.0, 190.0, 185.0)
    assert (decision.cold_start_s, decision.cold_starts_measured) == (187.5, 4)
    # A cycle without a new one keeps them; only the last COLD_STARTS_KEPT count.
    decision, memory = scale_model(model, ready(1), None, ModelInputs(), memory, T0 + 9)
    assert (decision.cold_start_s, decision.cold_starts_measured) == (187.5, 4)
    many = tuple(float(n) for n in range(20))
    decision, memory = scale_model(model, ready(1), None, ModelInputs(cold_starts=many), memory,
                                   T0 + 10)
    assert memory.cold_starts == many[-COLD_STARTS_KEPT:]
    assert decision.cold_start_s == statistics.median(many[-COLD_STARTS_KEPT:])
