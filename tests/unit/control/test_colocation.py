"""Co-location in the fleet plan: several models in one group, scaled one at a time.

Pure tests of :func:`kubeplex.control.fleet_plan` and of the templates
:func:`~kubeplex.control.plan_pools` derives from placement's co-located groups.
"""

from __future__ import annotations

import pytest

from kubeplex.api import load_documents
from kubeplex.control import (
    ActionKind,
    ClaimStep,
    GroupPhase,
    GroupView,
    ModelTarget,
    PoolBudget,
    ReplicaTemplate,
    claim_step,
    fleet_plan,
    likeliest_models,
    plan_pools,
)
from kubeplex.placement.planner import MEMORY_LIMIT

A, B, C = "default/a", "default/b", "default/c"
TA = ReplicaTemplate(A, "p", 1, 1, 0.5, partners=(B,))
TB = ReplicaTemplate(B, "p", 1, 1, 0.4, partners=(A,))
TC = ReplicaTemplate(C, "p", 1, 1)  # placed alone: the whole memory limit
TEMPLATES = {A: TA, B: TB, C: TC}
BUDGET = [PoolBudget("p", max_gpus=4, warm_size=0)]

#: Two small sim models with little traffic on one H100 pool: placement packs them.
TWO_SMALL = """
apiVersion: kubeplex.io/v1alpha1
kind: GPUPool
metadata: {name: h100}
spec: {gpu: {product: H100-80GB}, gpusPerNode: 2, maxGPUs: 2}
---
apiVersion: kubeplex.io/v1alpha1
kind: ModelService
metadata: {name: chat, namespace: default}
spec:
  model: {uri: "hf://meta-llama/Llama-3.1-8B-Instruct", profile: llama-3.1-8b}
  engine: sim
  pool: h100
  slo: {ttftSeconds: 1.0}
  scaling: {minReplicas: 1, maxReplicas: 2}
  workload: {requestsPerSecond: 0.5, burstiness: 4}
---
apiVersion: kubeplex.io/v1alpha1
kind: ModelService
metadata: {name: coder, namespace: default}
spec:
  model: {uri: "hf://Qwen/Qwen2.5-7B-Instruct", profile: qwen-2.5-7b}
  engine: sim
  pool: h100
  slo: {ttftSeconds: 1.0}
  scaling: {minReplicas: 1, maxReplicas: 2}
  workload: {requestsPerSecond: 0.5, burstiness: 4}
"""


def _view(id_: str, phase: GroupPhase, models: tuple[str, ...], shares: tuple[float, ...],
          load: float = 0.0) -> GroupView:
    return GroupView(id_, "p", 1, phase, models, (), load, 0.0, False, (1, 1), shares)


def _kinds(plan):
    return [(a.kind, a.group, a.models) for a in plan.actions]


def _apply(groups: list[GroupView], plan, templates=TEMPLATES) -> list[GroupView]:
    """What an executor leaves after the plan (every step done at once)."""
    out = {g.id: g for g in groups}
    for n, a in enumerate(plan.actions):
        g = out.get(a.group or "")
        if a.kind is ActionKind.START:
            out[f"new{n}"] = _view(f"new{n}", GroupPhase.STARTING, a.models,
                                   tuple(templates[m].memory_share for m in a.models))
        elif a.kind is ActionKind.ADD and g is not None:
            out[g.id] = _view(g.id, g.phase, (*g.models, a.model),
                              (*g.shares, templates[a.model].memory_share))
        elif a.kind is ActionKind.UNLOAD and g is not None:
            kept = [(m, s) for m, s in zip(g.models, g.shares, strict=True) if m != a.model]
            out[g.id] = _view(g.id, g.phase, tuple(m for m, _ in kept),
                              tuple(s for _, s in kept))
        elif a.kind in (ActionKind.DRAIN, ActionKind.STOP) and g is not None:
            del out[g.id]
    return list(out.values())


