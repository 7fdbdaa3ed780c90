"""How the operator copes with a big fleet: N ModelServices on M fake GPU nodes.

Starts its own control plane (e2e/cluster, temporary state directory, free ports) with M fake
nodes (default 500 x 8 H100), labels them into P GPUPools of disjoint node sets, starts the
operator (`kubeplex operator`, direct scraping off: KWOK pods run nothing; quick placement),
then applies N ModelServices (default 1,000; one replica each, 1 GPU) and measures:

* the control plane's floor first, on the same cluster: N pods (1 GPU each) and N Services
  created directly, the time until every pod is Running (then the pods are deleted); and
  again with N ModelService objects stored as well (the user's apply, which kubeplex's time
  includes);
* time from the first apply to every ModelService reporting ``status.ready == 1/1``, and its
  ratios to both floors; the operator's API writes per ModelService until then
  (``kubeplex_operator_api_writes_total``, kopf's own finalizer patches not included);
* the operator's CPU seconds and peak RSS (sampled every second from /proc);
* steady state: the pool cycle time (``kubeplex_operator_reconcile_seconds`` sum/count), and
  the latency from a spec change (``kubectl scale`` 1 -> 2 of one ModelService) to its status
  showing 2/2, p50/p99 over K changes.

    .venv/bin/python benchmarks/operator/scale.py [--services 1000] [--nodes 500] \
        [--pools 10] [--changes 40] [--json out.json] [--tracemalloc heap.txt]

``--tracemalloc OUT`` runs the operator under tracemalloc (``traced_operator.py``) and writes
its heap's top allocation sites to OUT once converged (timings and RSS are then inflated).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
from prometheus_client.parser import text_string_to_metric_families
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kubeplex.cli._args import MAX_COUNT, number
from kubeplex.runtime.supervisor import free_port

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))  # scripts run by path: shared helpers
from cluster_lib import load_cluster  # noqa: E402

GROUP, VERSION = "kubeplex.io", "v1alpha1"
#: Parallel creations (the API server has 2 cores; more gains nothing).
WORKERS = 8
TIMEOUT_S = 1800.0
#: Clock ticks per second for /proc/<pid>/stat CPU times.
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds user+system, RSS bytes) of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return cpu, rss


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.peak_rss = max(self.peak_rss, proc_stats(self.pid)[1])
            except OSError:
                return


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in Prometheus text (the client's own parser: a
    label value may hold a comma or a brace)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(port: int, name: str) -> float:
    return sum(value for sample, _, value in samples(scrape(port)) if sample == name)


def apiserver_time(api: Any) -> dict[str, tuple[float, float]]:
    """The API server's own request seconds and count so far, by "VERB resource[/sub]"
    (``apiserver_request_duration_seconds``; long-running watches excluded by the server)."""
    slots = {"apiserver_request_duration_seconds_sum": 0,
             "apiserver_request_duration_seconds_count": 1}
    out: dict[str, tuple[float, float]] = {}
    for name, labels, value in samples(api.get("/metrics")):
        if name not in slots:
            continue
        key = " ".join(v for v in (labels.get("verb", ""), labels.get("resource", "")) if v)
        if labels.get("subresource"):
            key += "/" + labels["subresource"]
        now = list(out.get(key, (0.0, 0.0)))
        now[slots[name]] += value
        out[key] = (now[0], now[1])
    return out


def top_server_time(before: dict[str, tuple[float, float]],
                    after: dict[str, tuple[float, float]], n: int = 8) -> dict[str, str]:
    """The ``n`` request kinds that took the API server the most seconds between two
    :func:`apiserver_time` readings: "seconds s / count"."""
    delta = {k: (v[0] - before.get(k, (0.0, 0.0))[0], v[1] - before.get(k, (0.0, 0.0))[1])
             for k, v in after.items()}
    top = sorted(delta.items(), key=lambda kv: -kv[1][0])[:n]
    return {k: f"{s:.1f} s / {c:.0f}" for k, (s, c) in top if c}


def writes_by_kind(port: int) -> dict[str, float]:
    """The operator's API writes so far, by "verb kind" (``kubeplex_operator_api_writes``)."""
    return {f"{labels['verb']} {labels['kind']}": value
            for name, labels, value in samples(scrape(port))
            if name == "kubeplex_operator_api_writes_total"}


