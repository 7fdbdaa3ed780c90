"""The real-pod tier: kubeplex installed by its Helm chart into a cluster with one real
kubelet node (e2e/cluster ``up --real-node``), so the operator, the gateway and the serving
runtimes run as real containers from the images the repository's Dockerfiles describe.

One such cluster per session (one KWOK node beside the real one, so every pod must land where
the chart's node selectors say): ``helm install`` with ``helm/kubeplex/ci/real-node-values.yaml``
plus this folder's ``values.yaml`` (short autoscaler windows, a 2 s cycle). The images, the
kubelet and the Debian packages are prepared at collection time (cached; ``make setup`` does
it first), outside any test's timeout.

Tests skip, with the reason, only where a real node cannot run here: not root, not Linux, or
packages missing with no apt-get (and when the control plane cannot be built, as the
``cluster`` tier). Any other failure is an error. The last test of the tier tears the cluster
down and checks the host is as it was (tests/realpods/test_teardown.py).
"""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from clusterkit import KUBECTL, Cluster, cluster_lib, prepare_control_plane, require
from helmtool import CHART, helm_binary, helm_missing_reason, run_helm
from operator_harness import GROUP, VERSION, wait_for

realnode = cluster_lib.load_module(cluster_lib.REALNODE_PY, "kubeplex_e2e_realnode")

RELEASE = "kubeplex"
NAMESPACE = "kubeplex-system"
CI_VALUES = CHART / "ci" / "real-node-values.yaml"
TEST_VALUES = Path(__file__).with_name("values.yaml")
#: GPUs the real node advertises: room for the three replicas the scaling test reaches.
REAL_NODE_GPUS = 4
#: How long a session waits for another session's real node on this machine (one per
#: machine) before skipping; CI runs one session per machine and never waits.
LOCK_WAIT_S = 180.0
HELM_TIMEOUT = "240s"
#: Per-test limit of the tier (pytest's default is 300 s): its first test also starts the
#: cluster (control plane, real node, helm install: 1-2 min on a busy 2-core machine).
TEST_TIMEOUT_S = 600
#: Readiness of a new runtime pod: image unpacked, sim engine started, probe passed.
POD_READY_S = 120.0
#: The sim engine as the scaling tests of the cluster tier run it: 4 sequences at a time per
#: replica (so a burst queues), a 1 s cold start.
ENGINE_ARGS = ("--max-num-seqs", "4", "--startup-seconds", "1")
#: Settings the kubelet and the bridge plugin change, read by the tier itself before the
#: cluster starts (not taken from realnode's own snapshot) and compared after it is down.
WATCHED_SYSCTLS = ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory",
                   "vm.panic_on_oom", "net.ipv4.ip_forward")

