"""A real Kubernetes control plane on loopback for tests: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and KWOK, with fake GPU nodes.

    python e2e/cluster/cluster.py up [--nodes 4] [--gpus-per-node 8] [--state-dir DIR]
                                     [--real-node [--real-node-gpus 4]]
    python e2e/cluster/cluster.py status [--state-dir DIR]
    python e2e/cluster/cluster.py down [--state-dir DIR]
    python e2e/cluster/cluster.py setup-real-node | images

(or ``make cluster-up`` / ``make cluster-down`` / ``make images``). ``--real-node`` adds one
real kubelet node (``realnode.py`` beside this file; root). The binaries come from ``build.sh``
beside this file (built once, cached in ``~/.cache/kubeplex``). ``up`` generates a CA, a
serving certificate and an admin client certificate (group ``system:masters``) with
``openssl``, starts every component on free 127.0.0.1 ports with its log in ``<state>/logs/``,
waits on ``/readyz`` and ``/healthz`` and for every fake node to be Ready, and writes a
kubeconfig (``<state>/kubeconfig``, default ``.cache/cluster/kubeconfig`` in the clone) that
kubectl, kopf and the kubernetes client use unchanged. ``down`` stops exactly the processes
whose pid files it wrote (checking each pid's start time, so a reused pid is never signalled)
and removes the state directory.

Fake nodes carry the annotation ``kwok.x-k8s.io/node: fake`` (KWOK manages only those: it
keeps them Ready through node leases and moves their pods to Running), capacity
``nvidia.com/gpu: N`` and the GPU-feature-discovery labels ``nvidia.com/gpu.product``,
``nvidia.com/gpu.memory`` (MiB) and ``nvidia.com/gpu.count``.

The module is importable (the pytest fixture and the scale benchmark use :func:`up`,
:func:`down`, :class:`Api` and :func:`gpu_node`) and needs only the standard library.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "DEFAULT_STATE_DIR",
    "FAKE_NODE_LABEL",
    "MODULE_NAME",
    "Api",
    "ApiError",
    "ClusterError",
    "ClusterState",
    "Component",
    "NodeSpec",
    "Toolchain",
    "build",
    "down",
    "free_ports",
    "gpu_node",
    "is_alive",
    "load_module",
    "main",
    "node_ready",
    "openssl",
    "spawn",
    "start_ticks",
    "status",
    "stop_all",
    "tail",
    "up",
    "wait_component",
    "wait_for",
    "wait_nodes_ready",
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD_SCRIPT = HERE / "build.sh"
DEFAULT_STATE_DIR = REPO / ".cache" / "cluster"
REALNODE_PY = HERE / "realnode.py"
# The name this module is known by however it was loaded (script, tests, benchmarks): the
# real-node module beside it imports it by this name, so there is only ever one copy.
MODULE_NAME = "kubeplex_e2e_cluster"
sys.modules.setdefault(MODULE_NAME, sys.modules[__name__])


def load_module(path: Path, name: str) -> ModuleType:
    """Import a script of e2e/ by path, once (later calls return the same module)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _realnode() -> ModuleType:
    return load_module(REALNODE_PY, "kubeplex_e2e_realnode")

# KWOK manages only nodes with this annotation (we start it with
# --manage-nodes-with-annotation-selector), so a real node would never be touched.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# Label every fake node carries; selectors in tests and benchmarks use it.
FAKE_NODE_LABEL = ("kubeplex.io/fake-node", "true")
# Extended resource name of the NVIDIA device plugin.
GPU_RESOURCE = "nvidia.com/gpu"
# Node labels written by NVIDIA GPU feature discovery (memory in MiB), which schedulers and
# the kubeplex placement read.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
# Default fake GPU: an H100 SXM as GFD reports it (product name and MiB of memory).
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
DEFAULT_GPU_MEMORY_MIB = 81559
# KWOK heartbeats through node leases of this duration and renews each every quarter of it
# (kwok pkg/kwok/controllers/controller.go), as the kubelet does with its 40 s default. 120 s
# keeps 500 nodes at ~17 lease writes/s instead of 50 on a 2-core API server.
NODE_LEASE_SECONDS = 120
# How long the node lifecycle controller waits for a missed heartbeat before it marks a node
# Unknown and its pods NotReady (upstream default 50 s). Fake nodes never really fail, but on a
# saturated 2-core machine lease renewals can lag by tens of seconds: at 40 s leases and the
# default grace, 70 of 500 pods of a Deployment were marked NotReady for good in the scale
# benchmark (KWOK does not re-apply the Ready stage). Ten missed renewals of slack:
NODE_MONITOR_GRACE_S = 300
# How long each start-up step may take before `up` gives up with the component's log tail.
# A cold apiserver on 2 busy cores needs ~10-20 s to install its CRDs/RBAC bootstrap.
READY_TIMEOUT_S = 180.0
POLL_S = 0.2
ADMIN_USER = "kubeplex-admin"


