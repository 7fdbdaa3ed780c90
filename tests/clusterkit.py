"""The real control plane of e2e/cluster for tests: the library loaded once by path, the
reason to skip when its binaries are neither cached nor buildable, and the handle tests get
(kubeconfig, REST client, kubectl helpers). Used by the ``cluster`` fixture
(tests/cluster/conftest.py) and the real-pod tier's (tests/realpods/conftest.py).
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

__all__ = ["KUBECTL", "REPO", "Cluster", "cluster_lib", "prepare_control_plane", "require",
           "why_unbuildable"]

REPO = Path(__file__).resolve().parents[1]
CLUSTER_PY = REPO / "e2e" / "cluster" / "cluster.py"
# Where `kubectl` is on these machines (ENV.md); PATH wins when it has one.
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
# Seconds to wait for the module proxy to answer before calling it unreachable.
PROXY_PROBE_TIMEOUT_S = 15


def _load_cluster_module() -> ModuleType:
    if (loaded := sys.modules.get("kubeplex_e2e_cluster")) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("kubeplex_e2e_cluster", CLUSTER_PY)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {CLUSTER_PY}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


cluster_lib = _load_cluster_module()


def why_unbuildable(tools: Any) -> str | None:
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


def prepare_control_plane(into: dict[str, Any]) -> bool:
    """Build (or find cached) the control plane at collection time, outside any test's
    timeout: ``into`` gets ``tools``, or the ``skip`` reason, or the build ``error``; True when
    the tools are there."""
    tools = cluster_lib.Toolchain.from_build_script()
    if (reason := why_unbuildable(tools)) is not None:
        into["skip"] = reason
        return False
    try:
        into["tools"] = cluster_lib.build(quiet=True)
    except cluster_lib.ClusterError as e:
        into["error"] = str(e)
        return False
    return True


def require(prepared: dict[str, Any], what: str) -> None:
    """In a fixture: skip with the reason, or fail with the error, that collection left in
    ``prepared`` (see :func:`prepare_control_plane`)."""
    if "skip" in prepared:
        pytest.skip(prepared["skip"])
    if "error" in prepared:
        pytest.fail(f"{what} failed: {prepared['error']}", pytrace=False)


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