def msvc(i: int, pools: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
            "metadata": {"name": f"m-{i:04d}"},
            "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                               "profile": "llama-3.1-8b"},
                     "engine": "sim", "pool": f"bench-{i % pools}",
                     "slo": {"ttftSeconds": 1.0},
                     "parallelism": {"tensor": 1, "pipeline": 1},
                     "scaling": {"minReplicas": 1, "maxReplicas": 4}}}


def floor_pod(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"floor-{i:04d}", "labels": {"app": f"floor-{i:04d}"}},
            "spec": {"containers": [{"name": "c", "image": "floor",
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}


def floor_service(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"floor-{i:04d}"},
            "spec": {"selector": {"app": f"floor-{i:04d}"}, "ports": [{"port": 80}]}}


def measure_floor(core: Any, custom: Any, count: int, pools: int, ns: str,
                  with_msvcs: bool) -> float:
    """Seconds for the control plane to run ``count`` pods (1 GPU each) and store ``count``
    Services created directly, with the parallelism the benchmark applies ModelServices with,
    until every pod is Running (the issue's floor). ``with_msvcs``: the user's ModelService
    objects are stored too, one before each pod (kubeplex's clock starts at the first apply,
    so that is the least any controller's run includes). Then the pods and ModelServices are
    deleted (no operator runs yet: nothing acts on them) and the GPUs are free again."""
    core.create_namespace({"metadata": {"name": ns}})
    t0 = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda i: (
            with_msvcs and custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, "modelservices", msvc(i, pools)),
            core.create_namespaced_pod(ns, floor_pod(i)),
            core.create_namespaced_service(ns, floor_service(i))), range(count)))
    wait_all(core.list_namespaced_pod, (ns,),
             lambda pod: pod.get("status", {}).get("phase") == "Running", count, t0,
             "floor: pods Running")
    took = time.monotonic() - t0
    core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, "modelservices")
    while core.list_namespaced_pod(ns).items:
        time.sleep(0.5)
    return took


