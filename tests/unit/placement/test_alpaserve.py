"""AlpaServe-faithful mode: the artifact's unit-level expectations, the simulator, the search."""

from __future__ import annotations

import numpy as np
import pytest

from kubeplex.placement.alpaserve import (
    Cluster,
    alpaserve_search,
    clockwork_plus,
    enumerate_group_configs,
    greedy_placement,
    latency_buckets,
    selective_replication,
)
from kubeplex.placement.alpaserve.profiles import (
    GIB,
    ModelProfile,
    ParallelConfig,
    StageProfile,
    model_profile,
)
from kubeplex.placement.alpaserve.simulator import FIXED_OVERHEAD_S, GroupSpec, simulate
from kubeplex.placement.errors import DoesNotFitError, PlacementError, UnknownProfileError
from kubeplex.placement.workload import (
    Workload,
    gamma_arrivals,
    power_law_rates,
    synthetic_workload,
)

# The artifact's gen_train_workload: at least 100 s and 30,000 samples, seeds 1234 + i.
TRAIN_SEED = 1234


def _train_workload(rate: float, cv: float, slo: float, models: int = 4) -> Workload:
    duration = max(100.0, 30000 / (rate * models))
    return synthetic_workload([rate] * models, [cv] * models, [slo] * models, duration,
                              TRAIN_SEED)


def _four_test_models() -> list[ModelProfile]:
    base = model_profile("test-2gb-100ms")
    return [base.renamed(f"m{i}") for i in range(4)]


def test_a_greedy_on_fixed_two_gpu_pipelines_hosts_every_model_twice() -> None:
    # AlpaServe test_model_parallelism: 4 GPUs, 4.5 GB, slo 1 s, rate 5, cv 1.
    groups = greedy_placement([ParallelConfig(1, 2)] * 2, _four_test_models(),
                              Cluster(4, 4.5 * GIB), _train_workload(5, 1, 1.0))
    assert [g.config.pp for g in groups] == [2, 2]
    assert [g.models for g in groups] == [(0, 1, 2, 3), (0, 1, 2, 3)]


def test_b_full_search_picks_one_four_stage_pipeline_for_bursty_load() -> None:
    # AlpaServe test_model_parallelism_search: 4 GPUs, 2.5 GB, slo 0.4 s, rate 4, cv 8.
    result = alpaserve_search(_four_test_models(), Cluster(4, 2.5 * GIB),
                              _train_workload(4, 8, 0.4))
    assert len(result.groups) == 1
    assert result.groups[0].config == ParallelConfig(1, 4)
    assert result.groups[0].models == (0, 1, 2, 3)
    assert "1 groups" in result.explanation


def test_selective_replication_places_every_model_twice() -> None:
    # AlpaServe test_selective_replication: 4 GPUs of 4.5 GB, four 2 GB models.
    result = selective_replication(_four_test_models(), Cluster(4, 4.5 * GIB),
                                   _train_workload(5, 1, 1.0))
    assert all(g.config == ParallelConfig(1, 1) for g in result.groups)
    for m in range(4):
        assert sum(m in g.models for g in result.groups) == 2


def _tiny(name: str = "x", stages: tuple[float, ...] = (0.1,)) -> ModelProfile:
    pp = len(stages)
    return ModelProfile(name, ((ParallelConfig(1, pp), StageProfile(stages, (1.0,) * pp)),))


def _workload(arrivals: list[float], models: list[int], slo: float, n_models: int) -> Workload:
    return Workload(np.array(arrivals), np.array(models, dtype=np.int64),
                    np.full(len(arrivals), slo), n_models)


def test_simulator_pipelines_requests_through_stages() -> None:
    stages = (0.05, 0.1)
    factor = 1 + 0.009 * 2
    wl = _workload([0.0, 0.0], [0, 0], 10.0, 1)
    res = simulate([GroupSpec(ParallelConfig(1, 2), (0,))], [_tiny(stages=stages)], wl)
    first = (0.05 + 0.1) * factor + FIXED_OVERHEAD_S
    # The second request enters stage 0 at 0.05*f, then waits for stage 1 (free at 0.15*f).
    second = (0.15 + 0.1) * factor + FIXED_OVERHEAD_S
    assert res.latency.tolist() == pytest.approx([first, second])
    assert res.good.all()


