"""One control cycle, the same for both backends: fleet state in, decisions and a plan out.

A backend observes its fleet once per cycle into a :class:`FleetState` (its groups as
:class:`~kubeplex.control.GroupView`\\ s, every servable model resolved, each pool's budget,
free GPUs per node where it has nodes, the group names in use) and reads each model's metrics
into :class:`~kubeplex.control.ModelInputs`. :func:`control_cycle` then runs the per-model
scaling step for every model and the fleet plan over all of them, and returns the decisions,
the plan (nodes and names bound) and the next :class:`ControlMemory`. The backend maps the
plan's actions onto its executor (pods or processes) and writes statuses; it keeps the memory
for the next cycle. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from kubeplex.control._consolidation import CONSOLIDATION_RETRY_S
from kubeplex.control._fleet import MAX_MOVES, fleet_plan
from kubeplex.control._scaling import (
    ModelDecision,
    ModelInputs,
    ModelMemory,
    ResolvedModel,
    scale_model,
)
from kubeplex.control._types import FleetPlan, GroupIndex, GroupView, ModelKey, PoolBudget

__all__ = ["ControlMemory", "CycleResult", "FleetState", "control_cycle"]


@dataclass(frozen=True)
class FleetState:
    """What runs and what is declared, observed once per cycle.

    ``models``: the servable models, resolved; ``present``: every declared model, servable or
    not (None: exactly ``models``); groups of models not present are removed. ``nodes``:
    pool -> node -> free GPUs (None: nodes are not modelled, as in local mode). ``taken``:
    namespace -> group names in use besides ``groups`` (e.g. in other pools).
    """

    groups: tuple[GroupView, ...]
    models: Mapping[ModelKey, ResolvedModel]
    budgets: tuple[PoolBudget, ...]
    present: Collection[ModelKey] | None = None
    nodes: Mapping[str, Mapping[str, int]] | None = None
    taken: Mapping[str, Collection[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ControlMemory:
    """What the control layer remembers between cycles: each model's scaling memory, and
    when each model's consolidation was last given up."""

    models: Mapping[ModelKey, ModelMemory] = field(default_factory=dict)
    gave_up: Mapping[ModelKey, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CycleResult:
    decisions: Mapping[ModelKey, ModelDecision]
    plan: FleetPlan
    memory: ControlMemory


def control_cycle(fleet: FleetState, inputs: Mapping[ModelKey, ModelInputs],
                  memory: ControlMemory, now: float, max_moves: int = MAX_MOVES) -> CycleResult:
    """Decide every model of ``fleet`` and plan the fleet (module docstring)."""
    budgets = {b.name: b for b in fleet.budgets}
    decisions: dict[ModelKey, ModelDecision] = {}
    remembered: dict[ModelKey, ModelMemory] = {}
    index = GroupIndex.of(fleet.groups)
    for key, model in sorted(fleet.models.items()):
        decision, remembered[key] = scale_model(
            model, index, budgets.get(model.template.pool),
            inputs.get(key, ModelInputs()), memory.models.get(key, ModelMemory()), now)
        decisions[key] = decision
    present = set(fleet.models) if fleet.present is None else set(fleet.present)
    for key, kept in memory.models.items():  # a model Degraded for now keeps its memory
        if key in present and key not in remembered:
            remembered[key] = kept
    gave_up = {m: t for m, t in memory.gave_up.items()
               if m in fleet.models and now - t < CONSOLIDATION_RETRY_S}
    plan = fleet_plan(fleet.groups, {k: d.target() for k, d in decisions.items()},
                      {k: m.template for k, m in fleet.models.items()}, fleet.budgets,
                      max_moves, now, gave_up, nodes=fleet.nodes, present=present,
                      taken=fleet.taken)
    gave_up.update(dict.fromkeys(plan.gave_up, now))
    return CycleResult(decisions, plan, ControlMemory(remembered, gave_up))
