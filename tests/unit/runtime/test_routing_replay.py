"""Prefix-aware routing replayed on simulated replicas: generated traces of several shapes
and the Mooncake production trace, against least-loaded and round-robin (deterministic
simulations: no timing of this machine is measured)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from kubeplex.cli import main
from kubeplex.placement.llm import profile
from kubeplex.runtime.errors import TraceFormatError
from kubeplex.runtime.sim.replay import ReplayResult, TraceRequest, replay, shared_cache_hit_rate
from kubeplex.runtime.sim.scheduler import vllm_batched_tokens
from kubeplex.runtime.sim.traces import SHAPES, generate, read_trace, write_jsonl

PROF = profile("llama-3.1-8b", "H100-80GB")
CAPACITY = PROF.kv_capacity_tokens(0.9)
#: vLLM's step budget on an H100 (chunked prefill), what `kubeplex simulate routing` uses.
BUDGET = vllm_batched_tokens(PROF.gpu)
MOONCAKE = Path(__file__).parents[3].parent / "shared" / "traces" / \
    "mooncake_conversation_trace.jsonl"
#: The acceptance bounds of issue 17: hits vs one shared cache, and request share vs fair.
MIN_HIT_VS_SHARED = 0.75
MAX_FAIR_SHARE = 1.5


def _trace(tmp: Path, shape: str, rate: float, seed: int, cv: float = 1.0) -> list[TraceRequest]:
    path = tmp / f"{shape}-{seed}.jsonl"
    path.write_text(write_jsonl(generate(shape, rate=rate, duration_s=300, seed=seed, cv=cv)))
    return read_trace(path)


def _replay(trace: list[TraceRequest], policy: str, replicas: int = 4,
            kv_events: bool = True) -> ReplayResult:
    return replay(trace, PROF, replicas=replicas, policy=policy, kv_capacity_tokens=CAPACITY,
                  max_model_len=PROF.model.max_model_len, kv_events=kv_events,
                  max_batched_tokens=BUDGET)


def _fair_share(result: ReplayResult) -> float:
    return max(result.requests_per_replica) * result.replicas / len(result.ttft_s)


@pytest.mark.parametrize(("shape", "rate", "cv"), [
    ("chat", 14.0, 1.0), ("chat", 10.0, 3.0), ("system-prompts", 14.0, 1.0),
    ("documents", 12.0, 2.0), ("agents", 4.0, 1.0)])
def test_prefix_aware_beats_least_loaded_on_generated_traces(tmp_path: Path, shape: str,
                                                             rate: float, cv: float) -> None:
    trace = _trace(tmp_path, shape, rate, seed=7, cv=cv)
    shared = shared_cache_hit_rate(trace, CAPACITY * 4)
    aware, least = _replay(trace, "prefix-aware"), _replay(trace, "least-loaded")
    assert aware.prefix_hit_rate >= MIN_HIT_VS_SHARED * shared
    assert aware.prefix_hit_rate >= least.prefix_hit_rate
    assert aware.ttft_percentile(95) < least.ttft_percentile(95)
    assert _fair_share(aware) <= MAX_FAIR_SHARE
    assert aware.rejected == 0 and len(aware.ttft_s) == len(trace)


def test_round_robin_spreads_evenly_and_every_policy_serves_every_token(tmp_path: Path) -> None:
    trace = _trace(tmp_path, "documents", 6.0, seed=3)
    results = {p: _replay(trace, p) for p in ("round-robin", "least-loaded", "prefix-aware")}
    counts = results["round-robin"].requests_per_replica
    assert max(counts) - min(counts) <= 1
    outputs = {r.generated_tokens for r in results.values()}
    assert outputs == {sum(t.output_tokens for t in trace)}
    assert results["prefix-aware"].hit_blocks > results["round-robin"].hit_blocks


def test_more_replicas_than_one_cache_needs_still_reuse_prefixes(tmp_path: Path) -> None:
    trace = _trace(tmp_path, "chat", 6.0, seed=5)
    assert _replay(trace, "prefix-aware", replicas=8).prefix_hit_rate > \
        _replay(trace, "round-robin", replicas=8).prefix_hit_rate


@pytest.mark.slow
@pytest.mark.skipif(not MOONCAKE.exists(), reason=f"the shared trace {MOONCAKE} is not here")
def test_mooncake_trace_with_four_h100_replicas() -> None:
    """Issue 17's acceptance case (docs/benchmarks.md has the numbers): >= 75% of the shared
    cache's hit rate, no replica above 1.5x its fair share, TTFT p95 at most 0.6x
    least-loaded's: measured 0.52x with the replicas' KV events and queue reports, 0.59x on
    the router's own view (replicas prefilling in chunks of vLLM's H100 budget; the own
    view's margin leaves room for changes that move it a little)."""
    trace = read_trace(MOONCAKE)
    shared = shared_cache_hit_rate(trace, CAPACITY * 4)
    least = _replay(trace, "least-loaded")
    aware, own = _replay(trace, "prefix-aware"), _replay(trace, "prefix-aware", kv_events=False)
    for result in (aware, own):
        assert result.prefix_hit_rate >= MIN_HIT_VS_SHARED * shared
        assert _fair_share(result) <= MAX_FAIR_SHARE
    assert aware.ttft_percentile(95) <= 0.6 * least.ttft_percentile(95)
    assert own.ttft_percentile(95) <= 0.65 * least.ttft_percentile(95)
    assert aware.ttft_percentile(95) < own.ttft_percentile(95)


