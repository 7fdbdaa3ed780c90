"""One real Kubernetes node beside the fake ones: containerd + runc + the bridge CNI plugin +
a kubelet, so kubeplex's pods run real containers (``cluster.py up --real-node``).

What it changes on the host, and how ``down`` puts it back:

* processes: containerd and the kubelet, started here with their pids and start times
  recorded; ``down`` signals exactly those (and the containerd shims whose command line names
  this node's own containerd socket, which no other process can);
* sysctls the kubelet and the bridge plugin set (``kernel.panic``, ``kernel.panic_on_oops``,
  ``vm.overcommit_memory``, ``net.ipv4.ip_forward``, ...): read before, written back after;
* iptables (and ip6tables): every rule and chain not in the ``iptables-save`` taken before
  start is deleted; our one NAT rule (the API server's Service IP, below) is among them;
* host paths the kubelet, containerd and CNI create (``/var/lib/kubelet``,
  ``/var/log/containers``, ``/var/lib/cni``, ``/run/netns``, ...) and the ``kubepods``
  cgroups: removed when they did not exist before; mounts under them are unmounted first;
* the bridge ``kubeplex0`` and its pod subnet (``10.244.0.0/24``).

(host.py beside this file records and restores the settings; this module starts and stops.)
The snapshot lives in ``/run/kubeplex/real-node.json``, which is also the lock: one real node
per machine (other sessions' KWOK clusters are never touched). A second ``up`` waits for it;
a record whose processes are all gone is stale: its host changes are undone, then it is taken.
Everything else (containerd's root, the kubelet's root and pod logs, CNI state, certificates)
lives in ``<state>/realnode/`` and goes with the cluster's state directory.

Networking without kube-proxy or DNS: pods get bridge IPs the host and the other pods reach
directly; the one Service that must work is ``kubernetes.default`` (in-cluster clients):
a DNAT rule sends its ClusterIP to the API server, which then listens on every address.
Images are local (``e2e/images/build.py``, imported into containerd): nothing is pulled.

Loaded by cluster.py (``up(real_node=...)``, ``down``, ``status``, and its ``setup-real-node``
and ``images`` commands); standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

from kubeplex_e2e_cluster import (  # type: ignore[import-not-found]  # loaded by cluster.py
    GPU_COUNT_LABEL,
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    HERE,
    REPO,
    Api,
    ApiError,
    ClusterError,
    ClusterState,
    Component,
    NodeSpec,
    Toolchain,
    build,
    free_ports,
    is_alive,
    load_module,
    node_ready,
    openssl,
    spawn,
    start_ticks,
    stop_all,
    tail,
    wait_component,
    wait_for,
)

__all__ = [
    "REAL_NODE_LABEL",
    "RealNodeBusy",
    "RealNodeError",
    "RealNodeUnavailable",
    "check_available",
    "down",
    "images",
    "prepare",
    "setup",
    "status",
    "up",
]

REAL_NODE_LABEL = ("kubeplex.io/real-node", "true")
NODE_NAME = "real-node-0"
# The lock and host snapshot: under /run, which (like the sysctls it records) a reboot resets.
LOCK_DIR = Path("/run/kubeplex")
RECORD = LOCK_DIR / "real-node.json"
GUARD = LOCK_DIR / "real-node.lock"
# A short fixed path: unix socket paths are limited to 108 bytes, state dirs can be long;
# the lock makes it one per machine.
CONTAINERD_SOCKET = LOCK_DIR / "containerd.sock"
# The pod network: a bridge of its own and a /24 clear of the fake nodes' 10.64.0.0/10 pod
# CIDRs (cluster.py) and of the 10.96.0.0/16 Service range.
BRIDGE = "kubeplex0"
POD_SUBNET = "10.244.0.0/24"
GATEWAY_IP = "10.244.0.1"
# The `kubernetes` Service's ClusterIP (first address of cluster.py's Service range; its
# serving certificate names it) and the NAT chain that sends it to the API server.
API_SERVICE_IP = "10.96.0.1"
API_SERVICE_PORT = 443
NAT_CHAIN = "KUBEPLEX-REALNODE"
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
# Debian packages the node and the image build need: command (or file) -> package.
PACKAGES = {
    "containerd": "containerd", "runc": "runc", "ctr": "containerd",
    str(CNI_BIN_DIR / "bridge"): "containernetworking-plugins",
    str(CNI_BIN_DIR / "host-local"): "containernetworking-plugins",
    "iptables": "iptables", "iptables-save": "iptables", "ip": "iproute2",
    "debootstrap": "debootstrap", "unshare": "util-linux", "gcc": "gcc",
    "/usr/lib/x86_64-linux-gnu/libc.a": "libc6-dev",
}
# How long `up` waits for another session's real node before giving up.
LOCK_WAIT_S = 900.0
LOCK_POLL_S = 5.0
# Pods deleted on the way down get this long to stop through the kubelet (CNI DEL, volumes).
DRAIN_S = 30.0


class RealNodeError(ClusterError):  # type: ignore[misc]
    """Starting or stopping the real node failed; the message says which step."""


class RealNodeUnavailable(RealNodeError):
    """A real node cannot run on this machine at all (the reason is the message)."""


class RealNodeBusy(RealNodeError):
    """Another session's real node holds this machine's lock."""


host = load_module(HERE / "host.py", "kubeplex_e2e_host")


def _say(message: str) -> None:
    print(f"[real-node {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _images() -> ModuleType:
    return load_module(REPO / "e2e" / "images" / "build.py", "kubeplex_e2e_images")


# --------------------------------------------------------------------------------------
# Preconditions and setup.


def _missing_packages() -> list[str]:
    missing = {pkg for what, pkg in PACKAGES.items()
               if not (Path(what).exists() if what.startswith("/") else shutil.which(what))}
    return sorted(missing)


def check_available() -> None:
    """Raise :class:`RealNodeUnavailable` naming why no real node can run here."""
    if not Path("/proc/self/mountinfo").exists() or os.uname().sysname != "Linux":
        raise RealNodeUnavailable("a real node needs Linux")
    if os.geteuid() != 0:
        raise RealNodeUnavailable("a real node needs root (containerd, the kubelet, iptables, "
                                  "mounts); run as root or use the KWOK-only cluster")
    if _missing_packages() and shutil.which("apt-get") is None:
        raise RealNodeUnavailable(f"Debian packages {', '.join(_missing_packages())} are "
                                  "missing and there is no apt-get to install them")
    cgroups = host.CGROUP_ROOT
    if not (cgroups / "memory").is_dir() and not (cgroups / "cgroup.controllers").exists():
        raise RealNodeUnavailable(f"no cgroup hierarchy under {cgroups}")


def _ensure_packages(say: Callable[[str], None]) -> None:
    missing = _missing_packages()
    if not missing:
        return
    say(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RealNodeError(f"apt-get install {' '.join(missing)} failed:\n"
                                f"{proc.stderr[-2000:]}")
    if still := _missing_packages():
        raise RealNodeError(f"installed, yet still missing: {', '.join(still)}")


def _kubelet(tools: Toolchain) -> Path:
    return Path(tools.cache) / "kubelet" / tools.k8s_version / "kubelet"


def _k8s_module(tools: Toolchain) -> Path:
    gomodcache = Path(tools.cache) / "go" / "mod"
    return gomodcache / "k8s.io" / f"kubernetes@v{tools.k8s_version}"


def prepare(tools: Toolchain, say: Callable[[str], None] = _say) -> dict[str, Path]:
    """Packages, the kubelet and the images (each cached): name -> image archive."""
    _ensure_packages(say)
    kubelet = _kubelet(tools)
    if not kubelet.exists():
        say("building the kubelet (once; ~100 packages past the control plane's)")
        cluster_build = HERE / "build.sh"
        if subprocess.run(["bash", str(cluster_build), "kubelet"], check=False).returncode:
            raise RealNodeError(f"{cluster_build} kubelet failed (its output says why)")
        if not kubelet.exists():
            raise RealNodeUnavailable("the kubelet cannot be built here (no Go toolchain or "
                                      "module proxy; build.sh said which)")
    images = _images()
    try:
        return dict(images.build_all(k8s_module=_k8s_module(tools)))
    except images.ImageBuildError as e:
        raise RealNodeError(f"building the images failed: {e}") from None


def setup(say: Callable[[str], None] = _say) -> None:
    """`make setup`: everything a real node needs, cached; a clear SKIPPED line (and success)
    where this machine cannot run one."""
    try:
        check_available()
        tools = build(quiet=True)
        archives = prepare(tools, say)
    except RealNodeUnavailable as e:
        say(f"SKIPPED: {e}; tests marked 'realpods' will skip")
        return
    except ClusterError as e:
        if Toolchain.from_build_script().missing():  # build.sh said why it could not build
            say(f"SKIPPED: no control plane to join ({e}); tests marked 'realpods' will skip")
            return
        raise
    for name, archive in archives.items():
        say(f"{name}: {archive}")


def images(state: ClusterState | None, say: Callable[[str], None] = _say) -> None:
    """`make images`: build (cached) and load into the running real node, if there is one."""
    check_available()
    archives = prepare(build(quiet=True), say)
    record = _read_record()
    if state is None or not state.real_node or record is None or \
            record.get("state_dir") != state.state_dir:
        say("no real node running from this state dir: images are built, `make cluster-up "
            "CLUSTER_ARGS=--real-node` loads them")
        return
    _images().import_archives(str(CONTAINERD_SOCKET), archives, say)


# --------------------------------------------------------------------------------------
# The lock record (/run/kubeplex/real-node.json).


def _read_record() -> dict[str, Any] | None:
    try:
        return dict(json.loads(RECORD.read_text()))
    except (OSError, ValueError):
        return None


def _write_record(record: Mapping[str, Any]) -> None:
    tmp = RECORD.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(RECORD)


def _components(record: Mapping[str, Any]) -> list[Component]:
    return [Component(**c) for c in record.get("components", [])]


def _record_alive(record: Mapping[str, Any]) -> bool:
    owner = Component(**record["owner"]) if record.get("owner") else None
    return any(is_alive(c) for c in [*_components(record), *([owner] if owner else [])])


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    """Serializes looking at and taking the lock between processes on this machine."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with GUARD.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _acquire(state: ClusterState, wait_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Take the machine's real-node lock for this cluster (waiting for a live holder; undoing
    a dead one's host changes first) and record the host as it is now."""
    me = os.getpid()
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        with _guard():
            record = _read_record()
            if record is not None and not _record_alive(record):
                say(f"a stale real node of {record.get('state_dir')} left this machine "
                    "changed: undoing that first")
                _teardown(record, None, say)
                record = None
            if record is None:
                record = {"state_dir": state.state_dir, "node": NODE_NAME,
                          "owner": asdict(Component("up", me, start_ticks(me) or 0, "python", "")),
                          "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          "snapshot": asdict(host.HostSnapshot.take()), "components": []}
                _write_record(record)
                return record
        if time.monotonic() > deadline:
            raise RealNodeBusy(f"another real node holds {RECORD} (cluster "
                               f"{record.get('state_dir')}, since {record.get('since')}) after "
                               f"{wait_s:.0f} s of waiting; one real node runs per machine. If "
                               "its session is gone, stop it: python e2e/cluster/cluster.py "
                               f"down --state-dir {record.get('state_dir')}")
        if not said:
            say(f"waiting for the real node of {record.get('state_dir')} to go (one per "
                "machine)")
            said = True
        time.sleep(LOCK_POLL_S)


# --------------------------------------------------------------------------------------
# Up.


def _containerd_config(node_dir: Path, pause_ref: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{node_dir / 'containerd' / 'root'}"
state = "{node_dir / 'containerd' / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{CONTAINERD_SOCKET}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{node_dir / 'containerd' / 'opt'}"
[{cri}]
  sandbox_image = "{pause_ref}"
  # Root here lacks CAP_SYS_RESOURCE: a sandbox asking for oom_score_adj -998 would fail
  # ("can't get final child's PID from pipe: EOF"); clamp to containerd's own instead.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{node_dir / 'runc'}"
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{node_dir / 'cni' / 'net.d'}"
"""


def _cni_config(node_dir: Path) -> dict[str, Any]:
    return {"cniVersion": "0.4.0", "name": "kubeplex", "plugins": [{
        "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
        "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET,
                                                    "gateway": GATEWAY_IP}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(node_dir / "cni" / "ipam")},
    }]}


def _kubelet_config(node_dir: Path, pki: Path, ports: Mapping[str, int]) -> dict[str, Any]:
    endpoint = f"unix://{CONTAINERD_SOCKET}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": GATEWAY_IP, "port": ports["kubelet"], "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": ports["kubelet_healthz"],
        # Only the API server (admin client certificate, our CA) may call the kubelet.
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": endpoint, "imageServiceEndpoint": endpoint,
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # these hosts have cgroup v1 only
        "failSwapOn": False,
        "makeIPTablesUtilChains": False,  # no kube-proxy: nothing uses its chains
        "podLogsDir": str(node_dir / "pod-logs"),
        "serializeImagePulls": False,
        # Shared, busy machines: never evict the test pods for another session's disk use.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "registerNode": True,
    }


def _node_certificate(pki: Path, node_dir: Path) -> None:
    """A client certificate the Node authorizer accepts for this kubelet (system:nodes)."""
    certs = node_dir / "pki"
    certs.mkdir(parents=True, exist_ok=True)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "kubelet.key", "-out",
            "kubelet.csr", "-subj", f"/O=system:nodes/CN=system:node:{NODE_NAME}", cwd=certs)
    (certs / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", "kubelet.csr", "-CA", str(pki / "ca.crt"), "-CAkey",
            str(pki / "ca.key"), "-CAcreateserial", "-out", "kubelet.crt", "-days", "3650",
            "-extfile", "client.ext", cwd=certs)


def _kubeconfig(server: str, pki: Path, certs: Path) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kubeplex", "cluster": {
                "server": server, "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": NODE_NAME, "user": {
                "client-certificate": str(certs / "kubelet.crt"),
                "client-key": str(certs / "kubelet.key")}}],
            "contexts": [{"name": "kubeplex", "context": {"cluster": "kubeplex",
                                                          "user": NODE_NAME}}],
            "current-context": "kubeplex"}


def _running_tasks() -> list[str]:
    """Containers (and pod sandboxes) of this node still running."""
    lines = _ctr("tasks", "ls", check=False).splitlines()[1:]  # TASK PID STATUS
    return [ln.split()[0] for ln in lines if ln.split()[-1:] == ["RUNNING"]]


def _ctr(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ctr", "--address", str(CONTAINERD_SOCKET), "--namespace", "k8s.io",
                           *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RealNodeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _bridge() -> None:
    """The pod bridge, made before the first pod so the kubelet can serve on its address
    (a node IP may not be loopback); the bridge plugin adopts it."""
    for argv in (["link", "add", BRIDGE, "type", "bridge"],
                 ["addr", "add", f"{GATEWAY_IP}/{POD_SUBNET.split('/')[1]}", "dev", BRIDGE],
                 ["link", "set", BRIDGE, "up"]):
        proc = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RealNodeError(f"ip {' '.join(argv)}: {proc.stderr.strip()}")


def _api_service_nat(apiserver_port: int) -> None:
    """The `kubernetes` Service's ClusterIP, from pods, to the API server (no kube-proxy).
    Removed on the way down with every other rule added since the snapshot."""
    rule = ["-i", BRIDGE, "-d", f"{API_SERVICE_IP}/32", "-p", "tcp", "--dport",
            str(API_SERVICE_PORT), "-j", "DNAT", "--to-destination",
            f"{GATEWAY_IP}:{apiserver_port}"]
    for argv in (["-N", NAT_CHAIN], ["-A", NAT_CHAIN, *rule],
                 ["-I", "PREROUTING", "-j", NAT_CHAIN]):
        proc = subprocess.run(["iptables", "-w", "-t", "nat", *argv], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise RealNodeError(f"iptables -t nat {' '.join(argv)}: {proc.stderr.strip()}")


def up(state: ClusterState, tools: Toolchain, spec: NodeSpec,
       say: Callable[[str], None] = _say, lock_wait_s: float = LOCK_WAIT_S) -> str:
    """Start the real node for a running control plane; return its name. Waits up to
    ``lock_wait_s`` for another session's real node to go (:class:`RealNodeBusy` after). The
    caller (cluster.up) runs :func:`down` if this raises."""
    check_available()
    t0 = time.monotonic()
    archives = prepare(tools, say)
    record = _acquire(state, lock_wait_s, say)
    state_dir = Path(state.state_dir)
    node_dir, pki, logs = state_dir / "realnode", state_dir / "pki", state_dir / "logs"
    for d in ("containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "runc"):
        (node_dir / d).mkdir(parents=True, exist_ok=True)

    def started(comp: Component) -> Component:
        record["components"].append(asdict(comp))
        _write_record(record)  # recorded before anything waits on it: `down` can stop it
        return comp

    images = _images()
    config = node_dir / "containerd" / "config.toml"
    config.write_text(_containerd_config(node_dir, images.PAUSE.ref))
    (node_dir / "cni" / "net.d" / "10-kubeplex.conflist").write_text(
        json.dumps(_cni_config(node_dir), indent=2))
    containerd = started(spawn("containerd", ["containerd", "--config", str(config)], logs))
    wait_component(containerd, lambda: bool(_ctr("version", check=False)), "containerd")
    images.import_archives(str(CONTAINERD_SOCKET), archives, say)

    _bridge()
    _api_service_nat(state.ports["apiserver"])
    _node_certificate(pki, node_dir)
    kubeconfig = node_dir / "kubelet.kubeconfig"
    kubeconfig.write_text(json.dumps(_kubeconfig(state.server, pki, node_dir / "pki")))
    ports = free_ports("kubelet", "kubelet_healthz")
    kubelet_config = node_dir / "kubelet.yaml"
    kubelet_config.write_text(json.dumps(_kubelet_config(node_dir, pki, ports), indent=2))
    labels = {REAL_NODE_LABEL[0]: REAL_NODE_LABEL[1], GPU_PRODUCT_LABEL: spec.gpu_product,
              GPU_MEMORY_LABEL: str(spec.gpu_memory_mib), GPU_COUNT_LABEL: str(spec.gpus)}
    kubelet = started(spawn("kubelet", [
        str(_kubelet(tools)), f"--config={kubelet_config}", f"--kubeconfig={kubeconfig}",
        f"--root-dir={node_dir / 'kubelet'}", f"--cert-dir={node_dir / 'kubelet' / 'pki'}",
        f"--hostname-override={NODE_NAME}", f"--node-ip={GATEWAY_IP}",
        "--node-labels=" + ",".join(f"{k}={v}" for k, v in labels.items()), "--v=1",
    ], logs))
    api = Api.from_state(state)

    def ready() -> bool:
        try:
            return bool(node_ready(api.get(f"/api/v1/nodes/{NODE_NAME}")))
        except ApiError:
            return False

    wait_component(kubelet, ready, f"node {NODE_NAME} Ready")
    # The fake GPU count the scheduler and kubeplex's placement see (no device plugin: the
    # sim engine serves). The kubelet keeps extended resources it does not manage.
    gpus = {GPU_RESOURCE: str(spec.gpus)}
    api.request("PATCH", f"/api/v1/nodes/{NODE_NAME}/status",
                {"status": {"capacity": gpus, "allocatable": gpus}},
                content_type="application/merge-patch+json")
    say(f"real node {NODE_NAME} Ready ({spec.gpus} x {spec.gpu_product}, label "
        f"{'='.join(REAL_NODE_LABEL)}; pods on {POD_SUBNET}) ({time.monotonic() - t0:.1f} s)")
    return NODE_NAME


# --------------------------------------------------------------------------------------
# Down.


def _drain(api: Api, node: str, say: Callable[[str], None]) -> None:
    """Cordon the node and delete its pods, so the kubelet stops them properly (CNI DEL,
    volumes unmounted) before it goes."""
    with contextlib.suppress(ClusterError, OSError):
        api.request("PATCH", f"/api/v1/nodes/{node}", {"spec": {"unschedulable": True}},
                    content_type="application/merge-patch+json")
        pods = api.get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")["items"]
        for pod in pods:
            meta = pod["metadata"]
            with contextlib.suppress(ClusterError):
                api.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/"
                                      f"{meta['name']}?gracePeriodSeconds=0")
        with contextlib.suppress(ClusterError):
            wait_for("the real node's containers to stop", lambda: not _running_tasks(),
                     DRAIN_S)
        say(f"drained {len(pods)} pods from {node}")


def _our_shims() -> list[Component]:
    """containerd shims of this node: their command line names its own socket."""
    shims = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ticks = start_ticks(int(proc.name))
            if b"containerd-shim" in argv[0] and str(CONTAINERD_SOCKET).encode() in argv \
                    and ticks is not None:
                shims.append(Component("containerd-shim", int(proc.name), ticks,
                                       argv[0].decode(), ""))
    return shims


def _teardown(record: Mapping[str, Any], api: Api | None, say: Callable[[str], None]) -> None:
    components = {c.name: c for c in _components(record)}
    if api is not None and "kubelet" in components and is_alive(components["kubelet"]):
        _drain(api, record["node"], say)
    if "kubelet" in components:
        for line in stop_all([components["kubelet"]]):
            say(line)
    if "containerd" in components and is_alive(components["containerd"]):
        for task in _running_tasks():
            _ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, check=False)
        with contextlib.suppress(ClusterError):
            wait_for("containers to exit", lambda: not _running_tasks(), 10.0)
        for task in _ctr("tasks", "ls", "-q", check=False).split():
            _ctr("tasks", "delete", "--force", task, check=False)
        for container in _ctr("containers", "ls", "-q", check=False).split():
            _ctr("containers", "delete", container, check=False)
    if "containerd" in components:
        for line in stop_all([components["containerd"]]):
            say(line)
    if shims := _our_shims():
        for line in stop_all(shims, timeout=5.0):
            say(line)
    node_dir = Path(record["state_dir"]) / "realnode"
    host.restore(host.HostSnapshot(**record["snapshot"]), node_dir, BRIDGE, say)
    for socket in LOCK_DIR.glob(CONTAINERD_SOCKET.name + "*"):
        socket.unlink()
    RECORD.unlink(missing_ok=True)  # the lock is free (its guard file stays, as in /run/lock)


def down(state: ClusterState, say: Callable[[str], None] = _say) -> None:
    """Stop this cluster's real node, if the machine's lock record says it has one (pods
    drained through the still-running API server), and put the host back as recorded."""
    mine = _read_record()  # a cheap look first: KWOK-only clusters (and non-root) stop here
    if mine is None or mine.get("state_dir") != state.state_dir:
        if state.real_node:
            say(f"no real node of {state.state_dir} is recorded in {RECORD}: nothing to stop")
        return
    with _guard():
        record = _read_record()
        if record is None or record.get("state_dir") != state.state_dir:
            return  # another process took it down meanwhile
        api = None
        with contextlib.suppress(ClusterError, OSError):
            api = Api.from_state(state)
        _teardown(record, api, say)
        say(f"real node {record['node']} stopped; host settings restored")


def status(state: ClusterState) -> dict[str, Any]:
    record = _read_record()
    if record is None or record.get("state_dir") != state.state_dir:
        return {"up": False, "reason": f"no record of this cluster in {RECORD}"}
    alive = {c.name: is_alive(c) for c in _components(record)}
    return {"up": bool(alive) and all(alive.values()), "node": record["node"],
            "components": alive, "containerd": str(CONTAINERD_SOCKET),
            "log_tails": {c.name: tail(Path(c.log), 3) for c in _components(record)
                          if not is_alive(c)}}

