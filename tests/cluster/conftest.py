"""A real Kubernetes control plane for tests marked ``cluster`` (see e2e/cluster/).

One cluster per test session, in its own state directory on free loopback ports (so it never
clashes with a developer's ``make cluster-up``): etcd, kube-apiserver, controller-manager,
scheduler and KWOK, with fake GPU nodes, and the CRDs from ``crds/`` installed. The binaries
come from the cache ``e2e/cluster/build.sh`` fills (``make setup`` runs it); when the cache
is cold the build runs once at collection time (outside any test's timeout).

Tests skip only when the binaries are not cached *and* cannot be built here: no Go
toolchain, or no Go module proxy. Any other build or start-up failure is an error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from clusterkit import KUBECTL, REPO, Cluster, cluster_lib, prepare_control_plane, require

CRDS = REPO / "crds"
# Fake nodes of the session cluster: 4 x 8 H100 (the `up` default) plus 2 x 4 A100-40GB,
# so scheduling tests can tell "fits on some node" from "fits on the node it asked for".
H100_NODES = 4
A100: dict[str, Any] = {"gpus": 4, "gpu_product": "NVIDIA-A100-SXM4-40GB", "gpu_memory_mib": 40960}
A100_NODES = 2
_BUILD: dict[str, Any] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build (or find cached) binaries once, before any test timeout starts ticking."""
    if config.option.collectonly or not any(i.get_closest_marker("cluster") for i in items):
        return
    prepare_control_plane(_BUILD)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require(_BUILD, "building the control plane")
    if not Path(KUBECTL).exists():
        pytest.fail(f"kubectl not found (looked on PATH and at {KUBECTL})", pytrace=False)
    state_dir = tmp_path_factory.mktemp("cluster")
    lib = cluster_lib
    state = lib.up(state_dir, nodes=H100_NODES, tools=_BUILD.get("tools"), say=lambda _m: None)
    try:
        api = lib.Api.from_state(state)
        a100 = lib.add_nodes(api, A100_NODES, lib.NodeSpec(**A100), start=H100_NODES,
                             prefix="a100-node")
        lib.wait_nodes_ready(api, set(a100))
        fleet = {cluster_lib.DEFAULT_GPU_PRODUCT: (H100_NODES, 8),
                 str(A100["gpu_product"]): (A100_NODES, int(A100["gpus"]))}
        handle = Cluster(Path(state.kubeconfig), state.server, state, api, fleet)
        crds = sorted(CRDS.glob("*.yaml"))
        for crd in crds:
            handle.kubectl("apply", "--server-side", "-f", str(crd))
        if crds:
            handle.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                           *(f"-f={c}" for c in crds))
        yield handle
    finally:
        lib.down(state_dir, keep_logs=True, say=lambda _m: None)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test, emptied afterwards.

    Its pods and ServingGroups are removed before the test ends (they hold GPUs that the next
    test's pools count), and any finalizers left on them (a test's own, or kopf's on objects
    of an older operator) are dropped; the namespace itself is then deleted without waiting.
    """
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    for kind in ("modelservices.kubeplex.io", "servinggroups.kubeplex.io"):
        listed = cluster.kubectl("get", kind, "-n", name, "-o", "name", check=False)
        for obj in listed.stdout.split():
            cluster.kubectl("patch", obj, "-n", name, "--type=merge",
                            "-p", '{"metadata":{"finalizers":null}}', check=False)
    cluster.kubectl("delete", "pods,servinggroups.kubeplex.io", "--all", "-n", name,
                    "--grace-period=0", "--force", "--wait=true", "--timeout=60s", check=False,
                    timeout=90)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def k8s_client(cluster: Cluster) -> Iterator[Any]:
    """The official kubernetes client, configured from the cluster's kubeconfig unchanged."""
    client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield client
    client.close()
