"""The AlpaServe reference experiment as data: build a case, run one policy, sweep a knob.

Pure: the caller (``kubeplex bench placement``) times the solve and writes files. The
reference experiment is 8 GPUs, 16 models of ``alpa-bert-1.3b``, total rate 32 req/s split by
a power law, cv 4, SLO 5x the single-GPU latency, 200 s, placement optimized on the same
workload it is scored on, scored without the first and last 10 s of requests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from kubeplex.placement.alpaserve.profiles import (
    ALPA_REFERENCE_BUDGET_BYTES,
    ModelProfile,
    model_profile,
)
from kubeplex.placement.alpaserve.search import (
    AlpaPlacement,
    Cluster,
    alpaserve_search,
    clockwork_plus,
    selective_replication,
)
from kubeplex.placement.alpaserve.simulator import SimResult, simulate
from kubeplex.placement.errors import PlacementError
from kubeplex.placement.workload import Workload, power_law_rates, synthetic_workload

__all__ = [
    "POLICIES",
    "SWEEPS",
    "AlpaCase",
    "PolicyName",
    "SweepName",
    "build_case",
    "result_json",
    "run_policy",
    "sweep_cases",
]

PolicyName = Literal["alpaserve", "sr", "clockwork"]
SweepName = Literal["rate", "cv", "slo"]
POLICIES: tuple[PolicyName, ...] = ("alpaserve", "clockwork", "sr")
#: Sweep points spanning the issue's ranges (rate 8..128, cv 0.5..8, slo_scale 1.5..12); the
#: rate sweep goes on to 256 req/s, where the best group size drops to one GPU.
SWEEPS: dict[SweepName, tuple[float, ...]] = {
    "rate": (8, 16, 32, 48, 64, 96, 128, 192, 256),
    "cv": (0.5, 1, 2, 3, 4, 6, 8),
    "slo": (1.5, 2, 3, 5, 8, 12),
}


@dataclass(frozen=True)
class AlpaCase:
    """The knobs of ``kubeplex bench placement`` (defaults: the reference experiment)."""

    profile: str = "alpa-bert-1.3b"
    gpus: int = 8
    models: int = 16
    rate: float = 32.0
    cv: float = 4.0
    slo_scale: float = 5.0
    duration: float = 200.0
    seed: int = 0
    memory_budget_bytes: float = ALPA_REFERENCE_BUDGET_BYTES

    def __post_init__(self) -> None:
        checks = ((self.gpus >= 1, f"--gpus must be >= 1, got {self.gpus}"),
                  (self.models >= 1, f"--models must be >= 1, got {self.models}"),
                  (self.rate >= 0, f"--rate must be >= 0 req/s, got {self.rate}"),
                  (self.cv > 0, f"--cv must be > 0, got {self.cv}"),
                  (self.slo_scale > 0, f"--slo-scale must be > 0, got {self.slo_scale}"),
                  (self.duration > 0, f"--duration must be > 0 s, got {self.duration}"))
        for ok, message in checks:
            if not ok:
                raise PlacementError(message)


def build_case(case: AlpaCase) -> tuple[list[ModelProfile], Cluster, Workload]:
    base = model_profile(case.profile)
    profiles = [base.renamed(f"{base.name}-{i}") for i in range(case.models)]
    slo = case.slo_scale * base.single_gpu_latency
    workload = synthetic_workload(power_law_rates(case.rate, case.models), [case.cv] * case.models,
                                  [slo] * case.models, case.duration, case.seed)
    return profiles, Cluster(case.gpus, case.memory_budget_bytes), workload


def run_policy(policy: PolicyName, profiles: list[ModelProfile], cluster: Cluster,
               workload: Workload) -> tuple[AlpaPlacement, SimResult]:
    """Solve with ``policy`` on ``workload`` and simulate the result on the same workload."""
    if policy == "clockwork":
        return clockwork_plus(profiles, cluster, workload)
    if policy == "sr":
        placement = selective_replication(profiles, cluster, workload)
    elif policy == "alpaserve":
        placement = alpaserve_search(profiles, cluster, workload)
    else:
        raise PlacementError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    return placement, simulate(placement.groups, profiles, workload)


def result_json(placement: AlpaPlacement, result: SimResult, workload: Workload,
                profiles: list[ModelProfile], solve_seconds: float) -> dict[str, object]:
    """The issue's JSON shape: policy, attainment, groups (op, pp, models), solve_seconds."""
    return {
        "policy": placement.policy,
        "attainment": round(result.attainment_after_warmup(workload), 6),
        "groups": [{"op": g.config.op, "pp": g.config.pp,
                    "models": [profiles[m].name for m in g.models]} for g in placement.groups],
        "solve_seconds": round(solve_seconds, 4),
    }


def sweep_cases(base: AlpaCase, sweep: SweepName) -> list[tuple[float, AlpaCase]]:
    if sweep not in SWEEPS:
        raise PlacementError(f"unknown sweep {sweep!r}; known: {', '.join(SWEEPS)}")
    cases = []
    for x in SWEEPS[sweep]:
        if sweep == "rate":
            cases.append((x, replace(base, rate=float(x))))
        elif sweep == "cv":
            cases.append((x, replace(base, cv=float(x))))
        else:
            cases.append((x, replace(base, slo_scale=float(x))))
    return cases
