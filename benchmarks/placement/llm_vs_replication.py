"""LLM mode: kubeplex placement (co-location + shapes) vs one-model-per-group replication.

For each policy, bisect the highest total arrival rate at which its placement keeps >= 99% of
requests within SLO (TTFT and TPOT), planning on one workload (seed 0) and scoring on a fresh
one (seed 10,000: none the planner uses). Both use every GPU of the pool (``fill=True``), as
AlpaServe does; a policy that cannot give every model a replica scores 0.

Usage: .venv/bin/python benchmarks/placement/llm_vs_replication.py [--models 8] [--gpus 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.progress import Progress

from kubeplex.placement.errors import PlacementError
from kubeplex.placement.hardware import gpu
from kubeplex.placement.llm import model
from kubeplex.placement.planner import (
    ModelDemand,
    PoolSpec,
    evaluate,
    plan,
    planning_workload,
    replication_plan,
)
from kubeplex.placement.workload import power_law_rates

TARGET = 0.99
CV = 4.0
TTFT_SLO_S = 0.5
TPOT_SLO_S = 0.05
#: The scoring sample's seed: far from the planner's own (0 to search, 1.. held out).
FRESH_SEED = 10_000


def demands(total_rate: float, n: int, shape: str) -> list[ModelDemand]:
    return [ModelDemand(f"{shape}-{i}", model(shape), rate, CV, 512, 128, TTFT_SLO_S,
                        TPOT_SLO_S, TARGET)
            for i, rate in enumerate(power_law_rates(total_rate, n))]


def attainment(policy: str, pool: PoolSpec, total_rate: float, n: int, shape: str) -> float:
    ds = demands(total_rate, n, shape)
    train, test = planning_workload(ds, seed=0), planning_workload(ds, seed=FRESH_SEED)
    try:
        if policy == "kubeplex":
            placement = plan(pool, ds, fill=True, workload=train)
        else:
            placement = replication_plan(pool, ds, fill=True, workload=train)
    except PlacementError:
        return 0.0
    return evaluate(pool, ds, placement, test).attainment


def max_rate(policy: str, pool: PoolSpec, n: int, shape: str, hi: float,
             progress: Progress, task: object) -> tuple[float, list[tuple[float, float]]]:
    """Largest rate (to 5%) with attainment >= TARGET, by doubling then bisection; 0 when
    even a tiny rate misses (e.g. the policy cannot host every model)."""
    probes: list[tuple[float, float]] = []

    def ok(rate: float) -> bool:
        a = attainment(policy, pool, rate, n, shape)
        probes.append((rate, a))
        progress.advance(task)  # type: ignore[arg-type]
        return a >= TARGET

    lo, floor = 0.0, hi / 64  # below 1/64 of the start rate counts as "never"
    while ok(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 0.05 * hi and hi > floor:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo, probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu", default="H100-80GB")
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--start-rate", type=float, default=16.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/placement/results"))
    args = parser.parse_args()
    pool = PoolSpec(gpu(args.gpu), nodes=1, gpus_per_node=args.gpus)
    results = {}
    with Progress() as progress:
        for policy in ("kubeplex", "replication"):
            task = progress.add_task(policy, total=None)
            started = time.process_time()
            rate, probes = max_rate(policy, pool, args.models, args.shape, args.start_rate,
                                    progress, task)
            results[policy] = {"max_rate": round(rate, 2), "probes": probes,
                               "cpu_seconds": round(time.process_time() - started, 1)}
            print(policy, results[policy])
    setup = {"models": args.models, "gpus": args.gpus, "gpu": args.gpu, "shape": args.shape,
             "cv": CV, "ttft_slo_s": TTFT_SLO_S, "tpot_slo_s": TPOT_SLO_S, "target": TARGET}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"llm-vs-replication-{args.models}x{args.shape}-{args.gpus}x{args.gpu}.json"
    (args.out / name).write_text(json.dumps({"setup": setup, "results": results}, indent=1)
                                 + "\n")
    _plot(results, setup, (args.out / name).with_suffix(".png"))
    k, r = results["kubeplex"]["max_rate"], results["replication"]["max_rate"]
    print(f"max total rate at {TARGET:.0%} attainment: kubeplex {k} req/s, "
          f"replication {r} req/s ({k / r:.2f}x)" if r else f"kubeplex {k}, replication 0")


def _plot(results: dict[str, dict[str, object]], setup: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (policy, result), style in zip(results.items(), ("o-", "s--"), strict=True):
        probes = sorted(result["probes"])  # type: ignore[call-overload]
        ax.plot([r for r, _ in probes], [100 * a for _, a in probes], style,
                label=f"{policy} (max {result['max_rate']} req/s)")
    ax.axhline(100 * TARGET, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("total arrival rate (req/s)")
    ax.set_ylabel("requests within SLO (%)")
    ax.set_title(f"{setup['models']} x {setup['shape']} on {setup['gpus']} x {setup['gpu']}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
