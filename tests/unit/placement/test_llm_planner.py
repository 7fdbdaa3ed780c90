"""LLM mode: the continuous-batching simulator, the planner, incremental re-planning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kubeplex.placement.errors import DoesNotFitError, PlacementError
from kubeplex.placement.hardware import gpu
from kubeplex.placement.llm import model, profile
from kubeplex.placement.planner import (
    MEMORY_LIMIT,
    ModelDemand,
    PoolSpec,
    plan,
    replication_plan,
)
from kubeplex.placement.planner.simulator import (
    EngineSpec,
    LLMGroupSpec,
    ModelSLO,
    simulate_llm,
)
from kubeplex.placement.planner.workload import LLMWorkload
from kubeplex.placement.workload import Workload

H100 = gpu("H100-80GB")


def _wl(arrivals: list[float], models: list[int], n_models: int, prompt: int | list[int],
        output: int | list[int]) -> LLMWorkload:
    n = len(arrivals)
    requests = Workload(np.array(arrivals), np.array(models, dtype=np.int64), np.ones(n),
                        n_models)
    return LLMWorkload(requests, np.broadcast_to(np.array(prompt, dtype=np.int64), n).copy(),
                       np.broadcast_to(np.array(output, dtype=np.int64), n).copy())


def test_a_lone_request_takes_prefill_then_decode_steps() -> None:
    prof = profile("llama-3.1-8b", "H100-80GB")
    res = simulate_llm([LLMGroupSpec((EngineSpec(0, prof, 100_000),))], [ModelSLO(10.0)],
                       _wl([1.0], [0], 1, 512, 3))
    assert res.ttft[0] == pytest.approx(prof.prefill_seconds(512))
    assert res.tpot[0] == pytest.approx(prof.decode_step_seconds(1, 513))
    assert res.good.all()


def test_admission_waits_for_kv_capacity() -> None:
    prof = profile("llama-3.1-8b", "H100-80GB")
    slo = [ModelSLO(10.0)]
    one_fits = [LLMGroupSpec((EngineSpec(0, prof, 111),))]
    both_fit = [LLMGroupSpec((EngineSpec(0, prof, 222),))]
    wl = _wl([0.0, 0.0], [0, 0], 1, 100, 11)
    serial, batched = simulate_llm(one_fits, slo, wl), simulate_llm(both_fit, slo, wl)
    # With room for one request the second waits for the first's 10 decode steps.
    assert serial.ttft[1] > serial.ttft[0] + 10 * prof.decode_step_seconds(1, 101)
    assert batched.ttft[1] == pytest.approx(batched.ttft[0])


def test_co_located_engines_time_share_their_group() -> None:
    prof = profile("llama-3.1-8b", "H100-80GB")
    shapes = [ModelSLO(10.0), ModelSLO(10.0)]
    wl = _wl([0.0, 0.0], [0, 1], 2, 256, 50)
    alone = simulate_llm([LLMGroupSpec((EngineSpec(0, prof, 10_000),)),
                          LLMGroupSpec((EngineSpec(1, prof, 10_000),))], shapes, wl)
    shared = simulate_llm([LLMGroupSpec((EngineSpec(0, prof, 10_000),
                                         EngineSpec(1, prof, 10_000)))], shapes, wl)
    assert shared.tpot[0] == pytest.approx(2 * alone.tpot[0], rel=0.01)


def test_requests_go_to_the_least_loaded_replica_and_slo_judges_tpot() -> None:
    prof = profile("llama-3.1-8b", "H100-80GB")
    slo = ModelSLO(10.0, tpot_s=1e-6)  # no engine decodes that fast
    groups = [LLMGroupSpec((EngineSpec(0, prof, 10_000),)),
              LLMGroupSpec((EngineSpec(0, prof, 10_000),))]
    res = simulate_llm(groups, [slo], _wl([0.0, 0.0], [0, 0], 1, 128, 20))
    assert res.group_requests.tolist() == [1, 1]
    assert not res.good.any()


def _demand(name: str, shape: str = "llama-3.1-8b", rate: float = 2.0, **kw: object
            ) -> ModelDemand:
    fields = {"cv": 2.0, "prompt_tokens": 512, "output_tokens": 64, "ttft_slo_s": 1.0,
              "tpot_slo_s": 0.1, **kw}
    return ModelDemand(name, model(shape), rate, **fields)  # type: ignore[arg-type]


def _check_well_formed(placement: object, pool: PoolSpec) -> None:
    seen: set[tuple[int, int]] = set()
    for g in placement.groups:  # type: ignore[attr-defined]
        assert len(g.gpu_indices) == g.tp * g.pp
        assert all(0 <= i < pool.gpus_per_node for i in g.gpu_indices)  # one node
        assert not seen & {(g.node, i) for i in g.gpu_indices}
        seen |= {(g.node, i) for i in g.gpu_indices}
        assert g.memory_used <= MEMORY_LIMIT + 1e-3
        assert all(m.kv_capacity_tokens > 0 for m in g.models)


def test_planner_co_locates_light_models_and_meets_their_targets() -> None:
    pool = PoolSpec(H100, nodes=2, gpus_per_node=4, name="h100")
    demands = [_demand(f"m{i}", rate=0.5) for i in range(4)]
    placement = plan(pool, demands)
    _check_well_formed(placement, pool)
    assert all(o.met for o in placement.models)
    assert max(len(g.models) for g in placement.groups) > 1  # statistical multiplexing
    assert placement.free_gpus > 0  # SLOs met without every GPU
    assert "meets target 99.0%" in placement.explanation


def test_fill_uses_every_gpu() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=4)
    placement = plan(pool, [_demand("a"), _demand("b")], fill=True)
    _check_well_formed(placement, pool)
    assert placement.free_gpus == 0


def test_a_70b_model_gets_tensor_parallelism_and_fixed_shapes_are_kept() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=8)
    auto = plan(pool, [_demand("big", "llama-3.1-70b", rate=0.5)])
    assert all(g.tp >= 2 for g in auto.groups)
    fixed = plan(pool, [_demand("big", "llama-3.1-70b", rate=0.5, tp=8)])
    assert {g.tp for g in fixed.groups} == {8}


def test_impossible_memory_and_bad_pools_are_refused() -> None:
    with pytest.raises(DoesNotFitError, match=r"'big' \(llama-3.1-70b\) fits no group of at "
                                              r"most 1 L4 GPUs on one node"):
        plan(PoolSpec(gpu("L4"), nodes=4, gpus_per_node=1), [_demand("big", "llama-3.1-70b")])
    with pytest.raises(PlacementError, match="zero usable GPUs"):
        PoolSpec(H100, nodes=1, gpus_per_node=8, max_gpus=0)
    with pytest.raises(PlacementError, match=r"arrival rate must be >= 0 req/s"):
        _demand("neg", rate=-1.0)
    with pytest.raises(PlacementError, match="unique"):
        plan(PoolSpec(H100, 1, 1), [_demand("a"), _demand("a")])


def test_incremental_replan_moves_at_most_k_groups() -> None:
    pool = PoolSpec(H100, nodes=2, gpus_per_node=4)
    demands = [_demand("a", rate=2.0), _demand("b", rate=1.0)]
    before = plan(pool, demands)
    hotter = [dataclasses.replace(demands[0], arrival_rate=40.0), demands[1]]
    for k in (0, 1):
        after = plan(pool, hotter, current=before, max_moves=k)
        _check_well_formed(after, pool)
        assert len(after.moved) + len(after.removed) <= k
        unchanged = {g.id: g for g in after.groups if g.id not in after.moved}
        for g in before.groups:
            if g.id in unchanged:
                assert [m.name for m in unchanged[g.id].models] == [m.name for m in g.models]
                assert unchanged[g.id].gpu_indices == g.gpu_indices
    unbounded = plan(pool, hotter, current=before)
    assert unbounded.replicas("a") > before.replicas("a")
    assert unbounded.moved


def test_incremental_replan_drops_models_no_longer_demanded() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=2)
    before = plan(pool, [_demand("a"), _demand("b")])
    after = plan(pool, [_demand("a")], current=before)
    assert after.replicas("b") == 0
    assert all(m.name == "a" for g in after.groups for m in g.models)
    assert after.moved or after.removed


def test_replication_baseline_hosts_one_model_per_group() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=4)
    placement = replication_plan(pool, [_demand("a"), _demand("b")])
    _check_well_formed(placement, pool)
    assert all(len(g.models) == 1 for g in placement.groups)
    assert placement.free_gpus == 0


def test_a_model_capped_at_zero_replicas_is_reported_as_missing() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=1)
    placement = plan(pool, [_demand("a"), _demand("capped", max_replicas=0)])
    capped = placement.outcome("capped")
    assert (capped.replicas, capped.attainment, capped.met) == (0, 0.0, False)
    assert capped.p95_ttft_s == float("inf")
    assert "capped: 0 replicas, 0.0% (0.0%-0.0%) within TTFT <= 1 s, TPOT <= 0.1 s (MISSES" in \
        placement.explanation


def test_incremental_replan_scales_down_and_to_zero_within_the_budget() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=4)
    busy = [_demand("a", rate=20.0, min_replicas=3), _demand("b", rate=1.0)]
    before = plan(pool, busy)
    assert before.replicas("a") == 3
    quiet = [dataclasses.replace(busy[0], arrival_rate=1.0, min_replicas=1),
             dataclasses.replace(busy[1], arrival_rate=0.0)]
    after = plan(pool, quiet, current=before)
    assert after.replicas("a") < before.replicas("a")
    assert after.replicas("b") == 0  # idle, min_replicas 0: scaled to zero
    assert after.outcome("a").met
    assert after.free_gpus > before.free_gpus
    frozen = plan(pool, quiet, current=before, max_moves=0)
    assert [(g.id, [m.name for m in g.models]) for g in frozen.groups] == \
        [(g.id, [m.name for m in g.models]) for g in before.groups]


def test_pool_capacity_fills_nodes_in_order_up_to_max_gpus() -> None:
    pool = PoolSpec(H100, nodes=3, gpus_per_node=8, max_gpus=12)
    assert pool.node_capacity() == [8, 4, 0]
    placement = plan(pool, [_demand("a", rate=1.0, min_replicas=2)])
    assert all(g.node < 2 for g in placement.groups)
    assert placement.free_gpus == 12 - sum(g.gpus for g in placement.groups)



def _keys_of(placement: object) -> list[set[str]]:
    return [{m.name.split("/", 1)[0] for m in g.models}
            for g in placement.groups]  # type: ignore[attr-defined]


def test_models_with_different_colocation_keys_never_share_a_group() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=4)
    names = ["team-a/x", "team-b/y", "team-a/z", "team-b/w"]
    light = [_demand(n, rate=0.5) for n in names]
    mixed = plan(pool, light)  # without keys: light models of both teams are packed together
    assert any(len(keys) > 1 for keys in _keys_of(mixed))
    keyed = [dataclasses.replace(d, colocation_key=d.name.split("/", 1)[0]) for d in light]
    placement = plan(pool, keyed)
    _check_well_formed(placement, pool)
    assert all(len(keys) == 1 for keys in _keys_of(placement))
    assert max(len(g.models) for g in placement.groups) > 1  # same key: still co-located
    assert all(o.met for o in placement.models)
    # Incremental re-planning (more load, new replicas) keeps the rule too.
    hotter = [dataclasses.replace(d, arrival_rate=6.0) for d in keyed]
    after = plan(pool, hotter, current=placement)
    assert all(len(keys) == 1 for keys in _keys_of(after))
    assert after.replicas("team-a/x") >= placement.replicas("team-a/x")
