"""The fleet as the control layer sees it, and the plan it returns.

One vocabulary for both backends: a model is named by its **model key** ``namespace/name``
(a ModelService), a group by its **group id** ``namespace/name`` (a ServingGroup and its pod,
or a local runtime process), and a group is in one :class:`GroupPhase`. A plan is a list of
:class:`Action`\\ s with their node and group name already bound, plus :class:`Shortfall`\\ s
(what could not be planned, keyed by pool and model) and the consolidations it gave up.
Reasons are text for people; code reads the typed ``cause`` fields, never the text.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DNS_LABEL_MAX",
    "Action",
    "ActionCause",
    "ActionKind",
    "FleetPlan",
    "GroupId",
    "GroupIndex",
    "GroupPhase",
    "GroupView",
    "ModelKey",
    "ModelTarget",
    "PoolBudget",
    "Shortfall",
    "ShortfallCause",
    "group_name",
    "name_of",
    "namespace_of",
]

#: ``namespace/name`` of a ModelService.
ModelKey = str
#: ``namespace/name`` of a serving group (a ServingGroup and its pod, or a local process).
GroupId = str

#: Object names used as DNS labels (Kubernetes): at most 63 characters.
DNS_LABEL_MAX = 63


def namespace_of(key: str) -> str:
    """The namespace part of a model key or group id (``default`` when it has none)."""
    namespace, slash, _ = key.partition("/")
    return namespace if slash else "default"


def name_of(key: str) -> str:
    """The name part of a model key or group id."""
    return key.rpartition("/")[2]


def group_name(base: str, taken: set[str]) -> str:
    """``<base>-<n>`` with the lowest free ``n``, cut to a DNS label, added to ``taken``.

    Deterministic, so a cycle re-run after a crash finds the object it made instead of making
    another one."""
    n = 0
    while True:
        suffix = f"-{n}"
        head = re.sub(r"[^a-z0-9-]", "-", base.lower())[: DNS_LABEL_MAX - len(suffix)]
        name = head.rstrip("-") + suffix
        if name not in taken:
            taken.add(name)
            return name
        n += 1


class GroupPhase(enum.StrEnum):
    STARTING = "starting"    # serving group on its way (process/pod starting, model loading)
    READY = "ready"          # serving its models
    DRAINING = "draining"    # finishing in-flight requests; still holds its GPUs
    WARMING = "warming"      # warm standby on its way
    WARM = "warm"            # warm standby: runtime up, nothing routed (maybe preloaded)


@dataclass(frozen=True)
class GroupView:
    """One group as the backend observed it this cycle.

    ``models``: models routed to it (or about to be, while starting). ``preloaded``: warm
    standbys' models loaded but not routed (asleep on GPU). ``load``: requests in it (waiting
    + running), so scale-down drains the least loaded. ``since``: when it entered its phase
    (the caller's clock); ``claimed``: a starting group that came from the warm pool.
    ``shape`` (``(tp, pp)``) and ``shares`` (each routed model's memory share, in the order
    of ``models``): what co-location needs to judge room in the group; a group without them
    (or one still unloading a model) is treated as full (nothing is added to it).
    ``loading``: models of ``models`` added to the running group and still loading (they count
    as starting replicas, the others as the group's phase says); ``loading_since``: when the
    latest of them was added (the caller's clock; 0: unknown, taken as ``since``).
    ``node``: where it runs (None where nodes are not modelled, as in local mode).
    """

    id: GroupId
    pool: str
    gpus: int
    phase: GroupPhase
    models: tuple[ModelKey, ...] = ()
    preloaded: tuple[ModelKey, ...] = ()
    load: float = 0.0
    since: float = 0.0
    claimed: bool = False
    shape: tuple[int, int] | None = None
    shares: tuple[float, ...] = ()
    loading: tuple[ModelKey, ...] = ()
    loading_since: float = 0.0
    node: str | None = None

    @property
    def serving(self) -> bool:
        return self.phase in (GroupPhase.STARTING, GroupPhase.READY)

    @property
    def standby(self) -> bool:
        return self.phase in (GroupPhase.WARMING, GroupPhase.WARM)

    @property
    def namespace(self) -> str:
        return namespace_of(self.id)


@dataclass(frozen=True)
class ModelTarget:
    """What one model should have: replicas and warm standbys (and why, for messages).
    ``arrival_rate`` (requests/s, measured or declared) ranks models for warm preloads."""

    model: ModelKey
    replicas: int
    warm: int = 0
    reason: str = ""
    arrival_rate: float = 0.0


@dataclass(frozen=True)
class GroupIndex:
    """A cycle's groups indexed once, for every model's step (a scan of all groups per model
    made a pool's cycle quadratic in its models): the serving groups hosting each model,
    the standbys of each (pool, namespace), the GPUs each pool's groups hold."""

    serving: Mapping[ModelKey, tuple[GroupView, ...]]
    standbys: Mapping[tuple[str, str], tuple[GroupView, ...]]
    gpus: Mapping[str, int]

    @classmethod
    def of(cls, groups: Sequence[GroupView]) -> GroupIndex:
        serving: dict[ModelKey, list[GroupView]] = {}
        standbys: dict[tuple[str, str], list[GroupView]] = {}
        gpus: dict[str, int] = {}
        for g in groups:
            gpus[g.pool] = gpus.get(g.pool, 0) + g.gpus
            if g.serving:
                for m in g.models:
                    serving.setdefault(m, []).append(g)
            elif g.standby:
                standbys.setdefault((g.pool, g.namespace), []).append(g)
        return cls({m: tuple(gs) for m, gs in serving.items()},
                   {k: tuple(gs) for k, gs in standbys.items()}, gpus)


@dataclass(frozen=True)
class PoolBudget:
    """A pool's limits: ``max_gpus`` (None: unbounded), ``warm_size`` (None: auto, from the
    targets), models to preload into standbys (in turn)."""

    name: str
    max_gpus: int | None
    warm_size: int | None = None
    preload: tuple[ModelKey, ...] = ()


class ActionKind(enum.StrEnum):
    START = "start"            # cold-start a new group hosting ``model`` (+ ``with_models``)
    CLAIM = "claim"            # route ``model`` to warm standby ``group`` (wake or load it)
    START_WARM = "start-warm"  # start a warm standby (preloading ``model`` when given)
    ADD = "add"                # load ``model`` into serving ``group`` (co-location), route it
    UNLOAD = "unload"          # remove ``model`` from the shared ``group`` (drain it first)
    DRAIN = "drain"            # drain ``group`` (no new requests), then stop it
    STOP = "stop"              # stop warm standby ``group`` (nothing is routed to it)


class ActionCause(enum.StrEnum):
    """Why an action is in the plan (the typed part of its reason)."""

    SCALE_UP = "scale-up"
    SCALE_DOWN = "scale-down"
    CONSOLIDATE = "consolidate"                # move next to placement partners (rule 3)
    CONSOLIDATION_GIVEN_UP = "consolidation-given-up"
    WARM_POOL = "warm-pool"                    # keep the pool's standbys (rule 4)
    MAKE_ROOM = "make-room"                    # a standby stopped to free GPUs for a replica
    MODEL_GONE = "model-gone"                  # its ModelService was deleted or left the pool


@dataclass(frozen=True)
class Action:
    """One step. ``group``: the group it acts on, or the id bound to a new one (START,
    START_WARM). ``node``: where a new group runs (None where nodes are not modelled).
    ``with_models``: the other models a new group (START) hosts from the start, co-located
    with ``model`` (each with its template's memory share)."""

    kind: ActionKind
    pool: str
    reason: str
    group: GroupId | None = None
    model: ModelKey | None = None
    gpus: int = 0
    tp: int = 1
    pp: int = 1
    with_models: tuple[ModelKey, ...] = ()
    cause: ActionCause = ActionCause.SCALE_UP
    node: str | None = None

    @property
    def models(self) -> tuple[ModelKey, ...]:
        """Every model the action concerns (``model`` first)."""
        return (*((self.model,) if self.model else ()), *self.with_models)


class ShortfallCause(enum.StrEnum):
    """Why part of a target could not be planned."""

    GPU_BUDGET = "gpu-budget"        # the pool's GPU budget is spent
    NO_NODE = "no-node"              # GPUs are free, but no node has a block that large
    MOVE_BUDGET = "move-budget"      # a scale-down waits: shared groups over the move budget
    WARM_POOL = "warm-pool"          # fewer standbys than the warm pool wants


@dataclass(frozen=True)
class Shortfall:
    """What could not be planned: for ``model`` (None: the pool's warm pool) in ``pool``."""

    pool: str
    cause: ShortfallCause
    message: str
    model: ModelKey | None = None


@dataclass(frozen=True)
class FleetPlan:
    """The actions to apply in order, and what could not be planned."""

    actions: tuple[Action, ...] = ()
    shortfalls: tuple[Shortfall, ...] = ()
    #: Models whose consolidation this plan gave up, with why (the caller remembers when,
    #: and passes it back as ``fleet_plan(gave_up=...)``).
    gave_up: Mapping[ModelKey, str] = field(default_factory=dict)

    @property
    def messages(self) -> tuple[str, ...]:
        """Every shortfall's message, for the pool's status."""
        return tuple(s.message for s in self.shortfalls)

    def of_kind(self, kind: ActionKind) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind is kind)

    def shortfall_of(self, model: ModelKey) -> Shortfall | None:
        """The first shortfall about ``model`` (for its Scaling condition), if any."""
        return next((s for s in self.shortfalls if s.model == model), None)

    def message_for(self, model: ModelKey) -> str | None:
        found = self.shortfall_of(model)
        return None if found is None else found.message