def test_partners_scaling_from_zero_start_as_one_group():
    plan = fleet_plan([], {A: ModelTarget(A, 1), B: ModelTarget(B, 1)}, TEMPLATES, BUDGET)
    assert _kinds(plan) == [(ActionKind.START, "default/a-b-0", (A, B))]
    assert "co-locating default/b" in plan.actions[0].reason
    assert plan.actions[0].gpus == 1


def test_models_placed_alone_are_never_packed():
    plan = fleet_plan([], {A: ModelTarget(A, 1), C: ModelTarget(C, 1)}, TEMPLATES, BUDGET)
    assert _kinds(plan) == [(ActionKind.START, "default/a-0", (A,)),
                            (ActionKind.START, "default/c-0", (C,))]


def test_scale_up_adds_to_a_running_group_with_room():
    groups = [_view("g", GroupPhase.READY, (A,), (0.5,))]
    plan = fleet_plan(groups, {A: ModelTarget(A, 1), B: ModelTarget(B, 1)}, TEMPLATES, BUDGET)
    assert _kinds(plan) == [(ActionKind.ADD, "g", (B,))]
    assert "beside default/a" in plan.actions[0].reason


def test_a_full_group_gets_no_partner():
    groups = [_view("g", GroupPhase.READY, (A,), (MEMORY_LIMIT,))]  # started alone, whole GPU
    plan = fleet_plan(groups, {A: ModelTarget(A, 1), B: ModelTarget(B, 1)}, TEMPLATES, BUDGET)
    assert _kinds(plan) == [(ActionKind.START, "default/b-0", (B,))]


def test_scale_one_model_inside_a_shared_group():
    shared = [_view("g", GroupPhase.READY, (A, B), (0.5, 0.4))]
    up = fleet_plan(shared, {A: ModelTarget(A, 2), B: ModelTarget(B, 1)}, TEMPLATES, BUDGET)
    assert _kinds(up) == [(ActionKind.START, "default/a-0", (A,))]  # a second replica: new group
    down = fleet_plan(shared, {A: ModelTarget(A, 1), B: ModelTarget(B, 0)}, TEMPLATES, BUDGET)
    assert _kinds(down) == [(ActionKind.UNLOAD, "g", (B,))]  # B leaves, the group stays
    assert "default/a stay" in down.actions[0].reason
    both = fleet_plan(shared, {A: ModelTarget(A, 0), B: ModelTarget(B, 0)}, TEMPLATES, BUDGET)
    assert _kinds(both) == [(ActionKind.DRAIN, "g", (B,))]  # empty: drained, no unload


def test_last_ready_replica_stays_while_the_new_one_starts():
    groups = [_view("ready", GroupPhase.READY, (A,), (0.5,), load=0.0),
              _view("starting", GroupPhase.STARTING, (A, B), (0.5, 0.4))]
    plan = fleet_plan(groups, {A: ModelTarget(A, 1), B: ModelTarget(B, 1)}, TEMPLATES, BUDGET)
    assert _kinds(plan) == [(ActionKind.UNLOAD, "starting", (A,))]
    assert not plan.of_kind(ActionKind.DRAIN)


def test_move_budget_bounds_in_place_changes():
    groups = [_view("g1", GroupPhase.READY, (A, B), (0.5, 0.4)),
              _view("g2", GroupPhase.READY, (A, B), (0.5, 0.4))]
    targets = {A: ModelTarget(A, 0), B: ModelTarget(B, 2)}
    bounded = fleet_plan(groups, targets, TEMPLATES, BUDGET, max_moves=1)
    assert _kinds(bounded) == [(ActionKind.UNLOAD, "g1", (A,))]
    assert "waits" in bounded.message_for(A)
    unbounded = fleet_plan(groups, targets, TEMPLATES, BUDGET)
    assert len(unbounded.of_kind(ActionKind.UNLOAD)) == 2


