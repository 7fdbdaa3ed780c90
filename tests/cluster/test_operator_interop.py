"""The operator with the Kubernetes APIs its peers use, on the real control plane:

* the Gateway API Inference Extension: with its upstream InferencePool CRD installed and
  ``KUBEPLEX_INFERENCE_POOLS=true``, one InferencePool per ModelService, selecting exactly the
  pods where the model is loaded and awake (a claimed warm standby joins, a drained pod leaves),
  gone with its ModelService;
* Dynamic Resource Allocation: a GPUPool with ``spec.gpu.deviceClassName`` gets pods whose GPUs
  are claims the real scheduler allocates from fake devices published in ResourceSlices (the
  device-plugin path, ``nvidia.com/gpu`` limits, is tested in test_operator.py).
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import operator_harness as harness
import pytest
import yaml

pytestmark = pytest.mark.cluster

GROUP, VERSION = harness.GROUP, harness.VERSION
REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
DRIVER = "gpu.kubeplex.test"


def _extensions() -> ModuleType:
    path = REPO / "e2e" / "cluster" / "extensions.py"
    spec = importlib.util.spec_from_file_location("kubeplex_e2e_extensions", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


extensions = _extensions()


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def apply(cluster: Any, *objs: dict[str, Any], namespace: str | None = None) -> None:
    args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
    cluster.kubectl(*args, stdin=yaml.safe_dump_all(objs))


def msvc_body(name: str, pool: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
            "metadata": {"name": name},
            "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                               "profile": "llama-3.1-8b"},
                     "engine": "sim", "pool": pool, "slo": {"ttftSeconds": 0.5},
                     "parallelism": {"tensor": 1, "pipeline": 1},
                     "scaling": {"minReplicas": 0, "maxReplicas": 4, "replicas": replicas}}}


def scale(cluster: Any, namespace: str, name: str, replicas: int) -> None:
    cluster.kubectl("patch", "msvc", name, "-n", namespace, "--type=merge", "-p",
                    f'{{"spec":{{"scaling":{{"replicas":{replicas}}}}}}}')


def selected(cluster: Any, namespace: str, pool: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods an Inference Extension gateway would route to: the pool's selector."""
    labels = ",".join(f"{k}={v}" for k, v in pool["spec"]["selector"]["matchLabels"].items())
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", labels)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def get(cluster: Any, *args: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", *args, "-o", "json", check=False)
    return yaml.safe_load(proc.stdout) if proc.returncode == 0 else None


@pytest.fixture
def fresh_nodes(cluster: Any) -> Iterator[Any]:
    """Nodes of a product of the test's own (their GPUs are nobody else's)."""
    made: list[str] = []

    def make(count: int, gpus: int) -> tuple[str, list[str]]:
        product = uniq("TEST-GPU")
        made.extend(cluster.add_gpu_nodes(count, gpus=gpus, product=product, memory_mib=81920))
        return product, made[-count:]

    yield make
    cluster.delete_nodes(made)


# ---- Inference Extension ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def inference_crd(cluster: Any) -> str:
    try:
        crd = extensions.inference_pool_crd()
    except extensions.ExtensionError as exc:
        pytest.skip(f"the InferencePool CRD is not cached and cannot be downloaded: {exc}")
    cluster.kubectl("apply", "--server-side", "-f", str(crd))
    cluster.kubectl("wait", "--for=condition=Established", f"-f={crd}", "--timeout=60s")
    return str(crd)


