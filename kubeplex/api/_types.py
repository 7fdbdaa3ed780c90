"""Typed, frozen views of kubeplex's resources, parsed from validated and defaulted objects.

The CRDs in ``crds/`` are the contract; these dataclasses mirror their ``spec`` trees field by
field (snake_case here, camelCase there; a field's ``json`` metadata names an irregular key).
``tests/unit/test_api_types.py`` fails when the two drift apart. There are no defaults here:
objects are parsed after :func:`~kubeplex.api._validate.apply_defaults`, so the CRD's defaults
are the only ones.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union, cast

from kubeplex.api.errors import ApiError
from kubeplex.placement.errors import UnknownProfileError
from kubeplex.placement.hardware import GPUS, GPUSpec

__all__ = [
    "SLO",
    "Adapter",
    "GPUPool",
    "GPUPoolSpec",
    "GPUSource",
    "ModelService",
    "ModelServiceSpec",
    "ModelSource",
    "ObjectMeta",
    "Parallelism",
    "Scaling",
    "ServingGroup",
    "ServingGroupModel",
    "ServingGroupSpec",
    "Toleration",
    "WarmPoolPolicy",
    "Workload",
    "json_key",
    "parse_spec",
]

T = TypeVar("T")


def json_key(f: dataclasses.Field[Any]) -> str:
    """The CRD's name for a dataclass field."""
    if "json" in f.metadata:
        return str(f.metadata["json"])
    head, *rest = f.name.split("_")
    return head + "".join(part.title() for part in rest)


# ---- ModelService -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSource:
    uri: str
    served_name: str | None
    profile: str | None
    dtype: str
    max_model_len: int | None
    engine_args: tuple[str, ...]


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter served on the ModelService's base model under its own name."""

    name: str
    uri: str
    rank: int


@dataclass(frozen=True)
class SLO:
    ttft_seconds: float
    percentile: float
    tpot_seconds: float | None
    attainment: float | None


@dataclass(frozen=True)
class Scaling:
    min_replicas: int
    max_replicas: int
    replicas: int | None
    prewarm: int
    scale_to_zero_after_seconds: int
    target_queue_per_replica: int


@dataclass(frozen=True)
class Workload:
    requests_per_second: float
    burstiness: float
    prompt_tokens: int
    output_tokens: int
    prompt_tokens_cv: float | None = field(metadata={"json": "promptTokensCV"})
    output_tokens_cv: float | None = field(metadata={"json": "outputTokensCV"})


@dataclass(frozen=True)
class Parallelism:
    """Each degree is a power of two, or ``"auto"`` (placement chooses)."""

    tensor: int | str
    pipeline: int | str


@dataclass(frozen=True)
class ModelServiceSpec:
    model: ModelSource
    adapters: tuple[Adapter, ...]
    engine: str
    routing: str
    pool: str
    slo: SLO
    scaling: Scaling
    workload: Workload
    parallelism: Parallelism
    priority: int


# ---- GPUPool ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Toleration:
    key: str | None
    operator: str
    value: str | None
    effect: str | None
    toleration_seconds: int | None


