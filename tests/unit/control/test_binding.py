"""What the fleet plan binds and removes: new groups get a node (best fit) and a name (the
lowest free one in their namespace), a replica that fits no node is a typed shortfall, models
claim and join groups of their own namespace only, and the groups of models that are gone are
drained, unloaded or stopped."""

from __future__ import annotations

from kubeplex.control import (
    ActionCause,
    ActionKind,
    GroupPhase,
    GroupView,
    ModelTarget,
    PoolBudget,
    ReplicaTemplate,
    ShortfallCause,
    fleet_plan,
)

M, OTHER = "ns/m", "ns/other"
TWO = {M: ReplicaTemplate(M, "p", 2, 1)}
BUDGET = [PoolBudget("p", max_gpus=16, warm_size=0)]


def test_a_new_group_goes_to_the_fullest_node_that_fits() -> None:
    plan = fleet_plan([], {M: ModelTarget(M, 2)}, TWO, BUDGET,
                      nodes={"p": {"big": 8, "snug": 2, "tiny": 1}})
    assert [(a.kind, a.node, a.group) for a in plan.actions] == [
        (ActionKind.START, "snug", "ns/m-0"), (ActionKind.START, "big", "ns/m-1")]


def test_free_gpus_on_no_single_node_is_a_no_node_shortfall() -> None:
    plan = fleet_plan([], {M: ModelTarget(M, 1)}, TWO, BUDGET,
                      nodes={"p": {"a": 1, "b": 1}})
    assert plan.actions == ()
    (short,) = plan.shortfalls
    assert (short.cause, short.model) == (ShortfallCause.NO_NODE, M)
    assert "needs a node with 2 free GPUs" in short.message and "largest free block is 1" \
        in short.message
    over = fleet_plan([], {M: ModelTarget(M, 9)}, TWO, BUDGET, nodes={"p": {"a": 32}})
    assert over.shortfall_of(M) is not None
    assert over.shortfall_of(M).cause is ShortfallCause.GPU_BUDGET  # type: ignore[union-attr]


def test_names_skip_those_taken_in_the_namespace_only() -> None:
    plan = fleet_plan([GroupView("ns/m-0", "p", 2, GroupPhase.READY, (M,))],
                      {M: ModelTarget(M, 3)}, TWO, BUDGET,
                      taken={"ns": {"m-1"}, "elsewhere": {"m-2"}})
    assert [a.group for a in plan.actions] == ["ns/m-2", "ns/m-3"]


def test_a_standby_of_another_namespace_is_not_claimed() -> None:
    mine = GroupView("ns/warm-p-0", "p", 2, GroupPhase.WARM, (), (M,))
    theirs = GroupView("team/warm-p-0", "p", 2, GroupPhase.WARM)
    plan = fleet_plan([theirs, mine], {M: ModelTarget(M, 2)}, TWO, BUDGET)
    assert [(a.kind, a.group) for a in plan.actions
            if a.kind in (ActionKind.CLAIM, ActionKind.START)] == [
        (ActionKind.CLAIM, "ns/warm-p-0"), (ActionKind.START, "ns/m-0")]


def test_groups_of_gone_models_are_drained_unloaded_or_stopped() -> None:
    groups = [GroupView("ns/gone-0", "p", 1, GroupPhase.READY, ("ns/gone",)),
              GroupView("ns/pair-0", "p", 1, GroupPhase.READY, (M, "ns/gone"), shape=(1, 1),
                        shares=(0.4, 0.4)),
              GroupView("ns/warm-p-0", "p", 1, GroupPhase.WARM, (), ("ns/gone",)),
              GroupView("ns/warm-p-1", "p", 1, GroupPhase.WARM, (), (M,))]
    plan = fleet_plan(groups, {M: ModelTarget(M, 1)}, {M: ReplicaTemplate(M, "p", 1, 1)},
                      [PoolBudget("p", max_gpus=8, warm_size=1)], present={M})
    assert sorted((a.kind, a.group, a.model) for a in plan.actions) == [
        (ActionKind.DRAIN, "ns/gone-0", "ns/gone"),
        (ActionKind.STOP, "ns/warm-p-0", None),
        (ActionKind.UNLOAD, "ns/pair-0", "ns/gone")]
    assert {a.cause for a in plan.actions} == {ActionCause.MODEL_GONE}
    # without ``present`` nothing is known to be gone: nothing is removed
    assert fleet_plan(groups, {M: ModelTarget(M, 1)}, {M: ReplicaTemplate(M, "p", 1, 1)},
                      [PoolBudget("p", max_gpus=8, warm_size=2)]).actions == ()


def test_a_stopped_standby_gives_its_node_back_to_the_replica() -> None:
    standby = GroupView("ns/warm-p-0", "p", 2, GroupPhase.WARM, (), (OTHER,), node="n1")
    plan = fleet_plan([standby], {M: ModelTarget(M, 1)},
                      {**TWO, OTHER: ReplicaTemplate(OTHER, "p", 2, 1)},
                      [PoolBudget("p", max_gpus=2, warm_size=0)], nodes={"p": {"n1": 0}})
    assert [(a.kind, a.cause, a.node) for a in plan.actions] == [
        (ActionKind.STOP, ActionCause.MAKE_ROOM, None),
        (ActionKind.START, ActionCause.SCALE_UP, "n1")]