@pytest.mark.parametrize("targets", [
    {A: ModelTarget(A, 1), B: ModelTarget(B, 1)},
    {A: ModelTarget(A, 3), B: ModelTarget(B, 2), C: ModelTarget(C, 1)},
    {A: ModelTarget(A, 1), B: ModelTarget(B, 0)},
])
def test_applying_a_plan_then_planning_again_changes_nothing(targets):
    start = [_view("g", GroupPhase.READY, (A, B), (0.5, 0.4))]
    after = _apply(start, fleet_plan(start, targets, TEMPLATES, BUDGET))
    again = fleet_plan(after, targets, TEMPLATES, BUDGET)
    assert again.actions == ()
    for key, t in targets.items():
        assert sum(key in g.models for g in after) == t.replicas
    for g in after:
        assert sum(g.shares) <= MEMORY_LIMIT + 1e-9


def test_plan_pools_templates_follow_placement_colocation(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(TWO_SMALL)
    services, pools = load_documents([path]).split()
    plan = plan_pools(services, pools)["h100"]
    shared = [g for g in plan.placement.groups if len(g.models) > 1]
    assert shared, plan.placement.explanation
    chat, coder = plan.templates["default/chat"], plan.templates["default/coder"]
    assert chat.partners == ("default/coder",) and coder.partners == ("default/chat",)
    assert chat.shape == coder.shape == (shared[0].tp, shared[0].pp)
    assert chat.memory_share + coder.memory_share <= MEMORY_LIMIT + 1e-3
    start = fleet_plan([], {k: ModelTarget(k, 1) for k in plan.templates}, plan.templates,
                       [PoolBudget("h100", max_gpus=2, warm_size=0)])
    assert [a.models for a in start.actions] == [("default/chat", "default/coder")]


def test_warm_preload_prefers_the_likeliest_model_and_claims_wake_or_route():
    targets = {A: ModelTarget(A, 1, warm=1, arrival_rate=0.2),
               B: ModelTarget(B, 3, warm=1, arrival_rate=5.0)}
    assert likeliest_models([A, B], targets) == [B, A]
    plan = fleet_plan([], {B: targets[B], A: replace_warm(targets[A])}, TEMPLATES,
                      [PoolBudget("p", max_gpus=8, warm_size=1)])
    warm = plan.of_kind(ActionKind.START_WARM)
    assert [a.model for a in warm] == [B] and "likeliest" in warm[0].reason
    # GPU engines sleep in the standby: a claim wakes them; engines that cannot sleep (sim,
    # vLLM on CPU: the runtime answers 409) stay loaded and are routed; lost ones are loaded.
    assert claim_step("sleeping") is ClaimStep.WAKE
    assert claim_step("ready") is ClaimStep.ROUTE
    assert claim_step(None) is ClaimStep.LOAD and claim_step("failed") is ClaimStep.LOAD
    assert claim_step("starting") is ClaimStep.WAIT


def replace_warm(target: ModelTarget) -> ModelTarget:
    return ModelTarget(target.model, target.replicas, 0, target.reason, target.arrival_rate)


def test_plan_pools_never_pairs_models_of_different_namespaces(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(TWO_SMALL.replace("name: coder, namespace: default",
                                      "name: coder, namespace: team-b"))
    services, pools = load_documents([path]).split()
    plan = plan_pools(services, pools)["h100"]
    assert all(len(g.models) == 1 for g in plan.placement.groups), plan.placement.explanation
    chat, coder = plan.templates["default/chat"], plan.templates["team-b/coder"]
    assert chat.partners == () and coder.partners == ()
    assert chat.memory_share == coder.memory_share == MEMORY_LIMIT
    start = fleet_plan([], {k: ModelTarget(k, 1) for k in plan.templates}, plan.templates,
                       [PoolBudget("h100", max_gpus=2, warm_size=0)])
    assert sorted(a.models for a in start.actions) == [("default/chat",), ("team-b/coder",)]