# ---- traces and the command line -----------------------------------------------------------

def test_generated_traces_are_seeded_and_share_prefixes(tmp_path: Path) -> None:
    for shape in SHAPES:
        one = generate(shape, rate=5, duration_s=60, seed=2)
        assert one == generate(shape, rate=5, duration_s=60, seed=2)
        assert one != generate(shape, rate=5, duration_s=60, seed=3)
        firsts = [row["hash_ids"][0] for row in one]
        assert len(set(firsts)) < len(firsts)  # some requests share their first block


def test_agent_sessions_grow_fast_and_come_back_within_seconds() -> None:
    rows = generate("agents", rate=4, duration_s=120, seed=1)
    # A session's later steps repeat its first step's prompt (all but its partial last block).
    sessions = [[r for r in rows if r["hash_ids"][:len(first["hash_ids"]) - 1]
                 == first["hash_ids"][:-1]] for first in rows[:20]]
    longest = max(sessions, key=len)
    assert len(longest) >= 3
    gaps = [b["timestamp"] - a["timestamp"] for a, b in itertools.pairwise(longest)]
    assert sorted(gaps)[len(gaps) // 2] < 10_000  # ms: the next step comes within seconds
    assert longest[-1]["input_length"] > longest[0]["input_length"] + 2000


@pytest.mark.parametrize(("content", "message"), [
    ("", "empty trace"),
    ('{"timestamp": 0, "input_length": 10}\n', "missing output_length"),
    ('{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": "x"}\n',
     "hash_ids must be a list"),
    ('{"timestamp": 5, "input_length": 1, "output_length": 1}\n'
     '{"timestamp": 1, "input_length": 1, "output_length": 1}\n', "ascending"),
    ("arrival_s,prompt\n1,2\n", "header"),
    ("arrival_s,prompt_tokens,output_tokens\n1,zero,2\n", "must be numbers"),
    ("not json\n", "header"),
])
def test_bad_traces_are_refused_naming_the_problem(tmp_path: Path, content: str,
                                                   message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TraceFormatError, match=message):
        read_trace(path)


def test_csv_traces_with_hash_ids(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens,hash_ids\n0,1100,5,1 2 3\n"
                    "1.5,1100,5,1 2 4\n")
    first, second = read_trace(path)
    assert first.blocks.hashes[:2] == second.blocks.hashes[:2] and second.arrival_s == 1.5


def test_simulate_routing_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "chat.jsonl"
    assert main(["simulate", "prefix-trace", "--shape", "chat", "--rate", "4",
                 "--duration-s", "60", "--out", str(trace)]) == 0
    args = ["simulate", "routing", "--trace", str(trace), "--model", "llama-3.1-8b",
            "--gpu", "H100-80GB", "--replicas", "2"]
    plot = tmp_path / "routing.png"
    assert main([*args, "--json", "--plot", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("ttft_p95_s", "ttft_p50_s", "prefix_hit_rate", "requests_per_replica",
                "throughput_tokens_s", "shared_cache_hit_rate"):
        assert key in report
    assert report["policy"] == "prefix-aware" and len(report["requests_per_replica"]) == 2
    assert 0 < report["prefix_hit_rate"] <= 1 and report["ttft_p95_s"] >= report["ttft_p50_s"]
    assert plot.stat().st_size > 10_000
    assert main([*args, "--policy", "round-robin"]) == 0
    assert "policy round-robin" in capsys.readouterr().out
    assert main([*args, "--json", "--no-kv-events"]) == 0  # the gateway's own view
    own = json.loads(capsys.readouterr().out)
    assert own["requests"] == report["requests"] and 0 < own["prefix_hit_rate"] <= 1


def test_simulate_routing_on_a_trace_without_block_ids(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    trace = tmp_path / "plain.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,500,20\n0.5,700,30\n")
    assert main(["simulate", "routing", "--trace", str(trace), "--model", "llama-3.1-8b",
                 "--gpu", "H100-80GB", "--replicas", "2"]) == 0
    assert "no prompt prefix repeats in this trace" in capsys.readouterr().out


def test_simulate_routing_refuses_bad_input(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    missing = ["simulate", "routing", "--trace", str(tmp_path / "none.jsonl"), "--model",
               "llama-3.1-8b", "--gpu", "H100-80GB", "--replicas", "2"]
    assert main(missing) == 2
    assert "cannot read trace" in capsys.readouterr().err
    assert main([*missing[:-1], "0"]) == 2
    assert "--replicas must be >= 1" in capsys.readouterr().err
    assert main([*missing, "--max-num-batched-tokens", "0"]) == 2
    assert "--max-num-batched-tokens must be >= 1" in capsys.readouterr().err
    assert main(["simulate", "prefix-trace", "--shape", "tweets"]) == 2
    assert "unknown trace shape" in capsys.readouterr().err