_PREPARED: dict[str, Any] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build or find the control plane, kubelet and images before any timeout ticks; keep the
    teardown check last (it stops the shared cluster)."""
    ours = [i for i in items if i.get_closest_marker("realpods")]
    if config.option.collectonly or not ours:
        return
    last = [i for i in ours if "host_after_down" in getattr(i, "fixturenames", ())]
    items[:] = [i for i in items if i not in last] + last
    for item in ours:
        item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))
    try:
        realnode.check_available()
    except realnode.RealNodeUnavailable as e:
        _PREPARED["skip"] = str(e)
        return
    if not prepare_control_plane(_PREPARED):
        return
    try:
        _PREPARED["images"] = realnode.prepare(_PREPARED["tools"], say=lambda _m: None)
    except realnode.RealNodeUnavailable as e:
        _PREPARED["skip"] = str(e)
    except cluster_lib.ClusterError as e:
        _PREPARED["error"] = str(e)


@dataclass
class RealPods:
    """The session's cluster with kubeplex installed on its real node."""

    cluster: Cluster
    state_dir: Path
    sysctls_before: dict[str, str]
    record: dict[str, Any] = field(default_factory=dict)  # realnode's lock record, once up
    is_down: bool = False

    @staticmethod
    def read_sysctls() -> dict[str, str]:
        out = {}
        for name in WATCHED_SYSCTLS:
            path = Path("/proc/sys") / name.replace(".", "/")
            if path.exists():
                out[name] = path.read_text().strip()
        return out

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, **kw)

    def kubectl_json(self, *args: str) -> Any:
        return self.cluster.kubectl_json(*args)

    def release_pod(self, component: str) -> dict[str, Any]:
        """The running pod of the chart's operator or gateway."""
        pods = self.kubectl_json("get", "pods", "-n", NAMESPACE, "-l",
                                 f"app.kubernetes.io/component={component}")["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"
                   and not p["metadata"].get("deletionTimestamp")]
        assert len(running) == 1, f"{component}: {[p['metadata']['name'] for p in pods]}"
        pod: dict[str, Any] = running[0]
        return pod

    @property
    def gateway_url(self) -> str:
        return f"http://{self.release_pod('gateway')['status']['podIP']}:8080"

    def alert_token(self) -> str:
        secret = self.kubectl_json("get", "secret", "-n", NAMESPACE, f"{RELEASE}-alerts")
        return base64.b64decode(secret["data"]["token"]).decode()

    def logs(self, namespace: str, pod: str) -> str:
        return self.kubectl("logs", "-n", namespace, pod).stdout

    def diagnosis(self) -> str:
        """Every pod, and the last log lines of those not ready (their previous run too)."""
        out = [self.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout]
        for pod in self.kubectl_json("get", "pods", "-A")["items"]:
            if all(c.get("ready") for c in pod["status"].get("containerStatuses", [{}])):
                continue
            meta = pod["metadata"]
            for previous in ("--previous=false", "--previous=true"):
                log = self.kubectl("logs", "-n", meta["namespace"], meta["name"], previous,
                                   "--tail=15", check=False)
                out.append(f"--- {meta['namespace']}/{meta['name']} {previous}:\n"
                           f"{log.stdout}{log.stderr}")
        return "\n".join(out)

    # ---- ModelServices on the real node -------------------------------------------------

    def serve(self, namespace: str, name: str, min_replicas: int, max_replicas: int,
              **scaling: Any) -> str:
        """A GPUPool of the real node's GPUs and a sim ModelService in it; returns the pool's
        name (the ``namespace`` fixture deletes both after the test)."""
        pool = f"{namespace}-pool"
        objs = [
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUPool", "metadata": {"name": pool},
             "spec": {"nodeSelector": {"kubeplex.io/real-node": "true"},
                      "gpu": {"product": "H100-80GB"}, "gpusPerNode": REAL_NODE_GPUS,
                      "maxGPUs": REAL_NODE_GPUS, "warmPool": {"size": 0}}},
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
             "metadata": {"name": name, "namespace": namespace},
             "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                                "profile": "llama-3.1-8b", "engineArgs": list(ENGINE_ARGS)},
                      "engine": "sim", "pool": pool, "slo": {"ttftSeconds": 0.5},
                      "parallelism": {"tensor": 1, "pipeline": 1},
                      "scaling": {"minReplicas": min_replicas, "maxReplicas": max_replicas,
                                  **scaling}}},
        ]
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
        return pool

    def msvc(self, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.kubectl_json("get", "msvc", "-n", namespace, name)
        return obj

    def serving_pods(self, namespace: str, name: str, ready_only: bool = True
                     ) -> list[dict[str, Any]]:
        """The model's pods (its Service's selector), Ready ones only unless told."""
        items = self.kubectl_json("get", "pods", "-n", namespace, "-l",
                                  f"model.kubeplex.io/{name}=true")["items"]
        return [p for p in items if not ready_only or (
            not p["metadata"].get("deletionTimestamp") and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])))]

    def wait_ready(self, namespace: str, name: str, replicas: int,
                   timeout: float = POD_READY_S) -> list[dict[str, Any]]:
        """Until the ModelService reports ``replicas`` ready and that many pods serve it."""
        return list(wait_for(f"{namespace}/{name} at {replicas} ready replicas", lambda: (
            pods if self.msvc(namespace, name).get("status", {}).get("ready")
            == f"{replicas}/{replicas}" and len(pods := self.serving_pods(
                namespace, name)) == replicas else None), timeout))

    def complete(self, model: str, timeout: float = 30.0) -> tuple[int, dict[str, Any], float]:
        """One completion through the gateway pod: status, JSON body, seconds taken."""
        t0 = time.monotonic()
        rsp = httpx.post(f"{self.gateway_url}/v1/completions", timeout=timeout,
                         json={"model": model, "prompt": "hello", "max_tokens": 8})
        body = rsp.json() if rsp.headers.get("content-type", "").startswith(
            "application/json") else {"text": rsp.text}
        return rsp.status_code, body, time.monotonic() - t0

    def delete_pool(self, pool: str) -> None:
        self.kubectl("delete", "gpupool", pool, "--wait=false", check=False)

    def down(self) -> None:
        if not self.is_down:
            self.is_down = True
            cluster_lib.down(self.state_dir, keep_logs=True, say=lambda _m: None)


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealPods]:
    require(_PREPARED, "preparing the real node")
    if helm_binary() is None:
        pytest.skip(helm_missing_reason())
    if not Path(KUBECTL).exists():
        pytest.fail(f"kubectl not found (looked on PATH and at {KUBECTL})", pytrace=False)
    state_dir = tmp_path_factory.mktemp("realpods")
    before = RealPods.read_sysctls()
    spec = cluster_lib.NodeSpec(gpus=REAL_NODE_GPUS)
    try:
        state = cluster_lib.up(state_dir, nodes=1, tools=_PREPARED["tools"], real_node=spec,
                               real_node_wait_s=LOCK_WAIT_S, say=lambda _m: None)
    except realnode.RealNodeBusy as e:
        pytest.skip(f"another session's real node holds this machine: {e}")
    handle = RealPods(Cluster(Path(state.kubeconfig), state.server, state,
                              cluster_lib.Api.from_state(state), {}), state_dir, before,
                      dict(realnode._read_record() or {}))
    try:
        helm = run_helm([f"--kubeconfig={state.kubeconfig}", "install", RELEASE, str(CHART),
                         "--namespace", NAMESPACE, "--create-namespace", "-f", str(CI_VALUES),
                         "-f", str(TEST_VALUES), "--wait", "--timeout", HELM_TIMEOUT])
        assert helm.returncode == 0, (f"helm install:\n{helm.stderr}{helm.stdout}\n"
                                      f"{handle.diagnosis()}")
        yield handle
    finally:
        handle.down()


@pytest.fixture
def namespace(real: RealPods) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount: the API server checks it for every
    pod here), deleted with everything in it after the test, and the test's GPUPool."""
    name = f"rp-{uuid.uuid4().hex[:8]}"
    real.kubectl("create", "namespace", name)
    wait_for("the namespace's default ServiceAccount", lambda: real.kubectl(
        "get", "serviceaccount", "default", "-n", name, check=False).returncode == 0, 30)
    yield name
    if not real.is_down:
        # The next test needs the GPUs its pods hold: wait for the pods, not for the
        # namespace controller's last sweep (~10 s more).
        real.kubectl("delete", "namespace", name, "--wait=false", check=False)
        real.kubectl("wait", "--for=delete", "pods", "--all", "-n", name, "--timeout=120s",
                     check=False, timeout=150)
        real.delete_pool(f"{name}-pool")



@pytest.fixture
def host_after_down(real: RealPods) -> RealPods:
    """The session's cluster, brought down (``make cluster-down``'s code path): the last test
    of the tier (pytest_collection_modifyitems puts it there)."""
    real.down()
    return real
