"""Consolidation in ``kubeplex.control.fleet_plan``: models started alone (the quick template,
before the background placement paired them) move next to their placement partners once the fleet is
stable: ADD into a partner's group with room, or START one shared group when the GPUs are
free; the old groups are drained only after the new copies are ready, and a new copy that
never becomes ready is given up after a bound."""

from __future__ import annotations

from dataclasses import replace

from kubeplex.control import (
    CONSOLIDATION_RETRY_S,
    CONSOLIDATION_TIMEOUT_S,
    Action,
    ActionCause,
    ActionKind,
    FleetPlan,
    GroupPhase,
    GroupView,
    ModelTarget,
    PoolBudget,
    ReplicaTemplate,
    fleet_plan,
)
from kubeplex.placement.planner import MEMORY_LIMIT

A, B, C = "ns/a", "ns/b", "ns/c"
TEMPLATES = {A: ReplicaTemplate(A, "p", 1, 1, 0.5, partners=(B,)),
             B: ReplicaTemplate(B, "p", 1, 1, 0.4, partners=(A,)),
             C: ReplicaTemplate(C, "p", 1, 1)}
ONE_EACH = {A: ModelTarget(A, 1), B: ModelTarget(B, 1)}


def view(id_: str, models: tuple[str, ...], shares: tuple[float, ...],
         phase: GroupPhase = GroupPhase.READY, loading: tuple[str, ...] = ()) -> GroupView:
    """A group of namespace ``ns`` (where the models are): ``id_`` is its name."""
    gid = id_ if "/" in id_ else f"ns/{id_}"
    return GroupView(gid, "p", 1, phase, models, (), 0.0, 0.0, False, (1, 1), shares, loading)


def budget(gpus: int) -> list[PoolBudget]:
    return [PoolBudget("p", max_gpus=gpus, warm_size=0)]


def kinds(plan: FleetPlan) -> list[tuple[ActionKind, str | None, tuple[str, ...]]]:
    """Each action's kind, group name (its namespace cut off) and models."""
    return [(a.kind, a.group and a.group.removeprefix("ns/"), a.models) for a in plan.actions]


def ready_copies(groups: list[GroupView], model: str) -> int:
    return sum(1 for g in groups if g.phase is GroupPhase.READY and model in g.models
               and model not in g.loading)


def apply(groups: list[GroupView], actions: tuple[Action, ...]) -> list[GroupView]:
    """What the executor leaves right after the plan: new groups start, added models load."""
    out = {g.id: g for g in groups}
    for a in actions:
        g = out.get(a.group or "")
        if a.kind is ActionKind.START and a.group:
            out[a.group] = view(a.group, a.models,
                                  tuple(TEMPLATES[m].memory_share for m in a.models),
                                  GroupPhase.STARTING)
        elif a.kind is ActionKind.ADD and g is not None and a.model:
            out[g.id] = view(g.id, (*g.models, a.model),
                             (*g.shares, TEMPLATES[a.model].memory_share), g.phase,
                             (*g.loading, a.model))
        elif a.kind in (ActionKind.DRAIN, ActionKind.STOP) and g is not None:
            del out[g.id]
    return list(out.values())


def settle(groups: list[GroupView]) -> list[GroupView]:
    """Every start and load finished."""
    return [view(g.id, g.models, g.shares) for g in groups]


def test_a_model_started_alone_moves_into_its_partners_group_then_its_old_group_drains() -> None:
    groups = [view("alone-a", (A,), (MEMORY_LIMIT,)), view("b", (B,), (0.4,))]
    first = fleet_plan(groups, ONE_EACH, TEMPLATES, budget(2), max_moves=4)
    assert kinds(first) == [(ActionKind.ADD, "b", (A,))]
    assert first.actions[0].cause is ActionCause.CONSOLIDATE
    groups = apply(groups, first.actions)
    # A loads beside B: nothing is drained meanwhile (alone-a is its only ready copy).
    assert fleet_plan(groups, ONE_EACH, TEMPLATES, budget(2), max_moves=4).actions == ()
    assert ready_copies(groups, A) == 1
    groups = settle(groups)
    then = fleet_plan(groups, ONE_EACH, TEMPLATES, budget(2), max_moves=4)
    assert kinds(then) == [(ActionKind.DRAIN, "alone-a", (A,))]
    groups = apply(groups, then.actions)
    assert ready_copies(groups, A) == ready_copies(groups, B) == 1
    assert fleet_plan(groups, ONE_EACH, TEMPLATES, budget(2), max_moves=4).actions == ()


