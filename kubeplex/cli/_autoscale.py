"""``kubeplex simulate autoscale`` and ``kubeplex simulate trace``: trace-driven evaluation."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kubeplex.autoscaler.trace import MAX_TRACE_SECONDS
from kubeplex.cli import Commands
from kubeplex.cli._args import MAX_RATE, MAX_SECONDS, MAX_TOKENS, number

if TYPE_CHECKING:
    from kubeplex.autoscaler.fleet import SimResult

PATTERNS = ("gamma", "diurnal", "spike", "azure")
#: Largest inter-arrival coefficient of variation a flag takes: the burstiest production
#: traces measured (AlpaServe's, Azure Functions') stay below 10.
MAX_CV = 100.0


def register(cli: Commands) -> None:
    p = cli.command("autoscale", "replay a request trace against a scaling policy on a "
                    "simulated fleet; report TTFT-SLO attainment and GPU-hours",
                    _autoscale, group="simulate")
    p.add_argument("--trace", required=True, type=Path,
                   help="CSV with header arrival_s,prompt_tokens,output_tokens")
    p.add_argument("--model", required=True, help="model profile, e.g. llama-3.1-8b")
    p.add_argument("--gpu", required=True, help="GPU, e.g. H100-80GB, A100-80GB, L4")
    p.add_argument("--slo-ttft", required=True, type=number(0, MAX_SECONDS, above=True),
                   metavar="SECONDS",
                   help="TTFT SLO in seconds")
    p.add_argument("--percentile", type=number(0, 100, above=True), default=95.0,
                   help="SLO percentile in (0, 100) (default 95)")
    p.add_argument("--cold-start-s", type=number(0, MAX_SECONDS), default=60.0,
                   help="seconds from creating a replica to ready (default 60)")
    p.add_argument("--warm-start-s", type=number(0, MAX_SECONDS), default=2.0,
                   help="seconds from claiming a warm standby to ready (default 2)")
    p.add_argument("--warm-pool", default="auto", metavar="N|auto",
                   help="warm standbys: a fixed count for every policy, or auto (kubeplex "
                        "sizes it from its forecast; baselines keep none) (default auto)")
    p.add_argument("--policy", required=True, choices=("kubeplex", "hpa", "kpa", "static-peak"))
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="write arrivals / replicas / TTFT over time as a PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    t = cli.command("trace", "generate a request trace CSV (to stdout or --out)", _trace,
                    group="simulate")
    t.add_argument("--pattern", required=True, choices=PATTERNS,
                   help="gamma: bursty renewal arrivals (with an optional spike); diurnal: a "
                        "day's ramp compressed into --period-s; spike: Poisson with a step "
                        "spike; azure: per-minute counts from an Azure Functions CSV")
    t.add_argument("--rate", type=number(0, MAX_RATE, above=True), default=10.0,
                   help="base arrival rate, req/s")
    t.add_argument("--peak-rate", type=number(0, MAX_RATE),
                   help="diurnal: the rate at mid-period")
    t.add_argument("--period-s", type=number(0, MAX_TRACE_SECONDS, above=True), default=3600.0,
                   help="diurnal period, s")
    t.add_argument("--cv", type=number(0, MAX_CV, above=True),
                   help="inter-arrival coefficient of variation "
                   "(default 4 for gamma, 1 otherwise)")
    t.add_argument("--duration-s", type=number(0, MAX_TRACE_SECONDS, above=True),
                   default=3600.0, help="trace length, s")
    t.add_argument("--spike-factor", type=number(0, MAX_RATE, above=True), default=1.0,
                   help="spike: rate multiplier")
    t.add_argument("--spike-at-s", type=number(0, MAX_TRACE_SECONDS), default=1200.0,
                   help="spike start, s")
    t.add_argument("--spike-for-s", type=number(0, MAX_TRACE_SECONDS), default=300.0,
                   help="spike length, s")
    t.add_argument("--ramp-s", type=number(0, MAX_TRACE_SECONDS), default=0.0,
                   help="spike rise/fall time, s")
    t.add_argument("--counts", type=Path, help="azure: the invocations CSV")
    t.add_argument("--function", help="azure: one HashFunction's row (default: all summed)")
    t.add_argument("--prompt-tokens", type=number(1, MAX_TOKENS), default=512.0,
                   help="mean prompt tokens")
    t.add_argument("--output-tokens", type=number(1, MAX_TOKENS), default=128.0,
                   help="mean output tokens")
    t.add_argument("--seed", type=number(0, integer=True), default=1)
    t.add_argument("--out", type=Path, help="write here instead of stdout")


def _warm_pool(text: str) -> int | None:
    from kubeplex.autoscaler.errors import AutoscalerConfigError

    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise AutoscalerConfigError(f"--warm-pool must be a count >= 0 or 'auto', got {text!r}")
    return value


def _autoscale(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from kubeplex.autoscaler.errors import AutoscalerConfigError
    from kubeplex.autoscaler.evaluation import replay
    from kubeplex.autoscaler.trace import read_trace
    from kubeplex.placement.llm import profile

    if not args.slo_ttft > 0:
        raise AutoscalerConfigError(f"--slo-ttft must be > 0 seconds, got {args.slo_ttft}")
    if not 0 < args.percentile < 100:
        raise AutoscalerConfigError(f"--percentile must be in (0, 100), got {args.percentile}")
    for flag, value in (("--cold-start-s", args.cold_start_s),
                        ("--warm-start-s", args.warm_start_s)):
        if value < 0:
            raise AutoscalerConfigError(f"{flag} must be >= 0, got {value}")
    warm = _warm_pool(args.warm_pool)
    profile(args.model, args.gpu)  # unknown names fail here, before the progress bar
    trace = read_trace(args.trace)
    profile(args.model, args.gpu)  # unknown names fail here, before the progress bar draws
    with Progress(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task(f"replaying {len(trace)} requests ({args.policy})", total=1.0)
        result = replay(trace, args.model, args.gpu, args.slo_ttft, args.percentile,
                        args.policy, args.cold_start_s, args.warm_start_s, warm,
                        progress=lambda done: progress.update(task, completed=done))
    if args.plot is not None:
        _plot(result, args.plot, args.slo_ttft, args.percentile)
    if args.json:
        print(json.dumps({"policy": result.policy, "attainment": round(result.attainment, 6),
                          "gpu_hours": round(result.gpu_hours, 4),
                          "scale_events": result.scale_events,
                          "max_replicas": result.max_replicas}))
    else:
        pct = "inf" if math.isinf(result.ttft_percentile) else f"{result.ttft_percentile:.3f}"
        print(f"policy {result.policy}: {result.requests} requests, attainment "
              f"{result.attainment:.2%} (TTFT <= {args.slo_ttft:g} s), TTFT "
              f"p{args.percentile:g} {pct} s, {result.gpu_hours:.2f} GPU-hours, "
              f"{result.scale_events} scale events, max {result.max_replicas} replicas")
    return 0


def _plot(result: SimResult, path: Path, slo: float, percentile: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = result.timeline
    minutes = [t / 60 for t in line.time]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ax1.plot(minutes, line.arrival_rate, lw=0.6, color="tab:gray")
    ax1.set_ylabel("arrivals (req/s)")
    ax1.set_title(f"{result.policy}: attainment {result.attainment:.2%}, "
                  f"{result.gpu_hours:.2f} GPU-hours, {result.scale_events} scale events")
    ax2.step(minutes, line.replicas, where="post", label="replicas (incl. starting)")
    ax2.step(minutes, line.ready, where="post", label="ready")
    ax2.step(minutes, line.warm, where="post", label="warm standbys", ls="--")
    ax2.set_ylabel("replicas")
    ax2.legend(loc="upper left", fontsize=8)
    ax3.plot(minutes, line.ttft, lw=0.6, color="tab:red", label=f"TTFT p{percentile:g}")
    ax3.axhline(slo, color="black", ls=":", label="SLO")
    ax3.set_yscale("log")
    ax3.set_ylabel("TTFT (s) per 2 s")
    ax3.set_xlabel("minutes")
    ax3.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _trace(args: argparse.Namespace) -> int:
    from kubeplex.autoscaler.errors import TraceError
    from kubeplex.autoscaler.trace import (
        diurnal_rate,
        from_minute_counts,
        generate,
        read_minute_counts,
        spike_rate,
        write_trace,
    )

    if args.pattern == "azure":
        if args.counts is None:
            raise TraceError("--pattern azure needs --counts FILE.csv (Azure Functions "
                             "invocations per function per minute)")
        trace = from_minute_counts(read_minute_counts(args.counts, args.function), args.seed,
                                   args.prompt_tokens, args.output_tokens)
    else:
        if args.rate <= 0:
            raise TraceError(f"--rate must be > 0 req/s, got {args.rate}")
        cv = args.cv if args.cv is not None else (4.0 if args.pattern == "gamma" else 1.0)
        if args.pattern == "diurnal":
            peak = args.peak_rate if args.peak_rate is not None else 5 * args.rate
            if peak < 0 or args.period_s <= 0:
                raise TraceError("--peak-rate must be >= 0 and --period-s > 0")
            rate = diurnal_rate(args.rate, peak, args.period_s)
        else:
            if args.spike_factor <= 0 or args.spike_for_s < 0 or args.ramp_s < 0:
                raise TraceError("--spike-factor must be > 0, --spike-for-s and --ramp-s >= 0")
            rate = spike_rate(args.rate, args.spike_factor, args.spike_at_s, args.spike_for_s,
                              args.ramp_s)
        trace = generate(rate, args.duration_s, cv, args.seed, args.prompt_tokens,
                         args.output_tokens)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w") as stream:
            write_trace(trace, stream)
    else:
        write_trace(trace, sys.stdout)
    print(f"{len(trace)} requests over {trace.duration_s:.0f} s, inter-arrival cv "
          f"{trace.interarrival_cv():.2f}, peak {trace.peak_rate(60):.1f} req/s (60 s)",
          file=sys.stderr)
    return 0
