"""The sim's continuous-batching scheduler (pure; simulated time passed in)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from kubeplex.placement.hardware import gpu
from kubeplex.placement.llm import profile
from kubeplex.runtime.sim.__main__ import main as sim_main
from kubeplex.runtime.sim.scheduler import Scheduler, SimRequest, vllm_batched_tokens


class Linear:
    """Prefill 10 ms per computed prompt token (cached ones are free); a decode step 100 ms
    + 10 ms per sequence."""

    def batch_prefill_seconds(self, prompts: Sequence[tuple[int, int]]) -> float:
        return 0.01 * sum(tokens for tokens, _ in prompts)

    def decode_step_seconds(self, batch_size: int, mean_context_tokens: int) -> float:
        return 0.1 + 0.01 * batch_size


def _req(i: int, prompt: int = 10, out: int = 3, at: float = 0.0) -> SimRequest:
    return SimRequest(f"r{i}", prompt, out, arrival=at)


def _run_lane(s: Scheduler, now: float, lane: int = 0) -> float:
    result = s.step(lane, now)
    assert result is not None
    s.complete(result)
    return result.ends_at


def test_first_step_prefills_then_one_token_per_step() -> None:
    s = Scheduler(Linear(), kv_capacity_tokens=1000, max_num_seqs=8)
    r = _req(0, prompt=10, out=3)
    s.add(r)
    t = _run_lane(s, 0.0)
    assert t == 0.1  # prefill of 10 tokens, first token out
    assert (r.first_token, r.generated) == (0.1, 1)
    t = _run_lane(s, t)
    assert abs(t - (0.1 + 0.11)) < 1e-9  # one decode step, batch of 1
    t = _run_lane(s, t)
    assert r.finished == t
    assert r.generated == 3
    assert s.idle()
    assert s.kv_used == 0
    assert s.step(0, t) is None


def test_fcfs_queue_bounded_by_max_num_seqs() -> None:
    s = Scheduler(Linear(), kv_capacity_tokens=10_000, max_num_seqs=2)
    reqs = [_req(i, out=2) for i in range(3)]
    for r in reqs:
        s.add(r)
    t = _run_lane(s, 0.0)
    assert (s.num_running, s.num_waiting) == (2, 1)
    t = _run_lane(s, t)  # the first two finish
    assert reqs[0].finished == reqs[1].finished == t
    assert s.num_running == 0
    _run_lane(s, t)  # the third is admitted only now
    assert reqs[2].admitted == t
    assert reqs[2].first_token is not None
    assert reqs[2].first_token - reqs[2].arrival > reqs[0].first_token - reqs[0].arrival


def test_kv_capacity_limits_admission_and_the_head_blocks() -> None:
    s = Scheduler(Linear(), kv_capacity_tokens=100, max_num_seqs=8)
    big, small = _req(0, prompt=50, out=10), _req(1, prompt=50, out=10)
    tiny = _req(2, prompt=1, out=1)
    for r in (big, small, tiny):
        s.add(r)
    s.step(0, 0.0)
    # 60 + 60 > 100: only the first runs, and the tiny one behind the head waits (FCFS).
    assert s.num_running == 1
    assert s.num_waiting == 2
    assert abs(s.kv_usage - 0.6) < 1e-9
    assert not s.fits(_req(3, prompt=95, out=10))


def test_decode_steps_slow_down_with_batch_size() -> None:
    s = Scheduler(Linear(), kv_capacity_tokens=10_000, max_num_seqs=64)
    one = Scheduler(Linear(), kv_capacity_tokens=10_000, max_num_seqs=64)
    for i in range(32):
        s.add(_req(i, out=4))
    one.add(_req(99, out=4))
    first_many = _run_lane(s, 0.0)
    second_many = _run_lane(s, first_many) - first_many
    first_one = _run_lane(one, 0.0)
    second_one = _run_lane(one, first_one) - first_one
    assert second_many > second_one  # the inter-token latency grows with the batch


def test_abort_frees_slot_and_kv() -> None:
    s = Scheduler(Linear(), kv_capacity_tokens=100, max_num_seqs=8)
    a, b = _req(0, prompt=50, out=10), _req(1, prompt=50, out=10)
    s.add(a)
    s.add(b)
    result = s.step(0, 0.0)
    assert result is not None
    s.abort(a)
    s.abort(b)  # still waiting
    assert (s.num_running, s.num_waiting, s.kv_used) == (0, 0, 0)


def test_pipeline_lanes_run_side_by_side() -> None:
    s = Scheduler(Linear(), kv_capacity_tokens=10_000, max_num_seqs=8, lanes=2)
    a, b = _req(0), _req(1)
    s.add(a)
    first = s.step(0, 0.0)
    s.add(b)
    second = s.step(1, 0.0)  # the other lane takes the next request at the same time
    assert first is not None
    assert second is not None
    assert a.first_token == b.first_token == 0.1


def test_real_profile_drives_it() -> None:
    prof = profile("llama-3.1-8b", "H100-80GB")
    s = Scheduler(prof, prof.kv_capacity_tokens(0.9), max_num_seqs=256)
    r = _req(0, prompt=512, out=2)
    s.add(r)
    t = _run_lane(s, 0.0)
    assert abs(t - prof.prefill_seconds(512)) < 1e-9


def test_a_batch_of_prompts_costs_attention_per_prompt() -> None:
    """Prompts admitted together prefill in one step that costs their attention one prompt at
    a time (issue 14: 256 x 512-token prompts were charged as one 131k-token sequence)."""
    prof = profile("llama-3.1-8b", "H100-80GB")
    s = Scheduler(prof, prof.kv_capacity_tokens(0.9), max_num_seqs=256)
    for i in range(256):
        s.add(_req(i, prompt=512, out=2))
    t = _run_lane(s, 0.0)
    assert abs(t - prof.batch_prefill_seconds([(512, 0)] * 256)) < 1e-9
    assert t < 0.5 * prof.prefill_seconds(256 * 512)


def test_step_names_the_prefills_it_ran_and_counts_tokens_like_vllm() -> None:
    """vLLM counts a prompt's tokens in the step that prefills it, and per iteration
    prompt tokens + generated tokens (``vllm:iteration_tokens_total``)."""
    s = Scheduler(Linear(), kv_capacity_tokens=10_000, max_num_seqs=8)
    first = _req(0, prompt=10, out=3)
    s.add(first)
    result = s.step(0, 0.0)
    assert result is not None
    assert result.prefilled == (first,)
    assert result.batch_tokens == 10 + 1
    s.complete(result)
    second = _req(1, prompt=7, out=3, at=result.ends_at)
    s.add(second)
    result = s.step(0, result.ends_at)
    assert result is not None
    assert result.prefilled == (second,)  # the first one only decodes now
    assert [r for r, _ in result.tokens] == [first, second]
    assert result.batch_tokens == 7 + 2


def test_chunked_prefill_spreads_a_long_prompt_over_steps_within_the_budget() -> None:
    """vLLM V1: a step computes at most ``max_num_batched_tokens``; a prompt longer than
    that is prefilled over several steps and its first token comes out of the last one."""
    s = Scheduler(Linear(), kv_capacity_tokens=10_000, max_num_seqs=8, max_batched_tokens=40)
    r = _req(0, prompt=100, out=2)
    s.add(r)
    firsts = []
    t = 0.0
    for _ in range(3):
        result = s.step(0, t)
        assert result is not None
        assert result.batch_tokens <= 40
        firsts.append(result.prefilled)
        s.complete(result)
        t = result.ends_at
    assert firsts == [(), (), (r,)]  # 40 + 40 + 20 tokens
    assert r.first_token == t
    assert abs(t - 0.01 * 100) < 1e-9  # the same prompt tokens, computed in three steps


def test_chunked_prefill_keeps_decoding_beside_a_long_prompt() -> None:
    """The point of chunked prefill: a sequence already decoding gets a token every step
    while a long prompt behind it is prefilled, instead of waiting out the whole prefill."""
    whole = Scheduler(Linear(), kv_capacity_tokens=10_000, max_num_seqs=8)
    chunked = Scheduler(Linear(), kv_capacity_tokens=10_000, max_num_seqs=8,
                        max_batched_tokens=50)
    gaps = []
    for s in (whole, chunked):
        decoding = _req(0, prompt=10, out=10)
        s.add(decoding)
        t = _run_lane(s, 0.0)
        s.add(_req(1, prompt=400, out=1, at=t))
        t = _run_lane(s, t)
        gaps.append(decoding.token_times[1] - decoding.token_times[0])
    assert gaps[1] < gaps[0] / 4  # 49 prompt tokens beside it, not all 400


def test_load_counts_the_prompt_left_of_a_request_being_prefilled() -> None:
    s = Scheduler(Linear(), kv_capacity_tokens=10_000, max_num_seqs=8, max_batched_tokens=30)
    s.add(_req(0, prompt=100, out=2))
    s.add(_req(1, prompt=20, out=2))
    _run_lane(s, 0.0)
    assert s.load(1.0).prefill_tokens == 70 + 20
    assert s.num_waiting == 1  # the budget was spent: the second was not admitted


def test_vllm_default_budget_by_device() -> None:
    assert vllm_batched_tokens(gpu("H100-80GB")) == 8_192
    assert vllm_batched_tokens(gpu("H200-141GB")) == 8_192
    assert vllm_batched_tokens(gpu("A100-80GB")) == 2_048  # vLLM keeps A100s at the small one
    assert vllm_batched_tokens(gpu("L4")) == 2_048
    assert vllm_batched_tokens(gpu("cpu")) == 2_048
    assert vllm_batched_tokens(replace(gpu("H200-141GB"), name="B200", memory_gib=180)) == 16_384


def test_a_budget_below_one_token_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batched_tokens"):
        Scheduler(Linear(), kv_capacity_tokens=100, max_num_seqs=8, max_batched_tokens=0)


def test_the_sim_refuses_a_step_budget_below_one_token(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--max-num-batched-tokens", "0"]) == 1
    assert "--max-num-batched-tokens must be >= 1" in capsys.readouterr().err
