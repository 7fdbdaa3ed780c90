"""What the operator relies on, checked against the real API server, scheduler,
controller-manager and KWOK nodes (e2e/cluster): the CRDs, examples and bad specs as the
API server judges them, the status and scale subresources, optimistic concurrency, label
selectors, watches, finalizers, owner-reference garbage collection and GPU scheduling."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from operator_harness import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kubeplex.io", "v1alpha1", "modelservices"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
BAD_SPECS = sorted((REPO / "examples" / "bad").glob("*.yaml"))
EXPECT = re.compile(r"^#\s*expect:\s*(.+?)\s*$", re.M)
# KWOK does not pull images; any name works. This is the kubelet's pause image.
IMAGE = "registry.k8s.io/pause:3.10"


def msvc(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"}, "pool": "h100",
                 "slo": {"ttftSeconds": 0.5}, **spec},
    }
    return body


def gpu_pod(name: str, gpus: int, product: str | None = None,
            owner: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "engine", "image": IMAGE,
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
    }
    if product is not None:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{
                "key": "nvidia.com/gpu.product", "operator": "In", "values": [product]}]}]}}}
    meta: dict[str, Any] = {"name": name, "labels": {"app": "kubeplex-test"}}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def custom(k8s_client: Any) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(k8s_client)


# ---- the cluster itself ----------------------------------------------------------------


def small_gpu_product(cluster: Any) -> tuple[str, int]:
    """The fake GPU product with the fewest GPUs per node, and that count."""
    product, (_nodes, gpus) = min(cluster.fleet.items(), key=lambda kv: kv[1][1])
    return product, gpus


def test_kubectl_lists_the_fake_gpu_nodes(cluster: Any) -> None:
    nodes = cluster.kubectl_json("get", "nodes", "-l", "kubeplex.io/fake-node=true")["items"]
    by_product: dict[str, list[int]] = {}
    # Only the session fleet (tests may add private nodes for a while).
    nodes = [n for n in nodes
             if n["metadata"]["labels"]["nvidia.com/gpu.product"] in cluster.fleet]
    for node in nodes:
        labels = node["metadata"]["labels"]
        gpus = int(node["status"]["allocatable"]["nvidia.com/gpu"])
        assert labels["nvidia.com/gpu.count"] == str(gpus)
        assert int(labels["nvidia.com/gpu.memory"]) > 0
        ready = [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready == ["True"], node["metadata"]["name"]
        by_product.setdefault(labels["nvidia.com/gpu.product"], []).append(gpus)
    assert by_product == {product: [gpus] * count
                          for product, (count, gpus) in cluster.fleet.items()}


def test_version_and_rbac_are_real(cluster: Any) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == f"v{cluster.state.k8s_version}"
    # RBAC is on: an unprivileged user cannot list pods; the admin (system:masters) can.
    denied = cluster.kubectl("auth", "can-i", "list", "pods", "--as=nobody", check=False)
    assert denied.stdout.strip() == "no"
    assert cluster.kubectl("auth", "can-i", "list", "pods").stdout.strip() == "yes"


def test_crds_are_established(cluster: Any) -> None:
    crds = sorted((REPO / "crds").glob("*.yaml"))
    assert crds, "no CRDs in crds/"
    names = {c["metadata"]["name"]
             for c in cluster.kubectl_json("get", "crd")["items"]}
    assert {"modelservices.kubeplex.io"} <= names
    # Discovery serves the short names kubectl resolves (`kubectl get msvc`).
    resources = cluster.kubectl("api-resources", "--api-group=kubeplex.io", "-o", "wide").stdout
    row = next(line for line in resources.splitlines() if line.startswith("modelservices"))
    assert "msvc" in row.split()
    assert "scale" in cluster.kubectl("get", "--raw", f"/apis/{GROUP}/{VERSION}").stdout


# ---- examples and bad specs ----------------------------------------------------------------


def test_examples_and_bad_specs_exist() -> None:
    assert EXAMPLES, "examples/*.yaml is empty"
    assert BAD_SPECS, "examples/bad/*.yaml is empty"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_applies(cluster: Any, example: Path) -> None:
    # Examples name their own namespaces (or none: `default`), as users apply them.
    out = cluster.kubectl("apply", "-f", str(example)).stdout
    assert re.search(r"(created|configured|unchanged)", out), out
    cluster.kubectl("delete", "-f", str(example), "--wait=false")


@pytest.mark.parametrize("bad", BAD_SPECS, ids=lambda p: p.name)
def test_bad_spec_is_refused_naming_the_field(cluster: Any, bad: Path) -> None:
    expected = EXPECT.findall(bad.read_text())
    assert expected, f"{bad} has no '# expect: <part of the error>' line"
    proc = cluster.kubectl("apply", "-f", str(bad), check=False)
    assert proc.returncode != 0, f"the API server accepted {bad.name}:\n{proc.stdout}"
    for part in expected:
        assert part in proc.stderr, f"{bad.name}: {part!r} not in the error:\n{proc.stderr}"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "spec.scaling.minReplicas"),
        ({"slo": {"ttftSeconds": 0}}, "spec.slo.ttftSeconds"),
        ({"engine": "tgi"}, "spec.engine"),
        ({"parallelism": {"tensor": 3}}, "spec.parallelism.tensor"),
        ({"model": {"uri": "ftp://x"}}, "spec.model.uri"),
        ({"engineArgs": ["--port=1"]}, "spec.engineArgs"),
        ({"bogus": 1}, "bogus"),
    ],
    ids=["cel-min-max", "exclusive-minimum", "enum", "cel-int-or-string", "pattern",
         "unknown-field-at-spec", "unknown-field"],
)
def test_schema_and_cel_rules_are_enforced(cluster: Any, namespace: str,
                                           spec: dict[str, Any], field: str) -> None:
    body = msvc("bad")
    if "engineArgs" in spec:
        body["spec"]["model"]["engineArgs"] = spec["engineArgs"]
        field = "spec.model.engineArgs"
    else:
        body["spec"].update(spec)
    proc = cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(body),
                           check=False)
    assert proc.returncode != 0, proc.stdout
    assert field in proc.stderr, proc.stderr


# ---- subresources, concurrency, selectors, watches -------------------------------------


def test_kubectl_scale_sets_spec_replicas_through_scale_subresource(
        cluster: Any, namespace: str) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(msvc("scaled")))
    cluster.kubectl("scale", "-n", namespace, "msvc/scaled", "--replicas=3")
    obj = cluster.kubectl_json("get", "-n", namespace, "msvc", "scaled")
    assert obj["spec"]["scaling"]["replicas"] == 3
    scale = cluster.api.get(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/scaled/scale")
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3
    # Beyond maxReplicas (default 4) the CEL rule refuses the scale, naming the field.
    proc = cluster.kubectl("scale", "-n", namespace, "msvc/scaled", "--replicas=9", check=False)
    assert proc.returncode != 0
    assert "replicas" in proc.stderr


def test_status_and_spec_are_separate(k8s_client: Any, namespace: str) -> None:
    api = custom(k8s_client)
    created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                  msvc("split"))
    generation = created["metadata"]["generation"]
    # Through /status: the status changes, a spec change in the same patch is dropped.
    after = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "split",
        {"spec": {"priority": 7}, "status": {"replicas": 2, "sloStatus": "Met"}})
    assert after["status"]["replicas"] == 2
    assert after["spec"]["priority"] == created["spec"]["priority"] != 7
    assert after["metadata"]["generation"] == generation
    # Through the main resource: the spec changes, the status in the patch is dropped.
    after = api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "split",
        {"spec": {"priority": 7}, "status": {"replicas": 5}})
    assert after["spec"]["priority"] == 7
    assert after["status"]["replicas"] == 2
    assert after["metadata"]["generation"] == generation + 1


def test_stale_resource_version_gets_409(k8s_client: Any, namespace: str) -> None:
    api = custom(k8s_client)
    first = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, msvc("rv"))
    first["spec"]["priority"] = 1
    api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "rv", first)
    first["spec"]["priority"] = 2  # still carries the resourceVersion read before
    with pytest.raises(ApiException) as err:
        api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "rv", first)
    assert err.value.status == 409
    assert "the object has been modified" in err.value.body


def test_label_selectors_filter(k8s_client: Any, namespace: str) -> None:
    api = custom(k8s_client)
    for name, tier in (("a", "gold"), ("b", "gold"), ("c", "bronze")):
        body = msvc(name)
        body["metadata"]["labels"] = {"tier": tier}
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def names(selector: str) -> set[str]:
        items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                  label_selector=selector)["items"]
        return {i["metadata"]["name"] for i in items}

    assert names("tier=gold") == {"a", "b"}
    assert names("tier!=gold") == {"c"}
    assert names("tier in (bronze,silver)") == {"c"}
    assert names("tier") == {"a", "b", "c"}


def test_watch_sees_added_modified_deleted(k8s_client: Any, namespace: str) -> None:
    api = custom(k8s_client)
    start = api.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                              PLURAL)["metadata"]["resourceVersion"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, msvc("w"))
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w",
                                       {"spec": {"priority": 3}})
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w")
    seen: list[tuple[str, int | None]] = []
    stream = k8s_watch.Watch().stream(api.list_namespaced_custom_object, GROUP, VERSION,
                                      namespace, PLURAL, resource_version=start,
                                      timeout_seconds=30)
    for event in stream:
        seen.append((event["type"], event["object"]["spec"].get("priority")))
        if event["type"] == "DELETED":
            break
    assert [t for t, _ in seen] == ["ADDED", "MODIFIED", "DELETED"]
    assert seen[1][1] == 3


def test_finalizer_holds_deletion(k8s_client: Any, namespace: str) -> None:
    api = custom(k8s_client)
    body = msvc("held")
    body["metadata"]["finalizers"] = ["kubeplex.io/test-drain"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")
    held = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == ["kubeplex.io/test-drain"]
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held",
                                       {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as err:
        api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")
    assert err.value.status == 404


# ---- the garbage collector, the scheduler and KWOK ---------------------------------------


def _phase(core: k8s.CoreV1Api, namespace: str, name: str) -> k8s.V1Pod:
    return core.read_namespaced_pod(name, namespace)


def test_deleting_the_owner_garbage_collects_its_pods(k8s_client: Any, namespace: str) -> None:
    api, core = custom(k8s_client), k8s.CoreV1Api(k8s_client)
    owner = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                msvc("owner"))
    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService", "name": "owner",
           "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    for i in range(2):
        core.create_namespaced_pod(namespace, gpu_pod(f"owned-{i}", 1, owner=ref))
    wait_for("owned pods Running", lambda: all(
        _phase(core, namespace, f"owned-{i}").status.phase == "Running" for i in range(2)))
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owner",
                                        body=k8s.V1DeleteOptions(
                                            propagation_policy="Background"))
    wait_for("the garbage collector (and KWOK) to remove the owned pods",
               lambda: not core.list_namespaced_pod(namespace).items)


@pytest.fixture
def private_gpu_nodes(cluster: Any) -> Iterator[tuple[str, int, list[str]]]:
    """Two 4-GPU nodes of a product no other test asks for: (product, GPUs per node, names)."""
    product = f"KUBEPLEX-TEST-GPU-{uuid.uuid4().hex[:6]}"
    names = cluster.add_gpu_nodes(2, gpus=4, product=product, memory_mib=40960,
                                  prefix="private")
    yield product, 4, names
    cluster.delete_nodes(names)


def test_gpu_pod_lands_on_a_fitting_node_and_runs(
        k8s_client: Any, namespace: str, private_gpu_nodes: tuple[str, int, list[str]]) -> None:
    core = k8s.CoreV1Api(k8s_client)
    product, per_node, names = private_gpu_nodes
    core.create_namespaced_pod(namespace, gpu_pod("tp4", per_node, product=product))
    pod = wait_for("the 4-GPU pod to be Running", lambda: (
        p if (p := _phase(core, namespace, "tp4")).status.phase == "Running" else None))
    assert pod.spec.node_name in names
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == product
    assert int(node.status.allocatable["nvidia.com/gpu"]) == per_node
    assert pod.status.pod_ip  # KWOK assigned one from the node's pod CIDR
    # The first pod filled its node, so a second one must land on the other node.
    core.create_namespaced_pod(namespace, gpu_pod("tp4-b", per_node, product=product))
    second = wait_for("the second 4-GPU pod to be Running", lambda: (
        p if (p := _phase(core, namespace, "tp4-b")).status.phase == "Running" else None))
    assert second.spec.node_name in names
    assert second.spec.node_name != pod.spec.node_name
    # Both nodes are full now: a third pod of that product waits, Unschedulable.
    core.create_namespaced_pod(namespace, gpu_pod("tp4-c", 1, product=product))
    wait_for("the third pod to be Unschedulable", lambda: any(
        c.type == "PodScheduled" and c.reason == "Unschedulable"
        for c in _phase(core, namespace, "tp4-c").status.conditions or []))


@pytest.mark.parametrize("on_small_product", [False, True],
                         ids=["more-than-any-node", "more-than-the-asked-product-has"])
def test_pod_asking_for_too_many_gpus_stays_pending_unschedulable(
        cluster: Any, k8s_client: Any, namespace: str, on_small_product: bool) -> None:
    core = k8s.CoreV1Api(k8s_client)
    most = max(gpus for _n, gpus in cluster.fleet.values())
    small, small_gpus = small_gpu_product(cluster)
    gpus, product = (small_gpus * 2, small) if on_small_product else (most * 2, None)
    assert on_small_product is False or gpus <= most  # it would fit another product's node
    core.create_namespaced_pod(namespace, gpu_pod("too-big", gpus, product=product))

    def unschedulable() -> Any:
        pod = _phase(core, namespace, "too-big")
        conds = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
        return pod if conds and conds[0].reason == "Unschedulable" else None

    pod = wait_for("the scheduler to mark the pod Unschedulable", unschedulable)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    message = next(c.message for c in pod.status.conditions if c.type == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in message or "didn't match" in message, message


# ---- kopf, as the operator will run ----------------------------------------------------

KOPF_OPERATOR = '''
import kopf

@kopf.on.create("kubeplex.io", "v1alpha1", "modelservices")
def created(spec, patch, **_):
    patch.status["sloStatus"] = "Unknown"
    patch.status["desiredReplicas"] = spec["scaling"]["minReplicas"]
'''


def test_kopf_operator_runs_with_the_kubeconfig_unchanged(
        cluster: Any, k8s_client: Any, namespace: str, tmp_path: Path) -> None:
    operator = tmp_path / "operator.py"
    operator.write_text(KOPF_OPERATOR)
    log = (tmp_path / "kopf.log").open("w")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    proc = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone",
                             f"--namespace={namespace}", str(operator)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        api = custom(k8s_client)
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, msvc("kopf"))

        def handled() -> Any:
            assert proc.poll() is None, (tmp_path / "kopf.log").read_text()
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "kopf")
            return obj.get("status", {}).get("sloStatus") == "Unknown" and obj

        obj = wait_for("kopf's create handler to patch the status", handled)
        assert obj["status"]["desiredReplicas"] == obj["spec"]["scaling"]["minReplicas"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
