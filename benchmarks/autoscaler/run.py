"""Autoscaler benchmark: kubeplex vs HPA, KPA and static-peak on generated traces.

Every number comes from the public CLI (``kubeplex simulate trace`` and ``kubeplex simulate
autoscale --json``); the script only runs the commands, collects their JSON and writes
``results/results.json``, ``results/table.md`` and one PNG per run. The iso-cost section
re-runs HPA and KPA through the Python API with their per-replica target scaled until they
use no more GPU-hours than kubeplex, to compare attainment at equal cost.

Usage: python benchmarks/autoscaler/run.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
TRACES = ROOT / "build" / "bench" / "autoscaler"
KUBEPLEX = str(Path(sys.executable).parent / "kubeplex")

MODEL, GPU, SLO, PERCENTILE = "llama-3.1-8b", "A100-80GB", "1.0", "99"
POLICIES = ("kubeplex", "hpa", "kpa", "static-peak")
#: name -> (what it is, `kubeplex simulate trace` arguments)
TRACE_SPECS: dict[str, tuple[str, list[str]]] = {
    "bursty": ("Gamma bursts cv 4 at 20 req/s, a 5x surge (5 min ramp, 10 min hold)",
               ["--pattern", "gamma", "--rate", "20", "--cv", "4", "--spike-factor", "5",
                "--spike-at-s", "1500", "--spike-for-s", "600", "--ramp-s", "300",
                "--duration-s", "3000", "--seed", "1"]),
    "diurnal": ("diurnal 8 -> 100 req/s over an hour, Gamma cv 4",
                ["--pattern", "diurnal", "--rate", "8", "--peak-rate", "100", "--period-s",
                 "3600", "--duration-s", "3600", "--cv", "4", "--seed", "1"]),
    "step": ("stress: Gamma cv 4 at 20 req/s, a 5x spike with a 60 s ramp (= cold start)",
             ["--pattern", "gamma", "--rate", "20", "--cv", "4", "--spike-factor", "5",
              "--spike-at-s", "1200", "--spike-for-s", "300", "--ramp-s", "60",
              "--duration-s", "2400", "--seed", "1"]),
}


def run(command: list[str]) -> str:
    print("$", " ".join(shlex.quote(c) for c in command), file=sys.stderr, flush=True)
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def autoscale(trace: Path, policy: str, plot: Path | None, *extra: str) -> dict[str, object]:
    command = [KUBEPLEX, "simulate", "autoscale", "--trace", str(trace), "--model", MODEL,
               "--gpu", GPU, "--slo-ttft", SLO, "--percentile", PERCENTILE, "--policy", policy,
               *extra, "--json"]
    if plot is not None:
        command += ["--plot", str(plot)]
    result: dict[str, object] = json.loads(run(command))
    shown = (c.replace(f"{ROOT}/", "") if c != KUBEPLEX else "kubeplex" for c in command)
    result["command"] = " ".join(shown)
    return result


def iso_cost(trace: Path, policy: str, budget: float) -> dict[str, float | None]:
    """The baseline with its target scaled up until it uses at most ``budget`` GPU-hours
    (``None`` values: no scale the bisection tried, up to 8x, fits the budget)."""
    from kubeplex.autoscaler import evaluation
    from kubeplex.autoscaler.baselines import HPAPolicy, KPAPolicy
    from kubeplex.autoscaler.trace import read_trace
    from kubeplex.placement.llm import profile

    loaded = read_trace(trace)
    scenario = evaluation.Scenario(profile(MODEL, GPU), float(SLO), float(PERCENTILE))
    original = evaluation.make_policy

    def attempt(scale: float) -> tuple[float, float]:
        def scaled(name, trace_, config, scenario_):
            chosen, initial = original(name, trace_, config, scenario_)
            if isinstance(chosen, HPAPolicy | KPAPolicy):
                chosen.target *= scale
            return chosen, initial

        evaluation.make_policy = scaled
        try:
            result = evaluation.replay(loaded, scenario, policy)
        finally:
            evaluation.make_policy = original
        return result.gpu_hours, result.attainment

    low, high = 1.0, 8.0
    best: dict[str, float | None] = {"scale": None, "gpu_hours": None, "attainment": None}
    gpu_hours, attainment = attempt(low)
    if gpu_hours <= budget:
        return {"scale": 1.0, "gpu_hours": gpu_hours, "attainment": attainment}
    for _ in range(7):
        mid = (low + high) / 2
        gpu_hours, attainment = attempt(mid)
        if gpu_hours <= budget:
            high = mid
            best = {"scale": mid, "gpu_hours": gpu_hours, "attainment": attainment}
        else:
            low = mid
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="skip the iso-cost search")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    TRACES.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"model": MODEL, "gpu": GPU, "slo_ttft_s": float(SLO),
                                 "percentile": float(PERCENTILE), "traces": {}}
    lines = ["| trace | policy | attainment (TTFT <= 1 s) | GPU-hours | scale events | "
             "max replicas |", "|---|---|---|---|---|---|"]
    for name, (what, spec) in TRACE_SPECS.items():
        trace = TRACES / f"{name}.csv"
        stats = subprocess.run([KUBEPLEX, "simulate", "trace", *spec, "--out", str(trace)],
                               check=True, capture_output=True, text=True).stderr.strip()
        rows = []
        for policy in POLICIES:
            plot = RESULTS / f"{name}-{policy}.png"
            rows.append(autoscale(trace, policy, plot))
        if name == "step":
            rows.append(autoscale(trace, "kubeplex", RESULTS / f"{name}-kubeplex-warm4.png",
                                  "--warm-pool", "4"))
            rows[-1]["policy"] = "kubeplex, --warm-pool 4"
        entry: dict[str, object] = {
            "what": what, "generator": "kubeplex simulate trace " + " ".join(spec), "stats":
            stats, "runs": rows}
        if not args.quick and name != "step":
            budget = float(rows[0]["gpu_hours"])
            entry["iso_cost"] = {p: iso_cost(trace, p, budget) for p in ("hpa", "kpa")}
        report["traces"][name] = entry
        for row in rows:
            lines.append(f"| {name} | {row['policy']} | {float(row['attainment']):.4%} | "
                         f"{float(row['gpu_hours']):.2f} | {row['scale_events']} | "
                         f"{row['max_replicas']} |")
        print(f"{name}: {stats}", file=sys.stderr)
    (RESULTS / "results.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (RESULTS / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