@dataclass(frozen=True)
class GPUSource:
    product: str
    resource_name: str
    device_class_name: str | None  # DRA: GPUs come from ResourceClaims of this DeviceClass
    driver: str | None
    memory_gib: float | None = field(metadata={"json": "memoryGiB"})
    bf16_tflops: float | None = field(metadata={"json": "bf16TFLOPs"})
    hbm_gbps: float | None = field(metadata={"json": "hbmGBps"})
    interconnect: str | None
    interconnect_gbps: float | None = field(metadata={"json": "interconnectGBps"})

    @property
    def dra_driver(self) -> str | None:
        """The DRA driver publishing this pool's GPUs (None: the device plugin path)."""
        if self.device_class_name is None:
            return None
        return self.driver or self.device_class_name

    def spec(self) -> GPUSpec:
        """The GPU as the planner sees it: the catalogue entry, overridden by stated numbers."""
        base = GPUS.get(self.product)
        if base is None and None in (self.memory_gib, self.bf16_tflops, self.hbm_gbps):
            raise UnknownProfileError(
                f"GPU product {self.product!r} is not in the catalogue ({', '.join(GPUS)}); "
                "state memoryGiB, bf16TFLOPs and hbmGBps")
        return GPUSpec(
            name=self.product,
            memory_gib=_pick(self.memory_gib, base.memory_gib if base else None),
            bf16_tflops=_pick(self.bf16_tflops, base.bf16_tflops if base else None),
            hbm_gbps=_pick(self.hbm_gbps, base.hbm_gbps if base else None),
            interconnect=self.interconnect or (base.interconnect if base else "pcie"),
            interconnect_gbps=_pick(self.interconnect_gbps,
                                    base.interconnect_gbps if base else 32.0),
        )


def _pick(given: float | None, fallback: float | None) -> float:
    value = given if given is not None else fallback
    if value is None:  # unreachable after the check in GPUSource.spec
        raise ApiError("GPU spec is incomplete")
    return float(value)


@dataclass(frozen=True)
class WarmPoolPolicy:
    size: int | str
    gpus_per_pod: int
    preload_models: tuple[str, ...]
    image: str | None


@dataclass(frozen=True)
class GPUPoolSpec:
    node_selector: Mapping[str, str]
    tolerations: tuple[Toleration, ...]
    gpu: GPUSource
    gpus_per_node: int
    max_gpus: int | None = field(metadata={"json": "maxGPUs"})
    cost_per_gpu_hour: float | None = field(metadata={"json": "costPerGPUHour"})
    warm_pool: WarmPoolPolicy = field(metadata={"json": "warmPool"})


# ---- ServingGroup -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ServingGroupModel:
    model_service: str
    served_name: str | None
    memory_share: float
    sleeping: bool


@dataclass(frozen=True)
class ServingGroupSpec:
    pool: str
    node_name: str | None
    gpus: int
    tensor_parallel: int
    pipeline_parallel: int
    warm: bool
    models: tuple[ServingGroupModel, ...]


# ---- objects ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    generation: int | None
    uid: str | None

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> ObjectMeta:
        return cls(
            name=str(meta["name"]),
            namespace=meta.get("namespace"),
            labels=types.MappingProxyType(dict(meta.get("labels") or {})),
            annotations=types.MappingProxyType(dict(meta.get("annotations") or {})),
            generation=meta.get("generation"),
            uid=meta.get("uid"),
        )


@dataclass(frozen=True)
class ModelService:
    metadata: ObjectMeta
    spec: ModelServiceSpec

    @property
    def served_name(self) -> str:
        return self.spec.model.served_name or self.metadata.name

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """The names clients use for its LoRA adapters (in the ``model`` field)."""
        return tuple(a.name for a in self.spec.adapters)

    @property
    def key(self) -> str:
        """``namespace/name``, the identity used across kubeplex."""
        return f"{self.metadata.namespace or 'default'}/{self.metadata.name}"


@dataclass(frozen=True)
class GPUPool:
    metadata: ObjectMeta
    spec: GPUPoolSpec


@dataclass(frozen=True)
class ServingGroup:
    metadata: ObjectMeta
    spec: ServingGroupSpec


# ---- parsing ----------------------------------------------------------------------------------

@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def parse_spec(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from a (validated, defaulted) camelCase mapping."""
    hints = _hints(cast(Any, cls))
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        values[f.name] = _convert(hints[f.name], data.get(json_key(f)))
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value)
        return value  # e.g. int | str: kept as written
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return parse_spec(hint, value or {})
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        return tuple(_convert(item, v) for v in (value or ()))
    if origin in (Mapping, dict) or hint is Mapping:
        return types.MappingProxyType(dict(value or {}))
    if hint is float and isinstance(value, int):
        return float(value)
    return value