try:  # rooted at kubeplex's exception tree when kubeplex is installed (the venv)
    from kubeplex.errors import KubeplexError as _ErrorBase
except ImportError:  # pragma: no cover - the script also runs with a bare python3
    _ErrorBase = Exception  # type: ignore[assignment,misc]


class ClusterError(_ErrorBase):
    """A step of bringing the control plane up or down failed; the message says which."""


class ApiError(ClusterError):
    """The API server answered a request with an error status."""

    def __init__(self, method: str, path: str, code: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {code}: {body[:500]}")
        self.code = code
        self.body = body


# --------------------------------------------------------------------------------------
# Toolchain: where build.sh puts the binaries.


@dataclass(frozen=True)
class Toolchain:
    """Paths of the cached binaries (see build.sh for how they are built)."""

    cache: Path
    k8s_version: str
    etcd_version: str
    kwok_version: str

    @classmethod
    def from_build_script(cls) -> Toolchain:
        text = BUILD_SCRIPT.read_text()
        pins = dict(re.findall(r"^(K8S_VERSION|ETCD_VERSION|KWOK_VERSION)=(\S+)$", text, re.M))
        cache = Path(os.environ.get("KUBEPLEX_CACHE", Path.home() / ".cache" / "kubeplex"))
        return cls(cache, pins["K8S_VERSION"], pins["ETCD_VERSION"], pins["KWOK_VERSION"])

    def k8s(self, name: str) -> Path:
        return self.cache / "k8s" / self.k8s_version / name

    @property
    def etcd(self) -> Path:
        return self.cache / "etcd" / self.etcd_version / "etcd"

    @property
    def kwok(self) -> Path:
        return self.cache / "kwok" / self.kwok_version / "kwok"

    @property
    def kwok_stages(self) -> Path:
        return self.cache / "kwok" / self.kwok_version / "stages"

    def missing(self) -> list[Path]:
        wanted = [self.k8s(b) for b in ("kube-apiserver", "kube-controller-manager",
                                        "kube-scheduler")]
        wanted += [self.etcd, self.kwok, self.kwok_stages / "node-initialize.yaml"]
        return [p for p in wanted if not p.exists()]


def build(quiet: bool = False) -> Toolchain:
    """Run build.sh (a no-op when the cache is warm) and return the toolchain."""
    out = subprocess.DEVNULL if quiet else None
    rc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=out, check=False).returncode
    if rc != 0:
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit status {rc} (its output says why)")
    tools = Toolchain.from_build_script()
    if missing := tools.missing():
        raise ClusterError(f"build.sh succeeded but these are missing: {missing}")
    return tools


# --------------------------------------------------------------------------------------
# State on disk: ports, pids (with start times), paths.


@dataclass
class Component:
    name: str
    pid: int
    start_ticks: int  # field 22 of /proc/<pid>/stat: tells a reused pid apart
    binary: str
    log: str


@dataclass
class ClusterState:
    state_dir: str
    kubeconfig: str
    server: str
    token: str
    k8s_version: str
    ports: dict[str, int] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)
    real_node: str = ""  # the name of the real kubelet node (realnode.py), if one was asked

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / "state.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        path = state_dir / "state.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        comps = [Component(**c) for c in raw.pop("components")]
        return cls(components=comps, **raw)


