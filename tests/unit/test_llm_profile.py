"""The analytic LLM latency/memory model: monotonicity and the shape rules it enforces."""

from __future__ import annotations

import pytest

from kubeplex.placement.errors import PlacementError, UnknownProfileError
from kubeplex.placement.llm import MODELS, profile


@pytest.mark.parametrize("name", sorted(MODELS))
def test_kv_bytes_per_token_matches_shape(name: str) -> None:
    m = MODELS[name]
    assert m.kv_bytes_per_token == 2 * m.layers * m.kv_heads * (m.hidden // m.heads) * m.dtype_bytes


def test_llama_8b_on_h100_is_in_the_published_range() -> None:
    p = profile("llama-3.1-8b", "H100-80GB")
    # Single-sequence decode of an 8B BF16 model on an H100 runs ~5-12 ms per token.
    assert 0.005 < p.decode_step_seconds(1, 1024) < 0.012
    # 16 GB of weights on an 80 GB card leaves room for hundreds of thousands of KV tokens.
    assert 200_000 < p.kv_capacity_tokens() < 600_000


def test_latency_grows_with_batch_and_prompt() -> None:
    p = profile("llama-3.1-8b", "A100-80GB")
    assert p.decode_step_seconds(64, 2048) > p.decode_step_seconds(1, 2048)
    assert p.prefill_seconds(4096) > p.prefill_seconds(256)


def test_tensor_parallel_cuts_latency_and_adds_capacity() -> None:
    one = profile("llama-3.1-70b", "H100-80GB", tp=2)
    four = profile("llama-3.1-70b", "H100-80GB", tp=4)
    assert four.decode_step_seconds(8, 1024) < one.decode_step_seconds(8, 1024)
    assert four.kv_capacity_tokens() > one.kv_capacity_tokens()


def test_70b_does_not_fit_one_gpu() -> None:
    assert not profile("llama-3.1-70b", "H100-80GB").fits()
    assert profile("llama-3.1-70b", "H100-80GB", tp=4).fits()


def test_bad_shapes_and_names_are_refused() -> None:
    with pytest.raises(PlacementError, match="power of two"):
        profile("llama-3.1-8b", "H100-80GB", tp=3)
    with pytest.raises(PlacementError, match="layers"):
        profile("tiny-llama", "cpu", pp=4)
    with pytest.raises(UnknownProfileError, match="known: H100-80GB"):
        profile("llama-3.1-8b", "B300")
    with pytest.raises(UnknownProfileError, match="unknown model 'gpt-9'"):
        profile("gpt-9", "L4")