def test_simulator_drops_late_requests_without_using_capacity() -> None:
    lat = 0.1 * 1.009 + FIXED_OVERHEAD_S
    wl = _workload([0.0, 0.0, 0.0], [0, 0, 0], 1.5 * lat, 1)
    res = simulate([GroupSpec(ParallelConfig(1, 1), (0,))], [_tiny()], wl)
    # The 2nd would end at ~2x latency > SLO: dropped; the 3rd sees the same free GPU: dropped.
    assert res.good.tolist() == [True, False, False]
    assert res.group_requests.tolist() == [3]
    assert res.model_attainment.tolist() == pytest.approx([1 / 3])


def test_simulator_dispatches_to_the_group_that_frees_first() -> None:
    wl = _workload([0.0, 0.0], [0, 0], 1.0, 1)
    groups = [GroupSpec(ParallelConfig(1, 1), (0,)), GroupSpec(ParallelConfig(1, 1), (0,))]
    res = simulate(groups, [_tiny()], wl)
    assert res.group_requests.tolist() == [1, 1]
    assert res.latency[0] == pytest.approx(res.latency[1])


def test_unplaced_model_gets_no_service() -> None:
    wl = _workload([0.0, 1.0], [0, 1], 1.0, 2)
    res = simulate([GroupSpec(ParallelConfig(1, 1), (0,))], [_tiny(), _tiny("y")], wl)
    assert res.good.tolist() == [True, False]
    assert res.unserved.tolist() == [0.0, 1.0]


def test_warmup_skips_requests_by_count_at_both_ends() -> None:
    arrivals = [float(t) for t in range(100)]  # span 99 s, 100 requests
    wl = _workload(arrivals, [0] * 100, 1.0, 1)
    res = simulate([], [_tiny()], wl)
    good = res.good.copy()
    good[:] = True
    good[:5] = False  # int(10 / 99 * 100) = 10 skipped at each end: these do not count
    res2 = type(res)(good, res.latency, res.model_requests, res.model_good, res.group_requests)
    assert res2.attainment == pytest.approx(0.95)
    assert res2.attainment_after_warmup(wl) == 1.0


def test_gamma_arrivals_match_the_requested_rate_and_are_reproducible() -> None:
    a = gamma_arrivals(20.0, 4.0, 1000.0, seed=3)
    b = gamma_arrivals(20.0, 4.0, 1000.0, seed=3)
    assert np.array_equal(a, b)
    assert len(a) / 1000.0 == pytest.approx(20.0, rel=0.15)
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() == pytest.approx(4.0, rel=0.3)
    # The legacy generator seeded with the model index, as in the artifact.
    rng = np.random.RandomState(3)
    assert a[0] == pytest.approx(rng.gamma(1 / 16, 16 / 20.0))


def test_power_law_rates_sum_to_the_total() -> None:
    rates = power_law_rates(32.0, 16)
    assert sum(rates) == pytest.approx(32.0)
    assert rates[0] / rates[3] == pytest.approx(2.0)  # (1/1)^-0.5 / (1/4)^-0.5


def test_enumerate_group_configs_follows_the_artifact() -> None:
    eight = {c[0] for c in enumerate_group_configs(8)}
    assert eight == {ParallelConfig(1, 1), ParallelConfig(1, 2), ParallelConfig(2, 1),
                     ParallelConfig(1, 4), ParallelConfig(2, 2), ParallelConfig(4, 1),
                     ParallelConfig(1, 8), ParallelConfig(2, 4), ParallelConfig(4, 2)}
    six = enumerate_group_configs(6)
    assert (ParallelConfig(1, 4), ParallelConfig(1, 2)) in six  # 4 + remainder 2 as pp=2
    assert all(sum(c.gpus for c in configs) == 6 for configs in six)


def test_reference_experiment_orders_policies() -> None:
    base = model_profile("alpa-bert-1.3b")
    profiles = [base.renamed(f"m{i}") for i in range(16)]
    slo = 5 * base.single_gpu_latency
    wl = synthetic_workload(power_law_rates(32, 16), [4.0] * 16, [slo] * 16, 200.0, 0)
    cluster = Cluster(8, 13 * GIB)
    alpa = simulate(alpaserve_search(profiles, cluster, wl).groups, profiles, wl)
    sr = simulate(selective_replication(profiles, cluster, wl).groups, profiles, wl)
    _, clockwork = clockwork_plus(profiles, cluster, wl)
    a, c, s = (r.attainment_after_warmup(wl) for r in (alpa, clockwork, sr))
    assert a >= c >= s
    assert a - s > 0.03  # model parallelism pays off at cv 4