def start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after the closing paren are plain.
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_alive(c: Component) -> bool:
    return start_ticks(c.pid) == c.start_ticks


def free_ports(*names: str) -> dict[str, int]:
    """A free loopback port for each name, all different: the probe sockets stay open until
    every port is chosen (closed one by one, the kernel may offer a port twice)."""
    with contextlib.ExitStack() as stack:
        probes = {name: stack.enter_context(socket.socket()) for name in names}
        for probe in probes.values():
            probe.bind(("127.0.0.1", 0))
        return {name: int(probe.getsockname()[1]) for name, probe in probes.items()}


# --------------------------------------------------------------------------------------
# PKI with openssl.


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def _make_pki(pki: Path) -> None:
    """CA, apiserver serving cert (127.0.0.1/localhost/kubernetes.default...), admin client
    cert in group system:masters, and the service-account signing key pair."""
    if shutil.which("openssl") is None:
        raise ClusterError("openssl is not installed (apt-get install -y openssl)")
    pki.mkdir(parents=True, exist_ok=True)
    days = "3650"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", days, "-subj", "/CN=kubeplex-test-ca", cwd=pki)
    sans = ("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1")
    (pki / "server.ext").write_text(sans + "\nextendedKeyUsage=serverAuth\n")
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subj, ext in (("apiserver", "/CN=kube-apiserver", "server.ext"),
                            ("admin", f"/O=system:masters/CN={ADMIN_USER}", "client.ext")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", subj, cwd=pki)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", days, "-extfile", ext,
                 cwd=pki)
    openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubeplex", "cluster": {
            "server": server, "certificate-authority-data": _b64(pki / "ca.crt")}}],
        "users": [{"name": ADMIN_USER, "user": {
            "client-certificate-data": _b64(pki / "admin.crt"),
            "client-key-data": _b64(pki / "admin.key")}}],
        "contexts": [{"name": "kubeplex", "context": {
            "cluster": "kubeplex", "user": ADMIN_USER, "namespace": "default"}}],
        "current-context": "kubeplex",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML: no PyYAML needed
    path.chmod(0o600)


# --------------------------------------------------------------------------------------
# A minimal API client (stdlib only) used by `up`, the fixture and the benchmark.


class Api:
    """Just enough of the Kubernetes REST API: JSON requests with the admin client cert."""

    def __init__(self, server: str, pki: Path) -> None:
        self.server = server.rstrip("/")
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._ctx = ctx

    @classmethod
    def from_state(cls, state: ClusterState) -> Api:
        return cls(state.server, Path(state.state_dir) / "pki")

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json", timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        req.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise ApiError(method, path, e.code, e.read().decode(errors="replace")) from None
        ctype = resp.headers.get("Content-Type", "")
        return json.loads(raw) if "json" in ctype else raw.decode()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, path: str, obj: dict[str, Any]) -> Any:
        return self.request("POST", path, obj)


# --------------------------------------------------------------------------------------
# Fake GPU nodes.


@dataclass(frozen=True)
class NodeSpec:
    """What one fake node offers. Memory of each GPU in MiB, as GFD labels it."""

    gpus: int = 8
    gpu_product: str = DEFAULT_GPU_PRODUCT
    gpu_memory_mib: int = DEFAULT_GPU_MEMORY_MIB
    cpu: str = "192"
    memory: str = "2Ti"
    pods: int = 110  # the kubelet's default --max-pods


def gpu_node(name: str, index: int, spec: NodeSpec) -> dict[str, Any]:
    """A Node object KWOK will manage: GPU capacity, GFD labels, a /24 pod CIDR."""
    resources = {"cpu": spec.cpu, "memory": spec.memory, "pods": str(spec.pods),
                 "ephemeral-storage": "1Ti", GPU_RESOURCE: str(spec.gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]},
            "labels": {
                FAKE_NODE_LABEL[0]: FAKE_NODE_LABEL[1],
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                GPU_PRODUCT_LABEL: spec.gpu_product,
                GPU_MEMORY_LABEL: str(spec.gpu_memory_mib),
                GPU_COUNT_LABEL: str(spec.gpus),
            },
        },
        # KWOK gives pods IPs from the node's pod CIDR: one /24 per node, 10.64.0.0/10.
        "spec": {"podCIDR": f"10.{64 + index // 256}.{index % 256}.0/24"},
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def node_ready(node: dict[str, Any]) -> bool:
    conds = node.get("status", {}).get("conditions", [])
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
    taints = node.get("spec", {}).get("taints", []) or []
    return ready and not any(t.get("key", "").startswith("node.kubernetes.io/not-ready")
                             for t in taints)