def test_two_models_alone_start_one_shared_group_when_a_gpu_is_free() -> None:
    groups = [view("alone-a", (A,), (MEMORY_LIMIT,)), view("alone-b", (B,), (MEMORY_LIMIT,))]
    first = fleet_plan(groups, ONE_EACH, TEMPLATES, budget(3))
    assert kinds(first) == [(ActionKind.START, "a-b-0", (A, B))]
    assert first.actions[0].gpus == 1
    groups = apply(groups, first.actions)
    assert fleet_plan(groups, ONE_EACH, TEMPLATES, budget(3)).actions == ()  # still starting
    groups = settle(groups)
    then = fleet_plan(groups, ONE_EACH, TEMPLATES, budget(3))
    assert sorted(kinds(then)) == [(ActionKind.DRAIN, "alone-a", (A,)),
                                   (ActionKind.DRAIN, "alone-b", (B,))]
    groups = apply(groups, then.actions)
    assert [g.models for g in groups] == [(A, B)]
    assert fleet_plan(groups, ONE_EACH, TEMPLATES, budget(3)).actions == ()


def test_a_move_that_needs_gpus_waits_until_the_pool_has_them() -> None:
    groups = [view("alone-a", (A,), (MEMORY_LIMIT,)), view("alone-b", (B,), (MEMORY_LIMIT,))]
    assert fleet_plan(groups, ONE_EACH, TEMPLATES, budget(2)).actions == ()


def test_no_consolidation_while_the_fleet_scales_or_is_short_or_out_of_moves() -> None:
    groups = [view("alone-a", (A,), (MEMORY_LIMIT,)), view("b", (B,), (0.4,))]
    scaling = fleet_plan(groups, {A: ModelTarget(A, 1), B: ModelTarget(B, 2)}, TEMPLATES,
                         budget(4))
    assert not any(a.cause is ActionCause.CONSOLIDATE for a in scaling.actions)
    short = fleet_plan([*groups, view("c", (C,), (MEMORY_LIMIT,))],
                       {**ONE_EACH, C: ModelTarget(C, 3)}, TEMPLATES, budget(3))
    assert short.messages and not any(a.cause is ActionCause.CONSOLIDATE
                                      for a in short.actions)
    assert fleet_plan(groups, ONE_EACH, TEMPLATES, budget(2), max_moves=0).actions == ()
    starting = [groups[0], view("b", (B,), (0.4,), GroupPhase.STARTING)]
    assert fleet_plan(starting, ONE_EACH, TEMPLATES, budget(2)).actions == ()


def test_models_placed_alone_or_already_shared_are_left_alone() -> None:
    shared = [view("ab", (A, B), (0.5, 0.4)), view("c", (C,), (MEMORY_LIMIT,))]
    targets = {**ONE_EACH, C: ModelTarget(C, 1)}
    assert fleet_plan(shared, targets, TEMPLATES, budget(4)).actions == ()
    # A alone at its placement share has room for B: scale-ups fill it, no move needed.
    at_share = [view("a", (A,), (0.5,)), view("alone-b", (B,), (MEMORY_LIMIT,))]
    plan = fleet_plan(at_share, ONE_EACH, TEMPLATES, budget(2))
    assert kinds(plan) == [(ActionKind.ADD, "a", (B,))]  # B is the misplaced one


T0 = 1_800_000_000.0


