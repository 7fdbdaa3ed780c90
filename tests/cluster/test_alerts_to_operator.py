"""The whole alert path into the operator, with real components: sim runtimes serving the fake
KWOK pods of a ModelService -> Prometheus (1 s scrapes) -> kubeplex's rules -> Alertmanager
(the chart's example routing) -> the operator's ``POST /alerts`` -> an evaluation on fresh
metrics -> a scale-up decision. Measures load burst -> alert evaluation -> decision.

The operator runs as a process with a 120 s cycle, so only the alert explains a decision
within seconds. Until the operator exports the rules' per-ModelService series
(``kubeplex_modelservice_info`` / SLO / queue target, see kubeplex.autoscaler.alert_rules), a
prometheus_client exporter in this test publishes them from the ModelService's spec.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge
from promstack import PromStack, ScrapeTarget, TextExporter

from kubeplex.autoscaler.alert_rules import (
    INFO_METRIC,
    OPERATOR_JOB,
    QUEUE_TARGET_METRIC,
    SLO_TTFT_METRIC,
    RuleSettings,
    quantile_label,
)
from kubeplex.cli._alerts import render_rules

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.slow]

HARNESS = Path(__file__).with_name("operator_harness.py")
GROUP, VERSION = "kubeplex.io", "v1alpha1"
MODEL = "alerted"
SLO_TTFT_S = 0.5
QUEUE_TARGET = 2
#: The sim admits 2 sequences at a time; 16 closed-loop clients queue the rest.
MAX_NUM_SEQS = 2
CLIENTS = 16
#: Short autoscaler windows (the operator's defaults are 60 s / 120 s).
AUTOSCALER = {"stable_window_s": 6, "panic_window_s": 3, "scale_down_delay_s": 30,
              "cold_start_s": 3, "warm_start_s": 1, "stale_after_s": 10}
#: The cycle is long so that only an alert explains an evaluation within seconds.
INTERVAL_S = "120"
RULES = RuleSettings(ttft_window="10s", ttft_for="0s", queue_for="0s", operator_down_for="0s")
#: Seconds for the first pod to be Ready, and for the alert path to decide.
READY_S = 90.0
DECIDE_S = 45.0


if not HARNESS.exists():
    pytest.skip("tests/cluster/operator_harness.py (the operator area, issue 7) is not in this "
                "checkout", allow_module_level=True)


def load_harness() -> Any:
    spec = importlib.util.spec_from_file_location("kubeplex_operator_harness", HARNESS)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {HARNESS}")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def harness() -> Any:
    return load_harness()


class Load:
    """Closed-loop clients on the model's routers until stopped (bounded by a deadline)."""

    def __init__(self, routers: Callable[[], list[str]]) -> None:
        self.routers = routers
        self.stop = threading.Event()
        self.ok = 0
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _client(self, i: int) -> None:
        deadline = time.monotonic() + 3 * DECIDE_S
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                routers = self.routers()
                if not routers:
                    time.sleep(0.2)
                    continue
                try:
                    r = client.post(f"{routers[i % len(routers)]}/v1/completions", json={
                        "model": MODEL, "prompt": "hello", "max_tokens": 64})
                    self.ok += r.status_code == 200
                except httpx.HTTPError:
                    time.sleep(0.1)


@pytest.fixture
def contract_metrics() -> Iterator[tuple[str, Any]]:
    registry = CollectorRegistry()
    series = (
        Gauge(INFO_METRIC, "info", ["namespace", "modelservice", "model_name"],
              registry=registry),
        Gauge(SLO_TTFT_METRIC, "slo", ["namespace", "modelservice", "quantile"],
              registry=registry),
        Gauge(QUEUE_TARGET_METRIC, "target", ["namespace", "modelservice"], registry=registry),
    )
    with TextExporter(registry) as exporter:
        yield exporter.address, series