def test_latency_buckets_split_dissimilar_models_and_search_still_places_all() -> None:
    fast, slow = model_profile("test-2gb-100ms"), model_profile("alpa-bert-1.3b")
    slow_x3 = ModelProfile("slow", tuple(
        (c, StageProfile(tuple(3 * t for t in s.stage_latencies), s.stage_weight_bytes))
        for c, s in slow.configs))
    profiles = [fast.renamed("a"), fast.renamed("b"), slow_x3]
    assert latency_buckets(profiles) == [[0, 1], [2]]
    slos = [5 * p.single_gpu_latency for p in profiles]
    wl = synthetic_workload([4, 4, 1], [2, 2, 2], slos, 200.0, 0)
    result = alpaserve_search(profiles, Cluster(4, 13 * GIB), wl)
    assert {m for g in result.groups for m in g.models} == {0, 1, 2}


def test_bad_input_is_refused_with_a_clear_message() -> None:
    with pytest.raises(UnknownProfileError, match="unknown profile 'nope'; known: alpa-bert"):
        model_profile("nope")
    with pytest.raises(PlacementError, match="at least one GPU"):
        Cluster(0, GIB)
    with pytest.raises(PlacementError, match=r"rate must be >= 0"):
        gamma_arrivals(-1.0, 1.0, 10.0, 0)
    with pytest.raises(DoesNotFitError, match=r"needs 0\.33 GB per GPU"):
        alpaserve_search([model_profile("alpa-bert-1.3b")], Cluster(8, 0.1 * GIB),
                         _workload([0.0], [0], 1.0, 1))


def test_clockwork_replans_every_window_on_that_windows_arrivals() -> None:
    base = model_profile("alpa-bert-1.3b")
    profiles = [base.renamed(f"m{i}") for i in range(4)]
    wl = synthetic_workload([2.0] * 4, [4.0] * 4, [0.5] * 4, 150.0, 0)
    placement, stitched = clockwork_plus(profiles, Cluster(2, 13 * GIB), wl)
    assert len(placement.windows) == 3  # [0, 60), [60, 120), [120, 180)
    assert placement.groups == placement.windows[0]
    assert len(stitched.good) == len(wl)
    assert "re-solved in 3 windows of 60 s" in placement.explanation


def test_alpaserve_never_scores_below_selective_replication_on_its_training_load() -> None:
    base = model_profile("alpa-bert-1.3b")
    profiles = [base.renamed(f"m{i}") for i in range(6)]
    for cv in (1.0, 6.0):
        wl = synthetic_workload(power_law_rates(12, 6), [cv] * 6, [0.5] * 6, 100.0, 0)
        cluster = Cluster(4, 13 * GIB)
        alpa, sr = alpaserve_search(profiles, cluster, wl), selective_replication(
            profiles, cluster, wl)
        assert alpa.score >= sr.score  # SR's config set is one of those AlpaServe tries
        assert "4x(1x1)" in dict(alpa.candidates)


def test_component_cache_matches_one_whole_simulation() -> None:
    from kubeplex.placement.alpaserve.search import _ComponentCache

    base = model_profile("alpa-bert-1.3b")
    profiles = [base.renamed(f"m{i}") for i in range(8)]
    wl = synthetic_workload(power_law_rates(40, 8), [4.0] * 8, [0.5] * 8, 60.0, 0)
    rng = np.random.RandomState(7)
    cache = _ComponentCache(profiles, wl)
    for _ in range(20):
        configs = [ParallelConfig(1, int(pp)) for pp in rng.choice([1, 2, 4], size=5)]
        groups = [GroupSpec(c, tuple(sorted(rng.choice(8, size=rng.randint(0, 4),
                                                       replace=False).tolist())))
                  for c in configs]
        unserved, group_requests = cache.counts(groups)
        whole = simulate(groups, profiles, wl)
        assert unserved == whole.unserved.tolist()
        assert group_requests == whole.group_requests.tolist()
