"""``kubeplex plan FILE...`` and ``kubeplex bench placement``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from kubeplex.cli import Commands

POLICY_CHOICES = ("alpaserve", "sr", "clockwork")


def register(cli: Commands) -> None:
    bench = cli.command(
        "placement", "run AlpaServe's placement experiment (default: the reference case)",
        _bench, group="bench")
    bench.add_argument("--profile", default="alpa-bert-1.3b", help="built-in model profile")
    bench.add_argument("--gpus", type=int, default=8, help="number of GPUs")
    bench.add_argument("--models", type=int, default=16, help="number of model instances")
    bench.add_argument("--rate", type=float, default=32.0, help="total arrival rate (req/s)")
    bench.add_argument("--cv", type=float, default=4.0, help="coefficient of variation of gaps")
    bench.add_argument("--slo-scale", type=float, default=5.0,
                       help="SLO as a multiple of the single-GPU latency")
    bench.add_argument("--duration", type=float, default=200.0, help="workload length (s)")
    bench.add_argument("--policy", choices=POLICY_CHOICES, default="alpaserve")
    bench.add_argument("--seed", type=int, default=0, help="workload seed")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--sweep", choices=("rate", "cv", "slo"),
                       help="sweep this knob for all three policies; writes a table and a PNG")
    bench.add_argument("--out", type=Path, default=Path("benchmarks/placement/results"),
                       help="folder for the sweep's table and plot")


def _case(args: argparse.Namespace) -> Any:
    from kubeplex.placement.benchmark import AlpaCase

    return AlpaCase(profile=args.profile, gpus=args.gpus, models=args.models, rate=args.rate,
                    cv=args.cv, slo_scale=args.slo_scale, duration=args.duration, seed=args.seed)


def _solve(case: Any, policy: str) -> dict[str, object]:
    from kubeplex.placement.benchmark import build_case, result_json, run_policy

    profiles, cluster, workload = build_case(case)
    started = time.process_time()  # CPU seconds of this single-threaded process: one core
    placement, result = run_policy(policy, profiles, cluster, workload)  # type: ignore[arg-type]
    solve_seconds = time.process_time() - started
    out = result_json(placement, result, workload, profiles, solve_seconds)
    out["explanation"] = placement.explanation
    out["candidates"] = dict(placement.candidates)
    return out


def _bench(args: argparse.Namespace) -> int:
    case = _case(args)
    if args.sweep:
        return _sweep(case, args.sweep, args.out, args.json)
    out = _solve(case, args.policy)
    if args.json:
        out.pop("explanation")
        out.pop("candidates")
        print(json.dumps(out))
        return 0
    print(f"policy      {out['policy']}")
    print(f"attainment  {out['attainment']:.2%}")  # type: ignore[str-format]
    print(f"solve       {out['solve_seconds']:.3f} s (CPU)")
    print(f"placement   {out['explanation']}")
    for i, group in enumerate(out["groups"]):  # type: ignore[attr-defined]
        print(f"  group {i}: {group['op']}x{group['pp']} (op x pp) hosts "
              f"{len(group['models'])} models: {', '.join(group['models'])}")
    return 0


_SWEEP_LABELS = {"rate": "total rate (req/s)", "cv": "coefficient of variation",
                 "slo": "SLO scale (x single-GPU latency)"}


def _sweep(base: Any, sweep: str, out_dir: Path, as_json: bool) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from kubeplex.placement.benchmark import POLICIES, sweep_cases

    cases = sweep_cases(base, sweep)  # type: ignore[arg-type]
    rows: list[dict[str, object]] = []
    with Progress(transient=True) as progress:
        task = progress.add_task(f"sweeping {sweep}", total=len(cases) * len(POLICIES))
        for x, case in cases:
            row: dict[str, object] = {sweep: x}
            for policy in POLICIES:
                solved = _solve(case, policy)
                row[policy] = solved["attainment"]
                row[f"{policy}_solve_seconds"] = solved["solve_seconds"]
                if policy == "alpaserve":
                    row["alpaserve_groups"] = sorted({f"{g['op']}x{g['pp']}"  # type: ignore[index]
                                                      for g in solved["groups"]})  # type: ignore[attr-defined]
                    row["candidates"] = solved["candidates"]
                progress.advance(task)
            rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"sweep-{sweep}"
    header = (f"| {sweep} | alpaserve | clockwork | sr | alpaserve groups (op x pp) | "
              "solve s (CPU) | training attainment per config set |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in rows:
        candidates = ", ".join(f"{k} {v:.1%}" for k, v in row["candidates"].items())  # type: ignore[attr-defined]
        lines.append(f"| {row[sweep]:g} | {row['alpaserve']:.2%} | {row['clockwork']:.2%} | "
                     f"{row['sr']:.2%} | {', '.join(row['alpaserve_groups'])} | "  # type: ignore[arg-type]
                     f"{row['alpaserve_solve_seconds']:.2f} | {candidates} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"base": vars(base) | {"sweep": sweep},
                                                     "rows": rows}, indent=1) + "\n")
    _plot(rows, sweep, stem.with_suffix(".png"))
    if as_json:
        print(json.dumps(rows))
        return 0
    table = Table(title=f"SLO attainment vs {_SWEEP_LABELS[sweep]}")
    for column in (sweep, "alpaserve", "clockwork", "sr", "alpaserve groups"):
        table.add_column(column)
    for row in rows:
        table.add_row(f"{row[sweep]:g}", *(f"{row[p]:.2%}" for p in POLICIES),  # type: ignore[str-format]
                      ", ".join(row["alpaserve_groups"]))  # type: ignore[arg-type]
    Console().print(table)
    print(f"wrote {stem}.md, {stem}.json, {stem}.png")
    return 0


def _plot(rows: list[dict[str, object]], sweep: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [float(row[sweep]) for row in rows]  # type: ignore[arg-type]
    for policy, style in (("alpaserve", "o-"), ("clockwork", "s--"), ("sr", "^:")):
        ax.plot(xs, [100 * float(row[policy]) for row in rows], style,  # type: ignore[arg-type]
                label=policy)
    if sweep in ("rate", "cv"):
        ax.set_xscale("log", base=2)
    ax.set_xlabel(_SWEEP_LABELS[sweep])
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title(f"AlpaServe reference experiment: {sweep} sweep")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
