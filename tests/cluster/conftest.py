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

import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes
import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_PY = REPO / "e2e" / "cluster" / "cluster.py"
CRDS = REPO / "crds"
# Where `kubectl` is on these machines (ENV.md); PATH wins when it has one.
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
# Fake nodes of the session cluster: 4 x 8 H100 (the `up` default) plus 2 x 4 A100-40GB,
# so scheduling tests can tell "fits on some node" from "fits on the node it asked for".
H100_NODES = 4
A100: dict[str, Any] = {"gpus": 4, "gpu_product": "NVIDIA-A100-SXM4-40GB", "gpu_memory_mib": 40960}
A100_NODES = 2
# Seconds to wait for the module proxy to answer before calling it unreachable.
PROXY_PROBE_TIMEOUT_S = 15


def _load_cluster_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kubeplex_e2e_cluster", CLUSTER_PY)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {CLUSTER_PY}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


cluster_lib = _load_cluster_module()


def _why_unbuildable(tools: Any) -> str | None:
    """A skip reason when the binaries are neither cached nor buildable here, else None."""
    if not tools.missing():
        return None
    missing = ", ".join(str(p) for p in tools.missing())
    go = shutil.which("go")
    if go is None:
        return (f"control-plane binaries not cached ({missing}) and the Go toolchain is not "
                f"installed (no `go` on PATH), so e2e/cluster/build.sh cannot build them")
    proxy = subprocess.run([go, "env", "GOPROXY"], capture_output=True, text=True,
                           check=False).stdout.strip().split(",")[0].split("|")[0]
    if proxy in ("", "off", "direct"):
        return (f"control-plane binaries not cached ({missing}) and GOPROXY={proxy!r}: "
                f"build.sh needs a Go module proxy")
    url = f"{proxy.rstrip('/')}/k8s.io/kubernetes/@v/v{tools.k8s_version}.info"
    try:
        with urllib.request.urlopen(url, timeout=PROXY_PROBE_TIMEOUT_S):
            return None
    except (OSError, urllib.error.URLError) as e:
        return (f"control-plane binaries not cached ({missing}) and the Go module proxy does "
                f"not answer ({url}: {e})")


_BUILD: dict[str, Any] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build (or find cached) binaries once, before any test timeout starts ticking."""
    if config.option.collectonly or not any(i.get_closest_marker("cluster") for i in items):
        return
    tools = cluster_lib.Toolchain.from_build_script()
    if (reason := _why_unbuildable(tools)) is not None:
        _BUILD["skip"] = reason
        return
    try:
        _BUILD["tools"] = cluster_lib.build(quiet=True)
    except cluster_lib.ClusterError as e:
        _BUILD["error"] = str(e)


@dataclass(frozen=True)
class Cluster:
    """What tests get: the kubeconfig, the API server URL and a kubectl helper."""

    kubeconfig: Path
    server: str
    state: Any  # cluster_lib.ClusterState
    api: Any  # cluster_lib.Api (stdlib REST client with the admin certificate)
    fleet: dict[str, tuple[int, int]]  # GPU product -> (nodes, GPUs per node)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([KUBECTL, f"--kubeconfig={self.kubeconfig}", *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stderr}{proc.stdout}")
        return proc

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    # Numbers for extra nodes (their names and /24 pod CIDRs), clear of the session fleet.
    _node_numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1000))

    def add_gpu_nodes(self, count: int, gpus: int, product: str, memory_mib: int,
                      prefix: str = "test-node") -> list[str]:
        """Extra fake GPU nodes for one test (KWOK-managed, Ready when this returns); a test
        that needs GPUs nobody else can take uses its own product name. Delete them after
        with :meth:`delete_nodes` so other tests see the session fleet only."""
        spec = cluster_lib.NodeSpec(gpus=gpus, gpu_product=product, gpu_memory_mib=memory_mib)
        names = []
        for _ in range(count):
            number = next(self._node_numbers)
            name = f"{prefix}-{number}"
            self.api.create("/api/v1/nodes", cluster_lib.gpu_node(name, number, spec))
            names.append(name)
        cluster_lib.wait_nodes_ready(self.api, set(names))
        return names

    def delete_nodes(self, names: list[str]) -> None:
        """Delete nodes; the pod garbage collector then removes pods bound to them."""
        for name in names:
            self.api.request("DELETE", f"/api/v1/nodes/{name}")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if "skip" in _BUILD:
        pytest.skip(_BUILD["skip"])
    if "error" in _BUILD:
        pytest.fail(f"building the control plane failed: {_BUILD['error']}", pytrace=False)
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
    test's pools count), and the ModelServices' finalizers are dropped since the operator that
    would clear them is already gone; the namespace itself is then deleted without waiting.
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
