"""The alert path into the real operator pod: a real Alertmanager (the chart's example routing)
posts a kubeplex alert to the operator container's ``/alerts`` with the token of the chart's
Secret, and the operator evaluates that ModelService at once; Prometheus scrapes the operator
pod's /metrics across the pod network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import operator_harness as harness
import pytest
from promstack import PromStack, ScrapeTarget

from kubeplex.autoscaler.alert_rules import OPERATOR_JOB, RuleSettings
from kubeplex.cli._alerts import render_rules

pytestmark = [pytest.mark.realpods, pytest.mark.prometheus, pytest.mark.slow]


def test_alertmanager_wakes_the_operator_pod(
        real: Any, namespace: str, promstack: Callable[..., PromStack]) -> None:
    real.serve(namespace, "watched", min_replicas=1, max_replicas=1)
    real.wait_ready(namespace, "watched", 1)
    operator = real.release_pod("operator")["status"]["podIP"]
    metrics = f"http://{operator}:9090/metrics"
    stack = promstack(targets=[ScrapeTarget(OPERATOR_JOB, f"{operator}:9090",
                                            honor_labels=True)],
                      rules=render_rules(RuleSettings()),
                      webhook_url=f"http://{operator}:8443/alerts",
                      webhook_token=real.alert_token())
    accepted = harness.metric_sum(metrics, "kubeplex_operator_alerts_total",
                                  {"outcome": "accepted"})
    evaluations = harness.metric_sum(metrics, "kubeplex_operator_evaluations_total",
                                     {"trigger": "alert"})
    # What Prometheus would send when one of kubeplex's rules fires for this ModelService.
    alert = {"labels": {"alertname": "KubeplexQueueBacklog", "kubeplex_receiver": "operator",
                        "namespace": namespace, "modelservice": "watched",
                        "severity": "warning"},
             "annotations": {"summary": "test alert from tests/realpods"}}
    httpx.post(f"{stack.alertmanager_url}/api/v2/alerts", json=[alert],
               timeout=10).raise_for_status()
    harness.wait_for("the operator pod to accept the alert", lambda: harness.metric_sum(
        metrics, "kubeplex_operator_alerts_total", {"outcome": "accepted"}) > accepted, 60)
    harness.wait_for("an evaluation triggered by it", lambda: harness.metric_sum(
        metrics, "kubeplex_operator_evaluations_total", {"trigger": "alert"}) > evaluations, 60)
    # Prometheus reaches the operator pod too (the series the rules join on).
    assert stack.query(f'up{{job="{OPERATOR_JOB}"}} == 1')
    # A wrong token is refused and counted.
    status, body = harness.http_post(f"http://{operator}:8443/alerts", b"{}",
                                     {"Authorization": "Bearer wrong"})
    assert status == 401, body
    assert harness.metric_sum(metrics, "kubeplex_operator_alerts_total",
                              {"outcome": "unauthorized"}) >= 1
