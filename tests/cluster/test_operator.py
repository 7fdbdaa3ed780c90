"""The operator (a real ``kubeplex operator`` process) on the real control plane: examples
become ServingGroups and pods on the fake GPU nodes, Services select them, status columns
say something, deletes clean up, bad specs are Degraded, GPUs are never over-committed, the
alert webhook authenticates and triggers evaluations, and a restart converges."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import operator_harness as harness
import pytest
import yaml

GROUP, VERSION = harness.GROUP, harness.VERSION
Operator, http_post, wait_for = harness.Operator, harness.http_post, harness.wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0


@pytest.fixture
def operator(cluster: Any, tmp_path: Path) -> Iterator[Operator]:
    op = Operator(cluster.kubeconfig, tmp_path / "operator.log").start()
    yield op
    op.stop()


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


msvc_body = harness.msvc_body


def apply(cluster: Any, namespace: str | None, *objs: dict[str, Any]) -> None:
    args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
    cluster.kubectl(*args, stdin=yaml.safe_dump_all(objs))


def groups(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", "sgroup", "-n", namespace)["items"]
    return items


def pods(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", "kubeplex.io/group")["items"]
    return items


def msvc(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.kubectl_json("get", "msvc", "-n", namespace, name)
    return obj


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", ()) if c["type"] == kind),
                {})


def delete_pool(cluster: Any, name: str) -> None:
    cluster.kubectl("delete", "gpupool", name, "--wait=false", check=False)


# ---- the vertical slice ------------------------------------------------------------------

def test_example_becomes_groups_pods_and_a_service(cluster: Any, operator: Operator,
                                                   namespace: str) -> None:
    docs = list(yaml.safe_load_all((REPO / "examples" / "llama-3.1-8b-h100.yaml").read_text()))
    pool_name = uniq("h100")
    for d in docs:
        if d["kind"] == "GPUPool":
            d["metadata"]["name"] = pool_name
        else:
            d["metadata"]["namespace"] = namespace
            d["spec"]["pool"] = pool_name
            d["spec"]["scaling"]["minReplicas"] = 2
    try:
        apply(cluster, None, *docs)
        ready = wait_for("llama-8b 2/2 Ready", lambda: (
            m if (m := msvc(cluster, namespace, "llama-8b")).get("status", {}).get("ready")
            == "2/2" else None), WAIT_S)
        sgs = groups(cluster, namespace)
        serving = [g for g in sgs if not g["spec"].get("warm")]
        assert len(serving) == 2
        by_name = {p["metadata"]["name"]: p for p in pods(cluster, namespace)}
        for g in serving:
            pod = by_name[g["metadata"]["name"]]
            # scheduled where placement said, with the group's GPUs and the model label
            assert pod["spec"]["nodeName"] == g["spec"]["nodeName"]
            gpus = pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
            assert int(gpus) == g["spec"]["gpus"] == (g["spec"]["tensorParallel"]
                                                       * g["spec"]["pipelineParallel"])
            assert pod["metadata"]["labels"]["model.kubeplex.io/llama-8b"] == "true"
            assert pod["metadata"]["ownerReferences"][0]["kind"] == "ServingGroup"
            assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
            assert g["status"]["phase"] == "Ready"
        # the Service selects exactly the serving pods (warm standbys are not in it)
        svc = cluster.kubectl_json("get", "svc", "-n", namespace, "llama-8b")
        selector = svc["spec"]["selector"]
        selected = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                        ",".join(f"{k}={v}" for k, v in selector.items()))
        assert sorted(p["metadata"]["name"] for p in selected["items"]) == sorted(
            g["metadata"]["name"] for g in serving)
        # status for kubectl and /scale
        st = ready["status"]
        assert st["selector"] == "model.kubeplex.io/llama-8b=true"
        assert st["observedGeneration"] == ready["metadata"]["generation"]
        assert condition(ready, "Ready")["status"] == "True"
        assert condition(ready, "Degraded")["status"] == "False"
        assert len(st["placement"]) == 2
        table = cluster.kubectl("get", "msvc", "-n", namespace).stdout
        assert re.search(r"llama-8b\s+2/2\s+0\.3\s+(Unknown|Idle)", table), table
        wide = cluster.kubectl("get", "msvc", "-n", namespace, "-o", "wide").stdout
        assert pool_name in wide
        pool = cluster.kubectl_json("get", "gpupool", pool_name)
        assert pool["status"]["totalGPUs"] == 32
        assert pool["status"]["allocatedGPUs"] == sum(g["spec"]["gpus"] for g in serving)
        assert pool["status"]["freeGPUs"] == 32 - pool["status"]["allocatedGPUs"] - pool[
            "status"]["warmGPUs"]
        # kubectl scale pins the count through /scale
        cluster.kubectl("scale", "-n", namespace, "msvc/llama-8b", "--replicas=1")
        wait_for("scale to 1", lambda: len([g for g in groups(cluster, namespace)
                                            if not g["spec"].get("warm")]) == 1, WAIT_S)
        scaled = msvc(cluster, namespace, "llama-8b")
        assert scaled["status"]["lastScale"]["from"] == 2
        assert scaled["status"]["lastScale"]["to"] == 1
        assert "pinned" in scaled["status"]["lastScale"]["reason"]
        # deleting the ModelService removes everything it owned
        cluster.kubectl("delete", "msvc", "-n", namespace, "llama-8b", "--wait=false")
        wait_for("groups, pods and Service gone", lambda: not [
            g for g in groups(cluster, namespace) if not g["spec"].get("warm")] and not [
            p for p in pods(cluster, namespace) if "model.kubeplex.io/llama-8b"
            in p["metadata"]["labels"]] and cluster.kubectl(
            "get", "svc", "-n", namespace, "llama-8b", check=False).returncode != 0
            and cluster.kubectl("get", "msvc", "-n", namespace, "llama-8b",
                                check=False).returncode != 0, WAIT_S)
    finally:
        delete_pool(cluster, pool_name)


def test_multi_model_example_serves_every_servable_model(cluster: Any, operator: Operator,
                                                         namespace: str) -> None:
    docs = list(yaml.safe_load_all((REPO / "examples" / "multi-model-h100.yaml").read_text()))
    pool_name = uniq("shared")
    objs = []
    for d in docs:
        if d["kind"] == "Namespace":
            continue
        if d["kind"] == "GPUPool":
            d["metadata"]["name"] = pool_name
            d["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        else:
            d["metadata"]["namespace"] = namespace
            d["spec"]["pool"] = pool_name
        objs.append(d)
    try:
        apply(cluster, None, *objs)
        wait_for("chat-8b and analyst-32b Ready", lambda: all(
            msvc(cluster, namespace, n).get("status", {}).get("readyReplicas") == 1
            for n in ("chat-8b", "analyst-32b")), WAIT_S)
        # s3:// with the vllm engine cannot be loaded by the runtime: Degraded, says how
        coder = wait_for("coder-7b Degraded", lambda: (
            m if condition(m := msvc(cluster, namespace, "coder-7b"), "Degraded").get(
                "status") == "True" else None), WAIT_S)
        assert "pvc://" in condition(coder, "Degraded")["message"]
        events = cluster.kubectl_json("get", "events", "-n", namespace,
                                      "--field-selector", "involvedObject.name=coder-7b")
        assert any(e["reason"] == "UnsupportedSource" for e in events["items"])
        # min 0 without traffic: nothing placed, Ready with 0/0
        summ = msvc(cluster, namespace, "summarizer-7b")
        assert summ["status"]["ready"] == "0/0"
        pool = cluster.kubectl_json("get", "gpupool", pool_name)
        assert pool["status"]["warmPods"] == 2  # warmPool.size: 2
    finally:
        delete_pool(cluster, pool_name)


def test_unservable_specs_are_degraded_and_others_still_serve(
        cluster: Any, operator: Operator, namespace: str) -> None:
    pool = uniq("a100")
    try:
        apply(cluster, None, harness.pool_body(pool, "NVIDIA-A100-SXM4-40GB", "A100-80GB",
                                       gpusPerNode=4))
        apply(cluster, namespace,
              msvc_body("too-big", pool, model={"uri": "hf://x/y", "profile": "llama-3.1-70b"},
                        parallelism={"tensor": 1, "pipeline": 1}),
              msvc_body("no-profile", pool, model={"uri": "hf://someone/mystery-model"}),
              msvc_body("no-pool", "does-not-exist"),
              msvc_body("fine", pool))
        fine = wait_for("fine Ready", lambda: (
            m if (m := msvc(cluster, namespace, "fine")).get("status", {}).get("ready")
            == "1/1" else None), WAIT_S)
        assert condition(fine, "Degraded")["status"] == "False"
        for name, reason, hint in (("too-big", "DoesNotFit", "spec.parallelism"),
                                   ("no-profile", "UnknownProfile", "spec.model.profile"),
                                   ("no-pool", "UnknownPool", "create it")):
            m = wait_for(f"{name} Degraded", lambda n=name: (
                m if condition(m := msvc(cluster, namespace, n), "Degraded").get(
                    "status") == "True" else None), WAIT_S)
            cond = condition(m, "Degraded")
            assert cond["reason"] == reason, cond
            assert hint in cond["message"], cond
        assert not [p for p in pods(cluster, namespace)
                    if "fine" not in p["metadata"]["name"]]
    finally:
        delete_pool(cluster, pool)


def test_demand_beyond_free_gpus_says_so_instead_of_pending_pods(
        cluster: Any, operator: Operator, namespace: str) -> None:
    pool = uniq("small")
    try:
        apply(cluster, None, harness.pool_body(pool, maxGPUs=2))
        apply(cluster, namespace, msvc_body("greedy", pool, scaling={
            "minReplicas": 4, "maxReplicas": 4}))
        m = wait_for("Scaling=InsufficientGPUs", lambda: (
            m if condition(m := msvc(cluster, namespace, "greedy"), "Scaling").get("reason")
            == "InsufficientGPUs" else None), WAIT_S)
        assert pool in condition(m, "Scaling")["message"]
        assert "maxGPUs" in condition(m, "Scaling")["message"]
        time.sleep(2)  # a few more cycles: nothing more appears
        ps = pods(cluster, namespace)
        assert len(ps) == 2
        assert all(p["status"].get("phase") != "Pending" or p["spec"].get("nodeName")
                   for p in ps)
        gpool = cluster.kubectl_json("get", "gpupool", pool)
        assert gpool["status"]["totalGPUs"] == 2
        assert gpool["status"]["freeGPUs"] == 0
    finally:
        delete_pool(cluster, pool)


# ---- the alert webhook ------------------------------------------------------------------

def alert_payload(namespace: str, name: str, fingerprint: str) -> dict[str, Any]:
    labels = {"alertname": "KubeplexTTFTBurn", "namespace": namespace, "modelservice": name,
              "severity": "warning"}
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
            "receiver": "kubeplex", "groupLabels": {}, "commonLabels": labels,
            "commonAnnotations": {}, "externalURL": "http://am",
            "alerts": [{"status": "firing", "labels": labels, "annotations": {},
                        "startsAt": "2026-11-21T06:00:00Z",
                        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom",
                        "fingerprint": fingerprint}]}


def test_alert_triggers_an_evaluation_within_a_second(cluster: Any, namespace: str,
                                                      tmp_path: Path) -> None:
    # A long interval: only the alert can explain an evaluation within a second.
    op = Operator(cluster.kubeconfig, tmp_path / "operator.log",
                  env={"KUBEPLEX_INTERVAL_SECONDS": "120"}).start()
    pool = uniq("alerts")
    try:
        apply(cluster, None, harness.pool_body(pool))
        apply(cluster, namespace, msvc_body("watched", pool))
        wait_for("watched Ready", lambda: msvc(cluster, namespace, "watched").get(
            "status", {}).get("ready") == "1/1", WAIT_S)
        before = op.metric("kubeplex_operator_evaluations_total", {"trigger": "alert"})
        generation_before = msvc(cluster, namespace, "watched")["metadata"]["resourceVersion"]
        body = json.dumps(alert_payload(namespace, "watched", uuid.uuid4().hex)).encode()
        # unauthenticated and malformed posts change nothing
        assert http_post(op.alerts_url, body, {"Content-Type": "application/json"})[0] == 401
        assert http_post(op.alerts_url, body, {"Authorization": "Bearer wrong"})[0] == 401
        auth = {"Authorization": f"Bearer {op.token}", "Content-Type": "application/json"}
        status, text = http_post(op.alerts_url, b"{not json", auth)
        assert status == 400 and "JSON" in text
        status, text = http_post(op.alerts_url, json.dumps({"version": "3"}).encode(), auth)
        assert status == 400 and "version" in text
        time.sleep(1.0)
        assert op.metric("kubeplex_operator_evaluations_total", {"trigger": "alert"}) == before
        assert msvc(cluster, namespace, "watched")["metadata"][
            "resourceVersion"] == generation_before
        # a real alert: evaluated within a second
        sent = time.monotonic()
        status, text = http_post(op.alerts_url, body, auth)
        assert status == 200, text
        assert json.loads(text)["triggered"] == [f"{namespace}/watched"]
        wait_for("the alert's evaluation", lambda: op.metric(
            "kubeplex_operator_evaluations_total", {"trigger": "alert"}) > before, 5.0, 0.01)
        took = time.monotonic() - sent
        print(f"alert -> evaluation: {took * 1000:.0f} ms")
        assert took < 1.0, f"evaluation took {took:.2f} s"
        # the same alert again (same fingerprint and startsAt) is a duplicate
        status, text = http_post(op.alerts_url, body, auth)
        assert status == 200 and json.loads(text)["triggered"] == []
    finally:
        op.stop()
        delete_pool(cluster, pool)


# ---- crash and restart ------------------------------------------------------------------

def test_killed_mid_scale_up_converges_without_duplicates(cluster: Any, namespace: str,
                                                          tmp_path: Path,
                                                          k8s_client: Any) -> None:
    pool = uniq("crash")
    op = Operator(cluster.kubeconfig, tmp_path / "operator.log").start()
    try:
        apply(cluster, None, harness.pool_body(pool))
        apply(cluster, namespace, msvc_body("crashy", pool, scaling={"minReplicas": 1,
                                                                     "maxReplicas": 8}))
        wait_for("1/1", lambda: msvc(cluster, namespace, "crashy").get("status", {}).get(
            "ready") == "1/1", WAIT_S)
        cluster.kubectl("scale", "-n", namespace, "msvc/crashy", "--replicas=6")
        wait_for("the scale-up to begin", lambda: len(groups(cluster, namespace)) >= 2,
                 WAIT_S, 0.01)
        op.stop(kill=True)  # SIGKILL in the middle of creating groups and pods
        op2 = Operator(cluster.kubeconfig, tmp_path / "operator2.log").start()
        try:
            wait_for("6/6 after the restart", lambda: msvc(cluster, namespace, "crashy").get(
                "status", {}).get("ready") == "6/6", WAIT_S)
            time.sleep(3)  # a few more cycles must change nothing
            sgs, ps = groups(cluster, namespace), pods(cluster, namespace)
            assert len(sgs) == 6, [g["metadata"]["name"] for g in sgs]
            assert sorted(p["metadata"]["name"] for p in ps) == sorted(
                g["metadata"]["name"] for g in sgs)  # one pod per group, none orphaned
            nodes = {p["spec"]["nodeName"] for p in ps}
            assert all(p["status"]["phase"] == "Running" for p in ps), nodes
        finally:
            op2.stop()
    finally:
        op.stop()
        delete_pool(cluster, pool)


def test_kopf_run_serves_the_same_handlers(cluster: Any, namespace: str,
                                           tmp_path: Path) -> None:
    op = Operator(cluster.kubeconfig, tmp_path / "kopf.log", kopf_run=True).start()
    pool = uniq("kopfrun")
    try:
        apply(cluster, None, harness.pool_body(pool))
        apply(cluster, namespace, msvc_body("viakopf", pool))
        wait_for("viakopf 1/1", lambda: msvc(cluster, namespace, "viakopf").get(
            "status", {}).get("ready") == "1/1", WAIT_S)
        assert [g["metadata"]["name"] for g in groups(cluster, namespace)] == ["viakopf-0"]
    finally:
        op.stop()
        delete_pool(cluster, pool)


def test_peering_keeps_one_operator_active_and_hands_over(cluster: Any, namespace: str,
                                                          tmp_path: Path) -> None:
    """Two replicas with kopf peering: the higher priority acts, the other pauses; when the
    active one stops, the other resumes and serves."""
    peering = uniq("peering")
    cluster.kubectl("apply", "--server-side", "-f",
                    str(REPO / "helm" / "kubeplex" / "files" / "kopf-peering-crds.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/clusterkopfpeerings.kopf.dev")
    apply(cluster, None, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                          "metadata": {"name": peering}})
    env = {"KUBEPLEX_PEERING": peering, "KUBEPLEX_PEERING_LIFETIME_SECONDS": "10"}
    high = Operator(cluster.kubeconfig, tmp_path / "high.log",
                    env={**env, "KUBEPLEX_PEERING_PRIORITY": "200"}).start()
    low = Operator(cluster.kubeconfig, tmp_path / "low.log",
                   env={**env, "KUBEPLEX_PEERING_PRIORITY": "100"}).start()
    pool = uniq("peer")
    try:
        time.sleep(3)  # a keep-alive round: each sees the other in the peering object
        apply(cluster, None, harness.pool_body(pool))
        apply(cluster, namespace, msvc_body("served", pool))
        wait_for("served 1/1", lambda: msvc(cluster, namespace, "served").get(
            "status", {}).get("ready") == "1/1", WAIT_S)
        assert high.metric("kubeplex_operator_reconciles_total", {"pool": pool}) > 0
        assert low.metric("kubeplex_operator_reconciles_total", {"pool": pool}) == 0
        high.stop()  # SIGTERM: kopf removes its peering entry on the way out
        wait_for("the other operator to resume", lambda: low.metric(
            "kubeplex_operator_reconciles_total", {"pool": pool}) > 0, WAIT_S, 0.5)
        cluster.kubectl("scale", "-n", namespace, "msvc/served", "--replicas=2")
        wait_for("served 2/2 by the standby", lambda: msvc(cluster, namespace, "served").get(
            "status", {}).get("ready") == "2/2", WAIT_S)
        assert low.metric("kubeplex_operator_reconciles_total", {"pool": pool}) > 0
    finally:
        high.stop()
        low.stop()
        delete_pool(cluster, pool)
        cluster.kubectl("delete", "clusterkopfpeering", peering, "--wait=false", check=False)


# ---- two objects claiming one thing ------------------------------------------------------

def events_of(cluster: Any, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector",
        f"involvedObject.name={name},reason={reason}")["items"]
    return items


def test_duplicate_served_name_is_refused_until_the_holder_is_deleted(
        cluster: Any, operator: Operator, namespace: str) -> None:
    pool = uniq("dup")
    product = f"dup-{uuid.uuid4().hex[:6]}"
    nodes = cluster.add_gpu_nodes(1, 8, product, 81920, prefix="dup")
    try:
        apply(cluster, None, harness.pool_body(pool, product))
        apply(cluster, namespace, msvc_body("first", pool, model={
            "uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "profile": "llama-3.1-8b",
            "servedName": "team/llama"}))
        wait_for("first Ready", lambda: msvc(cluster, namespace, "first").get(
            "status", {}).get("ready") == "1/1", WAIT_S)
        # same served name, created later (and later in name order too: either rule refuses it)
        apply(cluster, namespace, msvc_body("second", pool, model={
            "uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "profile": "llama-3.1-8b",
            "servedName": "team/llama"}))
        second = wait_for("second Degraded", lambda: (
            m if condition(m := msvc(cluster, namespace, "second"), "Degraded").get("reason")
            == "DuplicateServedName" else None), WAIT_S)
        message = condition(second, "Degraded")["message"]
        assert "ModelService first" in message and "servedName" in message, message
        assert condition(second, "Ready")["status"] == "False"
        assert wait_for("a DuplicateServedName Event", lambda: events_of(
            cluster, namespace, "second", "DuplicateServedName"), WAIT_S)
        time.sleep(2)  # a few more cycles: still only the holder's group
        assert [g["spec"]["models"][0]["modelService"] for g in groups(cluster, namespace)
                if not g["spec"].get("warm")] == ["first"]
        assert msvc(cluster, namespace, "first")["status"]["ready"] == "1/1"
        # deleting the holder lets the second one proceed
        cluster.kubectl("delete", "msvc", "-n", namespace, "first", "--wait=false")
        wait_for("second Ready", lambda: msvc(cluster, namespace, "second").get(
            "status", {}).get("ready") == "1/1", WAIT_S)
        assert condition(msvc(cluster, namespace, "second"), "Degraded")["status"] == "False"
    finally:
        delete_pool(cluster, pool)
        cluster.delete_nodes(nodes)


def test_overlapping_pools_never_count_a_node_twice(cluster: Any, operator: Operator,
                                                    namespace: str) -> None:
    older, newer = uniq("older"), uniq("newer")
    product = f"ovl-{uuid.uuid4().hex[:6]}"
    nodes = cluster.add_gpu_nodes(2, 4, product, 81920, prefix="ovl")
    cluster.kubectl("label", "node", nodes[1], "kubeplex.test/pool=newer")
    try:
        apply(cluster, None, harness.pool_body(older, product, gpusPerNode=4))
        wait_for(f"{older} counts both nodes", lambda: cluster.kubectl_json(
            "get", "gpupool", older).get("status", {}).get("totalGPUs") == 8, WAIT_S)
        time.sleep(1.1)  # creationTimestamp has seconds: make "older" unambiguous
        newer_pool = harness.pool_body(newer, gpusPerNode=4)
        newer_pool["spec"]["nodeSelector"] = {"kubeplex.test/pool": "newer"}
        apply(cluster, None, newer_pool)
        lost = wait_for(f"{newer} Overlapping", lambda: (
            p if condition(p := cluster.kubectl_json("get", "gpupool", newer), "Overlapping")
            .get("status") == "True" else None), WAIT_S)
        message = condition(lost, "Overlapping")["message"]
        assert nodes[1] in message and f"GPUPool {older}" in message, message
        assert lost["status"]["totalGPUs"] == 0
        assert cluster.kubectl_json("get", "gpupool", older)["status"]["totalGPUs"] == 8
        assert condition(cluster.kubectl_json("get", "gpupool", older),
                         "Overlapping")["status"] == "False"
        # a ModelService of the newer pool gets no GPUs of the older pool's node
        apply(cluster, namespace, msvc_body("late", newer))
        time.sleep(3)
        assert groups(cluster, namespace) == []
        # the older pool goes: the node is the newer pool's now
        delete_pool(cluster, older)
        wait_for(f"{newer} owns {nodes[1]}", lambda: (
            (p := cluster.kubectl_json("get", "gpupool", newer)).get("status", {}).get(
                "totalGPUs") == 4 and condition(p, "Overlapping").get("status") == "False"),
            WAIT_S)
        wait_for("late Ready on the freed node", lambda: msvc(cluster, namespace, "late").get(
            "status", {}).get("ready") == "1/1", WAIT_S)
        assert {g["spec"]["nodeName"] for g in groups(cluster, namespace)} == {nodes[1]}
    finally:
        delete_pool(cluster, older)
        delete_pool(cluster, newer)
        cluster.delete_nodes(nodes)
