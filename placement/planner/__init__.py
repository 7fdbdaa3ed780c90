"""The production LLM planner: AlpaServe's idea carried over to LLM serving on Kubernetes nodes
(what the operator, local mode and ``kubeplex plan`` run).

* :mod:`~kubeplex.placement.planner.demand`: what it takes (:class:`ModelDemand`,
  :class:`PoolSpec`) and gives (:class:`Placement` with a :class:`Prediction` on held-out
  samples);
* :mod:`~kubeplex.placement.planner.workload`: request samples, each request with lengths drawn
  from the model's declared or observed distribution;
* :mod:`~kubeplex.placement.planner.simulator`: a continuous-batching simulator of vLLM engines
  co-located on GPU groups, costed per request by :mod:`kubeplex.placement.llm`;
* :mod:`~kubeplex.placement.planner.layouts`: the ways to cut nodes into groups;
* :mod:`~kubeplex.placement.planner.search`: the simulator-guided greedy over layouts, the
  held-out check, incremental re-planning within a move budget, and the replication baseline.
"""

from kubeplex.placement.planner.demand import (
    MEMORY_LIMIT,
    MIN_CONCURRENT_SEQUENCES,
    GroupPlacement,
    HostedModel,
    ModelDemand,
    ModelOutcome,
    Placement,
    PoolSpec,
    Prediction,
)
from kubeplex.placement.planner.search import (
    evaluate,
    plan,
    planning_workload,
    replication_plan,
)
from kubeplex.placement.planner.workload import LengthModel, LLMWorkload

__all__ = [
    "MEMORY_LIMIT",
    "MIN_CONCURRENT_SEQUENCES",
    "GroupPlacement",
    "HostedModel",
    "LLMWorkload",
    "LengthModel",
    "ModelDemand",
    "ModelOutcome",
    "Placement",
    "PoolSpec",
    "Prediction",
    "evaluate",
    "plan",
    "planning_workload",
    "replication_plan",
]
