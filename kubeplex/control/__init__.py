"""kubeplex.control: the one control layer the operator and local mode both run.

Pure like :mod:`kubeplex.placement` and :mod:`kubeplex.autoscaler` (no Kubernetes, HTTP,
processes or clock reads; time comes in as arguments). A cycle (:func:`control_cycle`):

* a backend observes a :class:`FleetState`: its groups (:class:`GroupView`), every servable
  model resolved once per spec generation (:func:`resolve_model` -> :class:`ResolvedModel`,
  with its :class:`ReplicaTemplate` from :func:`quick_template` or :func:`plan_pools`), the
  pools' :class:`PoolBudget`\\ s and free GPUs per node;
* per model, :func:`scale_model` (the autoscaler's ``decide`` with one history horizon, the
  pin rule, the rate fallback and one :func:`slo_status` rule) gives a :class:`ModelDecision`;
* :func:`fleet_plan` turns the targets into :class:`Action`\\ s with nodes and group ids bound,
  :class:`Shortfall`\\ s keyed by model, and the consolidations it gave up;
* the backend executes the actions and keeps the returned :class:`ControlMemory`.

Modules: ``_placing`` (resources -> placement), ``_scaling`` (resources -> autoscaler, the
per-model step), ``_fleet`` (the plan), ``_consolidation`` and ``_warm`` (its rules 3 and 4),
``_cycle`` (one cycle), ``_types`` (the vocabulary), ``errors`` (typed refusals).
"""

from kubeplex.control._consolidation import CONSOLIDATION_RETRY_S, CONSOLIDATION_TIMEOUT_S
from kubeplex.control._cycle import ControlMemory, CycleResult, FleetState, control_cycle
from kubeplex.control._fleet import MAX_MOVES, fleet_plan
from kubeplex.control._placing import (
    PoolPlan,
    ReplicaTemplate,
    model_demand,
    model_shape,
    plan_pools,
    pool_budget,
    pool_spec,
    quick_template,
)
from kubeplex.control._scaling import (
    COLD_STARTS_KEPT,
    COLD_STARTS_NEEDED,
    HISTORY_WINDOWS,
    ModelDecision,
    ModelInputs,
    ModelMemory,
    ResolvedModel,
    SloStatus,
    autoscaler_config,
    check_source,
    engine_max_num_seqs,
    observed_fleet,
    resolve_model,
    scale_model,
    slo_status,
)
from kubeplex.control._types import (
    DNS_LABEL_MAX,
    Action,
    ActionCause,
    ActionKind,
    FleetPlan,
    GroupId,
    GroupIndex,
    GroupPhase,
    GroupView,
    ModelKey,
    ModelTarget,
    PoolBudget,
    Shortfall,
    ShortfallCause,
    group_name,
    name_of,
    namespace_of,
)
from kubeplex.control._warm import ClaimStep, claim_step, likeliest_models
from kubeplex.control.errors import (
    ControlError,
    DegradedReason,
    DoesNotFitError,
    PlanningError,
    UnknownPoolError,
    UnknownProfileError,
    UnplacedError,
    UnsupportedSourceError,
)

__all__ = [
    "COLD_STARTS_KEPT",
    "COLD_STARTS_NEEDED",
    "CONSOLIDATION_RETRY_S",
    "CONSOLIDATION_TIMEOUT_S",
    "DNS_LABEL_MAX",
    "HISTORY_WINDOWS",
    "MAX_MOVES",
    "Action",
    "ActionCause",
    "ActionKind",
    "ClaimStep",
    "ControlError",
    "ControlMemory",
    "CycleResult",
    "DegradedReason",
    "DoesNotFitError",
    "FleetPlan",
    "FleetState",
    "GroupId",
    "GroupIndex",
    "GroupPhase",
    "GroupView",
    "ModelDecision",
    "ModelInputs",
    "ModelKey",
    "ModelMemory",
    "ModelTarget",
    "PlanningError",
    "PoolBudget",
    "PoolPlan",
    "ReplicaTemplate",
    "ResolvedModel",
    "Shortfall",
    "ShortfallCause",
    "SloStatus",
    "UnknownPoolError",
    "UnknownProfileError",
    "UnplacedError",
    "UnsupportedSourceError",
    "autoscaler_config",
    "check_source",
    "claim_step",
    "control_cycle",
    "engine_max_num_seqs",
    "fleet_plan",
    "group_name",
    "likeliest_models",
    "model_demand",
    "model_shape",
    "name_of",
    "namespace_of",
    "observed_fleet",
    "plan_pools",
    "pool_budget",
    "pool_spec",
    "quick_template",
    "resolve_model",
    "scale_model",
    "slo_status",
]
