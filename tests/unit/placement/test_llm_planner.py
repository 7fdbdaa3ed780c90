"""LLM mode: the continuous-batching simulator, the planner, incremental re-planning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kubeplex.placement.errors import DoesNotFitError, PlacementError, UnplacedModelsError
from kubeplex.placement.hardware import gpu
from kubeplex.placement.llm import model, profile
from kubeplex.placement.planner import (
    MEMORY_LIMIT,
    LengthModel,
    ModelDemand,
    PoolSpec,
    evaluate,
    plan,
    planning_workload,
    replication_plan,
)
from kubeplex.placement.planner.simulator import (
    MAX_NUM_BATCHED_TOKENS,
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


# ---- a planner that tells the truth -----------------------------------------------------------

def test_prompts_admitted_together_cost_their_own_prefills_not_one_long_sequence() -> None:
    prof = profile("llama-3.1-8b", "H100-80GB")
    res = simulate_llm([LLMGroupSpec((EngineSpec(0, prof, 100_000),))], [ModelSLO(10.0)],
                       _wl([0.0, 0.0], [0, 0], 1, 4096, 1))
    assert res.ttft.tolist() == pytest.approx([2 * prof.prefill_seconds(4096)] * 2)
    assert res.ttft[0] < prof.prefill_seconds(8192)  # attention is not (2 x 4096)^2


def test_long_prompts_are_chunked_over_steps_of_the_token_budget() -> None:
    prof = profile("llama-3.1-8b", "H100-80GB")
    n = MAX_NUM_BATCHED_TOKENS
    res = simulate_llm([LLMGroupSpec((EngineSpec(0, prof, 100_000),))], [ModelSLO(10.0)],
                       _wl([0.0, 0.0], [0, 0], 1, [n, n + 100], [1, 1]))
    # The first prompt fills step one; the second waits a step, then its two chunks cost
    # exactly its own prefill (the chunks' costs telescope).
    assert res.ttft[0] == pytest.approx(prof.prefill_seconds(n))
    assert res.ttft[1] == pytest.approx(prof.prefill_seconds(n) + prof.prefill_seconds(n + 100))
    lone = simulate_llm([LLMGroupSpec((EngineSpec(0, prof, 100_000),))], [ModelSLO(10.0)],
                        _wl([0.0], [0], 1, [3 * n], [1]))
    assert lone.ttft[0] == pytest.approx(prof.prefill_seconds(3 * n))


def test_requests_of_different_lengths_finish_in_their_own_order() -> None:
    prof = profile("llama-3.1-8b", "H100-80GB")
    res = simulate_llm([LLMGroupSpec((EngineSpec(0, prof, 100_000),))], [ModelSLO(10.0)],
                       _wl([0.0, 0.0], [0, 0], 1, [128, 128], [200, 20]))
    step = prof.decode_step_seconds(2, 129)
    assert res.tpot[1] == pytest.approx(step, rel=0.05)  # the short one leaves first
    assert res.tpot[0] < res.tpot[1] * 1.01  # the long one ends with a batch of one


def test_lengths_are_drawn_from_the_declared_or_observed_distribution() -> None:
    lengths = LengthModel(1000, 200, prompt_cv=1.0, output_cv=0.5, max_model_len=4096)
    prompts, outputs = lengths.draw(np.random.default_rng(1), 20_000)
    assert prompts.mean() == pytest.approx(1000, rel=0.1)  # clipping takes a little off
    assert prompts.std() / prompts.mean() == pytest.approx(0.9, abs=0.15)
    assert outputs.std() / outputs.mean() == pytest.approx(0.5, abs=0.05)
    assert (prompts + outputs).max() <= 4096 and prompts.min() >= 1 and outputs.min() >= 1
    exact = LengthModel(1000, 200, prompt_cv=0.0, output_cv=0.0).draw(
        np.random.default_rng(1), 10)
    assert set(exact[0].tolist()) == {1000} and set(exact[1].tolist()) == {200}
    seen = LengthModel(1, 1, observed=((10, 5), (300, 7))).draw(np.random.default_rng(1), 200)
    assert set(zip(seen[0].tolist(), seen[1].tolist(), strict=True)) == {(10, 5), (300, 7)}
    demand = _demand("a", prompt_cv=0.0, output_cv=0.0)
    sample = planning_workload([demand, _demand("b")])
    mine = sample.model_ids == 0
    assert set(sample.prompt_tokens[mine].tolist()) == {512}
    assert len(set(sample.prompt_tokens[~mine].tolist())) > 10


def test_attainment_is_predicted_on_held_out_samples_and_holds_on_fresh_ones() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=8)
    demands = [_demand("a", rate=12.0, cv=3.0), _demand("b", rate=3.0, cv=3.0)]
    placement = plan(pool, demands)
    prediction = placement.prediction
    assert prediction is not None and prediction.samples == 5
    assert prediction.low <= placement.attainment <= prediction.high
    assert "held-out samples" in placement.explanation
    fresh = [evaluate(pool, demands, placement, planning_workload(demands, 500 + k)).attainment
             for k in range(5)]
    assert abs(float(np.median(fresh)) - placement.attainment) <= 0.02
    for m, outcome in enumerate(placement.models):
        assert outcome.met
        assert outcome.low <= outcome.attainment <= outcome.high
        model_fresh = [float(evaluate(pool, demands, placement, planning_workload(
            demands, 500 + k)).model_attainment[m]) for k in range(5)]
        assert float(np.median(model_fresh)) >= outcome.target


def _crowd(n: int, hot: float = 0.0) -> list[ModelDemand]:
    return [_demand(f"m{i:02d}", rate=hot if i == 0 and hot else 0.2) for i in range(n)]


def test_every_model_gets_a_replica_before_any_gets_a_second() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=4)
    # 16 small models on 4 GPUs: each GPU holds 4 of them, one hot model would take more.
    placement = plan(pool, _crowd(16, hot=60.0), allow_unplaced=True)
    assert all(o.replicas >= 1 for o in placement.models)  # the hot model was held back
    assert not placement.unplaced


def test_a_model_left_without_a_replica_is_an_error_naming_it_unless_allowed() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=4, name="small")
    crowd = _crowd(20)  # room for 16
    with pytest.raises(UnplacedModelsError, match=r"pool 'small': no room for m\d\d") as err:
        plan(pool, crowd)
    assert len(err.value.models) == 4 and err.value.pool == "small"
    assert isinstance(err.value, DoesNotFitError)  # what the control layer calls Degraded
    allowed = plan(pool, crowd, allow_unplaced=True)
    assert set(allowed.unplaced) == set(err.value.models)
    assert sum(o.replicas == 0 for o in allowed.models) == 4
    assert "left without a replica (allowed)" in allowed.explanation


def test_component_outcomes_match_one_whole_simulation() -> None:
    from kubeplex.placement.planner.search import _Problem, _Slot

    demands = [_demand(f"m{i}", rate=1.0 + i) for i in range(5)]
    pool = PoolSpec(H100, nodes=1, gpus_per_node=4)
    problem = _Problem(pool, demands, planning_workload(demands))
    rng = np.random.default_rng(3)
    for _ in range(6):
        slots = [_Slot(f"g{g}", 0, (g,), 1, 1, sorted(rng.choice(5, size=rng.integers(0, 3),
                                                                replace=False).tolist()))
                 for g in range(4)]
        parts = problem.simulate(slots)
        identity = {m: m for m in range(5)}
        whole = simulate_llm([problem.engines(1, 1, s.models, identity) for s in slots],
                             problem.slos, problem.workload)
        assert parts.model_good == whole.model_good.tolist()
        assert parts.group_requests == whole.group_requests.tolist()
        assert parts.attainment == pytest.approx(whole.attainment)


def test_a_new_model_takes_a_replica_from_a_model_that_has_two() -> None:
    pool = PoolSpec(H100, nodes=1, gpus_per_node=2)
    hot = _demand("hot", rate=8.0, min_replicas=2)
    small = [_demand(f"s{i}", rate=0.2) for i in range(6)]
    before = plan(pool, [hot, *small])
    assert before.replicas("hot") == 2  # 2 GPUs hold 8 such models: room for a second one
    later = [dataclasses.replace(hot, min_replicas=1), *small, _demand("late", rate=0.2)]
    after = plan(pool, later, current=before)
    assert after.replicas("late") == 1 and after.replicas("hot") == 1
    assert not after.unplaced and after.moved