def wait_all(list_fn: Any, args: tuple[Any, ...], is_ready: Any, count: int, t0: float,
             label: str) -> list[tuple[float, int]]:
    """Watch ``list_fn(*args)``'s objects (plain JSON: no model classes, so the benchmark's
    own CPU stays small) until ``count`` of them are ready; return the timeline of the ready
    count, (seconds since ``t0``, ready), one entry per change. A watch, not a list poll: the
    API server sends each change once, and the two phases cost it the same."""
    ready: set[str] = set()
    timeline: list[tuple[float, int]] = []
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        task = progress.add_task("ready", total=count)
        while len(ready) < count:
            remaining = TIMEOUT_S - (time.monotonic() - t0)
            if remaining <= 0:
                raise TimeoutError(f"only {len(ready)} of {count} ready")
            for event in kubernetes.watch.Watch().stream(
                    list_fn, *args, deserialize=False,
                    timeout_seconds=max(1, int(min(remaining, 60)))):
                obj = event["object"]
                name = obj.get("metadata", {}).get("name", "")
                before = len(ready)
                if event["type"] != "DELETED" and is_ready(obj):
                    ready.add(name)
                else:
                    ready.discard(name)
                if len(ready) != before:
                    timeline.append((round(time.monotonic() - t0, 2), len(ready)))
                    progress.update(task, completed=len(ready))
                if len(ready) >= count:
                    break
    return timeline


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    lib = load_cluster()
    result: dict[str, Any] = {"services": args.services, "nodes": args.nodes,
                              "pools": args.pools}
    with tempfile.TemporaryDirectory(prefix="kubeplex-opbench-") as tmp:
        state_dir = Path(tmp) / "cluster"
        t0 = time.monotonic()
        state = lib.up(state_dir, nodes=0, say=lambda m: print(m, file=sys.stderr))
        op_proc: subprocess.Popen[bytes] | None = None
        try:
            api = lib.Api.from_state(state)
            names = [f"gpu-node-{i}" for i in range(args.nodes)]
            with ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(lambda i: api.create("/api/v1/nodes", lib.gpu_node(
                    names[i], i, lib.NodeSpec())), range(args.nodes)))
            lib.wait_nodes_ready(api, set(names))
            result["cluster_up_s"] = round(time.monotonic() - t0, 1)
            client = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)
            core = kubernetes.client.CoreV1Api(client)
            custom = kubernetes.client.CustomObjectsApi(client)
            with ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(lambda i: core.patch_node(names[i], {"metadata": {"labels": {
                    "kubeplex.io/bench-pool": f"bench-{i % args.pools}"}}}),
                    range(args.nodes)))
            for crd in sorted((REPO / "crds").glob("*.yaml")):
                subprocess.run(["kubectl", f"--kubeconfig={state.kubeconfig}", "apply",
                                "--server-side", "-f", str(crd)], check=True,
                               capture_output=True)
            subprocess.run(["kubectl", f"--kubeconfig={state.kubeconfig}", "wait",
                            "--for=condition=Established", "crd", "--all", "--timeout=60s"],
                           check=True, capture_output=True)
            for p in range(args.pools):
                custom.create_cluster_custom_object(GROUP, VERSION, "gpupools", {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUPool",
                    "metadata": {"name": f"bench-{p}"},
                    "spec": {"nodeSelector": {"kubeplex.io/bench-pool": f"bench-{p}"},
                             "gpu": {"product": "H100-80GB"}, "gpusPerNode": 8}})
            if not args.no_floor:
                for key, with_msvcs in (("floor", False), ("floor_with_apply", True)):
                    server0 = apiserver_time(api)
                    took = measure_floor(core, custom, args.services, args.pools,
                                         key.replace("_", "-"), with_msvcs)
                    result[f"{key}_s"] = round(took, 1)
                    result[f"{key}_server_time"] = top_server_time(server0,
                                                                   apiserver_time(api))
            metrics_port = free_port()
            env = {**os.environ, "KUBECONFIG": state.kubeconfig,
                   "KUBEPLEX_BIND_ADDRESS": "127.0.0.1",
                   "KUBEPLEX_HEALTH_PORT": str(free_port()),
                   "KUBEPLEX_METRICS_PORT": str(metrics_port),
                   "KUBEPLEX_WEBHOOK_PORT": str(free_port()),
                   "KUBEPLEX_SCRAPE": "off", "KUBEPLEX_PLACEMENT": "quick",
                   "KUBEPLEX_INTERVAL_SECONDS": "5",
                   "KUBEPLEX_LOG_LEVEL": "INFO" if args.operator_log else "WARNING"}
            log = (args.operator_log or Path(tmp) / "operator.log").open("wb")
            command = [sys.executable, "-m", "kubeplex.cli", "operator"]
            if args.tracemalloc:
                command = [sys.executable, str(Path(__file__).with_name("traced_operator.py"))]
                env["KUBEPLEX_TRACEMALLOC_OUT"] = str(args.tracemalloc.resolve())
                args.tracemalloc.unlink(missing_ok=True)
            op_proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            sampler = Sampler(op_proc.pid)
            sampler.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    metric(metrics_port, "kubeplex_operator_reconciles_total")
                    break
                except OSError:
                    time.sleep(0.5)
            cpu0 = proc_stats(op_proc.pid)[0]
            ns = "default"
            server0 = apiserver_time(api)
            t_apply = time.monotonic()
            with ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(lambda i: custom.create_namespaced_custom_object(
                    GROUP, VERSION, ns, "modelservices", msvc(i, args.pools)),
                    range(args.services)))
            result["apply_s"] = round(time.monotonic() - t_apply, 1)
            timeline = wait_all(
                custom.list_namespaced_custom_object, (GROUP, VERSION, ns, "modelservices"),
                lambda m: m.get("status", {}).get("ready") == "1/1", args.services, t_apply,
                "ModelServices Ready")
            result["all_ready_s"] = round(time.monotonic() - t_apply, 1)
            result["server_time"] = top_server_time(server0, apiserver_time(api))
            result["ready_s_at_percent"] = {
                pct: next(t for t, n in timeline if 100 * n >= pct * args.services)
                for pct in (1, 10, 50, 90, 100)}
            for key in ("floor", "floor_with_apply"):
                if f"{key}_s" in result:
                    result[f"ready_over_{key}"] = round(
                        result["all_ready_s"] / max(0.1, result[f"{key}_s"]), 2)
            result["api_writes_per_service"] = round(
                metric(metrics_port, "kubeplex_operator_api_writes_total") / args.services, 1)
            result["api_writes_per_service_by_kind"] = {
                k: round(v / args.services, 2) for k, v in writes_by_kind(metrics_port).items()}
            cpu1 = proc_stats(op_proc.pid)[0]
            result["operator_cpu_s_to_ready"] = round(cpu1 - cpu0, 1)
            pods = core.list_namespaced_pod(ns, label_selector="kubeplex.io/group").items
            result["pods"] = len(pods)
            result["pods_running"] = sum(1 for p in pods if p.status.phase == "Running")
            if args.no_steady:
                sampler.stop.set()
                return result
            # steady state
            time.sleep(15)
            result["operator_rss_converged_mib"] = round(proc_stats(op_proc.pid)[1] / 2**20, 1)
            if args.tracemalloc:
                op_proc.send_signal(signal.SIGUSR1)
                deadline = time.monotonic() + 120
                while not args.tracemalloc.exists() and time.monotonic() < deadline:
                    time.sleep(0.5)
                result["tracemalloc"] = str(args.tracemalloc)
            s0 = metric(metrics_port, "kubeplex_operator_reconcile_seconds_sum")
            c0 = metric(metrics_port, "kubeplex_operator_reconcile_seconds_count")
            cpu_a, t_a = proc_stats(op_proc.pid)[0], time.monotonic()
            time.sleep(30)
            s1 = metric(metrics_port, "kubeplex_operator_reconcile_seconds_sum")
            c1 = metric(metrics_port, "kubeplex_operator_reconcile_seconds_count")
            cpu_b, t_b = proc_stats(op_proc.pid)[0], time.monotonic()
            result["steady_cycle_mean_s"] = round((s1 - s0) / max(1.0, c1 - c0), 3)
            result["steady_cycles_per_s"] = round((c1 - c0) / (t_b - t_a), 2)
            result["steady_operator_cpu_frac"] = round((cpu_b - cpu_a) / (t_b - t_a), 3)
            latencies = []
            for k in range(args.changes):
                name = f"m-{(k * 7919) % args.services:04d}"
                t = time.monotonic()
                custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "modelservices", name,
                                                      {"spec": {"scaling": {"replicas": 2}}})
                while custom.get_namespaced_custom_object(
                        GROUP, VERSION, ns, "modelservices", name).get(
                        "status", {}).get("ready") != "2/2":
                    if time.monotonic() - t > 120:
                        raise TimeoutError(f"{name} never reached 2/2")
                    time.sleep(0.05)
                latencies.append(time.monotonic() - t)
            if latencies:
                result["change_to_ready_p50_s"] = round(percentile(latencies, 50), 2)
                result["change_to_ready_p99_s"] = round(percentile(latencies, 99), 2)
            result["operator_peak_rss_mib"] = round(sampler.peak_rss / 2**20, 1)
            sampler.stop.set()
        finally:
            if op_proc is not None:
                op_proc.send_signal(signal.SIGTERM)
                try:
                    op_proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    op_proc.kill()
            lib.down(state_dir, say=lambda m: print(m, file=sys.stderr))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=number(1, MAX_COUNT, integer=True), default=1000)
    p.add_argument("--nodes", type=number(1, MAX_COUNT, integer=True), default=500)
    p.add_argument("--pools", type=number(1, MAX_COUNT, integer=True), default=10)
    p.add_argument("--changes", type=number(0, MAX_COUNT, integer=True), default=40,
                   help="spec changes timed after convergence (0: none)")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the control plane's floor (pods and Services created directly)")
    p.add_argument("--no-steady", action="store_true",
                   help="stop at all Ready (no steady-state cycle, memory or spec changes)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--operator-log", type=Path, default=None,
                   help="keep the operator's log (at INFO) here")
    p.add_argument("--tracemalloc", type=Path, default=None,
                   help="write the operator's top heap allocation sites here (slower)")
    args = p.parse_args()
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print("\n| metric | value |\n|---|---|")
    for k, v in result.items():
        print(f"| {k} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
