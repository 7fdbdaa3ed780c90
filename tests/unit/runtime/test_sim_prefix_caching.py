"""The sim scheduler and metrics with prefix caching: only the uncached suffix is prefilled,
and vLLM's prefix-cache counters count it (pure; simulated time passed in)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubeplex.placement.llm import profile
from kubeplex.runtime.prefix import PromptBlocks, chain
from kubeplex.runtime.sim.metrics import VllmMetrics
from kubeplex.runtime.sim.scheduler import Scheduler, SimRequest

PROF = profile("llama-3.1-8b", "H100-80GB")
SHARED = PromptBlocks(chain(range(16)), 512)  # 8192 tokens in 16 blocks


def _serve(s: Scheduler, req: SimRequest, now: float) -> float:
    """Run ``req`` alone to its end; returns its time to first token."""
    s.add(req)
    t = now
    while not s.idle():
        result = s.step(0, t)
        assert result is not None
        s.complete(result)
        t = result.ends_at
    assert req.first_token is not None
    return req.first_token - now


def test_a_repeated_prompt_prefills_only_its_uncached_suffix() -> None:
    s = Scheduler(PROF, PROF.kv_capacity_tokens(0.9), max_num_seqs=8)
    cold = _serve(s, SimRequest("a", 8192, 2, arrival=0.0, blocks=SHARED), 0.0)
    warm_req = SimRequest("b", 8192, 2, arrival=10.0, blocks=SHARED)
    warm = _serve(s, warm_req, 10.0)
    assert warm_req.cached_tokens == 8192 - 512  # all but the last block (last token redone)
    assert abs(cold - PROF.prefill_seconds(8192)) < 1e-9
    assert abs(warm - PROF.prefill_seconds(512, 8192 - 512)) < 1e-9
    assert warm < cold / 5


def test_caching_off_recomputes_everything() -> None:
    s = Scheduler(PROF, PROF.kv_capacity_tokens(0.9), max_num_seqs=8, prefix_caching=False)
    _serve(s, SimRequest("a", 8192, 2, arrival=0.0, blocks=SHARED), 0.0)
    again = SimRequest("b", 8192, 2, arrival=10.0, blocks=SHARED)
    _serve(s, again, 10.0)
    assert again.cached_tokens == 0


def test_the_prefix_cache_counters_and_prompt_sources_follow_vllm() -> None:
    metrics = VllmMetrics("m", 131072)
    s = Scheduler(PROF, PROF.kv_capacity_tokens(0.9), max_num_seqs=8)
    for i, at in enumerate((0.0, 10.0)):
        req = SimRequest(str(i), 8192, 2, arrival=at, blocks=SHARED)
        s.add(req)
        t = at
        while not s.idle():
            result = s.step(0, t)
            assert result is not None
            metrics.observe_step(result.prefilled, result.tokens, result.ends_at, 1.0)
            s.complete(result)
            for done in result.finished:
                metrics.observe_finished(done, 1.0)
            t = result.ends_at
    samples = {(x.name, x.labels.get("source")): x.value
               for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
               for x in f.samples}
    assert samples[("vllm:prefix_cache_queries_total", None)] == 2 * 8192
    assert samples[("vllm:prefix_cache_hits_total", None)] == 8192 - 512
    assert samples[("vllm:prompt_tokens_total", None)] == 2 * 8192
    assert samples[("vllm:prompt_tokens_by_source_total", "local_cache_hit")] == 8192 - 512
    assert samples[("vllm:prompt_tokens_by_source_total", "local_compute")] == 8192 + 512
    assert samples[("vllm:request_prefill_kv_computed_tokens_sum", None)] == 8192 + 512
