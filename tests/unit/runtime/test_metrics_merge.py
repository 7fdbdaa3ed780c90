"""Merging engine expositions into one valid Prometheus text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from kubeplex.runtime.metrics import merge_expositions

A = """# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 3.0
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 1.0
# HELP vllm:e2e_request_latency_seconds e2e
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="a"} 1.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="a"} 1.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="a"} 1.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="a"} 0.2
"""
B = A.replace('model_name="a"', 'model_name="b"').replace("3.0", "5.0")


def test_families_appear_once_with_every_engines_samples() -> None:
    merged = merge_expositions([A, B])
    assert merged.count("# TYPE vllm:num_requests_waiting gauge") == 1
    assert "python_gc" not in merged
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    waiting = {s.labels["model_name"]: s.value
               for s in families["vllm:num_requests_waiting"].samples}
    assert waiting == {"a": 3.0, "b": 5.0}
    counts = [s for s in families["vllm:e2e_request_latency_seconds"].samples
              if s.name.endswith("_count")]
    assert len(counts) == 2


def test_empty_inputs() -> None:
    assert merge_expositions([]) == ""
    assert merge_expositions(["", A]).startswith("# HELP vllm:num_requests_waiting")
