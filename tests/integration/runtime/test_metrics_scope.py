"""The runtime's /metrics for an endpoint picker: ``?model=`` scopes it to one model's engine
and router series, and series vLLM leaves without a model label (``vllm:lora_requests_info``)
get one, so two engines' series never collide in the merged exposition."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubeplex.runtime.harness import RuntimeProcess, model_entry


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    models = [model_entry(name, "sim", memory_share=0.3,
                          adapters=[{"name": f"{name}-lora", "path": f"hf://org/{name}"}])
              for name in ("alpha", "beta")]
    with RuntimeProcess({"models": models}, Path(tmp_path_factory.mktemp("scope"))) as proc:
        for name in ("alpha", "beta-lora"):  # some router series for both
            httpx.post(proc.url + "/v1/completions", timeout=30,
                       json={"model": name, "prompt": "hi", "max_tokens": 2})
        yield proc


def _samples(text: str, family: str) -> list[dict[str, str]]:
    return [s.labels for f in text_string_to_metric_families(text) if f.name == family
            for s in f.samples]


def test_merged_metrics_label_every_engine_series(rt: RuntimeProcess) -> None:
    text = httpx.get(rt.url + "/metrics", timeout=10).text
    lora = _samples(text, "vllm:lora_requests_info")
    assert sorted(s["model_name"] for s in lora) == ["alpha", "beta"]
    waiting = {s["model_name"] for s in _samples(text, "vllm:num_requests_waiting")}
    assert waiting == {"alpha", "beta"}


@pytest.mark.parametrize("scope", ["beta", "beta-lora"])  # a model, or one of its adapters
def test_a_scoped_scrape_has_one_models_series(rt: RuntimeProcess, scope: str) -> None:
    text = httpx.get(rt.url + "/metrics", params={"model": scope}, timeout=10).text
    for family in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                   "vllm:kv_cache_usage_perc", "vllm:lora_requests_info"):
        assert {s["model_name"] for s in _samples(text, family)} == {"beta"}, family
    routed = {s["model"] for s in _samples(text, "kubeplex_router_requests")}
    assert routed == {"beta"}
    assert _samples(text, "kubeplex_runtime_draining")  # unlabelled series stay


def test_a_scope_naming_no_hosted_model_is_404(rt: RuntimeProcess) -> None:
    r = httpx.get(rt.url + "/metrics", params={"model": "gamma"}, timeout=10)
    assert r.status_code == 404
    assert "alpha, alpha-lora, beta, beta-lora" in r.json()["error"]["message"]
