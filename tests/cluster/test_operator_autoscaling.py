"""Autoscaling end to end on the real control plane, with metrics from running ``sim``
engines: each fake KWOK pod gets a real ``kubeplex-runtime`` (sim engine) on loopback, the
operator scrapes them (``KUBEPLEX_URL_ANNOTATIONS``), a load burst makes it scale up (claiming
the warm pod first), the end of the burst scales down after stabilization (with a drain), and
an idle model with minReplicas 0 scales to zero."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import operator_harness as harness
import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION = harness.GROUP, harness.VERSION
#: Short autoscaler windows so the scenario runs in about a minute (defaults: 60 s stable
#: window, 120 s scale-down delay).
#: No forecast headroom: the forecast smooths over tens of seconds, so after the burst its error
#: band would hold a second replica (1.69 req/s each with --max-num-seqs 4) for about 90 s.
AUTOSCALER = {"stable_window_s": 6, "panic_window_s": 3, "scale_down_delay_s": 6,
              "cold_start_s": 3, "warm_start_s": 1, "stale_after_s": 10, "headroom_z": 0.0}
#: Concurrent clients of the burst; the sim serves at most 4 sequences per replica, so one
#: replica queues most of them.
CONCURRENCY = 24
BURST_S = 40.0


@pytest.fixture
def scaling_operator(cluster: Any, tmp_path: Path) -> Iterator[Any]:
    op = harness.Operator(cluster.kubeconfig, tmp_path / "operator.log", env={
        "KUBEPLEX_SCRAPE": "pods", "KUBEPLEX_URL_ANNOTATIONS": "true",
        "KUBEPLEX_AUTOSCALER": json.dumps(AUTOSCALER)}).start()
    yield op
    op.stop()


def test_burst_scales_up_through_the_warm_pool_then_down_then_to_zero(
        cluster: Any, scaling_operator: Any, namespace: str, k8s_client: Any,
        tmp_path: Path) -> None:
    op, wait_for = scaling_operator, harness.wait_for
    pool = f"burst-{uuid.uuid4().hex[:6]}"
    name = "burst"

    def msvc() -> dict[str, Any]:
        obj: dict[str, Any] = cluster.kubectl_json("get", "msvc", "-n", namespace, name)
        return obj

    def groups() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = cluster.kubectl_json(
            "get", "sgroup", "-n", namespace)["items"]
        return items

    def serving_pods() -> list[str]:
        items = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                     f"model.kubeplex.io/{name}=true")["items"]
        return [p["metadata"]["name"] for p in items]

    objs = [
        harness.pool_body(pool, maxGPUs=8, warmPool={"size": 1, "gpusPerPod": 1}),
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                            "profile": "llama-3.1-8b",
                            "engineArgs": ["--max-num-seqs", "4", "--startup-seconds", "1"]},
                  "engine": "sim", "pool": pool,
                  "slo": {"ttftSeconds": 0.5},
                  "parallelism": {"tensor": 1, "pipeline": 1},
                  "scaling": {"minReplicas": 1, "maxReplicas": 4, "targetQueuePerReplica": 2,
                              "scaleToZeroAfterSeconds": 5}}},
    ]
    try:
        with harness.SimFleet(k8s_client, namespace, tmp_path) as fleet:
            cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
            wait_for("1 replica and a warm standby", lambda: msvc().get("status", {}).get(
                "ready") == "1/1" and any(g["status"].get("phase") == "Warm" for g in groups()
                                          if g.get("status")), 90)
            warm = next(g["metadata"]["name"] for g in groups() if g["spec"].get("warm"))
            # The first replica started cold: its start is measured (created -> Ready).
            assert op.metric("kubeplex_operator_cold_start_seconds_count") >= 1
            assert op.metric("kubeplex_operator_cold_start_seconds_sum") > 0
            claims_before = op.metric("kubeplex_operator_warm_claims_total")
            with harness.Load(lambda: fleet.routers(serving_pods()), name, CONCURRENCY,
                              3 * BURST_S) as load:
                up = wait_for("a scale-up to 2+ ready replicas", lambda: (
                    m if (m := msvc())["status"].get("readyReplicas", 0) >= 2 else None), 90)
                print("scale-up:", up["status"]["lastScale"])
                assert up["status"]["lastScale"]["to"] >= 2
                assert up["status"]["observed"]["queue"] >= 0
                # the warm standby was claimed first (same group name, now serving the model)
                assert op.metric("kubeplex_operator_warm_claims_total") > claims_before
                claimed = next(g for g in groups() if g["metadata"]["name"] == warm)
                assert [m["modelService"] for m in claimed["spec"]["models"]] == [name]
                # it joins the Service once the runtime reports the model loaded (cold pods
                # under KWOK are Ready at once, so they may get there first)
                wait_for("the claimed pod in the Service", lambda: warm in serving_pods(), 60)
                claimed = next(g for g in groups() if g["metadata"]["name"] == warm)
                assert "after the claim" in json.dumps(claimed["status"])
                assert op.metric("kubeplex_operator_warm_claim_seconds_count") >= 1
                # and the pool refills its warm standby
                wait_for("the warm pool refilled", lambda: any(
                    g["spec"].get("warm") and g["metadata"]["name"] != warm
                    for g in groups()), 60)
            assert load.ok > 0
            peak = msvc()["status"]["readyReplicas"]
            down = wait_for("a scale-down after the stabilization window", lambda: (
                m if (m := msvc())["status"].get("desiredReplicas", peak) < peak else None), 90)
            print("scale-down:", down["status"]["lastScale"])
            wait_for("back to 1 serving replica", lambda: len(serving_pods()) == 1
                     and msvc()["status"]["ready"] == "1/1", 90)
            # idle with minReplicas 0: scale to zero after scaleToZeroAfterSeconds
            cluster.kubectl("patch", "msvc", "-n", namespace, name, "--type=merge", "-p",
                            json.dumps({"spec": {"scaling": {"minReplicas": 0}}}))
            zero = wait_for("scale to zero", lambda: (
                m if (m := msvc())["status"].get("ready") == "0/0" else None), 90)
            print("to zero:", zero["status"]["lastScale"])
            assert zero["status"]["sloStatus"] == "Idle"
            wait_for("no serving pod left", lambda: not serving_pods(), 60)
    finally:
        cluster.kubectl("delete", "gpupool", pool, "--wait=false", check=False)


def test_the_autoscaler_plans_with_the_cold_start_it_measured(
        cluster: Any, scaling_operator: Any, namespace: str, k8s_client: Any,
        tmp_path: Path) -> None:
    """Three replicas start cold at once: once all are Ready, the status shows their median
    cold start (created -> Ready; under KWOK a pod is Ready once scheduled, so seconds), which
    the autoscaler now plans with instead of the configured 3 s (``AUTOSCALER``); the
    operator's histogram counted the same starts."""
    op, wait_for = scaling_operator, harness.wait_for
    pool, name = f"cold-{uuid.uuid4().hex[:6]}", "cold"
    model = harness.msvc_body(name, pool, parallelism={"tensor": 1, "pipeline": 1},
                              scaling={"minReplicas": 3, "maxReplicas": 3})
    model["spec"]["model"]["engineArgs"] = ["--startup-seconds", "1"]
    try:
        with harness.SimFleet(k8s_client, namespace, tmp_path):
            cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(
                harness.pool_body(pool, maxGPUs=4)))
            cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(model))
            status = wait_for("the measured cold start in the status", lambda: (
                st if (st := cluster.kubectl_json("get", "msvc", "-n", namespace, name).get(
                    "status", {})).get("observed", {}).get("coldStartSeconds") is not None
                else None), 120)
            measured = status["observed"]["coldStartSeconds"]
            print("measured cold start:", measured, "s; status:", status["ready"])
            assert status["ready"] == "3/3"
            assert 0 <= measured < 60  # nothing here takes the configured default's minute
            # One timing feeds both: the status's median of this model's starts and the
            # histogram (every model's starts under this operator, so a mean near it).
            count = op.metric("kubeplex_operator_cold_start_seconds_count")
            mean = op.metric("kubeplex_operator_cold_start_seconds_sum") / count
            assert count >= 3 and abs(measured - mean) <= 5, (measured, mean)
    finally:
        cluster.kubectl("delete", "gpupool", pool, "--wait=false", check=False)