def test_an_inference_pool_follows_its_modelservice(cluster: Any, namespace: str,
                                                    inference_crd: str, fresh_nodes: Any,
                                                    tmp_path: Path) -> None:
    product, _nodes = fresh_nodes(1, 8)
    pool = uniq("ip")
    op = harness.Operator(cluster.kubeconfig, tmp_path / "operator.log",
                          env={"KUBEPLEX_INFERENCE_POOLS": "true"}).start()
    try:
        apply(cluster, harness.pool_body(pool, product=product, warmPool={"size": 1}))
        apply(cluster, msvc_body("llama", pool, 0), namespace=namespace)
        ip = harness.wait_for("the InferencePool", lambda: get(
            cluster, "inferencepool", "llama", "-n", namespace), WAIT_S)
        msvc = get(cluster, "msvc", "llama", "-n", namespace)
        assert msvc is not None
        assert ip["spec"] == {
            "selector": {"matchLabels": {"model.kubeplex.io/llama": "true"}},
            "targetPorts": [{"number": 8000}],  # the runtime router's port
            "endpointPickerRef": {"name": "llama-epp", "port": {"number": 9002},
                                  "kind": "Service", "group": "", "failureMode": "FailClose"}}
        assert ip["metadata"]["ownerReferences"][0]["uid"] == msvc["metadata"]["uid"]
        # A warm standby (no model routed) is not in the pool.
        harness.wait_for("a warm standby", lambda: get(
            cluster, "pods", "-n", namespace, "-l", "kubeplex.io/warm=true"
        ) and get(cluster, "pods", "-n", namespace, "-l", "kubeplex.io/warm=true")["items"],
            WAIT_S)
        assert selected(cluster, namespace, ip) == []
        # Scale-up claims the standby: once its model is loaded and awake it joins the pool.
        scale(cluster, namespace, "llama", 1)
        members = harness.wait_for("the claimed pod in the pool", lambda: selected(
            cluster, namespace, ip), WAIT_S)
        assert len(members) == 1
        group = get(cluster, "sgroup", members[0]["metadata"]["name"], "-n", namespace)
        assert group is not None and "kubeplex.io/claimed-at" in group["metadata"]["annotations"]
        # Scale-down drains it: it leaves the pool at once (phase 1 of the drain).
        scale(cluster, namespace, "llama", 0)
        harness.wait_for("the drained pod out of the pool", lambda: not any(
            p["metadata"]["name"] == members[0]["metadata"]["name"]
            for p in selected(cluster, namespace, ip)), WAIT_S)
        # The pool goes with its ModelService.
        cluster.kubectl("delete", "msvc", "llama", "-n", namespace, "--wait=false")
        harness.wait_for("the InferencePool gone", lambda: get(
            cluster, "inferencepool", "llama", "-n", namespace) is None, WAIT_S)
    finally:
        op.stop()
        cluster.kubectl("delete", "gpupool", pool, "--wait=false", check=False)


# ---- DRA ------------------------------------------------------------------------------------

def test_a_dra_pool_gets_pods_with_allocated_claims(cluster: Any, namespace: str,
                                                    fresh_nodes: Any, tmp_path: Path) -> None:
    product, nodes = fresh_nodes(1, 0)  # no nvidia.com/gpu: the GPUs are DRA devices only
    device_class, pool = uniq("gpu.kubeplex.test"), uniq("dra")
    apply(cluster, extensions.device_class(device_class, DRIVER),
          extensions.resource_slice(nodes[0], DRIVER, 4, "H100-80GB"))
    op = harness.Operator(cluster.kubeconfig, tmp_path / "operator.log").start()
    try:
        body = harness.pool_body(pool, product=product, gpusPerNode=4)
        body["spec"]["gpu"].update(deviceClassName=device_class, driver=DRIVER)
        apply(cluster, body)
        apply(cluster, msvc_body("llama", pool, 2), namespace=namespace)
        harness.wait_for("llama 2/2 Ready", lambda: (get(
            cluster, "msvc", "llama", "-n", namespace) or {}).get("status", {}).get(
            "ready") == "2/2", WAIT_S)
        pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                    "kubeplex.io/group")["items"]
        assert len(pods) == 2
        devices = set()
        for pod in pods:
            name = pod["metadata"]["name"]
            container = pod["spec"]["containers"][0]
            assert container["resources"]["claims"] == [{"name": "gpus"}]
            assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
            assert pod["spec"]["resourceClaims"] == [
                {"name": "gpus", "resourceClaimTemplateName": name}]
            assert pod["spec"]["nodeName"] == nodes[0]
            template = get(cluster, "resourceclaimtemplate", name, "-n", namespace)
            assert template is not None
            assert template["metadata"]["ownerReferences"][0]["kind"] == "ServingGroup"
            claim_name = pod["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
            claim = get(cluster, "resourceclaim", claim_name, "-n", namespace)
            assert claim is not None
            results = claim["status"]["allocation"]["devices"]["results"]
            assert [r["driver"] for r in results] == [DRIVER]  # tp x pp = 1 device each
            devices |= {r["device"] for r in results}
            assert pod["status"]["phase"] == "Running"
        assert len(devices) == 2  # the scheduler gave each pod its own GPU
        status = harness.wait_for("the pool's status", lambda: (get(
            cluster, "gpupool", pool) or {}).get("status"), WAIT_S)
        assert status["totalGPUs"] == 4  # counted from the ResourceSlice
        assert status["allocatedGPUs"] == 2
    finally:
        op.stop()
        cluster.kubectl("delete", "gpupool", pool, "--wait=false", check=False)
        cluster.kubectl("delete", "resourceslice", f"{nodes[0]}-{DRIVER}", "--wait=false",
                        check=False)
        cluster.kubectl("delete", "deviceclass", device_class, "--wait=false", check=False)