def wait_for(what: str, check: Callable[[], bool], timeout: float,
          logs: Sequence[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(POLL_S)
    tails = "".join(f"\n--- last lines of {p}:\n{tail(p)}" for p in logs)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}{tails}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_nodes_ready(api: Api, names: set[str], timeout: float = READY_TIMEOUT_S) -> None:
    """Until every named node is Ready and has no not-ready taint (KWOK + node lifecycle)."""
    selector = f"{FAKE_NODE_LABEL[0]}%3D{FAKE_NODE_LABEL[1]}"

    def ready() -> bool:
        items = api.get(f"/api/v1/nodes?labelSelector={selector}")["items"]
        ok = {n["metadata"]["name"] for n in items if node_ready(n)}
        return names <= ok

    wait_for(f"{len(names)} fake nodes to be Ready without not-ready taints", ready, timeout)


# --------------------------------------------------------------------------------------
# up / down / status.


# The Popen objects of the components this process started: kept so they are not garbage
# collected while running (ResourceWarning) and so `down` can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(name: str, argv: list[str], logs: Path) -> Component:
    """Start one process in its own session, logging to ``logs/<name>.log``; its pid and
    start time identify it for :func:`stop_all`."""
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    ticks = start_ticks(proc.pid)
    if ticks is None:
        raise ClusterError(f"{name} exited at once; see {log}:\n{tail(log)}")
    return Component(name, proc.pid, ticks, argv[0], str(log))


def _spawn(name: str, argv: list[str], state: ClusterState, logs: Path) -> Component:
    comp = spawn(name, argv, logs)
    state.components.append(comp)
    state.save()  # pid files first: `down` can clean up even if a later step fails
    (Path(state.state_dir) / "pids").mkdir(exist_ok=True)
    (Path(state.state_dir) / "pids" / f"{name}.pid").write_text(f"{comp.pid}\n")
    return comp


def _https_ok(url: str, token: str, ctx: ssl.SSLContext) -> bool:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _require_alive(comp: Component) -> Callable[[], None]:
    def check() -> None:
        if not is_alive(comp):
            raise ClusterError(f"{comp.name} exited; last lines of {comp.log}:\n"
                               f"{tail(Path(comp.log), 30)}")
    return check


def wait_component(comp: Component, probe: Callable[[], bool], what: str) -> None:
    alive = _require_alive(comp)

    def check() -> bool:
        alive()
        return probe()

    wait_for(what, check, READY_TIMEOUT_S, [Path(comp.log)])


def up(state_dir: Path = DEFAULT_STATE_DIR, nodes: int = 4, spec: NodeSpec | None = None,
       tools: Toolchain | None = None, say: Callable[[str], None] = print,
       real_node: NodeSpec | None = None, real_node_wait_s: float | None = None
       ) -> ClusterState:
    """Start the control plane and `nodes` fake GPU nodes; return the saved state.

    ``real_node``: also one real node (containerd + kubelet, realnode.py) offering that many
    (fake) GPUs; the API server then listens beyond loopback (pods reach it), mounts service
    account tokens and talks to the kubelet with the admin certificate. Raises
    ``realnode.RealNodeUnavailable`` (with the reason) where no real node can run, and
    ``realnode.RealNodeBusy`` when another session's real node holds this machine for
    longer than ``real_node_wait_s`` (default: realnode's).

    Idempotent: when a healthy cluster already runs from `state_dir`, it is returned as is.
    On failure everything already started is stopped again before the error propagates.
    """
    spec = spec or NodeSpec()
    state_dir = state_dir.resolve()
    existing = ClusterState.load(state_dir)
    if existing is not None:
        if all(is_alive(c) for c in existing.components) and len(existing.components) == 5:
            if real_node is not None and not existing.real_node:
                raise ClusterError(f"a cluster without a real node runs from {state_dir}; "
                                   "stop it first (make cluster-down)")
            say(f"cluster already up; kubeconfig: {existing.kubeconfig}")
            return existing
        say(f"stale state in {state_dir}: stopping what is left of it")
        down(state_dir, say=say)
    if real_node is not None:
        _realnode().check_available()  # before anything starts: a clear reason, no cleanup
    tools = tools or build()
    t0 = time.monotonic()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        state = _up(state_dir, nodes, spec, tools, say, t0, real_node is not None)
        if real_node is not None:
            wait = {} if real_node_wait_s is None else {"lock_wait_s": real_node_wait_s}
            state.real_node = _realnode().up(state, tools, real_node, say, **wait)
            state.save()
        return state
    except BaseException:
        with contextlib.suppress(Exception):
            down(state_dir, keep_logs=True, say=lambda _m: None)
        raise


def _up(state_dir: Path, nodes: int, spec: NodeSpec, tools: Toolchain,
        say: Callable[[str], None], t0: float, for_real_node: bool) -> ClusterState:
    pki, logs = state_dir / "pki", state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _make_pki(pki)
    token = secrets.token_hex(16)
    (pki / "tokens.csv").write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    ports = free_ports("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler",
                       "kwok")
    server = f"https://127.0.0.1:{ports['apiserver']}"
    state = ClusterState(str(state_dir), str(state_dir / "kubeconfig"), server, token,
                         tools.k8s_version, ports)
    state.save()
    _write_kubeconfig(Path(state.kubeconfig), server, pki)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # controller-manager/scheduler self-signed healthz
    trusted = ssl.create_default_context(cafile=str(pki / "ca.crt"))

    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    etcd = _spawn("etcd", [
        str(tools.etcd), "--name=kubeplex", f"--data-dir={state_dir / 'etcd'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=kubeplex={peer_url}",
        # Tests throw the data away: skip fsync (much faster on a shared disk).
        "--unsafe-no-fsync", "--log-level=warn",
    ], state, logs)
    wait_component(etcd, lambda: _http_ok(f"{etcd_url}/health"), "etcd /health")
    say(f"etcd ready on {etcd_url} ({time.monotonic() - t0:.1f} s)")

    # Real pods reach the API server through the node's bridge (realnode.py), and their
    # in-cluster clients need service account tokens; KWOK-only clusters need neither.
    real_node_flags = [
        "--bind-address=0.0.0.0",
        f"--kubelet-client-certificate={pki / 'admin.crt'}",
        f"--kubelet-client-key={pki / 'admin.key'}",
        # The node's name does not resolve here; its InternalIP (the pod bridge) does.
        "--kubelet-preferred-address-types=InternalIP",
    ] if for_real_node else [
        "--bind-address=127.0.0.1",
        # As envtest does: pods need no ServiceAccount object (no token-controller race in
        # fresh namespaces; KWOK runs no containers that could use the token).
        "--disable-admission-plugins=ServiceAccount",
    ]
    apiserver = _spawn("kube-apiserver", [
        str(tools.k8s("kube-apiserver")), f"--etcd-servers={etcd_url}", *real_node_flags,
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports['apiserver']}", f"--cert-dir={pki}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
        "--authorization-mode=Node,RBAC",
        # No Endpoints reconciliation for the `kubernetes` service: one apiserver on loopback.
        "--endpoint-reconciler-type=none",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--allow-privileged=true", "--profiling=false",
    ], state, logs)
    wait_component(apiserver, lambda: _https_ok(f"{server}/readyz", token, trusted),
                    "kube-apiserver /readyz")
    say(f"kube-apiserver {tools.k8s_version} ready on {server} ({time.monotonic() - t0:.1f} s)")

    kubeconfig = state.kubeconfig
    cm = _spawn("kube-controller-manager", [
        str(tools.k8s("kube-controller-manager")), f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={ports['controller_manager']}",
        f"--cert-dir={state_dir / 'controller-manager'}", "--leader-elect=false",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}", "--use-service-account-credentials=false",
        # Every default controller (garbage collector, node lifecycle, namespace, ...).
        "--controllers=*", "--kube-api-qps=200", "--kube-api-burst=400",
        f"--node-monitor-grace-period={NODE_MONITOR_GRACE_S}s",
    ], state, logs)
    scheduler_config = state_dir / "scheduler.yaml"
    scheduler_config.write_text(json.dumps({
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig, "qps": 200, "burst": 400},
        "leaderElection": {"leaderElect": False},
    }))
    sched = _spawn("kube-scheduler", [
        str(tools.k8s("kube-scheduler")), f"--config={scheduler_config}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
        f"--cert-dir={state_dir / 'scheduler'}",
    ], state, logs)
    stages = sorted(tools.kwok_stages.glob("*.yaml"))
    kwok_config = state_dir / "kwok.yaml"
    kwok_config.write_text("\n---\n".join(p.read_text() for p in stages))
    kwok = _spawn("kwok", [
        str(tools.kwok), f"--kubeconfig={kubeconfig}", f"--config={kwok_config}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}",
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        "--node-ip=127.0.0.1", f"--server-address=127.0.0.1:{ports['kwok']}",
        "--cidr=10.64.0.0/10",
    ], state, logs)
    for comp, url, ctx in (
            (cm, f"https://127.0.0.1:{ports['controller_manager']}/healthz", insecure),
            (sched, f"https://127.0.0.1:{ports['scheduler']}/healthz", insecure)):
        wait_component(comp, functools.partial(_https_ok, url, token, ctx),
                        f"{comp.name} /healthz")
    wait_component(kwok, lambda: _http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"),
                    "kwok /healthz")
    say(f"controller-manager, scheduler, kwok healthy ({time.monotonic() - t0:.1f} s)")

    api = Api.from_state(state)
    names = add_nodes(api, nodes, spec)
    wait_nodes_ready(api, set(names))
    say(f"{nodes} fake GPU nodes Ready ({spec.gpus} x {spec.gpu_product} each) "
        f"({time.monotonic() - t0:.1f} s)")
    say(f"kubeconfig: {state.kubeconfig}")
    return state