def test_a_copy_loaded_beside_a_partner_that_never_gets_ready_is_given_up() -> None:
    """A added beside B is still loading after the bound: A is unloaded from B's group (B
    stays), alone-a keeps serving, and A is not consolidated again for a while."""
    groups = [view("alone-a", (A,), (MEMORY_LIMIT,)), view("b", (B,), (0.4,))]
    groups = apply(groups, fleet_plan(groups, ONE_EACH, TEMPLATES, budget(2), 4, T0).actions)
    groups = [replace(g, since=T0 - 3600, loading_since=T0) for g in groups]
    assert [g.loading for g in groups] == [(), (A,)]
    waiting = fleet_plan(groups, ONE_EACH, TEMPLATES, budget(2), 4,
                         T0 + CONSOLIDATION_TIMEOUT_S - 1)
    assert waiting.actions == () and not waiting.gave_up
    later = T0 + CONSOLIDATION_TIMEOUT_S + 1
    stuck = fleet_plan(groups, ONE_EACH, TEMPLATES, budget(2), 4, later)
    assert kinds(stuck) == [(ActionKind.UNLOAD, "b", (A,))]
    assert list(stuck.gave_up) == [A]
    assert stuck.actions[0].cause is ActionCause.CONSOLIDATION_GIVEN_UP
    reason = stuck.actions[0].reason
    assert reason.startswith(stuck.gave_up[A])
    assert f"consolidation of {A} given up" in reason and "not ready after 601 s" in reason
    assert "ns/b stay" in reason
    after = [view("alone-a", (A,), (MEMORY_LIMIT,)), view("b", (B,), (0.4,))]
    assert ready_copies(after, A) == ready_copies(after, B) == 1
    # not tried again within the retry bound; tried again after it (or with no record)
    assert fleet_plan(after, ONE_EACH, TEMPLATES, budget(2), 4, later + 60,
                      {A: later}).actions == ()
    assert kinds(fleet_plan(after, ONE_EACH, TEMPLATES, budget(2), 4,
                            later + CONSOLIDATION_RETRY_S, {A: later})) == [
        (ActionKind.ADD, "b", (A,))]
    assert kinds(fleet_plan(after, ONE_EACH, TEMPLATES, budget(2), 4, later + 60)) == [
        (ActionKind.ADD, "b", (A,))]


def test_a_shared_group_started_for_partners_that_never_gets_ready_is_drained_once() -> None:
    groups = [view("alone-a", (A,), (MEMORY_LIMIT,)), view("alone-b", (B,), (MEMORY_LIMIT,))]
    groups = apply(groups, fleet_plan(groups, ONE_EACH, TEMPLATES, budget(3), None, T0).actions)
    groups = [replace(g, since=T0) for g in groups]
    assert [g.phase for g in groups][-1] is GroupPhase.STARTING
    assert fleet_plan(groups, ONE_EACH, TEMPLATES, budget(3), None,
                      T0 + CONSOLIDATION_TIMEOUT_S).actions == ()
    stuck = fleet_plan(groups, ONE_EACH, TEMPLATES, budget(3), None,
                       T0 + CONSOLIDATION_TIMEOUT_S + 30)
    assert kinds(stuck) == [(ActionKind.DRAIN, "a-b-0", (A,))]  # one drain for both models
    assert sorted(stuck.gave_up) == [A, B]
    assert (f"consolidation of {A}, {B} given up: the new copy in ns/a-b-0"
            in stuck.actions[0].reason)
    after = [g for g in groups if g.id != "ns/a-b-0"]
    assert ready_copies(after, A) == ready_copies(after, B) == 1
    assert fleet_plan(after, ONE_EACH, TEMPLATES, budget(3), None, T0 + 1000,
                      {A: T0 + 630, B: T0 + 630}).actions == ()


def test_without_a_clock_the_plan_waits_for_the_new_copy_as_before() -> None:
    groups = [view("alone-a", (A,), (MEMORY_LIMIT,)),
              view("b", (A, B), (0.5, 0.4), loading=(A,))]
    assert fleet_plan(groups, ONE_EACH, TEMPLATES, budget(2)).actions == ()
