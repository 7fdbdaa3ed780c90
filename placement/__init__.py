"""kubeplex.placement: where replicas run (pure: no I/O, no Kubernetes, no clock reads).

Two modes share one idea, AlpaServe's (OSDI'23): cut the GPUs into groups, give each group a
model-parallel shape, place model replicas on groups with a simulator-guided greedy, and let
models that share a group multiplex it statistically.

**LLM mode** (what the operator, local mode and ``kubeplex plan`` use)::

    from kubeplex.placement import ModelDemand, PoolSpec, plan, gpu, model

    pool = PoolSpec(gpu("H100-80GB"), nodes=2, gpus_per_node=8, max_gpus=16, name="h100")
    demands = [ModelDemand("team-a/chat-8b", model("llama-3.1-8b"), arrival_rate=30, cv=3,
                           ttft_slo_s=0.5, tpot_slo_s=0.05, max_replicas=6)]
    placement = plan(pool, demands)                      # a fresh plan
    later = plan(pool, new_demands, current=placement, max_moves=2)   # incremental

* :func:`plan` ``(pool, demands, current=None, max_moves=None, fill=False,
  allow_unplaced=False) -> Placement``. ``Placement.groups`` lists :class:`GroupPlacement`
  (``id``, ``node``, ``gpu_indices`` on that node, ``tp``, ``pp``, hosted models with
  ``memory_share`` = vLLM's ``--gpu-memory-utilization`` and ``kv_capacity_tokens``);
  ``Placement.models`` the predicted :class:`ModelOutcome` per model (replicas, attainment vs
  target with its range, p95 TTFT); ``attainment`` (the median over samples held out from the
  search, ``prediction`` has its range), ``free_gpus`` and a human-readable ``explanation``.
  A group never spans nodes (one pod per group). With ``current``, ``moved`` names the groups
  created or changed and ``removed`` the ones to delete; every other group stays exactly as it
  was, and at most ``max_moves`` change. A model with demand left without a replica raises
  :class:`UnplacedModelsError` (``models`` names them) unless ``allow_unplaced``.
* Inputs: :class:`ModelDemand` (name, :class:`ModelShape`, arrival rate and cv, mean
  prompt/output tokens and their spread or observed lengths, TTFT/TPOT SLO and target
  attainment, min/max replicas, fixed or auto tp/pp, max_model_len) and :class:`PoolSpec`
  (GPU spec, nodes x GPUs per node, max GPUs). :mod:`kubeplex.placement.specs` builds them
  from ModelService / GPUPool specs (``slo_target``: the one rule for percentile and
  attainment).
* Layout of the package: two sub-packages and what they share.

  - :mod:`~kubeplex.placement.planner` (**the production LLM planner**):
    :mod:`~kubeplex.placement.planner.simulator` (continuous batching of vLLM engines) and
    :mod:`~kubeplex.placement.planner.search` (layouts, greedy, incremental, replication
    baseline).
  - :mod:`~kubeplex.placement.alpaserve` (**the AlpaServe reproduction**,
    ``kubeplex bench placement``): profiled stage latencies, the artifact's pipelined
    simulator, its search with bucket separation, the SR and Clockwork++ baselines, and the
    reference experiment with its sweeps.
  - Shared at the top: :mod:`~kubeplex.placement.hardware` (GPU catalogue),
    :mod:`~kubeplex.placement.llm` (analytic latency/memory model),
    :mod:`~kubeplex.placement.groups` (group sizes and shapes),
    :mod:`~kubeplex.placement.workload` (Gamma arrivals as the artifact draws them),
    :mod:`~kubeplex.placement.specs` (resource -> planner adapters) and
    :mod:`~kubeplex.placement.errors`.

Errors: every deliberate failure is a :class:`PlacementError` (unknown names:
:class:`UnknownProfileError`; memory that cannot hold a model: :class:`DoesNotFitError`).
"""

from kubeplex.placement.alpaserve import AlpaPlacement, Cluster, alpaserve_search
from kubeplex.placement.errors import (
    DoesNotFitError,
    PlacementError,
    UnknownProfileError,
    UnplacedModelsError,
)
from kubeplex.placement.hardware import GPUS, GPUSpec, gpu
from kubeplex.placement.llm import MODELS, LLMProfile, ModelShape, model, profile
from kubeplex.placement.planner import (
    GroupPlacement,
    HostedModel,
    ModelDemand,
    ModelOutcome,
    Placement,
    PoolSpec,
    plan,
    replication_plan,
)

__all__ = [
    "GPUS",
    "MODELS",
    "AlpaPlacement",
    "Cluster",
    "DoesNotFitError",
    "GPUSpec",
    "GroupPlacement",
    "HostedModel",
    "LLMProfile",
    "ModelDemand",
    "ModelOutcome",
    "ModelShape",
    "Placement",
    "PlacementError",
    "PoolSpec",
    "UnknownProfileError",
    "UnplacedModelsError",
    "alpaserve_search",
    "gpu",
    "model",
    "plan",
    "profile",
    "replication_plan",
]
