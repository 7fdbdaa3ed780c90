"""The compiled simulator cores give exactly what the pure-Python reference cores give."""

from __future__ import annotations

import numpy as np
import pytest

from kubeplex.placement.alpaserve.profiles import ParallelConfig, model_profile
from kubeplex.placement.alpaserve.search import Cluster, alpaserve_search
from kubeplex.placement.alpaserve.simulator import GroupSpec, simulate
from kubeplex.placement.hardware import gpu
from kubeplex.placement.llm import model, profile
from kubeplex.placement.planner import ModelDemand, PoolSpec, plan
from kubeplex.placement.planner.costs import CostTables
from kubeplex.placement.planner.simulator import (
    EngineSpec,
    LLMGroupSpec,
    ModelSLO,
    simulate_llm,
)
from kubeplex.placement.planner.workload import LengthModel, draw_workload
from kubeplex.placement.workload import power_law_rates, synthetic_workload

SHAPES = [("llama-3.1-8b", 1), ("qwen-2.5-7b", 2), ("llama-3.1-8b", 4)]


def _random_llm_case(seed: int) -> tuple[list[LLMGroupSpec], list[ModelSLO], object]:
    rng = np.random.default_rng(seed)
    models = int(rng.integers(1, 5))
    groups = []
    for _ in range(int(rng.integers(1, 5))):
        name, tp = SHAPES[int(rng.integers(len(SHAPES)))]
        hosted = rng.choice(models, size=int(rng.integers(1, models + 1)), replace=False)
        # Some capacities are tight enough that admission waits, or a request never fits.
        groups.append(LLMGroupSpec(tuple(
            EngineSpec(int(m), profile(name, "H100-80GB", tp),
                       int(rng.choice([3_000, 20_000, 400_000]))) for m in hosted)))
    lengths = [LengthModel(int(rng.integers(16, 3000)), int(rng.integers(1, 300)),
                           float(rng.choice([0.0, 1.0, 2.0])), float(rng.choice([0.0, 1.0])))
               for _ in range(models)]
    workload = draw_workload(rng.uniform(0.5, 20, size=models).tolist(),
                             rng.choice([0.5, 1.0, 4.0], size=models).tolist(),
                             [1.0] * models, lengths, 30.0, seed)
    slos = [ModelSLO(float(rng.uniform(0.1, 2)), float(rng.choice([0.02, 0.1])))
            for _ in range(models)]
    return groups, slos, workload


@pytest.mark.parametrize("seed", range(12))
def test_compiled_llm_core_matches_the_reference(seed: int) -> None:
    groups, slos, workload = _random_llm_case(seed)
    tables = CostTables()
    ref = simulate_llm(groups, slos, workload, tables, "reference")  # type: ignore[arg-type]
    fast = simulate_llm(groups, slos, workload, tables, "compiled")  # type: ignore[arg-type]
    assert len(ref.ttft) > 0
    assert np.array_equal(ref.ttft, fast.ttft)
    assert np.array_equal(ref.tpot, fast.tpot)
    assert np.array_equal(ref.group_requests, fast.group_requests)
    assert ref.attainment == fast.attainment


@pytest.mark.parametrize("seed", range(12))
def test_compiled_alpaserve_core_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = model_profile("test-2gb-100ms")
    profiles = [base.renamed(f"m{i}") for i in range(6)]
    groups = [GroupSpec(ParallelConfig(1, int(pp)), tuple(sorted(rng.choice(
        6, size=int(rng.integers(0, 4)), replace=False).tolist())))
        for pp in rng.choice([1, 2, 4], size=int(rng.integers(1, 6)))]
    workload = synthetic_workload(power_law_rates(30, 6), [3.0] * 6,
                                  rng.uniform(0.12, 1.0, size=6).tolist(), 60.0, seed)
    ref, fast = (simulate(groups, profiles, workload, core)
                 for core in ("reference", "compiled"))
    assert np.array_equal(ref.good, fast.good)
    assert np.array_equal(ref.latency, fast.latency)
    assert np.array_equal(ref.group_requests, fast.group_requests)


def test_both_searches_choose_the_same_on_either_core() -> None:
    base = model_profile("alpa-bert-1.3b")
    profiles = [base.renamed(f"m{i}") for i in range(8)]
    workload = synthetic_workload(power_law_rates(16, 8), [4.0] * 8, [0.5] * 8, 60.0, 0)
    cluster = Cluster(4, 13 * 1024**3)
    ref = alpaserve_search(profiles, cluster, workload, "reference")
    fast = alpaserve_search(profiles, cluster, workload, "compiled")
    assert (ref.groups, ref.score) == (fast.groups, fast.score)

    pool = PoolSpec(gpu("H100-80GB"), nodes=1, gpus_per_node=4)
    demands = [ModelDemand(f"d{i}", model("llama-3.1-8b"), rate, cv=3.0, ttft_slo_s=0.5,
                           target_attainment=0.95)
               for i, rate in enumerate((8.0, 2.0, 0.5))]
    ref_plan = plan(pool, demands, core="reference")
    fast_plan = plan(pool, demands, core="compiled")
    assert ref_plan == fast_plan
