"""Placement at fleet scale: solve time and the plan reached, from 8 to 512 GPUs.

Two searches, each on one core (``taskset -c 0``; times are this process's CPU seconds):

* **AlpaServe** (``kubeplex bench placement``'s search): the reference experiment scaled up,
  ``alpa-bert-1.3b`` models at 4 req/s per GPU, power-law split, cv 4, SLO 5x, 200 s;
* **the LLM planner** (``kubeplex plan``): models cycling through llama-3.1-8b, qwen-2.5-7b and
  qwen-2.5-32b on H100 nodes of 8, 3 req/s per GPU split by a power law, cv 2, 512/128-token
  mean prompts/outputs, TTFT <= 1 s and TPOT <= 0.1 s for 95% of requests.

At the acceptance sizes (AlpaServe 64 GPUs / 96 models, planner 32 / 24) the same search also
runs on the pure-Python reference core, and the attainments are compared (``--no-reference``
skips that: it takes minutes).

Usage: taskset -c 0 .venv/bin/python benchmarks/placement/scale.py [--max-gpus 512]
Writes benchmarks/placement/results/scale.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from kubeplex.placement.alpaserve.benchmark import AlpaCase, build_case
from kubeplex.placement.alpaserve.search import alpaserve_search
from kubeplex.placement.alpaserve.simulator import Core, simulate
from kubeplex.placement.hardware import gpu
from kubeplex.placement.llm import model
from kubeplex.placement.planner import ModelDemand, PoolSpec, plan
from kubeplex.placement.workload import power_law_rates

#: (GPUs, models) per size; the acceptance sizes are marked below.
ALPASERVE_SIZES = ((8, 16), (32, 48), (64, 96), (128, 192), (256, 500), (512, 1000))
PLANNER_SIZES = ((8, 8), (32, 24), (64, 48), (128, 250), (256, 500), (512, 1000))
ALPASERVE_ACCEPTANCE = (64, 96)
PLANNER_ACCEPTANCE = (32, 24)
#: The reference experiment's load: 32 req/s on 8 GPUs.
ALPASERVE_RATE_PER_GPU = 4.0
#: Load of the planner's case: ~3 req/s per H100 of 512/128-token requests.
PLANNER_RATE_PER_GPU = 3.0
PLANNER_SHAPES = ("llama-3.1-8b", "qwen-2.5-7b", "qwen-2.5-32b")
GPUS_PER_NODE = 8


def alpaserve_case(gpus: int, models: int, core: Core) -> dict[str, Any]:
    profiles, cluster, workload = build_case(
        AlpaCase(gpus=gpus, models=models, rate=ALPASERVE_RATE_PER_GPU * gpus))
    started = time.process_time()
    placement = alpaserve_search(profiles, cluster, workload, core)
    seconds = time.process_time() - started
    result = simulate(placement.groups, profiles, workload)
    return {"search": "alpaserve", "gpus": gpus, "models": models, "core": core,
            "requests": len(workload), "cpu_seconds": round(seconds, 2),
            "attainment": round(result.attainment_after_warmup(workload), 5),
            "replicas": placement.replicas, "groups": len(placement.groups)}


def planner_demands(models: int, gpus: int) -> list[ModelDemand]:
    rates = power_law_rates(PLANNER_RATE_PER_GPU * gpus, models)
    return [ModelDemand(f"m{i:04d}", model(PLANNER_SHAPES[i % len(PLANNER_SHAPES)]), rate,
                        cv=2.0, prompt_tokens=512, output_tokens=128, ttft_slo_s=1.0,
                        tpot_slo_s=0.1, target_attainment=0.95)
            for i, rate in enumerate(rates)]


def planner_case(gpus: int, models: int, core: Core) -> dict[str, Any]:
    pool = PoolSpec(gpu("H100-80GB"), nodes=gpus // GPUS_PER_NODE,
                    gpus_per_node=GPUS_PER_NODE)
    demands = planner_demands(models, gpus)
    started = time.process_time()
    placement = plan(pool, demands, allow_unplaced=True, core=core)
    seconds = time.process_time() - started
    prediction = placement.prediction
    return {"search": "planner", "gpus": gpus, "models": models, "core": core,
            "requests": prediction.requests if prediction else 0,
            "cpu_seconds": round(seconds, 2), "attainment": round(placement.attainment, 5),
            "attainment_range": [prediction.low, prediction.high] if prediction else None,
            "replicas": sum(o.replicas for o in placement.models),
            "groups": len(placement.groups), "gpus_used": gpus - placement.free_gpus,
            "models_meeting_target": sum(o.met for o in placement.models),
            "unplaced": len(placement.unplaced),
            "how": placement.explanation.splitlines()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-gpus", type=int, default=512)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/placement/results"))
    args = parser.parse_args()
    jobs: list[tuple[str, int, int, Core]] = []
    for gpus, models in ALPASERVE_SIZES:
        if gpus <= args.max_gpus:
            jobs.append(("alpaserve", gpus, models, "compiled"))
    for gpus, models in PLANNER_SIZES:
        if gpus <= args.max_gpus:
            jobs.append(("planner", gpus, models, "compiled"))
    if not args.no_reference:
        jobs += [("alpaserve", *ALPASERVE_ACCEPTANCE, "reference"),
                 ("planner", *PLANNER_ACCEPTANCE, "reference")]
    rows: list[dict[str, Any]] = []
    with Progress() as progress:
        task = progress.add_task("placement at scale", total=len(jobs))
        for search, gpus, models, core in jobs:
            progress.update(task, description=f"{search} {gpus} GPUs / {models} models "
                                              f"({core})")
            run = alpaserve_case if search == "alpaserve" else planner_case
            rows.append(run(gpus, models, core))
            progress.console.print(rows[-1])
            progress.advance(task)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| search | GPUs | models | core | requests | CPU s (one core) | attainment | "
             "replicas | GPUs used |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['search']} | {r['gpus']} | {r['models']} | {r['core']} | "
              f"{r['requests']:,} | {r['cpu_seconds']:.2f} | {r['attainment']:.2%} | "
              f"{r['replicas']} | {r.get('gpus_used', r['gpus'])} |" for r in rows]
    (args.out / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot([r for r in rows if r["core"] == "compiled"], args.out / "scale.png")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for search, style in (("alpaserve", "o-"), ("planner", "s--")):
        mine = [r for r in rows if r["search"] == search]
        ax.plot([r["gpus"] for r in mine], [r["cpu_seconds"] for r in mine], style,
                label="AlpaServe search" if search == "alpaserve" else "LLM planner (plan)")
        for r in mine:
            ax.annotate(f"{r['models']}", (r["gpus"], r["cpu_seconds"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.axhline(5, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("GPUs (labels: models)")
    ax.set_ylabel("solve time, CPU seconds (one core)")
    ax.set_title("Placement cost vs size", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