def add_nodes(api: Api, count: int, spec: NodeSpec, start: int = 0,
              prefix: str = "gpu-node") -> list[str]:
    """Create fake nodes `prefix-<start>` ... `prefix-<start+count-1>`; return their names."""
    names = [f"{prefix}-{i}" for i in range(start, start + count)]
    for i, name in zip(range(start, start + count), names, strict=True):
        api.create("/api/v1/nodes", gpu_node(name, i, spec))
    return names


def stop_all(comps: Sequence[Component], timeout: float = 15.0) -> list[str]:
    """SIGTERM every live component at once (state is thrown away, so shutdown order does
    not matter), wait for each, SIGKILL what outlives `timeout`."""
    said: list[str] = []
    live: list[tuple[Component, subprocess.Popen[bytes] | None]] = []
    for comp in comps:
        child = _CHILDREN.pop(comp.pid, None)
        if not is_alive(comp):
            if child is not None:
                child.wait()
            said.append(f"{comp.name} (pid {comp.pid}) was not running")
            continue
        os.kill(comp.pid, signal.SIGTERM)
        live.append((comp, child))

    def gone(comp: Component, child: subprocess.Popen[bytes] | None) -> bool:
        # Our own children must be reaped (poll) or they linger as zombies.
        return child.poll() is not None if child is not None else not is_alive(comp)

    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        for comp, child in list(live):
            if gone(comp, child):
                said.append(f"stopped {comp.name} (pid {comp.pid})")
                live.remove((comp, child))
        time.sleep(0.05)
    for comp, child in live:
        os.kill(comp.pid, signal.SIGKILL)
        if child is not None:
            child.wait()
        said.append(f"killed {comp.name} (pid {comp.pid}) after {timeout:.0f} s")
    return said


