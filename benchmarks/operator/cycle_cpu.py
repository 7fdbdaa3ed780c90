"""CPU of one pool cycle (observe -> control -> plan -> status) against the number of models in
the pool, with no API server: the operator's in-memory fake of its writes (tests/operator_fakes)
and ready pods, so what is timed is the operator's own work per cycle, which the pool repeats
on every change and every interval.

    .venv/bin/python benchmarks/operator/cycle_cpu.py [--models 25,100,200,400] [--repeats 10]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from operator_fakes import NOW, FakeKube, context, msvc, nodes, pool, register, snapshot

from kubeplex.cli._args import MAX_COUNT, number
from kubeplex.operator._reconcile import run_cycle

WARMUP_CYCLES = 3  # the first cycles start every group; the later ones are the steady state


def cycle_ms(models: int, repeats: int) -> float:
    """Mean CPU milliseconds of a steady pool cycle over ``models`` one-replica models."""
    kube = FakeKube()
    specs = [msvc(f"m-{i:04d}", 1) for i in range(models)]
    register(kube, *specs)
    ctx = context(kube)
    node_list = nodes(models // 8 + 1)
    for k in range(WARMUP_CYCLES):
        run_cycle(ctx, snapshot(kube, pool(), copy.deepcopy(specs), node_list), NOW + k)
    snaps = [snapshot(kube, pool(), copy.deepcopy(specs), node_list) for _ in range(repeats)]
    start = time.process_time()
    for k, snap in enumerate(snaps):
        run_cycle(ctx, snap, NOW + WARMUP_CYCLES + k)
    return (time.process_time() - start) / repeats * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="25,100,200,400",
                   help="comma-separated pool sizes (models per pool)")
    p.add_argument("--repeats", type=number(1, MAX_COUNT, integer=True), default=10)
    args = p.parse_args()
    models = number(1, MAX_COUNT, integer=True)
    try:
        sizes = [int(models(x)) for x in args.models.split(",")]
    except argparse.ArgumentTypeError as e:
        p.error(f"argument --models: each size {e}")
    print("| models in the pool | cycle CPU | per model |\n|---|---|---|")
    for n in sizes:
        ms = cycle_ms(n, args.repeats)
        print(f"| {n} | {ms:.1f} ms | {ms / n * 1000:.0f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
