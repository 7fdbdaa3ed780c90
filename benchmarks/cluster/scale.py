"""Can the test control plane hold a realistic fleet on a 2-core machine?

Starts its own cluster (e2e/cluster, in a temporary state directory on free ports), creates
N fake GPU nodes (default 500 x 8 GPUs) and waits until KWOK reports all Ready, then creates
Deployments totalling M pods (default 5,000: half ask for one `nvidia.com/gpu`, half only for
CPU) and waits until all are Running and Ready — through the real ReplicaSet controller,
scheduler and KWOK. Reports the wall time of each phase and the resident memory (RSS, peak
sampled every second and final) of every component, as JSON on stdout and a Markdown table.

    .venv/bin/python benchmarks/cluster/scale.py [--nodes 500] [--pods 5000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))  # scripts run by path: shared helpers
from cluster_lib import load_cluster  # noqa: E402

# Pods per Deployment: 10 Deployments for the default 5,000 pods.
PODS_PER_DEPLOYMENT = 500
# Parallel node creations (the API server has 2 cores; more gains nothing).
CREATE_WORKERS = 8
TIMEOUT_S = 1800.0
IMAGE = "registry.k8s.io/pause:3.10"


class RssSampler(threading.Thread):
    """Samples every component's RSS once a second; keeps the peak per component."""

    def __init__(self, lib: ModuleType, state: Any) -> None:
        super().__init__(daemon=True)
        self.lib, self.state = lib, state
        self.peak: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for name, rss in self.lib.rss_bytes(self.state).items():
                self.peak[name] = max(self.peak.get(name, 0), rss)


def deployment(name: str, replicas: int, gpus: int) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": "10m", "memory": "16Mi"}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "containers": [{"name": "c", "image": IMAGE, "resources": resources}],
                     "nodeSelector": {"kubeplex.io/fake-node": "true"}}}},
    }


def count_running_pods(api: Any) -> int:
    """Pods in phase Running, listed in pages (a cross-check of the Deployments' counts)."""
    count, token = 0, ""
    while True:
        page = api.get("/api/v1/pods?fieldSelector=status.phase%3DRunning&limit=1000"
                       + (f"&continue={quote(token)}" if token else ""))
        count += len(page["items"])
        token = page["metadata"].get("continue", "")
        if not token:
            return count


def wait(what: str, progress: Progress, total: int, count: Any) -> float:
    task = progress.add_task(what, total=total)
    t0 = time.monotonic()
    while (done := count()) < total:
        progress.update(task, completed=done)
        if time.monotonic() - t0 > TIMEOUT_S:
            raise SystemExit(f"timed out waiting for {what}: {done}/{total}")
        time.sleep(1.0)
    progress.update(task, completed=total)
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    # A plain `kill` must still run the `finally` below that stops the cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lib = load_cluster()
    tools = lib.build(quiet=True)
    results: dict[str, Any] = {"nodes": args.nodes, "pods": args.pods,
                               "k8s": tools.k8s_version}
    with tempfile.TemporaryDirectory(prefix="kubeplex-scale-") as tmp:
        state_dir = Path(tmp) / "cluster"
        t0 = time.monotonic()
        state = lib.up(state_dir, nodes=0, tools=tools, say=lambda m: print(m, file=sys.stderr))
        results["start_s"] = round(time.monotonic() - t0, 2)
        results["rss_idle_mib"] = {k: v >> 20 for k, v in lib.rss_bytes(state).items()}
        sampler = RssSampler(lib, state)
        sampler.start()
        api = lib.Api.from_state(state)
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), transient=False) as progress:
                spec = lib.NodeSpec()
                t0 = time.monotonic()
                with ThreadPoolExecutor(CREATE_WORKERS) as pool:
                    list(pool.map(lambda i: api.create("/api/v1/nodes",
                                                       lib.gpu_node(f"n-{i}", i, spec)),
                                  range(args.nodes)))
                results["nodes_created_s"] = round(time.monotonic() - t0, 2)

                def ready_nodes() -> int:
                    items = api.get("/api/v1/nodes?labelSelector=kubeplex.io%2Ffake-node")
                    return sum(lib.node_ready(n) for n in items["items"])

                wait("nodes Ready", progress, args.nodes, ready_nodes)
                results["nodes_ready_s"] = round(time.monotonic() - t0, 2)

                t0 = time.monotonic()
                names = []
                left, i = args.pods, 0
                while left > 0:
                    replicas = min(PODS_PER_DEPLOYMENT, left)
                    name = f"load-{i}"
                    api.create("/apis/apps/v1/namespaces/default/deployments",
                               deployment(name, replicas, gpus=i % 2))
                    names.append(name)
                    left -= replicas
                    i += 1

                def ready_pods() -> int:
                    deps = api.get("/apis/apps/v1/namespaces/default/deployments")["items"]
                    return sum(d.get("status", {}).get("readyReplicas", 0) for d in deps)

                wait("pods Running+Ready", progress, args.pods, ready_pods)
                results["pods_ready_s"] = round(time.monotonic() - t0, 2)
            results["pods_running_listed"] = count_running_pods(api)
            results["load_average_1m"] = round(os.getloadavg()[0], 1)
            results["rss_final_mib"] = {k: v >> 20 for k, v in lib.rss_bytes(state).items()}
            results["rss_peak_mib"] = {k: v >> 20 for k, v in sampler.peak.items()}
            results["rss_peak_total_mib"] = sum(results["rss_peak_mib"].values())
        finally:
            sampler.stop.set()
            lib.down(state_dir, say=lambda m: None)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print("\n| component | idle RSS MiB | peak RSS MiB | final RSS MiB |\n|---|---|---|---|")
    for name in results["rss_peak_mib"]:
        print(f"| {name} | {results['rss_idle_mib'].get(name)} | "
              f"{results['rss_peak_mib'][name]} | {results['rss_final_mib'].get(name)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
