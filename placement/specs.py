"""Adapters from the custom resources' typed specs to the planner's inputs.

The operator, local mode and ``kubeplex plan`` call these so that every caller turns a
``ModelService`` / ``GPUPool`` into :class:`~kubeplex.placement.planner.ModelDemand` /
:class:`~kubeplex.placement.planner.PoolSpec` the same way. ``kubeplex.api`` is imported for
type checking only: the core stays free of its YAML and file handling.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from kubeplex.placement.errors import PlacementError, UnknownProfileError
from kubeplex.placement.llm import model
from kubeplex.placement.lora import with_adapters
from kubeplex.placement.planner import ModelDemand, PoolSpec
from kubeplex.placement.planner.workload import DEFAULT_LENGTH_CV

if TYPE_CHECKING:
    from kubeplex.api import GPUPool, ModelService

__all__ = ["demand_from_service", "pool_from_resource", "service_key", "slo_target"]


def service_key(service: ModelService) -> str:
    """``namespace/name``: how placements name a ModelService."""
    return f"{service.metadata.namespace or 'default'}/{service.metadata.name}"


def _degree(value: int | str, what: str, key: str) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, int) and value >= 1:
        return value
    raise PlacementError(f"{key}: spec.parallelism.{what} must be 'auto' or a power of two")


def slo_target(percentile: float, attainment: float | None) -> float:
    """The one rule for ``spec.slo.percentile`` and ``spec.slo.attainment``: the fraction of
    requests that must meet every target. "pP TTFT within ttftSeconds" asks P% of requests to
    start in time and ``attainment`` asks that fraction to meet every target, so planning for
    the larger of the two meets both (an unset ``attainment`` is ``percentile / 100``)."""
    return max(percentile / 100, attainment or 0.0)


def demand_from_service(service: ModelService) -> ModelDemand:
    """The planner's view of a ModelService (its ``spec.workload`` is the expected load)."""
    key = service_key(service)
    spec = service.spec
    if spec.model.profile is None:
        raise UnknownProfileError(
            f"{key}: spec.model.profile is not set; the planner needs a model shape "
            f"(e.g. llama-3.1-8b) to predict its latency and memory")
    return ModelDemand(
        name=key,
        # LoRA adapter slots take GPU memory like weights (kubeplex.placement.lora).
        model=with_adapters(model(spec.model.profile), (a.rank for a in spec.adapters)),
        arrival_rate=spec.workload.requests_per_second,
        cv=spec.workload.burstiness,
        prompt_tokens=spec.workload.prompt_tokens,
        output_tokens=spec.workload.output_tokens,
        ttft_slo_s=spec.slo.ttft_seconds,
        tpot_slo_s=spec.slo.tpot_seconds,
        target_attainment=slo_target(spec.slo.percentile, spec.slo.attainment),
        min_replicas=spec.scaling.min_replicas,
        max_replicas=spec.scaling.max_replicas,
        tp=_degree(spec.parallelism.tensor, "tensor", key),
        pp=_degree(spec.parallelism.pipeline, "pipeline", key),
        max_model_len=spec.model.max_model_len,
        colocation_key=service.metadata.namespace or "default",  # a pod is namespaced
        prompt_cv=_spread(spec.workload.prompt_tokens_cv),
        output_cv=_spread(spec.workload.output_tokens_cv),
    )


def _spread(declared: float | None) -> float:
    """A declared length coefficient of variation, or the planner's default when unset."""
    return DEFAULT_LENGTH_CV if declared is None else declared


def pool_from_resource(pool: GPUPool, nodes: int | None = None) -> PoolSpec:
    """The planner's view of a GPUPool. ``nodes``: the ready nodes (the operator knows them);
    without it, as many as ``maxGPUs`` needs (one node if unset)."""
    spec = pool.spec
    if nodes is None:
        nodes = max(1, math.ceil((spec.max_gpus or spec.gpus_per_node) / spec.gpus_per_node))
    return PoolSpec(spec.gpu.spec(), nodes, spec.gpus_per_node, spec.max_gpus,
                    pool.metadata.name)
