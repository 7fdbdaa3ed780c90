"""kubeplex.control: adapters and the fleet plan (pure, no processes)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from kubeplex.api import load_documents
from kubeplex.control import (
    ActionCause,
    ActionKind,
    GroupPhase,
    GroupView,
    ModelTarget,
    PlanningError,
    PoolBudget,
    ReplicaTemplate,
    ShortfallCause,
    autoscaler_config,
    engine_max_num_seqs,
    fleet_plan,
    model_demand,
    model_shape,
    observed_fleet,
    plan_pools,
    pool_budget,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
M = "default/m"
T1 = ReplicaTemplate(M, "p", 1, 1)


def _g(id_: str, phase: GroupPhase, models: tuple[str, ...] = (M,), gpus: int = 1,
       preloaded: tuple[str, ...] = (), load: float = 0.0, pool: str = "p") -> GroupView:
    return GroupView(id_, pool, gpus, phase, models if phase not in (
        GroupPhase.WARM, GroupPhase.WARMING) else (), preloaded, load)


def _kinds(plan):
    return [(a.kind, a.group, a.model) for a in plan.actions]


# ---- adapters ----------------------------------------------------------------------------------

def test_plan_pools_gives_every_model_a_template_even_at_min_zero():
    services, pools = load_documents([EXAMPLES / "sim-h100.yaml"]).split()
    assert services[0].spec.scaling.min_replicas == 0
    plans = plan_pools(services, pools)
    template = plans["sim-h100"].templates["default/llama-8b-sim"]
    group = plans["sim-h100"].placement.groups[0]
    assert (template.tp, template.pp, template.pool) == (group.tp, group.pp, "sim-h100")
    assert "llama-8b-sim" in plans["sim-h100"].placement.explanation


def test_unknown_pool_is_named():
    services, _ = load_documents([EXAMPLES / "sim-h100.yaml"]).split()
    with pytest.raises(PlanningError, match=r"spec\.pool 'sim-h100' is not a GPUPool"):
        plan_pools(services, [])


def test_model_that_fits_no_group_is_refused_with_the_pool(tmp_path):
    text = (EXAMPLES / "sim-h100.yaml").read_text().replace("llama-3.1-8b", "llama-3.1-70b")
    text = text.replace("gpusPerNode: 8", "gpusPerNode: 1").replace("maxGPUs: 8", "maxGPUs: 1")
    (tmp_path / "big.yaml").write_text(text)
    services, pools = load_documents([tmp_path / "big.yaml"]).split()
    with pytest.raises(PlanningError, match=r"GPUPool sim-h100: .*llama-3.1-70b.*fits no group"):
        plan_pools(services, pools)


def test_profile_matched_from_uri_when_not_given(tmp_path):
    text = (EXAMPLES / "sim-h100.yaml").read_text().replace("    profile: llama-3.1-8b\n", "")
    (tmp_path / "x.yaml").write_text(text)
    services, _ = load_documents([tmp_path / "x.yaml"]).split()
    assert services[0].spec.model.profile is None
    assert model_shape(services[0]).name == "llama-3.1-8b"
    assert model_demand(services[0], arrival_rate=3.0, min_replicas=1).arrival_rate == 3.0


def test_autoscaler_config_carries_slo_bounds_and_overrides():
    services, pools = load_documents([EXAMPLES / "sim-h100.yaml"]).split()
    svc = services[0]
    config = autoscaler_config(svc, ReplicaTemplate(svc.key, "sim-h100", 2, 1),
                               pools[0].spec.gpu.spec(), stable_window_s=5.0)
    assert config.slo_ttft_s == 0.5 and config.min_replicas == 0 and config.max_replicas == 6
    assert config.gpus_per_replica == 2 and config.stable_window_s == 5.0
    assert config.scale_to_zero_after_s == 120
    with pytest.raises(PlanningError, match="stable_window_s must be > 0"):
        autoscaler_config(svc, ReplicaTemplate(svc.key, "sim-h100", 1, 1),
                          pools[0].spec.gpu.spec(), stable_window_s=0.0)


@pytest.mark.parametrize(("args", "expected"), [
    ((), None),
    (("--enable-prefix-caching",), None),
    (("--max-num-seqs", "2"), 2),
    (("--max-num-seqs=16", "--enforce-eager"), 16),
])
def test_engine_max_num_seqs_reads_engine_args(args, expected):
    assert engine_max_num_seqs(args) == expected


@pytest.mark.parametrize("args", [("--max-num-seqs", "many"), ("--max-num-seqs=0",),
                                  ("--max-num-seqs",)])
def test_engine_max_num_seqs_refuses_bad_values(args):
    with pytest.raises(PlanningError, match="--max-num-seqs"):
        engine_max_num_seqs(args)


def test_autoscaler_capacity_knows_the_engine_concurrency_limit():
    # A replica that admits 2 sequences serves far fewer requests per second than the
    # latency model's default batch: the autoscaler must be told, or a queue never scales.
    services, pools = load_documents([EXAMPLES / "sim-h100.yaml"]).split()
    svc = services[0]
    model = replace(svc.spec.model, engine_args=("--max-num-seqs", "2"))
    limited = replace(svc, spec=replace(svc.spec, model=model))
    template, gpu = ReplicaTemplate(svc.key, "sim-h100", 1, 1), pools[0].spec.gpu.spec()
    assert autoscaler_config(svc, template, gpu).max_num_seqs == 256
    assert autoscaler_config(limited, template, gpu).max_num_seqs == 2


def test_pool_budget_reads_warm_pool_policy():
    _, pools = load_documents([EXAMPLES / "local-cpu.yaml"]).split()
    budget = pool_budget(pools[0])
    assert (budget.max_gpus, budget.warm_size) == (2, 1)


# ---- the fleet plan ----------------------------------------------------------------------------

def test_scale_up_claims_warm_standbys_first_then_cold_starts():
    groups = [_g("w1", GroupPhase.WARM, preloaded=(M,)), _g("w2", GroupPhase.WARM)]
    plan = fleet_plan(groups, {M: ModelTarget(M, 3, reason="burst")}, {M: T1},
                      [PoolBudget("p", max_gpus=8, warm_size=0)])
    assert _kinds(plan) == [(ActionKind.CLAIM, "w1", M), (ActionKind.CLAIM, "w2", M),
                            (ActionKind.START, "default/m-0", M)]
    assert "burst" in plan.actions[0].reason and "preloaded" in plan.actions[0].reason
    assert plan.messages == ()


def test_budget_shortfall_becomes_a_message_naming_the_pool():
    groups = [_g("a", GroupPhase.READY)]
    plan = fleet_plan(groups, {M: ModelTarget(M, 4)}, {M: ReplicaTemplate(M, "p", 2, 1)},
                      [PoolBudget("p", max_gpus=5, warm_size=0)])
    assert [a.kind for a in plan.actions] == [ActionKind.START, ActionKind.START]
    assert len(plan.messages) == 1
    assert plan.shortfalls[0].cause is ShortfallCause.GPU_BUDGET
    assert "GPUPool p" in plan.messages[0] and "only 3 fit" in plan.messages[0]
    assert plan.message_for(M) == plan.messages[0]


def test_unneeded_standby_is_stopped_to_make_room():
    other = "default/other"
    groups = [_g("a", GroupPhase.READY), _g("w", GroupPhase.WARM, preloaded=(other,))]
    templates = {M: T1, other: ReplicaTemplate(other, "p", 1, 1)}
    plan = fleet_plan(groups, {M: ModelTarget(M, 2)}, templates,
                      [PoolBudget("p", max_gpus=2, warm_size=0)])
    assert _kinds(plan) == [(ActionKind.STOP, "w", None), (ActionKind.START, "default/m-0", M)]
    assert plan.actions[0].cause is ActionCause.MAKE_ROOM


def test_scale_down_removes_starting_first_then_dedicated_then_unloads_shared():
    other = "default/other"
    groups = [_g("busy", GroupPhase.READY, load=9), _g("idle", GroupPhase.READY, load=0),
              _g("new", GroupPhase.STARTING),
              _g("shared", GroupPhase.READY, models=(M, other), load=5)]
    plan = fleet_plan(groups, {M: ModelTarget(M, 1)}, {M: T1},
                      [PoolBudget("p", max_gpus=None, warm_size=0)])
    # Draining groups where the model runs alone frees GPUs; the shared group keeps it.
    assert _kinds(plan) == [(ActionKind.DRAIN, "new", M), (ActionKind.DRAIN, "idle", M),
                            (ActionKind.DRAIN, "busy", M)]
    down = fleet_plan(groups, {M: ModelTarget(M, 0)}, {M: T1},
                      [PoolBudget("p", max_gpus=None, warm_size=0)])
    assert (ActionKind.UNLOAD, "shared", M) in _kinds(down)


def test_scale_to_zero_drains_everything_and_draining_holds_gpus():
    groups = [_g("a", GroupPhase.READY), _g("d", GroupPhase.DRAINING)]
    plan = fleet_plan(groups, {M: ModelTarget(M, 0)}, {M: T1},
                      [PoolBudget("p", max_gpus=2, warm_size=0)])
    assert _kinds(plan) == [(ActionKind.DRAIN, "a", M)]
    up = fleet_plan(groups, {M: ModelTarget(M, 3)}, {M: T1},
                    [PoolBudget("p", max_gpus=2, warm_size=0)])
    assert up.actions == () and "only 1 fit" in up.messages[0]


def test_warm_pool_is_refilled_within_budget_and_trimmed():
    groups = [_g("a", GroupPhase.READY)]
    plan = fleet_plan(groups, {M: ModelTarget(M, 1, warm=2)}, {M: T1},
                      [PoolBudget("p", max_gpus=2)])
    assert _kinds(plan) == [(ActionKind.START_WARM, "default/warm-p-0", M)]
    assert plan.shortfalls[0].cause is ShortfallCause.WARM_POOL
    assert "warm pool" in plan.messages[0]
    extra = [*groups, _g("w1", GroupPhase.WARM, preloaded=(M,)), _g("w2", GroupPhase.WARMING)]
    trim = fleet_plan(extra, {M: ModelTarget(M, 1)}, {M: T1},
                      [PoolBudget("p", max_gpus=None, warm_size=1)])
    assert _kinds(trim) == [(ActionKind.STOP, "w2", None)]


def test_plan_is_idempotent_once_applied():
    groups = [_g("a", GroupPhase.READY), _g("b", GroupPhase.STARTING),
              _g("w", GroupPhase.WARMING, preloaded=(M,))]
    plan = fleet_plan(groups, {M: ModelTarget(M, 2, warm=1)}, {M: T1},
                      [PoolBudget("p", max_gpus=3)])
    assert plan.actions == () and plan.messages == ()


def test_models_without_target_and_other_pools_are_left_alone():
    groups = [_g("a", GroupPhase.READY), _g("x", GroupPhase.READY, pool="q")]
    plan = fleet_plan(groups, {}, {M: T1}, [PoolBudget("p", max_gpus=1, warm_size=0)])
    assert plan.actions == ()


def test_observed_fleet_counts_for_the_autoscaler():
    groups = [GroupView("a", "p", 1, GroupPhase.READY, (M,)),
              GroupView("b", "p", 1, GroupPhase.STARTING, (M,), since=5.0, claimed=True),
              GroupView("w", "p", 1, GroupPhase.WARM, (), (M,)),
              GroupView("o", "p", 1, GroupPhase.WARM, (), ("default/other",))]
    seen = observed_fleet(groups, M, PoolBudget("p", max_gpus=6))
    assert seen["ready"] == 1 and seen["warm_available"] == 1 and seen["free_gpus"] == 2
    assert seen["starting"][0].since == 5.0 and seen["starting"][0].warm