def down(state_dir: Path = DEFAULT_STATE_DIR, keep_logs: bool = False,
         say: Callable[[str], None] = print) -> None:
    """Stop the processes recorded in `state_dir` (newest first) and remove the state."""
    state_dir = state_dir.resolve()
    state = ClusterState.load(state_dir)
    if state is None:
        say(f"no cluster state in {state_dir}: nothing to stop")
    else:
        # Also when `up` died before it could record its real node: the machine's lock
        # record says whether this cluster holds one.
        _realnode().down(state, say)
        for line in stop_all(list(reversed(state.components))):
            say(line)
    if keep_logs:
        for child in state_dir.iterdir() if state_dir.exists() else ():
            if child.name != "logs":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(state_dir, ignore_errors=True)


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any]:
    """Which recorded components are alive, whether /readyz answers, and the node count."""
    state = ClusterState.load(state_dir.resolve())
    if state is None:
        return {"up": False, "reason": f"no cluster state in {state_dir}"}
    alive = {c.name: is_alive(c) for c in state.components}
    result: dict[str, Any] = {"up": all(alive.values()), "components": alive,
                              "kubeconfig": state.kubeconfig, "server": state.server}
    if alive.get("kube-apiserver"):
        api = Api.from_state(state)
        with contextlib.suppress(ClusterError, OSError):
            result["readyz"] = api.get("/readyz")
            nodes = api.get("/api/v1/nodes")["items"]
            result["nodes_ready"] = sum(node_ready(n) for n in nodes)
            result["nodes"] = len(nodes)
    if state.real_node:
        result["real_node"] = _realnode().status(state)
        result["up"] = result["up"] and result["real_node"]["up"]
    return result


