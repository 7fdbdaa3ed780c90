"""The whole alert path into the operator, with real components: sim runtimes serving the fake
KWOK pods of a ModelService -> Prometheus (1 s scrapes) -> kubeplex's rules -> Alertmanager
(the chart's example routing) -> the operator's ``POST /alerts`` -> an evaluation on fresh
metrics that records the breach -> a scale-up decision. Measures load burst ->
alert-triggered evaluation -> scale-up.

The engines admit 2 sequences each (``--max-num-seqs 2``); the operator passes that limit to
the autoscaler's capacity model. Before it did (2026-11-21), the operator held at 1 replica
with TTFT 9x the SLO and 6-13 requests queued, trusting a 256-sequence batch.

The operator runs as a process with its default 5 s cycle: its autoscaler needs a few samples
of history (rates, windows), which an alert alone cannot give (with a 120 s cycle the alert's
evaluation ran but held: two scrapes 1 s apart). The alert adds an evaluation at once on top
of the cycle. Prometheus scrapes the operator's own /metrics for the per-ModelService series
the rules join on (``kubeplex_modelservice_info`` / SLO / queue target, see
kubeplex.autoscaler.alert_rules).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import operator_harness as harness
import pytest
import yaml
from promstack import PromStack, ScrapeTarget

from kubeplex.autoscaler.alert_rules import OPERATOR_JOB, RuleSettings
from kubeplex.cli._alerts import render_rules

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.slow]

GROUP, VERSION = "kubeplex.io", "v1alpha1"
MODEL = "alerted"
SLO_TTFT_S = 0.5
QUEUE_TARGET = 2
#: The load of the operator's own autoscaling test (tests/cluster/test_operator_autoscaling.py),
#: which its control law scales on: the sim admits 4 sequences at a time, 24 closed-loop
#: clients with 512-token prompts queue the rest.
MAX_NUM_SEQS = 4
CLIENTS = 24
PROMPT_TOKENS = 512
#: Short autoscaler windows (the operator's defaults are 60 s / 120 s).
AUTOSCALER = {"stable_window_s": 6, "panic_window_s": 3, "scale_down_delay_s": 30,
              "cold_start_s": 3, "warm_start_s": 1, "stale_after_s": 10}
#: The operator's default cycle.
INTERVAL_S = "5"
RULES = RuleSettings(ttft_window="10s", ttft_for="0s", queue_for="0s", operator_down_for="0s")
#: Seconds for the first pod to be Ready, and for the alert path to decide.
READY_S = 90.0
DECIDE_S = 60.0


def test_alert_path_into_the_operator_decides_a_scale_up(
        cluster: Any, namespace: str, k8s_client: Any, tmp_path: Path,
        promstack: Callable[..., PromStack]) -> None:
    pool = f"alerts-{uuid.uuid4().hex[:6]}"
    objs = [
        harness.pool_body(pool, maxGPUs=4),
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
         "metadata": {"name": MODEL, "namespace": namespace},
         "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                            "profile": "llama-3.1-8b",
                            "engineArgs": ["--max-num-seqs", str(MAX_NUM_SEQS),
                                           "--startup-seconds", "1"]},
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
                         ScrapeTarget(OPERATOR_JOB, f"127.0.0.1:{op.metrics_port}",
                                      honor_labels=True)],
                rules=render_rules(RULES), webhook_url=op.alerts_url, webhook_token=op.token)
            evaluations = op.metric("kubeplex_operator_evaluations_total", {"trigger": "alert"})
            start = time.monotonic()
            with harness.Load(lambda: fleet.routers(serving_pods()), MODEL, CLIENTS,
                              3 * DECIDE_S, PROMPT_TOKENS) as load:
                harness.wait_for("an evaluation triggered by an alert", lambda: op.metric(
                    "kubeplex_operator_evaluations_total", {"trigger": "alert"}) > evaluations,
                    DECIDE_S)
                evaluated = time.monotonic() - start
                # The evaluation saw the breach in fresh metrics and recorded a decision.
                status = harness.wait_for("the breach in the ModelService's status", lambda: (
                    st if (st := msvc()["status"]).get("sloStatus") == "Violated"
                    and st.get("observed", {}).get("ttftSeconds", 0) > SLO_TTFT_S else None),
                    DECIDE_S)
                observed = time.monotonic() - start
                scaled = harness.wait_for("a scale-up decision", lambda: (
                    st if (st := msvc()["status"]).get("lastScale", {}).get("to", 0) > 1
                    else None), DECIDE_S)
                decided = time.monotonic() - start
                # The dashboard's "what holds them" panel: what each stage of the latest
                # decision added, scraped from the operator by Prometheus (an evaluation
                # between scrapes of the engines holds for no data).
                stages = ("sum by (stage) (kubeplex_modelservice_stage_replicas"
                          f'{{modelservice="{MODEL}"}})')
                by_stage = stack.wait_for(lambda: (
                    found if "slo" in (found := {r["metric"]["stage"]: float(r["value"][1])
                                                 for r in stack.query(stages)}) else None),
                    "the SLO stage's series in Prometheus", DECIDE_S)
            assert by_stage["slo"] >= 1, by_stage
            assert load.ok > 0
            fired = {a["labels"]["alertname"] for a in stack.alertmanager_alerts()}
            assert fired & {"KubeplexQueueBacklog", "KubeplexTTFTSLOBurn"}
            assert op.metric("kubeplex_operator_alerts_total") >= 1
            (scaling,) = [c for c in status["conditions"] if c["type"] == "Scaling"]
            print(f"\nburst -> alert-triggered evaluation {evaluated:.2f} s, -> breach in status "
                  f"{observed:.2f} s, -> scale-up {decided:.2f} s; alerts {sorted(fired)}; "
                  f"decision: {scaled['lastScale']['reason']}; {scaling['message']}")
    finally:
        op.stop()
        cluster.kubectl("delete", "msvc", "-n", namespace, MODEL, "--wait=false", check=False)
        cluster.kubectl("delete", "gpupool", pool, "--wait=false", check=False)
