"""Co-location on the real control plane: two small ModelServices that placement packs into
one GPU group run in one pod (one real sim ``kubeplex-runtime`` hosting both, from the fake
pod's runtime config), both Services select that pod and both models answer; scaling one
model to zero unloads it from the shared pod (drain + unload in the runtime), which keeps
serving the other; scaling it back loads it into the same pod; an operator killed in the
middle of an unload is replaced by one that finishes it."""

from __future__ import annotations

import json
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
WAIT_S = 90.0
MODELS = {"chat": ("hf://meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
          "coder": ("hf://Qwen/Qwen2.5-7B-Instruct", "qwen-2.5-7b")}


def _operator(cluster: Any, log: Path) -> Any:
    return harness.Operator(cluster.kubeconfig, log, env={
        "KUBEPLEX_SCRAPE": "pods", "KUBEPLEX_URL_ANNOTATIONS": "true",
        "KUBEPLEX_PLACEMENT": "search"}).start()


@pytest.fixture
def coloc_operator(cluster: Any, tmp_path: Path) -> Iterator[Any]:
    op = _operator(cluster, tmp_path / "operator.log")
    yield op
    op.stop()


def _msvc(name: str, namespace: str, pool: str) -> dict[str, Any]:
    uri, profile = MODELS[name]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"uri": uri, "profile": profile,
                               "engineArgs": ["--startup-seconds", "1"]},
                     "engine": "sim", "pool": pool, "slo": {"ttftSeconds": 1.0},
                     "scaling": {"minReplicas": 0, "maxReplicas": 2, "replicas": 0},
                     "workload": {"requestsPerSecond": 0.5, "burstiness": 4}}}


def test_two_models_share_one_pod_and_scale_one_at_a_time(
        cluster: Any, coloc_operator: Any, namespace: str, k8s_client: Any,
        tmp_path: Path) -> None:
    op, wait_for = coloc_operator, harness.wait_for
    pool = f"coloc-{uuid.uuid4().hex[:6]}"

    def groups() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = cluster.kubectl_json(
            "get", "sgroup", "-n", namespace)["items"]
        return items

    def selected(model: str) -> list[dict[str, Any]]:
        """The pods the model's Service selects (its own selector, read from the Service)."""
        svc = cluster.kubectl_json("get", "svc", "-n", namespace, model)
        sel = ",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items())
        items: list[dict[str, Any]] = cluster.kubectl_json(
            "get", "pods", "-n", namespace, "-l", sel)["items"]
        return items

    def ask(router: str, model: str) -> int:
        r = httpx.post(f"{router}/v1/completions", timeout=30, json={
            "model": model, "prompt": "hi", "prompt_tokens": 16, "max_tokens": 4})
        return r.status_code

    def scale(model: str, replicas: int) -> None:
        cluster.kubectl("patch", "msvc", "-n", namespace, model, "--type=merge", "-p",
                        json.dumps({"spec": {"scaling": {"replicas": replicas}}}))

    objs = [harness.pool_body(pool, maxGPUs=2, warmPool={"size": 0}),
            _msvc("chat", namespace, pool), _msvc("coder", namespace, pool)]
    try:
        with harness.SimFleet(k8s_client, namespace, tmp_path) as fleet:
            cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
            # Placement (the AlpaServe search, in the background) packs both in one group.
            wait_for("placement of the pool", lambda: "groups on" in json.dumps(
                cluster.kubectl_json("get", "gpupool", pool).get("status", {})), WAIT_S, 0.5)
            scale("chat", 1)
            scale("coder", 1)
            shared = wait_for("one group serving both", lambda: next((
                g for g in groups() if g.get("status", {}).get("phase") == "Ready"
                and sorted(m["modelService"] for m in g["spec"]["models"])
                == ["chat", "coder"]), None), WAIT_S, 0.5)
            name = shared["metadata"]["name"]
            assert len(groups()) == 1, groups()
            assert sum(m["memoryShare"] for m in shared["spec"]["models"]) <= 0.9 + 1e-3
            assert shared["spec"]["gpus"] == 1
            # Both Services select the one pod; it runs one runtime hosting both models.
            wait_for("both Services select the shared pod", lambda: [
                p["metadata"]["name"] for p in selected("chat")] == [name] and [
                p["metadata"]["name"] for p in selected("coder")] == [name], WAIT_S, 0.5)
            pod_uid = selected("chat")[0]["metadata"]["uid"]
            router = wait_for("the pod's runtime", lambda: fleet.routers([name]), WAIT_S)[0]
            wait_for("chat and coder answered", lambda: ask(router, "chat") == 200
                     and ask(router, "coder") == 200, WAIT_S, 0.5)
            served = httpx.get(f"{router}/v1/models", timeout=5).json()
            assert sorted(m["id"] for m in served["data"]) == ["chat", "coder"]
            msvc = cluster.kubectl_json("get", "msvc", "-n", namespace, "coder")
            assert msvc["status"]["placement"][0]["group"] == name

            # coder to zero: unloaded from the shared pod, which keeps serving chat.
            scale("coder", 0)
            wait_for("coder out of its Service", lambda: not selected("coder"), WAIT_S, 0.5)
            wait_for("coder unloaded from the runtime", lambda: [
                m["id"] for m in httpx.get(f"{router}/v1/models", timeout=5).json()["data"]]
                == ["chat"], WAIT_S, 0.5)
            wait_for("unload recorded", lambda: not any(
                g["metadata"].get("annotations", {}).get("kubeplex.io/unloading")
                for g in groups()), WAIT_S, 0.5)
            kept = selected("chat")
            assert [p["metadata"]["uid"] for p in kept] == [pod_uid]  # same pod
            assert [m["modelService"] for m in groups()[0]["spec"]["models"]] == ["chat"]
            # coder just left the pod: 503 + Retry-After (a gateway retries elsewhere)
            assert ask(router, "chat") == 200 and ask(router, "coder") == 503

            # coder back to one: loaded into the running pod beside chat, no new pod.
            scale("coder", 1)
            wait_for("coder back in the shared pod", lambda: [
                p["metadata"]["uid"] for p in selected("coder")] == [pod_uid], WAIT_S, 0.5)
            assert ask(router, "coder") == 200
            assert len(groups()) == 1
            assert "CoLocated" in cluster.kubectl("get", "events", "-n", namespace).stdout
            assert op.proc.poll() is None

            # Killed mid-unload (right after coder's label came off): a new operator
            # finishes it, with no duplicate or orphaned pod.
            scale("coder", 0)
            wait_for("the unload to begin", lambda: not selected("coder"), WAIT_S, 0.01)
            op.stop(kill=True)
            op2 = _operator(cluster, tmp_path / "operator2.log")
            try:
                wait_for("the unload finished by the new operator", lambda: [
                    m["id"] for m in httpx.get(f"{router}/v1/models", timeout=5).json()[
                        "data"]] == ["chat"] and not any(
                    g["metadata"].get("annotations", {}).get("kubeplex.io/unloading")
                    for g in groups()), WAIT_S, 0.5)
                sgs = groups()
                assert [[m["modelService"] for m in g["spec"]["models"]] for g in sgs] == [
                    ["chat"]]
                assert [p["metadata"]["uid"] for p in selected("chat")] == [pod_uid]
                assert len(cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                                "kubeplex.io/group")["items"]) == 1
                assert ask(router, "chat") == 200
            finally:
                op2.stop()
    finally:
        cluster.kubectl("delete", "gpupool", pool, "--wait=false", check=False)


