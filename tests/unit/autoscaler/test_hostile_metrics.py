"""Metrics text from a replica is input like any other: garbage is a MetricsSourceError (or
is skipped), never another exception, in the autoscaler's parser and the runtime's merge."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeplex.autoscaler.errors import MetricsSourceError
from kubeplex.autoscaler.sources import parse_metrics_text
from kubeplex.runtime.metrics import merge_expositions

_LINES = st.one_of(st.text(max_size=80), st.sampled_from([
    "# TYPE vllm:num_requests_waiting gauge",
    'vllm:num_requests_waiting{model_name="m"} 3',
    'vllm:num_requests_waiting{model_name="m"} NaN',
    'vllm:num_requests_waiting{model_name="m"} +Inf',
    "# TYPE vllm:time_to_first_token_seconds histogram",
    'vllm:time_to_first_token_seconds_bucket{model_name="m",le="0.1"} 2',
    'vllm:time_to_first_token_seconds_bucket{model_name="m",le="+Inf"} 1',
    'vllm:time_to_first_token_seconds_bucket{model_name="m",le="soon"} 1',
    'vllm:time_to_first_token_seconds_bucket{model_name="m",le=""} 1',
    'vllm:time_to_first_token_seconds_count{model_name="m"} -1',
    'vllm:generation_tokens_total{model_name="m"} 1e308',
    "# EOF", "", 'vllm:x{a="\\',
]))


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(st.lists(_LINES, max_size=12))
def test_any_exposition_parses_or_is_refused_by_name(lines: list[str]) -> None:
    text = "\n".join(lines)
    try:
        scrape = parse_metrics_text(text, "m", 1.0, target="replica-1")
    except MetricsSourceError:
        scrape = None  # refused, with a message naming the target
    assert scrape is None or scrape.time == 1.0
    merged = merge_expositions([text, text])
    assert isinstance(merged, str)


def test_a_bucket_bound_that_is_no_number_is_named() -> None:
    text = ("# TYPE vllm:time_to_first_token_seconds histogram\n"
            'vllm:time_to_first_token_seconds_bucket{model_name="m",le="soon"} 1\n')
    with pytest.raises(MetricsSourceError, match="le='soon' is not a number"):
        parse_metrics_text(text, "m", 0.0)
