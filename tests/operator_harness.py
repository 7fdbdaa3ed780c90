"""Test harness for the operator on the real control plane: the operator as a real process
(``kubeplex operator``) and, for the fake KWOK pods, real ``kubeplex-runtime`` processes with
the ``sim`` engine on loopback, one per pod, wired to the operator through the pod annotations
``kubeplex.io/router-url`` / ``kubeplex.io/control-url`` (``KUBEPLEX_URL_ANNOTATIONS=true``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from kubeplex.runtime.supervisor import free_port

GROUP, VERSION = "kubeplex.io", "v1alpha1"
#: How long the operator may take to answer /healthz after start.
OPERATOR_START_S = 60.0
RUNTIME_START_S = 30.0


def pool_body(name: str, product: str = "NVIDIA-H100-80GB-HBM3", gpu: str = "H100-80GB",
              **spec: Any) -> dict[str, Any]:
    """A GPUPool of the session's fake 8-GPU nodes of ``product``; ``spec`` adds fields."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUPool", "metadata": {"name": name},
            "spec": {"nodeSelector": {"nvidia.com/gpu.product": product},
                     "gpu": {"product": gpu}, "gpusPerNode": 8, **spec}}


def msvc_body(name: str, pool: str, **spec: Any) -> dict[str, Any]:
    """A ModelService of the sim engine serving llama-3.1-8b from ``pool`` at a 0.5 s TTFT
    SLO; ``spec`` replaces top-level fields."""
    base: dict[str, Any] = {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                                      "profile": "llama-3.1-8b"},
                            "pool": pool, "slo": {"ttftSeconds": 0.5}, "engine": "sim"}
    base.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
            "metadata": {"name": name}, "spec": base}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0,
             interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def stop_process(proc: subprocess.Popen[bytes] | None,
                 sig: signal.Signals = signal.SIGTERM) -> None:
    """Send ``sig`` to a running ``proc`` and reap it (SIGKILL after 30 s)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def http_post(url: str, body: bytes, headers: dict[str, str],
              timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric_sum(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` (with these labels) at ``url`` (a /metrics page); NaN
    when it does not answer."""
    status, text = http_get(url)
    if status != 200:
        return float("nan")
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if labels and not all(f'{k}="{v}"' in line for k, v in labels.items()):
            continue
        total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Operator:
    """``kubeplex operator`` as a subprocess, on free loopback ports."""

    kubeconfig: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    token: str = "test-token"
    kopf_run: bool = False  # start through `kopf run -m kubeplex.operator.handlers` instead
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.health, self.metrics_port, self.webhook = free_port(), free_port(), free_port()

    @property
    def alerts_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook}/alerts"

    def start(self) -> Operator:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig),
               "KUBEPLEX_BIND_ADDRESS": "127.0.0.1",
               "KUBEPLEX_HEALTH_PORT": str(self.health),
               "KUBEPLEX_METRICS_PORT": str(self.metrics_port),
               "KUBEPLEX_WEBHOOK_PORT": str(self.webhook),
               "KUBEPLEX_ALERT_TOKEN": self.token,
               "KUBEPLEX_INTERVAL_SECONDS": "1",
               "KUBEPLEX_SCRAPE": "off",
               "KUBEPLEX_PLACEMENT": "quick",
               **self.env}
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "kubeplex.cli", "operator"]
        if self.kopf_run:
            command = [sys.executable, "-m", "kopf", "run", "-m", "kubeplex.operator.handlers",
                       "--standalone", "--all-namespaces",
                       f"--liveness=http://127.0.0.1:{self.health}/healthz"]
        self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for("the operator's /healthz", self._healthy, OPERATOR_START_S, 0.2)
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the operator exited {self.proc.returncode}:\n{self.log()}")
        return http_get(f"http://127.0.0.1:{self.health}/healthz")[0] == 200 and \
            http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")[0] == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` (with these labels) on /metrics."""
        return metric_sum(f"http://127.0.0.1:{self.metrics_port}/metrics", name, labels)

    def stop(self, kill: bool = False) -> None:
        stop_process(self.proc, signal.SIGKILL if kill else signal.SIGTERM)