def test_alert_path_into_the_operator_decides_a_scale_up(
        harness: Any, cluster: Any, namespace: str, k8s_client: Any, tmp_path: Path,
        promstack: Callable[..., PromStack], contract_metrics: tuple[str, Any]) -> None:
    address, (info, slo, target) = contract_metrics
    info.labels(namespace, MODEL, MODEL).set(1)
    slo.labels(namespace, MODEL, quantile_label(95)).set(SLO_TTFT_S)
    target.labels(namespace, MODEL).set(QUEUE_TARGET)
    pool = f"alerts-{uuid.uuid4().hex[:6]}"
    objs = [
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUPool", "metadata": {"name": pool},
         "spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                  "gpu": {"product": "H100-80GB"}, "gpusPerNode": 8, "maxGPUs": 4}},
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
         "metadata": {"name": MODEL, "namespace": namespace},
         "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                            "profile": "llama-3.1-8b",
                            "engineArgs": ["--max-num-seqs", str(MAX_NUM_SEQS)]},
                  "engine": "sim", "pool": pool,
                  "slo": {"ttftSeconds": SLO_TTFT_S},
                  "parallelism": {"tensor": 1, "pipeline": 1},
                  "scaling": {"minReplicas": 1, "maxReplicas": 3,
                              "targetQueuePerReplica": QUEUE_TARGET}}},
    ]
    op = harness.Operator(cluster.kubeconfig, tmp_path / "operator.log", env={
        "KUBEPLEX_SCRAPE": "pods", "KUBEPLEX_URL_ANNOTATIONS": "true",
        "KUBEPLEX_INTERVAL_SECONDS": INTERVAL_S,
        "KUBEPLEX_AUTOSCALER": json.dumps(AUTOSCALER)}).start()

    def msvc() -> dict[str, Any]:
        obj: dict[str, Any] = cluster.kubectl_json("get", "msvc", "-n", namespace, MODEL)
        return obj

    def serving_pods() -> list[str]:
        items = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                     f"model.kubeplex.io/{MODEL}=true")["items"]
        return [p["metadata"]["name"] for p in items]

    try:
        with harness.SimFleet(k8s_client, namespace, tmp_path) as fleet:
            cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
            harness.wait_for("1 ready replica", lambda: msvc().get("status", {}).get(
                "ready") == "1/1", READY_S)
            (router,) = fleet.routers(serving_pods())
            stack = promstack(
                targets=[ScrapeTarget("kubeplex-runtime", router.removeprefix("http://"),
                                      labels={"namespace": namespace}),
                         ScrapeTarget(OPERATOR_JOB, address, honor_labels=True)],
                rules=render_rules(RULES), webhook_url=op.alerts_url, webhook_token=op.token)
            evaluations = op.metric("kubeplex_operator_evaluations_total", {"trigger": "alert"})
            before = msvc()["status"].get("lastScale")
            start = time.monotonic()
            with Load(lambda: fleet.routers(serving_pods())) as load:
                harness.wait_for("an evaluation triggered by an alert", lambda: op.metric(
                    "kubeplex_operator_evaluations_total", {"trigger": "alert"}) > evaluations,
                    DECIDE_S)
                evaluated = time.monotonic() - start
                decided = harness.wait_for("a scale-up decision", lambda: (
                    m if (m := msvc())["status"].get("lastScale") != before
                    and m["status"]["lastScale"]["to"] > 1 else None), DECIDE_S)
                decision = time.monotonic() - start
            assert load.ok > 0
            fired = {a["labels"]["alertname"] for a in stack.alertmanager_alerts()}
            print(f"\nburst -> alert evaluation {evaluated:.2f} s, -> scale-up decision "
                  f"{decision:.2f} s; alerts {sorted(fired)}; "
                  f"lastScale {decided['status']['lastScale']}")
            assert fired & {"KubeplexQueueBacklog", "KubeplexTTFTSLOBurn"}
            assert op.metric("kubeplex_operator_alerts_total") >= 1
    finally:
        op.stop()
        cluster.kubectl("delete", "msvc", "-n", namespace, MODEL, "--wait=false", check=False)
        cluster.kubectl("delete", "gpupool", pool, "--wait=false", check=False)
