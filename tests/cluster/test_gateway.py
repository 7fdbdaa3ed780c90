"""``kubeplex gateway`` on the real control plane: a ModelService at zero replicas, a request
held by the gateway, the gateway's KubeplexRequestsHeld alert making the operator scale from
zero at once (its timer is two minutes), the request answered by the new replica.

Real processes throughout: the operator, the gateway (out of cluster, with the kubeconfig) and,
for the fake KWOK pod, a real ``kubeplex-runtime`` (sim engine) on loopback reached through the
pod's URL annotations (``KUBEPLEX_URL_ANNOTATIONS=true`` on operator and gateway)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import operator_harness as harness
import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION = harness.GROUP, harness.VERSION
#: The operator's timer: far longer than the test waits for a scale-from-zero decision, so
#: only the gateway's alert can explain a prompt one.
INTERVAL_S = 120
#: The decision must follow the held request within this (the alert path takes milliseconds;
#: the slack is for a loaded 2-core machine).
DECISION_WITHIN_S = 10.0
#: How long the held request may take end to end: decision, pod, KWOK, sim start.
ANSWER_WITHIN_S = 90.0


@pytest.fixture
def operator(cluster: Any, tmp_path: Path) -> Iterator[Any]:
    op = harness.Operator(cluster.kubeconfig, tmp_path / "operator.log", env={
        "KUBEPLEX_INTERVAL_SECONDS": str(INTERVAL_S), "KUBEPLEX_URL_ANNOTATIONS": "true"}).start()
    yield op
    op.stop()


@pytest.fixture
def gateway(cluster: Any, operator: Any, namespace: str, tmp_path: Path) -> Iterator[Any]:
    gw = harness.GatewayProcess(cluster.kubeconfig, tmp_path / "gateway.log", env={
        "KUBEPLEX_WATCH_NAMESPACES": namespace,
        "KUBEPLEX_OPERATOR_URL": f"http://127.0.0.1:{operator.webhook}",
        "KUBEPLEX_ALERT_TOKEN": operator.token,
        "KUBEPLEX_HOLD_TIMEOUT_SECONDS": str(ANSWER_WITHIN_S)}).start()
    yield gw
    gw.stop()


def test_held_request_scales_from_zero_and_is_answered(
        cluster: Any, operator: Any, gateway: Any, namespace: str, k8s_client: Any,
        tmp_path: Path) -> None:
    wait_for = harness.wait_for
    pool, name, served = f"gw-{uuid.uuid4().hex[:6]}", "zero", "org/zero-model"
    labels = {"namespace": namespace, "modelservice": name, "model": served}
    objs = [
        harness.pool_body(pool, maxGPUs=8),
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                            "profile": "llama-3.1-8b", "servedName": served,
                            "engineArgs": ["--startup-seconds", "1"]},
                  "engine": "sim", "pool": pool, "slo": {"ttftSeconds": 0.5},
                  "parallelism": {"tensor": 1, "pipeline": 1},
                  "scaling": {"minReplicas": 0, "maxReplicas": 2}}},
    ]

    def msvc() -> dict[str, Any]:
        obj: dict[str, Any] = cluster.kubectl_json("get", "msvc", "-n", namespace, name)
        return obj

    def listed() -> list[str]:
        status, text = harness.http_get(f"{gateway.url}/v1/models")
        return [m["id"] for m in json.loads(text)["data"]] if status == 200 else []

    try:
        with harness.SimFleet(k8s_client, namespace, tmp_path):
            cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
            wait_for("the gateway to route the model", lambda: listed() == [served], 30)
            wait_for("the operator at zero replicas", lambda: msvc().get("status", {}).get(
                "desiredReplicas") == 0, 60)
            # an unknown model: 404 naming the models there are
            status, text = harness.http_post(f"{gateway.url}/v1/completions", json.dumps(
                {"model": "nope", "prompt": "x"}).encode(), {"Content-Type": "application/json"})
            assert status == 404 and served in json.loads(text)["error"]["message"], text
            assert gateway.metric("kubeplex_gateway_held_requests", labels) == 0
            assert gateway.metric("kubeplex_gateway_replicas", labels) == 0

            alerts_before = operator.metric("kubeplex_operator_evaluations_total",
                                            {"trigger": "alert"})
            answer: dict[str, Any] = {}

            def ask() -> None:
                with httpx.Client(timeout=ANSWER_WITHIN_S + 30) as client:
                    r = client.post(f"{gateway.url}/v1/completions", json={
                        "model": served, "prompt": "hello", "max_tokens": 4})
                answer.update(status=r.status_code, body=r.text, at=time.monotonic())

            sent = time.monotonic()
            asker = threading.Thread(target=ask, daemon=True)
            asker.start()
            wait_for("the request held", lambda: gateway.metric(
                "kubeplex_gateway_held_requests", labels) == 1, 10, 0.05)
            # the gateway's alert makes the operator evaluate and scale from zero at once
            wait_for("an alert-triggered evaluation", lambda: operator.metric(
                "kubeplex_operator_evaluations_total", {"trigger": "alert"}) > alerts_before,
                DECISION_WITHIN_S, 0.05)
            decided = wait_for("desiredReplicas 1", lambda: (
                m if (m := msvc()).get("status", {}).get("desiredReplicas") == 1 else None),
                DECISION_WITHIN_S, 0.1)
            took = time.monotonic() - sent
            print(f"held request -> scale-from-zero decision: {took:.2f} s; "
                  f"{decided['status'].get('lastScale')}")
            assert took < INTERVAL_S / 4
            # the decision says why (its Event: lastScale may be rewritten by a later cycle)
            wait_for("the Scaled event naming the gateway's alert", lambda: any(
                "KubeplexRequestsHeld" in e.get("message", "") for e in cluster.kubectl_json(
                    "get", "events", "-n", namespace, "--field-selector", "reason=Scaled")[
                    "items"]), 10)
            assert gateway.metric("kubeplex_gateway_scale_signals_total",
                                  {"outcome": "sent"}) >= 1
            assert operator.metric("kubeplex_operator_alerts_total", {"outcome": "accepted"}) >= 1

            asker.join(ANSWER_WITHIN_S + 30)
            assert answer.get("status") == 200, f"{answer}\n{gateway.log()}"
            assert json.loads(answer["body"])["model"] == served
            print(f"held request answered after {answer['at'] - sent:.2f} s")
            assert gateway.metric("kubeplex_gateway_held_requests", labels) == 0
            assert gateway.metric("kubeplex_gateway_arrivals_total", labels) == 1
            assert gateway.metric("kubeplex_gateway_replicas", labels) == 1
            # now served without holding
            status, text = harness.http_post(f"{gateway.url}/v1/completions", json.dumps(
                {"model": served, "prompt": "x", "max_tokens": 2}).encode(),
                {"Content-Type": "application/json"})
            assert status == 200, text
            assert gateway.metric("kubeplex_gateway_arrivals_total", labels) == 2
    finally:
        cluster.kubectl("delete", "gpupool", pool, "--wait=false", check=False)


def test_cluster_wide_gateway_needs_the_namespace_header_for_a_shared_served_name(
        cluster: Any, namespace: str, tmp_path: Path) -> None:
    """All namespaces watched (no operator: routes come from the ModelServices alone): the
    same served name in two namespaces is refused without X-Kubeplex-Namespace, held in the
    named namespace with it, and gone from the gateway when its ModelService is deleted."""
    other = f"t-{uuid.uuid4().hex[:10]}"
    served = "org/shared-model"
    cluster.kubectl("create", "namespace", other)
    gw = harness.GatewayProcess(cluster.kubeconfig, tmp_path / "gateway.log", env={
        "KUBEPLEX_HOLD_TIMEOUT_SECONDS": "0.5"}).start()
    try:
        for ns in (namespace, other):
            cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump({
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
                "metadata": {"name": "shared"},
                "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                                   "servedName": served},
                         "pool": "none", "slo": {"ttftSeconds": 0.5},
                         "scaling": {"minReplicas": 0}}}))

        def roots() -> list[str]:
            status, text = harness.http_get(f"{gw.url}/v1/models")
            return sorted(m["root"] for m in json.loads(text)["data"]
                          if m["id"] == served) if status == 200 else []

        harness.wait_for("both namespaces routed", lambda: roots() == sorted(
            [f"{namespace}/shared", f"{other}/shared"]), 30)
        body = json.dumps({"model": served, "prompt": "x"}).encode()
        plain = {"Content-Type": "application/json"}
        status, text = harness.http_post(f"{gw.url}/v1/completions", body, plain)
        assert status == 400 and "X-Kubeplex-Namespace" in text, text
        status, text = harness.http_post(f"{gw.url}/v1/completions", body,
                                         {**plain, "X-Kubeplex-Namespace": other})
        assert status == 503 and "no ready replica" in text, text
        assert gw.metric("kubeplex_gateway_arrivals_total", {
            "namespace": other, "modelservice": "shared", "model": served}) == 1
        cluster.kubectl("delete", "msvc", "-n", other, "shared")
        harness.wait_for("the deleted one unrouted", lambda: roots() == [
            f"{namespace}/shared"], 30)
        status, text = harness.http_post(f"{gw.url}/v1/completions", body, plain)
        assert status == 503, text  # one namespace left: no header needed (held, then 503)
    finally:
        gw.stop()
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
