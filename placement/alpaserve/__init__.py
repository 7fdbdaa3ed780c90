"""The AlpaServe (OSDI'23) reproduction: profiled models, the artifact's workload and
simulator, its placement search and baselines, and the reference experiment.

* :mod:`~kubeplex.placement.alpaserve.profiles`: profiled stage latencies per parallel config
  (built-in ``alpa-bert-1.3b`` from the artifact);
* :mod:`~kubeplex.placement.alpaserve.simulator`: the fast pipelined simulator (batch size 1,
  admission control);
* :mod:`~kubeplex.placement.alpaserve.search`: config enumeration, the simulator-guided greedy,
  bucket separation, and the SR and Clockwork++ baselines;
* :mod:`~kubeplex.placement.alpaserve.benchmark`: the reference experiment and its sweeps
  (``kubeplex bench placement``).

The arrival process (:mod:`kubeplex.placement.workload`) is shared with the LLM planner
(:mod:`kubeplex.placement.planner`); nothing else is.
"""

from kubeplex.placement.alpaserve.profiles import (
    ModelProfile,
    ParallelConfig,
    StageProfile,
    model_profile,
)
from kubeplex.placement.alpaserve.search import (
    AlpaPlacement,
    Cluster,
    alpaserve_search,
    clockwork_plus,
    enumerate_group_configs,
    greedy_placement,
    latency_buckets,
    selective_replication,
)
from kubeplex.placement.alpaserve.simulator import GroupSpec, SimResult, simulate

__all__ = [
    "AlpaPlacement",
    "Cluster",
    "GroupSpec",
    "ModelProfile",
    "ParallelConfig",
    "SimResult",
    "StageProfile",
    "alpaserve_search",
    "clockwork_plus",
    "enumerate_group_configs",
    "greedy_placement",
    "latency_buckets",
    "model_profile",
    "selective_replication",
    "simulate",
]
