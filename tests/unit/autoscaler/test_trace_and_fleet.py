"""Trace files and generators, and the simulated fleet on short traces."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from kubeplex.autoscaler import AutoscalerConfigError, Observed, TraceError
from kubeplex.autoscaler.baselines import HPAPolicy, KPAPolicy, StaticPolicy
from kubeplex.autoscaler.evaluation import Scenario, replay
from kubeplex.autoscaler.fleet import FleetConfig, simulate
from kubeplex.autoscaler.metrics import COMPLETIONS, GENERATION_TOKENS, RUNNING
from kubeplex.autoscaler.oracle import (
    oracle_needs,
    oracle_targets,
    reactive_needs,
    reactive_targets,
)
from kubeplex.autoscaler.trace import (
    Trace,
    diurnal_rate,
    from_minute_counts,
    generate,
    read_minute_counts,
    read_trace,
    spike_rate,
    write_trace,
)
from kubeplex.placement.llm import profile


def test_csv_round_trip(tmp_path: Path) -> None:
    trace = generate(lambda t: np.full_like(t, 5.0), 60, 1.0, seed=3)
    path = tmp_path / "t.csv"
    with path.open("w") as stream:
        write_trace(trace, stream)
    again = read_trace(path)
    assert len(again) == len(trace)
    assert np.allclose(again.arrival_s, trace.arrival_s, atol=1e-4)
    assert (again.prompt_tokens == trace.prompt_tokens).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("arrival_s,prompt_tokens,output_tokens\n", "no requests"),
        ("time,prompt,output\n1,2,3\n", "header is"),
        ("arrival_s,prompt_tokens,output_tokens\n2.0,10,10\n1.0,10,10\n",
         "must be ascending; request 2 arrives at 1.0 s, before 2.0 s"),
        ("arrival_s,prompt_tokens,output_tokens\n1.0,ten,10\n", "integer"),
        ("arrival_s,prompt_tokens,output_tokens\n1.0,0,10\n", ">= 1"),
    ],
)
def test_bad_traces_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        read_trace(io.StringIO(text))


def test_missing_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read trace"):
        read_trace(tmp_path / "absent.csv")


def test_gamma_bursts_have_the_asked_cv_and_rate() -> None:
    trace = generate(lambda t: np.full_like(t, 20.0), 2000, 4.0, seed=1)
    assert len(trace) == pytest.approx(40_000, rel=0.1)
    assert trace.interarrival_cv() == pytest.approx(4.0, rel=0.15)
    poisson = generate(lambda t: np.full_like(t, 20.0), 500, 1.0, seed=1)
    assert poisson.interarrival_cv() == pytest.approx(1.0, rel=0.1)


def test_spike_and_diurnal_shapes() -> None:
    spike = spike_rate(10, 5, at_s=100, for_s=50, ramp_s=10)
    values = spike(np.array([0.0, 95.0, 100.0, 149.0, 155.0, 200.0]))
    assert values.tolist() == pytest.approx([10, 30, 50, 50, 30, 10])
    step = spike_rate(10, 5, at_s=100, for_s=50, ramp_s=0)
    assert step(np.array([99.0, 100.0, 150.0])).tolist() == [10, 50, 10]
    day = diurnal_rate(2, 10, 100)
    assert day(np.array([0.0, 50.0, 100.0])).tolist() == pytest.approx([2, 10, 2])


def test_azure_minute_counts(tmp_path: Path) -> None:
    path = tmp_path / "invocations.csv"
    path.write_text("HashOwner,HashApp,HashFunction,Trigger,1,2,3\n"
                    "o,a,f1,http,2,0,5\n"
                    "o,a,f2,timer,1,1,0\n")
    assert read_minute_counts(path) == [3, 1, 5]
    assert read_minute_counts(path, "f2") == [1, 1, 0]
    trace = from_minute_counts([3, 1, 5], seed=1)
    assert len(trace) == 9
    assert (trace.arrival_s[:3] < 60).all() and (trace.arrival_s[3] >= 60)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(TraceError, match="no per-minute columns"):
        read_minute_counts(bad)


def _steady(rate: float, seconds: float) -> Trace:
    return generate(lambda t: np.full_like(t, rate), seconds, 1.0, seed=2, prompt_tokens=256,
                    output_tokens=64)


def test_static_fleet_meets_an_easy_slo_and_counts_gpu_hours() -> None:
    trace = _steady(10, 300)
    fleet = FleetConfig(profile=profile("llama-3.1-8b", "H100-80GB"), initial_replicas=2)
    result = simulate(trace, StaticPolicy(2), fleet, slo_ttft_s=1.0, percentile=95)
    assert result.requests == len(trace)
    assert result.attainment == 1.0
    assert result.ttft_percentile < 0.2
    assert result.gpu_hours == pytest.approx(2 * result.duration_s / 3600, rel=1e-6)
    assert result.scale_events == 0
    assert np.isfinite(result.ttft).all()


def test_overloaded_fleet_misses_and_queues() -> None:
    trace = _steady(60, 120)
    fleet = FleetConfig(profile=profile("llama-3.1-8b", "L4"), initial_replicas=1)
    result = simulate(trace, StaticPolicy(1), fleet, slo_ttft_s=1.0, percentile=95)
    assert result.attainment < 0.5
    assert result.ttft_percentile > 10


def test_scale_from_zero_holds_requests_until_a_replica_is_ready() -> None:
    class OneAfterZero:
        name, interval_s = "one", 2.0

        def evaluate(self, observed: Observed, now: float) -> tuple[int, int]:
            return (1 if observed.held_requests or observed.current else 0), 0

    trace = _steady(2, 60)
    fleet = FleetConfig(profile=profile("llama-3.1-8b", "H100-80GB"), initial_replicas=0,
                        cold_start_s=10)
    result = simulate(trace, OneAfterZero(), fleet, slo_ttft_s=30.0, percentile=95)
    assert result.attainment == 1.0  # nothing dropped: all held, then served
    first = float(trace.arrival_s[0])
    assert result.ttft[0] == pytest.approx(10 - first, abs=2.1)  # waited for the cold start


def test_baselines_react_to_a_burst() -> None:
    fleet_profile = profile("llama-3.1-8b", "A100-80GB")
    trace = generate(spike_rate(10, 5, 120, 120, 0), 300, 1.0, seed=4)
    fleet = FleetConfig(profile=fleet_profile, initial_replicas=1, cold_start_s=20)
    for policy in (HPAPolicy(target=30, max_replicas=20), KPAPolicy(target=30, max_replicas=20)):
        result = simulate(trace, policy, fleet, slo_ttft_s=1.0, percentile=95)
        assert result.max_replicas > 1, policy.name
        assert result.scale_events >= 1


def test_replay_kubeplex_beats_an_undersized_static_fleet() -> None:
    trace = generate(spike_rate(10, 4, 300, 200, 60), 1200, 2.0, seed=5)
    scenario = Scenario(profile("llama-3.1-8b", "A100-80GB"), 1.0, 95, 30, 2)
    kubeplex = replay(trace, scenario, "kubeplex")
    peak = replay(trace, scenario, "static-peak")
    assert peak.attainment > 0.99
    assert kubeplex.attainment > 0.95
    assert kubeplex.gpu_hours < peak.gpu_hours
    assert math.isfinite(kubeplex.ttft_percentile)


def test_mooncake_jsonl_is_read_in_seconds(tmp_path: Path) -> None:
    path = tmp_path / "mooncake.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 6758, "output_length": 500, '
                    '"hash_ids": [0, 1]}\n\n'
                    '{"timestamp": 1500, "input_length": 20, "output_length": 3}\n')
    trace = read_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 1.5]
    assert trace.prompt_tokens.tolist() == [6758, 20]
    assert trace.output_tokens.tolist() == [500, 3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"timestamp": 0, "input_length": 5}\n', "line 1: a Mooncake trace line needs"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{oops\n',
         "line 2: not JSON"),
        ('{"timestamp": "0", "input_length": 5, "output_length": 1}\n', "finite numbers"),
        ('{"timestamp": 0, "input_length": 5.5, "output_length": 1}\n', "integers"),
        ('{"timestamp": 9, "input_length": 5, "output_length": 1}\n'
         '{"timestamp": 0, "input_length": 5, "output_length": 1}\n', "ascending"),
    ],
)
def test_bad_mooncake_lines_are_named(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        read_trace(io.StringIO(text))


def test_shared_mooncake_trace_reads() -> None:
    path = Path(__file__).resolve().parents[3] / ".." / "shared" / "traces" / \
        "mooncake_conversation_trace.jsonl"
    if not path.exists():
        pytest.skip(f"the shared Mooncake trace is not at {path} (it sits beside the clone)")
    trace = read_trace(path)
    assert len(trace) == 12_031
    assert 3500 < trace.duration_s < 3600
    assert 11_000 < trace.prompt_tokens.mean() < 13_000


def test_a_slower_fleet_takes_longer_and_the_policy_is_not_told() -> None:
    trace = _steady(10, 120)
    prof = profile("llama-3.1-8b", "H100-80GB")
    fast = simulate(trace, StaticPolicy(2), FleetConfig(profile=prof, initial_replicas=2),
                    slo_ttft_s=1.0, percentile=95)
    slow = simulate(trace, StaticPolicy(2), FleetConfig(profile=prof, initial_replicas=2,
                                                        speed=0.5),
                    slo_ttft_s=1.0, percentile=95)
    assert np.median(slow.ttft) == pytest.approx(2 * np.median(fast.ttft), rel=0.25)
    with pytest.raises(AutoscalerConfigError, match="fleet speed"):
        FleetConfig(profile=prof, speed=0.0)


def test_every_engine_is_scraped_on_its_own() -> None:
    seen: list[int] = []

    class Watch:
        name, interval_s = "watch", 2.0

        def evaluate(self, observed: Observed, now: float) -> tuple[int, int]:
            if observed.scrapes:
                seen.append(len(observed.scrapes[-1].series(RUNNING)))
            return 3, 0

    fleet = FleetConfig(profile=profile("llama-3.1-8b", "H100-80GB"), initial_replicas=3)
    simulate(_steady(5, 30), Watch(), fleet, slo_ttft_s=1.0, percentile=95)
    assert set(seen) == {3}


def test_generated_tokens_count_as_they_are_made_as_vllm_counts_them() -> None:
    """vLLM's generation-token counter grows with every decode step, not when a request
    finishes: 1,000-token answers show tokens long before the first one is done."""
    seen: list[tuple[float, float]] = []

    class Watch:
        name, interval_s = "watch", 2.0

        def evaluate(self, observed: Observed, now: float) -> tuple[int, int]:
            if observed.scrapes:
                last = observed.scrapes[-1]
                seen.append((last.total(COMPLETIONS) or 0.0, last.total(GENERATION_TOKENS) or 0.0))
            return 1, 0

    trace = generate(lambda t: np.full_like(t, 2.0), 30.0, 1.0, seed=3, prompt_tokens=128,
                     output_tokens=1000)
    fleet = FleetConfig(profile=profile("llama-3.1-8b", "H100-80GB"), initial_replicas=1)
    simulate(trace, Watch(), fleet, slo_ttft_s=1.0, percentile=95)
    before_any_done = [made for done, made in seen if done == 0]
    assert max(before_any_done, default=0.0) > 100  # counted at the finish: 0 here
    assert all(b >= a for (_, a), (_, b) in itertools.pairwise(seen))


def test_the_oracle_provisions_one_cold_start_ahead_of_a_step() -> None:
    prof = profile("llama-3.1-8b", "A100-80GB")
    trace = generate(spike_rate(5, 6, 300, 120, 0), 600, 1.0, seed=7)
    needs = oracle_needs(trace, prof, 1.0, 1.0, 256, 0.8)
    assert needs[350] > 4 * needs[100]
    targets = oracle_targets(needs, cold_start_s=60)
    assert targets[250] >= math.ceil(needs[300])  # asked for 60 s before the step
    assert targets[200] < targets[250]
    scenario = Scenario(prof, 1.0, 99, cold_start_s=60, oracle_utilization=0.7)
    oracle = replay(trace, scenario, "oracle")
    assert oracle.attainment > 0.99
    slower = oracle_needs(trace, prof, 0.5, 1.0, 256, 0.8)
    assert slower[350] == pytest.approx(2 * needs[350], rel=0.05)  # it knows the true speed


def test_the_reactive_reference_sees_what_the_oracle_saw_only_after_it_arrived() -> None:
    prof = profile("llama-3.1-8b", "A100-80GB")
    trace = generate(spike_rate(5, 6, 300, 120, 0), 600, 1.0, seed=7)
    ahead = oracle_needs(trace, prof, 1.0, 1.0, 256, 1.0)
    behind = reactive_needs(trace, prof, 1.0, 1.0, 256, 1.0)
    assert behind[0] == 0  # nothing has arrived before the first tick
    assert behind[299] < 2 * behind[200] < ahead[290]  # the oracle saw the step coming
    # Where the rate is flat, the windows behind see what those ahead see.
    assert behind[410] == pytest.approx(ahead[345], rel=0.25)
    late = reactive_targets(behind, hold_s=60, initial=2)
    assert late[0] == late[60] == 2 and late[62] <= 1  # its first replicas count as asked
    assert late[360] >= math.ceil(behind[300])
    assert late[480] >= math.ceil(behind[420:481].max() - 1e-9)  # held for a cold start
    assert late[599] < late[430]  # and released after the step
    kept = reactive_targets(behind, hold_s=math.inf)
    assert kept[599] == kept.max() >= late[599]
    with pytest.raises(AutoscalerConfigError, match="reactive hold"):
        reactive_targets(behind, hold_s=-1)
    scenario = Scenario(prof, 1.0, 99, cold_start_s=60, oracle_utilization=0.7)
    oracle, reactive = (replay(trace, scenario, p) for p in ("oracle", "reactive"))
    assert reactive.attainment < oracle.attainment  # the step outruns a cold start
    keeping = replay(trace, Scenario(prof, 1.0, 99, cold_start_s=60, oracle_utilization=0.7,
                                     reactive_hold_s=math.inf), "reactive")
    assert keeping.gpu_hours > reactive.gpu_hours


def test_replay_runs_the_fleet_slower_than_the_policy_plans() -> None:
    trace = generate(spike_rate(10, 3, 200, 200, 30), 600, 1.0, seed=9)
    prof = profile("llama-3.1-8b", "A100-80GB")
    fast = replay(trace, Scenario(prof, 1.0, 99, 30, 2), "static-peak")
    slow = replay(trace, Scenario(prof, 1.0, 99, 30, 2, fleet_speed=0.5), "static-peak")
    assert fast.max_replicas == slow.max_replicas  # the same plan: it was not told
    assert slow.attainment < fast.attainment
