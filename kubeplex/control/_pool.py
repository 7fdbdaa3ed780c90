"""Bookkeeping of one pool while a plan is made: what each group will host, GPUs, nodes,
moves. Internal to the fleet plan (:mod:`kubeplex.control._fleet`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kubeplex.control._placing import ReplicaTemplate
from kubeplex.control._types import (
    Action,
    GroupId,
    GroupView,
    ModelKey,
    PoolBudget,
    Shortfall,
    namespace_of,
)
from kubeplex.placement.planner import MEMORY_LIMIT

__all__ = ["SHARE_TOLERANCE", "Hosting", "PoolBook", "free_nodes"]

#: Memory shares are rounded to 4 decimals by placement: a group is full past this slack.
SHARE_TOLERANCE = 1e-3


@dataclass
class Hosting:
    """A serving group's models and their memory shares as this plan leaves them."""

    namespace: str
    shape: tuple[int, int] | None
    models: list[ModelKey]
    shares: list[float]
    action: Action | None = None  # the START of a group this plan creates

    def room_for(self, template: ReplicaTemplate) -> bool:
        """Whether ``template.model`` may join: same namespace and shape, every hosted model a
        placement partner of it, and the shares still fit :data:`MEMORY_LIMIT`."""
        return (namespace_of(template.model) == self.namespace
                and self.shape == template.shape and template.model not in self.models
                and len(self.shares) == len(self.models)
                and all(m in template.partners for m in self.models)
                and sum(self.shares) + template.memory_share <= MEMORY_LIMIT + SHARE_TOLERANCE)

    def remove(self, model: ModelKey) -> None:
        index = self.models.index(model)
        del self.models[index]
        if len(self.shares) > index:
            del self.shares[index]

    def add(self, model: ModelKey, share: float) -> None:
        self.models.append(model)
        self.shares.append(share)


@dataclass
class PoolBook:
    """Mutable bookkeeping of one pool while planning: GPUs used against the budget, free
    GPUs per node (None: nodes not modelled), groups changed in place against ``max_moves``."""

    budget: PoolBudget
    used: int
    nodes: dict[str, int] | None = None
    max_moves: int | None = None
    warm: list[GroupView] = field(default_factory=list)
    hosting: dict[GroupId, Hosting] = field(default_factory=dict)
    new: list[Hosting] = field(default_factory=list)
    moved: set[str] = field(default_factory=set)
    #: A consolidation move is under way (the model's new copy is not ready yet).
    moving: bool = False
    #: Models whose consolidation this plan gave up, with why.
    gave_up: dict[ModelKey, str] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    shortfalls: list[Shortfall] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.budget.name

    @property
    def free(self) -> int | None:
        return None if self.budget.max_gpus is None else self.budget.max_gpus - self.used

    def within_budget(self, gpus: int) -> bool:
        free = self.free
        return free is None or free >= gpus

    def largest_block(self) -> int | None:
        """The most free GPUs on one node (None: nodes not modelled)."""
        return None if self.nodes is None else max(self.nodes.values(), default=0)

    def fits(self, gpus: int) -> bool:
        """Whether a new group of ``gpus`` fits the budget and one node."""
        block = self.largest_block()
        return self.within_budget(gpus) and (block is None or block >= gpus)

    def take(self, gpus: int) -> str | None:
        """Reserve ``gpus`` for a new group (call after :meth:`fits`): the budget, and the
        node that fits it best (the fullest that has room: big holes stay for big groups)."""
        self.used += gpus
        if self.nodes is None:
            return None
        node = min((n for n, free in self.nodes.items() if free >= gpus),
                   key=lambda n: (self.nodes[n] if self.nodes else 0, n))
        self.nodes[node] -= gpus
        return node

    def give_back(self, group: GroupView) -> None:
        """``group``'s GPUs count as free again (a standby this plan stops)."""
        self.used -= group.gpus
        if self.nodes is not None and group.node in self.nodes:
            self.nodes[group.node] += group.gpus

    def may_change(self, group: GroupId) -> bool:
        """Within the disruption budget: running groups changed in place (ADD, UNLOAD)."""
        return (self.max_moves is None or group in self.moved
                or len(self.moved) < self.max_moves)

    def moves_left(self) -> bool:
        """Whether the disruption budget allows one more running group to change."""
        return self.max_moves is None or len(self.moved) < self.max_moves


def free_nodes(nodes: Mapping[str, int] | None) -> dict[str, int] | None:
    """A private copy of the free GPUs per node (None stays None)."""
    return None if nodes is None else dict(nodes)
