"""Does ``kubeplex plan`` tell the truth? Its prediction against fresh samples.

For each shipped GPU example (``examples/*h100*.yaml``, ``examples/*a100*.yaml``): plan it as
``kubeplex plan`` does, then simulate the placement on ``--samples`` fresh request samples
(seeds the planner never uses, each the size of the planner's own) and compare the predicted
attainment (the median over the planner's held-out samples) with the median over the fresh
ones (within ``--tolerance`` points for the pool), and check every model meets its target
there. Per model the table shows the gap too; for a rare, bursty model a few hundred requests
per sample make 5-sample medians themselves scatter by several points.

This grades the planner's *prediction* against its own simulator on new samples (sampling
error and over-fitting of the search), not the latency model against real GPUs.

Usage: .venv/bin/python benchmarks/placement/plan_truth.py [--samples 5] [--out DIR]
Exit status 1 when the pool's prediction is off by more than --tolerance points or a model
misses its target on the fresh samples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rich.progress import Progress

from kubeplex.api import load_documents
from kubeplex.placement.planner import evaluate, plan, planning_workload
from kubeplex.placement.specs import demand_from_service, pool_from_resource

#: Seeds of the fresh samples: far from the planner's (0 for the search, 1.. for held-out ones).
FRESH_SEED = 10_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=2.0, help="points (default 2)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/placement/results"))
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[2] / "examples"
    files = sorted({*root.glob("*h100*.yaml"), *root.glob("*a100*.yaml")})
    rows, ok = [], True
    with Progress() as progress:
        task = progress.add_task("examples", total=len(files))
        for path in files:
            services, pools = load_documents([path]).split()
            for pool in pools:
                members = [s for s in services if s.spec.pool == pool.metadata.name]
                demands = [demand_from_service(s) for s in members]
                spec = pool_from_resource(pool)
                started = time.process_time()
                placement = plan(spec, demands)
                cpu = time.process_time() - started
                fresh = [evaluate(spec, demands, placement,
                                  planning_workload(demands, FRESH_SEED + k))
                         for k in range(args.samples)]
                pool_median = statistics.median(r.attainment for r in fresh)
                row = {"example": path.name, "pool": pool.metadata.name,
                       "gpus": spec.usable_gpus - placement.free_gpus,
                       "max_gpus": spec.usable_gpus, "plan_cpu_seconds": round(cpu, 2),
                       "predicted": placement.attainment, "fresh_median": pool_median,
                       "models": []}
                for m, outcome in enumerate(placement.models):
                    median = statistics.median(float(r.model_attainment[m]) for r in fresh)
                    good = median >= outcome.target
                    ok &= good
                    row["models"].append({
                        "name": outcome.name, "replicas": outcome.replicas,
                        "target": outcome.target, "predicted": outcome.attainment,
                        "range": [outcome.low, outcome.high], "fresh_median": median,
                        "ok": good})
                ok &= abs(placement.attainment - pool_median) * 100 <= args.tolerance
                rows.append(row)
            progress.advance(task)
    lines = ["| example | model | GPUs used / pool | replicas | target | predicted (held-out "
             "range) | median of fresh samples | ok |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for mrow in row["models"]:
            lines.append(
                f"| {row['example']} | {mrow['name']} | {row['gpus']} / {row['max_gpus']} | "
                f"{mrow['replicas']} | {mrow['target']:.1%} | {mrow['predicted']:.2%} "
                f"({mrow['range'][0]:.1%}-{mrow['range'][1]:.1%}) | "
                f"{mrow['fresh_median']:.2%} | {'yes' if mrow['ok'] else 'NO'} |")
        lines.append(f"| {row['example']} | **pool** | | | | {row['predicted']:.2%} | "
                     f"{row['fresh_median']:.2%} | plan {row['plan_cpu_seconds']} s CPU |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan-truth.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "plan-truth.md").write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