def _iter_rss(state: ClusterState) -> Iterator[tuple[str, int]]:
    for c in state.components:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{c.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    yield c.name, int(line.split()[1]) * 1024


def rss_bytes(state: ClusterState) -> dict[str, int]:
    """Resident memory of each running component, in bytes."""
    return dict(_iter_rss(state))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "up", "down", "status", "setup-real-node",
                                            "images"],
                        help="setup-real-node: install and build what --real-node needs (a "
                             "no-op when cached; says why where it cannot run); images: build "
                             "the images and load them into the running real node")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"where pids, certs, logs and the kubeconfig go "
                             f"(default {DEFAULT_STATE_DIR})")
    parser.add_argument("--nodes", type=int, default=4, help="fake GPU nodes (default 4)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="default 8")
    parser.add_argument("--gpu-product", default=DEFAULT_GPU_PRODUCT)
    parser.add_argument("--gpu-memory-mib", type=int, default=DEFAULT_GPU_MEMORY_MIB)
    parser.add_argument("--real-node", action="store_true",
                        help="up: also one real node (containerd + kubelet) running real pods")
    parser.add_argument("--real-node-gpus", type=int, default=4,
                        help="GPUs the real node advertises (a count for scheduling; the sim "
                             "engine serves; default 4)")
    parser.add_argument("--keep-logs", action="store_true", help="down: keep <state>/logs")
    args = parser.parse_args(argv)
    if (args.nodes < 0 or args.gpus_per_node < 0 or args.gpu_memory_mib <= 0
            or args.real_node_gpus < 0):
        parser.error("--nodes, --gpus-per-node and --real-node-gpus must be >= 0, "
                     "--gpu-memory-mib > 0")
    try:
        if args.command == "build":
            build()
        elif args.command == "up":
            spec = NodeSpec(args.gpus_per_node, args.gpu_product, args.gpu_memory_mib)
            real = replace(spec, gpus=args.real_node_gpus) if args.real_node else None
            up(args.state_dir, args.nodes, spec, real_node=real)
        elif args.command == "down":
            down(args.state_dir, keep_logs=args.keep_logs)
        elif args.command == "setup-real-node":
            _realnode().setup()
        elif args.command == "images":
            _realnode().images(ClusterState.load(args.state_dir.resolve()))
        else:
            report = status(args.state_dir)
            print(json.dumps(report, indent=2))
            return 0 if report["up"] else 1
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
