"""The alert path with real components: exporter -> Prometheus -> rules -> Alertmanager -> webhook.

A real ``prometheus_client`` exporter on loopback plays a serving pod (``vllm:*`` series) and the
operator (``kubeplex_modelservice_*`` series); Prometheus scrapes both every second and evaluates
kubeplex's own rules (from ``kubeplex.autoscaler.alert_rules``, hold times set to 0 s);
Alertmanager runs the chart's example configuration and posts to a receiver in this test.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram
from promstack import PromStack, ScrapeTarget, TextExporter, WebhookPost, WebhookReceiver

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
TOKEN = "test-token-0123456789"
#: vLLM 0.32/0.33 TTFT histogram buckets (no 2.0 edge; DESIGN.md).
VLLM_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                     2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
#: Queue target per replica the "operator" exports; the breach sets 4x that.
QUEUE_TARGET = 2.0
#: Latency samples: one ModelService each, so each alert is a new Alertmanager group and
#: goes out after group_wait (1 s) rather than group_interval.
SAMPLES = 5
#: Rules as the chart ships them, but alerting on the first evaluation (tests measure the
#: pipeline, not the hold times) and a short TTFT window for 1 s scrapes.
TEST_RULES = RuleSettings(ttft_window="10s", ttft_for="0s", queue_for="0s",
                          operator_down_for="0s")
V4_FIELDS = {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
             "commonLabels", "commonAnnotations", "externalURL", "alerts"}
ALERT_FIELDS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL",
                "fingerprint"}


@dataclass
class Exporters:
    """Metrics of one serving pod (vLLM) and of the operator, each on its own loopback port."""

    runtime: str
    operator: str
    waiting: Gauge
    ttft: Histogram
    info: Gauge
    queue_target: Gauge
    slo: Gauge


@pytest.fixture
def exporters() -> Iterator[Exporters]:
    runtime, operator = CollectorRegistry(), CollectorRegistry()
    waiting = Gauge("vllm:num_requests_waiting", "Requests waiting", ["model_name", "engine"],
                    registry=runtime)
    ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT", ["model_name", "engine"],
                     buckets=VLLM_TTFT_BUCKETS, registry=runtime)
    info = Gauge(INFO_METRIC, "ModelService info",
                 ["namespace", "modelservice", "model_name"], registry=operator)
    queue_target = Gauge(QUEUE_TARGET_METRIC, "queue target", ["namespace", "modelservice"],
                         registry=operator)
    slo = Gauge(SLO_TTFT_METRIC, "TTFT SLO", ["namespace", "modelservice", "quantile"],
                registry=operator)
    with TextExporter(runtime) as runtime_exporter, TextExporter(operator) as operator_exporter:
        yield Exporters(runtime_exporter.address, operator_exporter.address, waiting, ttft,
                        info, queue_target, slo)


def start_stack(promstack: Callable[..., PromStack], exporters: Exporters,
                receiver: WebhookReceiver) -> PromStack:
    return promstack(
        targets=[
            # Like the chart's PodMonitor: the pod's namespace becomes a target label.
            ScrapeTarget("kubeplex-runtime", exporters.runtime,
                         labels={"namespace": NAMESPACE}),
            # Like the chart's ServiceMonitor: honor_labels keeps the series' own namespace.
            ScrapeTarget(OPERATOR_JOB, exporters.operator,
                         honor_labels=True, labels={"namespace": "kubeplex-system"}),
        ],
        rules=render_rules(TEST_RULES),
        webhook_url=receiver.url,
        webhook_token=TOKEN,
    )


def firing_posts(receiver: WebhookReceiver, alertname: str, modelservice: str
                 ) -> list[tuple[WebhookPost, dict[str, object]]]:
    return [(post, alert) for post in receiver.received() for alert in post.body["alerts"]
            if alert["status"] == "firing" and alert["labels"]["alertname"] == alertname
            and alert["labels"].get("modelservice") == modelservice]


def test_queue_backlog_reaches_webhook_with_v4_payload_and_latency(
        promstack: Callable[..., PromStack], exporters: Exporters) -> None:
    names = [f"chat-{i}" for i in range(SAMPLES)]
    for name in names:
        exporters.info.labels(NAMESPACE, name, f"model-{name}").set(1)
        exporters.queue_target.labels(NAMESPACE, name).set(QUEUE_TARGET)
        exporters.waiting.labels(f"model-{name}", "0").set(0)
    with WebhookReceiver() as receiver:
        stack = start_stack(promstack, exporters, receiver)
        # Below target: the rule must not fire (give it a few evaluations to prove it).
        stack.wait_for(lambda: stack.query(f'count(vllm:num_requests_waiting) == {SAMPLES}'),
                       "every model's queue series scraped")
        settle = time.monotonic() + 3.0
        stack.wait_for(lambda: time.monotonic() > settle, "three evaluations")
        assert not [a for a in stack.prometheus_alerts()
                    if a["labels"]["alertname"] == ALERT_QUEUE_BACKLOG]
        assert not receiver.received()

        latencies, to_rule, to_webhook = [], [], []
        for name in names:
            start, start_wall = time.monotonic(), time.time()
            exporters.waiting.labels(f"model-{name}", "0").set(4 * QUEUE_TARGET)
            post, alert = stack.wait_for(
                lambda name=name: next(iter(firing_posts(receiver, ALERT_QUEUE_BACKLOG, name)),
                                       None),
                f"the webhook POST for {name}", timeout=30.0)
            latencies.append(post.at - start)
            # startsAt is the rule evaluation that saw the breach (Prometheus' wall clock).
            fired = datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")).timestamp()
            to_rule.append(fired - start_wall)
            to_webhook.append(post.wall - fired)

            assert post.path == "/alerts"
            assert post.headers["Authorization"] == f"Bearer {TOKEN}"
            assert set(post.body) >= V4_FIELDS, post.body
            assert post.body["version"] == "4"
            assert post.body["receiver"] == "kubeplex-operator"
            assert set(alert) >= ALERT_FIELDS, alert
            assert alert["endsAt"] == "0001-01-01T00:00:00Z"
            labels = alert["labels"]
            assert labels["namespace"] == NAMESPACE
            assert labels["modelservice"] == name
            assert labels["kubeplex_receiver"] == "operator"
            assert alert["fingerprint"]

    median = statistics.median(latencies)
    print(f"\nalert latency (metric change -> webhook POST), n={len(latencies)}: "
          f"median {median:.2f} s, min {min(latencies):.2f} s, max {max(latencies):.2f} s; "
          f"change -> rule evaluation (scrape + eval) median "
          f"{statistics.median(to_rule):.2f} s, evaluation -> POST (notify + group_wait) "
          f"median {statistics.median(to_webhook):.2f} s")
    # Bound, not a benchmark: a POST at all within the poll timeout is the functional claim;
    # the numbers go to docs/benchmarks.md.
    assert all(lat > 0 for lat in latencies)


def test_ttft_slo_burn_fires_from_a_real_histogram(
        promstack: Callable[..., PromStack], exporters: Exporters) -> None:
    exporters.info.labels(NAMESPACE, "chat", "llama-8b").set(1)
    exporters.info.labels(NAMESPACE, "fast", "qwen").set(1)
    q = quantile_label(95)
    exporters.slo.labels(NAMESPACE, "chat", q).set(0.5)
    exporters.slo.labels(NAMESPACE, "fast", q).set(0.5)
    with WebhookReceiver() as receiver:
        stack = start_stack(promstack, exporters, receiver)
        deadline = time.monotonic() + 30.0
        # Keep both models serving: chat slowly (1.2 s TTFT), fast quickly (50 ms).
        while not firing_posts(receiver, ALERT_TTFT_SLO_BURN, "chat"):
            assert time.monotonic() < deadline, "no TTFT SLO burn alert within 30 s"
            for _ in range(20):
                exporters.ttft.labels("llama-8b", "0").observe(1.2)
                exporters.ttft.labels("qwen", "0").observe(0.05)
            time.sleep(0.2)
        (post, alert), *_ = firing_posts(receiver, ALERT_TTFT_SLO_BURN, "chat")
        assert alert["labels"]["quantile"] == q
        assert alert["labels"]["model_name"] == "llama-8b"
        assert post.headers["Authorization"] == f"Bearer {TOKEN}"
        # The fast model stayed under its SLO: no alert for it, in Prometheus or the webhook.
        assert not firing_posts(receiver, ALERT_TTFT_SLO_BURN, "fast")
        assert not [a for a in stack.prometheus_alerts()
                    if a["labels"].get("modelservice") == "fast"]


def test_posted_alerts_become_autoscaler_triggers(
        promstack: Callable[..., PromStack], exporters: Exporters) -> None:
    """Alertmanager's real payloads, through the autoscaler's webhook parser, name the
    ModelService; the same payloads again are duplicates (fingerprint + startsAt)."""
    try:
        alerts = importlib.import_module("kubeplex.autoscaler.alerts")
    except ImportError:
        pytest.skip("kubeplex.autoscaler.alerts (the autoscaler's webhook parser, issue 5) is "
                    "not in this checkout")
    exporters.info.labels(NAMESPACE, "chat", "llama-8b").set(1)
    exporters.queue_target.labels(NAMESPACE, "chat").set(QUEUE_TARGET)
    exporters.waiting.labels("llama-8b", "0").set(4 * QUEUE_TARGET)
    with WebhookReceiver() as receiver:
        stack = start_stack(promstack, exporters, receiver)
        stack.wait_for(lambda: firing_posts(receiver, ALERT_QUEUE_BACKLOG, "chat"),
                       "the queue backlog POST", timeout=30.0)
        posts = receiver.received()
    ledger = alerts.AlertLedger()
    triggers = []
    for post in posts:
        parsed = alerts.parse_webhook(post.body, ledger, now=post.at)
        ledger = parsed.ledger
        triggers += [(t.namespace, t.modelservice, t.alertname) for t in parsed.triggers]
    assert (NAMESPACE, "chat", ALERT_QUEUE_BACKLOG) in triggers
    for post in posts:
        assert not alerts.parse_webhook(post.body, ledger, now=post.at).triggers
