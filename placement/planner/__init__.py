"""The production LLM planner: AlpaServe's idea carried over to LLM serving on Kubernetes nodes
(what the operator, local mode and ``kubeplex plan`` run).

* :mod:`~kubeplex.placement.planner.simulator`: a continuous-batching simulator of vLLM engines
  co-located on GPU groups, costed by :mod:`kubeplex.placement.llm`;
* :mod:`~kubeplex.placement.planner.search`: layouts of each node, the simulator-guided greedy,
  incremental re-planning within a move budget, and the replication baseline.
"""

from kubeplex.placement.planner.search import (
    MEMORY_LIMIT,
    MIN_CONCURRENT_SEQUENCES,
    GroupPlacement,
    HostedModel,
    ModelDemand,
    ModelOutcome,
    Placement,
    PoolSpec,
    evaluate,
    plan,
    planning_workload,
    replication_plan,
)

__all__ = [
    "MEMORY_LIMIT",
    "MIN_CONCURRENT_SEQUENCES",
    "GroupPlacement",
    "HostedModel",
    "ModelDemand",
    "ModelOutcome",
    "Placement",
    "PoolSpec",
    "evaluate",
    "plan",
    "planning_workload",
    "replication_plan",
]
