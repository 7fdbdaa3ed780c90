"""``kubeplex plan FILE...`` and ``kubeplex bench placement``."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from kubeplex.cli import Commands
from kubeplex.cli._args import MAX_COUNT, MAX_RATE, MAX_SECONDS, number
from kubeplex.errors import KubeplexError

POLICY_CHOICES = ("alpaserve", "sr", "clockwork")
#: The placement benchmark's bounds: AlpaServe's largest experiments use 64 GPUs and a few
#: dozen models; the search grows combinatorially past them.
MAX_BENCH_GPUS = 64
MAX_BENCH_MODELS = 64
#: Most requests one benchmark workload simulates (rate x duration).
MAX_BENCH_REQUESTS = 1_000_000
#: Burstiest and loosest workloads the benchmark takes (AlpaServe sweeps cv to 8, SLO to 20x).
MAX_BENCH_CV = 100.0
MAX_SLO_SCALE = 1000.0
SWEEP_LABELS = {"rate": "total rate (req/s)", "cv": "coefficient of variation",
                "slo": "SLO scale (x single-GPU latency)"}


def register(cli: Commands) -> None:
    plan = cli.command("plan", "place ModelServices on their GPUPools and print the groups",
                       _plan)
    plan.add_argument("files", nargs="+", metavar="FILE", help="YAML files or directories")
    plan.add_argument("--json", action="store_true", help="print the placements as JSON")
    plan.add_argument("--nodes", type=number(1, MAX_COUNT, integer=True),
                      help="nodes per pool (default: what maxGPUs needs)")
    plan.add_argument("--fill", action="store_true",
                      help="use every GPU (AlpaServe) instead of stopping once SLOs are met")
    plan.add_argument("--allow-unplaced", action="store_true",
                      help="print the plan even when a model gets no replica (default: an "
                           "error naming the models, exit 2)")

    bench = cli.command(
        "placement", "run AlpaServe's placement experiment (default: the reference case)",
        _bench, group="bench")
    bench.add_argument("--profile", default="alpa-bert-1.3b", help="built-in model profile")
    bench.add_argument("--gpus", type=number(1, MAX_BENCH_GPUS, integer=True), default=8,
                       help="number of GPUs")
    bench.add_argument("--models", type=number(1, MAX_BENCH_MODELS, integer=True), default=16,
                       help="number of model instances")
    bench.add_argument("--rate", type=number(0, MAX_RATE), default=32.0,
                       help="total arrival rate (req/s)")
    bench.add_argument("--cv", type=number(0, MAX_BENCH_CV, above=True), default=4.0,
                       help="coefficient of variation of gaps")
    bench.add_argument("--slo-scale", type=number(0, MAX_SLO_SCALE, above=True), default=5.0,
                       help="SLO as a multiple of the single-GPU latency")
    bench.add_argument("--duration", type=number(0, MAX_SECONDS, above=True), default=200.0,
                       help="workload length (s)")
    bench.add_argument("--policy", choices=POLICY_CHOICES, default="alpaserve")
    bench.add_argument("--seed", type=number(0, integer=True), default=0, help="workload seed")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--sweep", choices=tuple(SWEEP_LABELS),
                       help="sweep this knob for all three policies; writes a table and a PNG")
    bench.add_argument("--out", type=Path, default=Path("benchmarks/placement/results"),
                       help="folder for the sweep's table, JSON and plot")


# ---- kubeplex plan ----------------------------------------------------------------------------

def _plan(args: argparse.Namespace) -> int:
    from kubeplex.api import load_documents
    from kubeplex.placement.planner import plan
    from kubeplex.placement.specs import demand_from_service, pool_from_resource

    services, pools = load_documents(args.files).split()
    if not pools:
        raise KubeplexError("no GPUPool in " + " ".join(args.files) +
                            "; plan needs the pool the ModelServices name in spec.pool")
    known = {p.metadata.name for p in pools}
    orphans = [s.metadata.name for s in services if s.spec.pool not in known]
    if orphans:
        raise KubeplexError(f"ModelServices {orphans} name pools that are not in the files "
                            f"(known: {sorted(known)})")
    results = []
    for pool in pools:
        demands = [demand_from_service(s) for s in services if s.spec.pool == pool.metadata.name]
        if not demands:
            continue
        results.append(plan(pool_from_resource(pool, args.nodes), demands, fill=args.fill,
                            allow_unplaced=args.allow_unplaced))
    if args.json:
        print(json.dumps([_placement_json(p) for p in results], indent=1))
        return 0
    for placement in results:
        _print_placement(placement)
    return 0


def _placement_json(placement: Any) -> dict[str, Any]:
    prediction = placement.prediction
    return {
        "pool": placement.pool,
        "attainment": round(placement.attainment, 6),
        "attainment_range": [round(prediction.low, 6), round(prediction.high, 6)],
        "held_out_samples": prediction.samples,
        "requests_per_sample": prediction.requests,
        "free_gpus": placement.free_gpus,
        "unplaced": list(placement.unplaced),
        "groups": [{"id": g.id, "node": g.node, "gpus": list(g.gpu_indices), "tp": g.tp,
                    "pp": g.pp, "models": [{"name": m.name, "memory_share": m.memory_share,
                                            "kv_capacity_tokens": m.kv_capacity_tokens}
                                           for m in g.models]} for g in placement.groups],
        "models": [{"name": o.name, "replicas": o.replicas, "attainment": round(o.attainment, 6),
                    "attainment_range": [round(o.low, 6), round(o.high, 6)],
                    "target": o.target, "met": o.met,
                    "p95_ttft_seconds": round(o.p95_ttft_s, 4)
                    if math.isfinite(o.p95_ttft_s) else None}
                   for o in placement.models],
        "explanation": placement.explanation,
    }


def _span(indices: tuple[int, ...]) -> str:
    contiguous = list(indices) == list(range(indices[0], indices[0] + len(indices)))
    if len(indices) > 1 and contiguous:
        return f"{indices[0]}-{indices[-1]}"
    return ",".join(map(str, indices))


def _print_placement(placement: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    attainment = {o.name: f"{o.attainment:.1%} ({o.low:.1%}-{o.high:.1%})"
                  for o in placement.models}
    table = Table(title=f"pool {placement.pool}: {len(placement.groups)} groups, "
                        f"{placement.free_gpus} GPUs free")
    for column in ("group", "node slice", "tp x pp", "models", "memory use",
                   "predicted attainment (held-out range)"):
        table.add_column(column, overflow="fold")
    for g in placement.groups:
        table.add_row(
            g.id, f"node {g.node} GPU {_span(g.gpu_indices)}", f"{g.tp}x{g.pp}",
            "\n".join(m.name for m in g.models),
            "\n".join(f"{m.memory_share:.0%}, {m.kv_capacity_tokens / 1000:,.0f}k KV tok"
                      for m in g.models),
            "\n".join(attainment[m.name] for m in g.models))
    console = Console()
    console.print(table)
    console.print(placement.explanation, highlight=False)


# ---- kubeplex bench placement -----------------------------------------------------------------

def _case(args: argparse.Namespace) -> Any:
    from kubeplex.placement.alpaserve.benchmark import AlpaCase

    if args.rate * args.duration > MAX_BENCH_REQUESTS:
        raise KubeplexError(f"--rate {args.rate:g} x --duration {args.duration:g} is "
                            f"{args.rate * args.duration:.3g} requests, more than the "
                            f"{MAX_BENCH_REQUESTS} one benchmark simulates; lower either")
    return AlpaCase(profile=args.profile, gpus=args.gpus, models=args.models, rate=args.rate,
                    cv=args.cv, slo_scale=args.slo_scale, duration=args.duration, seed=args.seed)


def _solve(case: Any, policy: str) -> dict[str, Any]:
    """One policy on one case: the issue's JSON fields plus explanation and candidates."""
    from kubeplex.placement.alpaserve.benchmark import build_case, result_json, run_policy

    profiles, cluster, workload = build_case(case)
    started = time.process_time()  # CPU seconds of this single-threaded process: one core
    placement, result = run_policy(policy, profiles, cluster, workload)  # type: ignore[arg-type]
    solve_seconds = time.process_time() - started
    out: dict[str, Any] = result_json(placement, result, workload, profiles, solve_seconds)
    out["explanation"] = placement.explanation
    out["candidates"] = dict(placement.candidates)
    return out