def test_models_started_alone_are_consolidated_once_placement_pairs_them(
        cluster: Any, namespace: str, k8s_client: Any, tmp_path: Path) -> None:
    """An operator with the quick templates only starts chat and coder in a group each
    (placement has not run: the whole 0.9 each). The next operator runs placement, which packs
    them: the fleet is stable and the pool has a free GPU, so one shared group starts for
    both, and the two old groups drain once it is ready; neither Service is ever empty."""
    pool = f"consol-{uuid.uuid4().hex[:6]}"

    def groups() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = cluster.kubectl_json(
            "get", "sgroup", "-n", namespace)["items"]
        return items

    def selected(model: str) -> list[str]:
        items = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                     f"model.kubeplex.io/{model}=true")["items"]
        return [p["metadata"]["name"] for p in items]

    def hosting(g: dict[str, Any]) -> list[str]:
        return sorted(m["modelService"] for m in g["spec"]["models"])

    objs = [harness.pool_body(pool, maxGPUs=3, warmPool={"size": 0})]
    for name in MODELS:
        m = _msvc(name, namespace, pool)
        m["spec"]["scaling"]["replicas"] = 1
        objs.append(m)
    env = {"KUBEPLEX_SCRAPE": "pods", "KUBEPLEX_URL_ANNOTATIONS": "true"}
    try:
        with harness.SimFleet(k8s_client, namespace, tmp_path) as fleet:
            quick = harness.Operator(cluster.kubeconfig, tmp_path / "quick.log", env={
                **env, "KUBEPLEX_PLACEMENT": "quick"}).start()
            try:
                cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
                alone = harness.wait_for("a Ready group each", lambda: sorted(
                    hosting(g) for g in groups()
                    if g.get("status", {}).get("phase") == "Ready") == [["chat"], ["coder"]]
                    and all(selected(m) for m in MODELS), WAIT_S, 0.5)
                assert alone
                old = {g["metadata"]["name"] for g in groups()}
            finally:
                quick.stop()
            search = harness.Operator(cluster.kubeconfig, tmp_path / "search.log", env={
                **env, "KUBEPLEX_PLACEMENT": "search"}).start()
            empty: list[str] = []

            def consolidated() -> bool:
                empty.extend(m for m in MODELS if not selected(m))
                sgs = groups()
                return (len(sgs) == 1 and hosting(sgs[0]) == ["chat", "coder"]
                        and sgs[0].get("status", {}).get("phase") == "Ready"
                        and sgs[0]["metadata"]["name"] not in old)
            try:
                harness.wait_for("one shared group, the old ones drained", consolidated,
                                 WAIT_S * 2, 0.5)
                shared = groups()[0]
                name = shared["metadata"]["name"]
                assert sum(m["memoryShare"] for m in shared["spec"]["models"]) <= 0.9 + 1e-3
                assert empty == [], f"a Service had no pod during the move: {empty}"
                harness.wait_for("both Services select the shared pod", lambda: selected(
                    "chat") == [name] and selected("coder") == [name], WAIT_S, 0.5)
                router = harness.wait_for("its runtime", lambda: fleet.routers([name]),
                                          WAIT_S)[0]
                # KWOK marks pods ready at once (no /readyz probe): wait for the engines.
                for model in MODELS:
                    harness.wait_for(f"{model} answered by the shared pod", lambda m=model: (
                        httpx.post(f"{router}/v1/completions", timeout=30, json={
                            "model": m, "prompt": "hi", "prompt_tokens": 16,
                            "max_tokens": 4}).status_code == 200), WAIT_S, 0.5)
                status = cluster.kubectl_json("get", "gpupool", pool)["status"]
                assert status["allocatedGPUs"] <= 3
                assert search.proc.poll() is None
            finally:
                search.stop()
    finally:
        cluster.kubectl("delete", "gpupool", pool, "--wait=false", check=False)
