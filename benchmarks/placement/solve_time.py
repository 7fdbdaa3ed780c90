"""Solve time of the AlpaServe search vs cluster size (reference profile, 4 req/s per GPU).

Usage: .venv/bin/python benchmarks/placement/solve_time.py [--out benchmarks/placement/results]
Times are CPU seconds of this single-threaded process (one core), median of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rich.progress import Progress

from kubeplex.placement.alpaserve.benchmark import AlpaCase, build_case, run_policy

SIZES = ((8, 16), (16, 32), (32, 64), (64, 96))
RATE_PER_GPU = 4.0  # the reference experiment: 32 req/s on 8 GPUs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/placement/results"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with Progress() as progress:
        task = progress.add_task("solve time", total=len(SIZES) * args.repeats)
        for gpus, models in SIZES:
            case = AlpaCase(gpus=gpus, models=models, rate=RATE_PER_GPU * gpus)
            profiles, cluster, workload = build_case(case)
            times = []
            for _ in range(args.repeats):
                started = time.process_time()
                placement, result = run_policy("alpaserve", profiles, cluster, workload)
                times.append(time.process_time() - started)
                progress.advance(task)
            rows.append({"gpus": gpus, "models": models, "requests": len(workload),
                         "solve_seconds_median": round(statistics.median(times), 3),
                         "solve_seconds_all": [round(t, 3) for t in times],
                         "attainment": round(result.attainment_after_warmup(workload), 4),
                         "groups": placement.explanation})
            print(rows[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "solve-time.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| GPUs | models | requests | solve s (CPU, median) | attainment |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['gpus']} | {r['models']} | {r['requests']} | "
              f"{r['solve_seconds_median']:.2f} | {r['attainment']:.2%} |" for r in rows]
    (args.out / "solve-time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, args.out / "solve-time.png")


def _plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["gpus"] for r in rows], [r["solve_seconds_median"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"{r['models']} models", (r["gpus"], r["solve_seconds_median"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("GPUs")
    ax.set_ylabel("AlpaServe search, CPU seconds (one core)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