@dataclass
class GatewayProcess:
    """``kubeplex gateway`` as a subprocess on a free loopback port, out of cluster (kubeconfig),
    routing to the SimFleet's runtimes through their URL annotations."""

    kubeconfig: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig),
               "KUBEPLEX_BIND_ADDRESS": "127.0.0.1", "KUBEPLEX_GATEWAY_PORT": str(self.port),
               "KUBEPLEX_URL_ANNOTATIONS": "true", **self.env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "kubeplex.cli", "gateway"], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for("the gateway's /readyz", self._ready, OPERATOR_START_S, 0.1)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited {self.proc.returncode}:\n{self.log()}")
        return http_get(f"{self.url}/readyz")[0] == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return metric_sum(f"{self.url}/metrics", name, labels)

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class SimPod:
    proc: subprocess.Popen[bytes]
    router: str
    control: str


class SimFleet:
    """Runs one sim ``kubeplex-runtime`` per kubeplex pod of ``namespace`` and annotates the
    pod with its URLs; stops it when the pod goes away."""

    def __init__(self, api_client: Any, namespace: str, workdir: Path) -> None:
        self.core = k8s.CoreV1Api(api_client)
        self.namespace, self.workdir = namespace, workdir
        self.pods: dict[str, SimPod] = {}
        self.started: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SimFleet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            for name in list(self.pods):
                self._terminate(name)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ApiException, OSError):
                stream = k8s_watch.Watch().stream(
                    self.core.list_namespaced_pod, self.namespace,
                    label_selector="kubeplex.io/group", timeout_seconds=2)
                for event in stream:
                    pod = event["object"]
                    with self._lock:
                        if event["type"] == "DELETED" or pod.metadata.deletion_timestamp:
                            self._terminate(pod.metadata.name)
                        elif pod.metadata.name not in self.pods:
                            self._start(pod)
                    if self._stop.is_set():
                        break

    def _start(self, pod: Any) -> None:
        env = {e.name: e.value for e in pod.spec.containers[0].env or ()}
        config = json.loads(env["KUBEPLEX_RUNTIME_CONFIG"])
        path = self.workdir / f"{pod.metadata.name}-{len(self.started)}.json"
        path.write_text(json.dumps(config))
        port, control = free_port(), free_port()
        log = (self.workdir / f"{pod.metadata.name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "kubeplex.runtime", "--config", str(path),
                                 "--port", str(port), "--control-port", str(control)],
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        sim = SimPod(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control}")
        self.pods[pod.metadata.name] = sim
        self.started.append(pod.metadata.name)
        with contextlib.suppress(ApiException):
            self.core.patch_namespaced_pod(pod.metadata.name, self.namespace, {"metadata": {
                "annotations": {"kubeplex.io/router-url": sim.router,
                                "kubeplex.io/control-url": sim.control}}})

    def _terminate(self, name: str) -> None:
        sim = self.pods.pop(name, None)
        if sim is None:
            return
        sim.proc.terminate()
        try:
            sim.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sim.proc.kill()
            sim.proc.wait(timeout=5)

    def routers(self, names: list[str]) -> list[str]:
        with self._lock:
            return [self.pods[n].router for n in names if n in self.pods]


class Load:
    """Closed-loop clients on a model's routers until stopped, bounded by ``max_s`` seconds:
    each of ``clients`` threads posts one completion after another to the router its index
    picks from ``routers()`` (called each time: pods come and go), and waits while there is
    none. ``ok`` and ``errors`` count the answers."""

    def __init__(self, routers: Callable[[], list[str]], model: str, clients: int,
                 max_s: float, prompt_tokens: int = 512, max_tokens: int = 64,
                 stream: bool = False) -> None:
        """``stream``: every request streams, and counts as answered only if its stream
        ends with ``data: [DONE]``."""
        self.routers, self.model, self.max_s = routers, model, max_s
        self.body = {"model": model, "prompt": "hello", "prompt_tokens": prompt_tokens,
                     "max_tokens": max_tokens, "stream": stream}
        self.stop = threading.Event()
        self.ok = 0
        self.errors = 0
        #: time.monotonic() of every answer, in order.
        self.answered_at: list[float] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _client(self, i: int) -> None:
        deadline = time.monotonic() + self.max_s
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                routers = self.routers()
                if not routers:
                    time.sleep(0.2)
                    continue
                try:
                    with client.stream("POST", f"{routers[i % len(routers)]}/v1/completions",
                                       json=self.body) as r:
                        lines = [line for line in r.iter_lines() if line.strip()]
                    answered = r.status_code == 200 and (
                        not self.body["stream"] or lines[-1:] == ["data: [DONE]"])
                except httpx.HTTPError:
                    answered = False
                if answered:
                    self.ok += 1
                    self.answered_at.append(time.monotonic())
                else:
                    self.errors += 1
                    time.sleep(0.1)
