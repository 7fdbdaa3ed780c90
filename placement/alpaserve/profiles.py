"""Profiled models for the AlpaServe-faithful mode: per parallel config, per-stage latency and
per-GPU weight bytes (what AlpaServe's artifact measures with Alpa and stores in
``profiling_results.pkl``).

A :class:`ParallelConfig` is ``op`` (intra-operator / tensor degree) x ``pp`` (pipeline
stages). A :class:`ModelProfile` maps the configs that were profiled to a
:class:`StageProfile`; a config without a profile cannot host the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from kubeplex.placement.errors import PlacementError, UnknownProfileError

__all__ = [
    "ALPA_REFERENCE_BUDGET_BYTES",
    "GB",
    "GIB",
    "PROFILES",
    "ModelProfile",
    "ParallelConfig",
    "StageProfile",
    "model_profile",
]

GB = 1e9
GIB = float(1024**3)


@dataclass(frozen=True, order=True)
class ParallelConfig:
    """``op`` GPUs per stage (tensor / intra-op degree) times ``pp`` pipeline stages."""

    op: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        if self.op < 1 or self.pp < 1:
            raise PlacementError(f"parallel degrees must be >= 1, got op={self.op} pp={self.pp}")

    @property
    def gpus(self) -> int:
        return self.op * self.pp

    def __str__(self) -> str:
        return f"{self.op}x{self.pp}"


@dataclass(frozen=True)
class StageProfile:
    """One profiled parallel config: latency of each stage (batch size 1) and the weight bytes
    each GPU of that stage holds."""

    stage_latencies: tuple[float, ...]
    stage_weight_bytes: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.stage_latencies or len(self.stage_latencies) != len(self.stage_weight_bytes):
            raise PlacementError("a stage profile needs one latency and one weight size per stage")
        if min(self.stage_latencies) <= 0 or min(self.stage_weight_bytes) < 0:
            raise PlacementError("stage latencies must be > 0 and weight sizes >= 0")

    @property
    def max_stage_weight_bytes(self) -> float:
        """Per-GPU memory the model takes in a group of this config (its biggest stage)."""
        return max(self.stage_weight_bytes)


@dataclass(frozen=True)
class ModelProfile:
    """A model's profiled configs; ``configs`` is a tuple of (config, profile) pairs."""

    name: str
    configs: tuple[tuple[ParallelConfig, StageProfile], ...]
    # Lookups derived from ``configs`` (not part of the value).
    _by_config: dict[ParallelConfig, StageProfile] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _scaled: dict[tuple[ParallelConfig, float], tuple[float, ...] | None] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_config.update(self.configs)
        for config, stage in self.configs:
            if len(stage.stage_latencies) != config.pp:
                raise PlacementError(
                    f"profile {self.name!r}: config {config} has {config.pp} stages but "
                    f"{len(stage.stage_latencies)} stage latencies")

    def get(self, config: ParallelConfig) -> StageProfile | None:
        return self._by_config.get(config)

    def simulated_stages(self, config: ParallelConfig, factor: float
                         ) -> tuple[float, ...] | None:
        """Stage latencies of ``config`` times ``factor`` (None: not profiled), remembered:
        the search asks for the same ones on every simulation."""
        key = (config, factor)
        if key not in self._scaled:
            stage = self.get(config)
            self._scaled[key] = None if stage is None else tuple(
                latency * factor for latency in stage.stage_latencies)
        return self._scaled[key]

    @property
    def single_gpu_latency(self) -> float:
        """Latency on one GPU (op=1, pp=1): AlpaServe's SLO unit."""
        stage = self.get(ParallelConfig(1, 1))
        if stage is None:
            raise PlacementError(f"profile {self.name!r} has no single-GPU (1x1) entry")
        return sum(stage.stage_latencies)

    def renamed(self, name: str) -> ModelProfile:
        return ModelProfile(name, self.configs)


def _even_split(name: str, weight_bytes: float,
                latencies: Mapping[int, tuple[float, ...]]) -> ModelProfile:
    """A profile whose weights split evenly over the pipeline stages (op = 1 only)."""
    return ModelProfile(name, tuple(
        (ParallelConfig(1, pp), StageProfile(stages, (weight_bytes / pp,) * pp))
        for pp, stages in latencies.items()))


PROFILES: Mapping[str, ModelProfile] = MappingProxyType({
    # AlpaServe artifact, BERT-1.3B on V100 (profiling_results.pkl, batch size 1, op = 1):
    # stage latencies in seconds per pipeline depth; 2.6 GB of weights split evenly.
    "alpa-bert-1.3b": _even_split("alpa-bert-1.3b", 2.6 * GB, {
        1: (0.099,),
        2: (0.051, 0.052),
        4: (0.028, 0.027, 0.027, 0.029),
        8: (0.015, 0.014, 0.014, 0.014, 0.014, 0.014, 0.014, 0.016),
    }),
    # AlpaServe artifact's unit-test profile "test-2GB-100ms" (alpa_serve/profiling.py):
    # 2 GiB of weights, 100 ms on one GPU.
    "test-2gb-100ms": _even_split("test-2gb-100ms", 2 * GIB, {
        1: (0.100,),
        2: (0.051, 0.051),
        4: (0.026, 0.026, 0.026, 0.026),
    }),
})

#: Per-GPU memory budget of the AlpaServe reference experiment (V100 16 GB minus runtime).
ALPA_REFERENCE_BUDGET_BYTES = 13 * GIB


def model_profile(name: str) -> ModelProfile:
    """Look a built-in profile up by name (case-insensitive); the error lists the known names."""
    for key, prof in PROFILES.items():
        if key.lower() == name.lower():
            return prof
    raise UnknownProfileError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