def _bench(args: argparse.Namespace) -> int:
    case = _case(args)
    if args.sweep:
        return _sweep(case, args.sweep, args.out, args.json)
    out = _solve(case, args.policy)
    if args.json:
        print(json.dumps({k: out[k] for k in ("policy", "attainment", "groups",
                                              "solve_seconds")}))
        return 0
    print(f"policy      {out['policy']}")
    print(f"attainment  {out['attainment']:.2%}")
    print(f"solve       {out['solve_seconds']:.3f} s (CPU)")
    print(f"placement   {out['explanation']}")
    for i, group in enumerate(out["groups"]):
        print(f"  group {i}: {group['op']}x{group['pp']} (op x pp) hosts "
              f"{len(group['models'])} models: {', '.join(group['models'])}")
    return 0


def _sweep(base: Any, sweep: str, out_dir: Path, as_json: bool) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from kubeplex.placement.alpaserve.benchmark import POLICIES, sweep_cases

    cases = sweep_cases(base, sweep)  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    with Progress(transient=True) as progress:
        task = progress.add_task(f"sweeping {sweep}", total=len(cases) * len(POLICIES))
        for x, case in cases:
            row: dict[str, Any] = {sweep: x}
            for policy in POLICIES:
                solved = _solve(case, policy)
                row[policy] = solved["attainment"]
                row[f"{policy}_solve_seconds"] = solved["solve_seconds"]
                if policy == "alpaserve":
                    row["alpaserve_groups"] = sorted({f"{g['op']}x{g['pp']}"
                                                      for g in solved["groups"]})
                    row["candidates"] = solved["candidates"]
                progress.advance(task)
            rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"sweep-{sweep}"
    lines = [f"| {sweep} | alpaserve | clockwork | sr | alpaserve groups (op x pp) | "
             "solve s (CPU) | training attainment per config set |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        candidates = ", ".join(f"{k} {v:.1%}" for k, v in row["candidates"].items())
        lines.append(f"| {row[sweep]:g} | {row['alpaserve']:.2%} | {row['clockwork']:.2%} | "
                     f"{row['sr']:.2%} | {', '.join(row['alpaserve_groups'])} | "
                     f"{row['alpaserve_solve_seconds']:.2f} | {candidates} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(
        json.dumps({"base": vars(base) | {"sweep": sweep}, "rows": rows}, indent=1) + "\n")
    _plot(rows, sweep, stem.with_suffix(".png"))
    if as_json:
        print(json.dumps(rows))
        return 0
    table = Table(title=f"SLO attainment vs {SWEEP_LABELS[sweep]}")
    for column in (sweep, *POLICIES, "alpaserve groups"):
        table.add_column(column)
    for row in rows:
        table.add_row(f"{row[sweep]:g}", *(f"{row[p]:.2%}" for p in POLICIES),
                      ", ".join(row["alpaserve_groups"]))
    Console().print(table)
    print(f"wrote {stem}.md, {stem}.json, {stem}.png")
    return 0


def _plot(rows: list[dict[str, Any]], sweep: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [float(row[sweep]) for row in rows]
    for policy, style in (("alpaserve", "o-"), ("clockwork", "s--"), ("sr", "^:")):
        ax.plot(xs, [100 * float(row[policy]) for row in rows], style, label=policy)
    if sweep in ("rate", "cv"):
        ax.set_xscale("log", base=2)
    ax.set_xlabel(SWEEP_LABELS[sweep])
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title(f"AlpaServe reference experiment: {sweep} sweep")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
