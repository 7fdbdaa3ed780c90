"""The alert path from a real serving runtime: a load burst on ``kubeplex-runtime`` (``sim``
engine) breaches the TTFT SLO and the queue target; Prometheus scrapes the runtime's merged
``/metrics``, kubeplex's rules fire, Alertmanager posts to the webhook.

Needs the runtime area (``kubeplex.runtime.harness``); skips naming it where it is absent.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge
from promstack import PromStack, ScrapeTarget, TextExporter, WebhookReceiver

from kubeplex.autoscaler.alert_rules import (
    ALERT_QUEUE_BACKLOG,
    ALERT_TTFT_SLO_BURN,
    INFO_METRIC,
    OPERATOR_JOB,
    QUEUE_TARGET_METRIC,
    SLO_TTFT_METRIC,
    RuleSettings,
    quantile_label,
)
from kubeplex.cli._alerts import render_rules

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

NAMESPACE = "team-a"
MODELSERVICE = "chat"
MODEL = "llama-8b"
TOKEN = "runtime-test-token"
#: The sim engine admits this many sequences at once; the rest of a burst waits in its queue
#: (vllm:num_requests_waiting) and their TTFT includes the wait.
MAX_NUM_SEQS = 2
#: Concurrent requests of the burst and their output length: with 2 running at a time the
#: later ones wait several decode lengths, far above the SLO below.
BURST = 24
MAX_TOKENS = 64
SLO_TTFT_S = 0.25
QUEUE_TARGET = 2
TEST_RULES = RuleSettings(ttft_window="10s", ttft_for="0s", queue_for="0s",
                          operator_down_for="0s")
#: Bound on burst start -> both alerts posted (1 s intervals; ENV.md saw 1-2 s per alert).
ALERT_TIMEOUT_S = 45.0


def need(module: str, why: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not in this checkout ({why})")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Any]:
    harness = need("kubeplex.runtime.harness", "the serving runtime, issue 4")
    config = {"models": [harness.model_entry(MODEL, "sim", sim_args=(
        "--max-num-seqs", str(MAX_NUM_SEQS)))]}
    with harness.RuntimeProcess(config, tmp_path / "runtime") as rt:
        yield rt


@pytest.fixture
def operator_metrics() -> Iterator[str]:
    """What the operator exports for team-a/chat (its SLO, queue target, model name)."""
    registry = CollectorRegistry()
    Gauge(INFO_METRIC, "info", ["namespace", "modelservice", "model_name"],
          registry=registry).labels(NAMESPACE, MODELSERVICE, MODEL).set(1)
    Gauge(SLO_TTFT_METRIC, "slo", ["namespace", "modelservice", "quantile"],
          registry=registry).labels(NAMESPACE, MODELSERVICE, quantile_label(95)).set(SLO_TTFT_S)
    Gauge(QUEUE_TARGET_METRIC, "target", ["namespace", "modelservice"],
          registry=registry).labels(NAMESPACE, MODELSERVICE).set(QUEUE_TARGET)
    with TextExporter(registry) as exporter:
        yield exporter.address


def burst(url: str) -> None:
    def one(i: int) -> int:
        rsp = httpx.post(f"{url}/v1/completions", timeout=120, json={
            "model": MODEL, "prompt": f"request {i}", "max_tokens": MAX_TOKENS})
        return rsp.status_code

    with ThreadPoolExecutor(BURST) as pool:
        codes = list(pool.map(one, range(BURST)))
    assert codes == [200] * BURST


def test_burst_on_sim_runtime_fires_ttft_and_queue_alerts(
        promstack: Callable[..., PromStack], runtime: Any, operator_metrics: str) -> None:
    with WebhookReceiver() as receiver:
        stack = promstack(
            targets=[ScrapeTarget("kubeplex-runtime", runtime.url.removeprefix("http://"),
                                  labels={"namespace": NAMESPACE}),
                     ScrapeTarget(OPERATOR_JOB, operator_metrics, honor_labels=True)],
            rules=render_rules(TEST_RULES), webhook_url=receiver.url, webhook_token=TOKEN)
        # The runtime's merged /metrics carries vLLM's names (not vllm_*: text format).
        stack.wait_for(lambda: stack.query(f'vllm:num_requests_waiting{{model_name="{MODEL}"}}'),
                       "the sim engine's vllm:num_requests_waiting scraped")
        assert not receiver.received()
        start = time.monotonic()
        first: dict[str, float] = {}
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(burst, runtime.url)

            def both_fired() -> bool:
                for post in receiver.received():
                    for alert in post.body["alerts"]:
                        if alert["status"] == "firing":
                            first.setdefault(alert["labels"]["alertname"], post.at - start)
                return {ALERT_TTFT_SLO_BURN, ALERT_QUEUE_BACKLOG} <= first.keys()

            stack.wait_for(both_fired, "TTFT SLO burn and queue backlog alerts posted",
                           ALERT_TIMEOUT_S)
            load.result()
        print(f"\nburst start -> webhook: {', '.join(f'{k} {v:.2f} s' for k, v in first.items())}")
    for post in receiver.received():
        assert post.headers["Authorization"] == f"Bearer {TOKEN}"
        for alert in post.body["alerts"]:
            assert alert["labels"]["namespace"] == NAMESPACE
            assert alert["labels"]["modelservice"] == MODELSERVICE
            assert alert["labels"]["kubeplex_receiver"] == "operator"
