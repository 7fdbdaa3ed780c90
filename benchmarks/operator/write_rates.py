"""Create rates of the objects the operator writes, by concurrent writers, on the test control
plane: why Service creates have a lane of their own (``SERVICE_THREADS`` in
``operator/_reconcile.py``).

A Service with a cluster IP goes through the API server's IP allocator, which serializes the
creates; a headless Service (no IP) and a ConfigMap (a plain write) are the references. Each
round creates ``--count`` objects of each kind at each concurrency, then deletes them; the
rounds alternate so that a drift of the shared machine shows as a spread, not as a trend.

    .venv/bin/python benchmarks/operator/write_rates.py [--count 400] [--rounds 2] \
        [--writers 2,4,8,16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes

from kubeplex.cli._args import MAX_COUNT, number

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts run by path
from cluster_lib import load_cluster

NAMESPACE = "default"


def _service(name: str, headless: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"app": name}, "ports": [{"port": 80}]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def _config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"payload": "x" * 500}}  # about a Service's size


def _kinds(core: Any) -> dict[str, tuple[Callable[[str], None], Callable[[str], None]]]:
    """kind -> (create one named so, delete it)."""
    def svc(headless: bool) -> Callable[[str], None]:
        return lambda n: core.create_namespaced_service(NAMESPACE, _service(n, headless))

    def delete_svc(n: str) -> None:
        core.delete_namespaced_service(n, NAMESPACE)

    return {
        "Service (cluster IP)": (svc(False), delete_svc),
        "Service (headless)": (svc(True), delete_svc),
        "ConfigMap": (lambda n: core.create_namespaced_config_map(NAMESPACE, _config_map(n)),
                      lambda n: core.delete_namespaced_config_map(n, NAMESPACE)),
    }


def rate(create: Callable[[str], None], delete: Callable[[str], None], names: list[str],
         writers: int) -> float:
    """Creates per second of ``names`` by ``writers`` threads (then deleted, untimed)."""
    with ThreadPoolExecutor(writers) as pool:
        start = time.monotonic()
        list(pool.map(create, names))
        took = time.monotonic() - start
        list(pool.map(delete, names))
    return len(names) / took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=number(1, MAX_COUNT, integer=True), default=400)
    p.add_argument("--rounds", type=number(1, 100, integer=True), default=2)
    p.add_argument("--writers", default="2,4,8,16",
                   help="comma-separated concurrencies (default 2,4,8,16)")
    args = p.parse_args()
    try:
        writers = [int(w) for w in args.writers.split(",")]
    except ValueError:
        p.error(f"--writers: {args.writers!r} is not a comma-separated list of integers")
    if not writers or min(writers) < 1:
        p.error("--writers: each concurrency must be >= 1")
    lib = load_cluster()
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="kubeplex-writes-") as tmp:
        state_dir = Path(tmp) / "cluster"
        state = lib.up(state_dir, nodes=0, say=lambda m: print(m, file=sys.stderr))
        try:
            client = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)
            kinds = _kinds(kubernetes.client.CoreV1Api(client))
            for r in range(args.rounds):
                for k, (kind, (create, delete)) in enumerate(kinds.items()):
                    for w in writers:
                        names = [f"r{r}-k{k}-w{w}-{i:05d}" for i in range(args.count)]
                        rates.setdefault((kind, w), []).append(rate(create, delete, names, w))
                        print(f"round {r + 1}: {kind}, {w} writers: "
                              f"{rates[(kind, w)][-1]:.0f}/s", file=sys.stderr)
        finally:
            lib.down(state_dir, say=lambda m: print(m, file=sys.stderr))
    print("\n| kind | " + " | ".join(f"{w} writers" for w in writers) + " |")
    print("|---|" + "---|" * len(writers))
    for kind in kinds:
        cells = (f"{statistics.median(v):.0f}/s ({min(v):.0f}-{max(v):.0f})"
                 for w in writers for v in [rates[(kind, w)]])
        print(f"| {kind} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
