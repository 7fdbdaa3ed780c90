"""``kubeplex simulate autoscale`` and ``kubeplex simulate trace``: trace-driven evaluation."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeplex.autoscaler.trace import MAX_TRACE_SECONDS
from kubeplex.cli import Commands
from kubeplex.cli._args import MAX_RATE, MAX_SECONDS, MAX_TOKENS, number

__all__ = ["load_profile", "register"]

if TYPE_CHECKING:
    from kubeplex.autoscaler.fleet import SimResult
    from kubeplex.autoscaler.misses import Misses
    from kubeplex.autoscaler.spend import StageLog
    from kubeplex.autoscaler.trace import FloatArray, RateFn
    from kubeplex.placement.llm import LLMProfile

PATTERNS = ("gamma", "diurnal", "spike", "bursts", "on-off", "points", "azure")
#: Largest inter-arrival coefficient of variation a flag takes: the burstiest production
#: traces measured (AlpaServe's, Azure Functions') stay below 10.
MAX_CV = 100.0
#: Most episodes --explain lists.
MAX_EPISODES = 1000
#: Largest --oracle-utilization: past 1.5 the oracle provisions a third less than the demand
#: it sees, which is no longer a reference curve.
MAX_ORACLE_UTILIZATION = 1.5


def register(cli: Commands) -> None:
    p = cli.command("autoscale", "replay a request trace against a scaling policy on a "
                    "simulated fleet; report TTFT-SLO attainment and GPU-hours",
                    _autoscale, group="simulate")
    p.add_argument("--trace", required=True, type=Path,
                   help="CSV with header arrival_s,prompt_tokens,output_tokens, or Mooncake "
                        "JSONL (timestamp ms, input_length, output_length)")
    p.add_argument("--model", help="the model the policy plans with: a catalogue shape (e.g. "
                   "llama-3.1-8b) or a shipped calibrated profile (e.g. llama-3.1-8b-sim-h100)")
    p.add_argument("--profile", type=Path, metavar="FILE.json",
                   help="plan with this calibrated profile (from `kubeplex calibrate`) instead "
                        "of --model")
    p.add_argument("--gpu", required=True, help="GPU, e.g. H100-80GB, A100-80GB, L4")
    p.add_argument("--fleet-model", help="what the simulated fleet really runs (a shape or "
                   "calibrated profile name; default: the planning profile)")
    p.add_argument("--fleet-profile", type=Path, metavar="FILE.json",
                   help="the simulated fleet runs this calibrated profile file")
    p.add_argument("--fleet-speed", type=number(0, above=True), default=1.0, metavar="F",
                   help="the fleet runs at F times its profile's speed; the policy is not told "
                        "(default 1.0)")
    p.add_argument("--oracle-utilization", type=number(0, MAX_ORACLE_UTILIZATION, above=True),
                   default=1.0, metavar="U",
                   help="oracle and reactive only: provision need / U (lower: more headroom) "
                        "(default 1.0)")
    p.add_argument("--reactive-hold-s", type=number(0, MAX_SECONDS), metavar="SECONDS",
                   help="reactive only: keep a replica this long after the need that asked "
                        "for it (default: one cold start; the trace's length or more: never "
                        "release)")
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
                   help="warm standbys: a fixed count for kubeplex, HPA and KPA, or auto "
                        "(kubeplex sizes it from burst statistics; baselines keep none) "
                        "(default auto)")
    p.add_argument("--policy", required=True,
                   choices=("kubeplex", "hpa", "kpa", "static-peak", "oracle", "reactive"),
                   help="oracle: knows the trace (the reference curve); reactive: the oracle "
                        "without foresight, what perfect measurement of the present reaches")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="write arrivals / replicas / TTFT over time as a PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--explain", type=number(0, MAX_EPISODES, integer=True), default=0,
                   metavar="N",
                   help="where the SLO was missed and why: the late requests in episodes by "
                        "kind, and the N largest with what the fleet did (default 0: off)")

    t = cli.command("trace", "generate a request trace CSV (to stdout or --out)", _trace,
                    group="simulate")
    t.add_argument("--pattern", required=True, choices=PATTERNS,
                   help="gamma: bursty renewal arrivals (with an optional spike); diurnal: a "
                        "day's ramp compressed into --period-s; spike: Poisson with a step "
                        "spike; bursts: short bursts at random times; on-off: --peak-rate for "
                        "--on-s of every --period-s, else --rate; points: a rate through "
                        "--points, linear in between (ramps, sawtooths, decays); azure: "
                        "per-minute counts from an Azure Functions CSV")
    t.add_argument("--rate", type=number(0, MAX_RATE, above=True), default=10.0,
                   help="base arrival rate, req/s")
    t.add_argument("--peak-rate", type=number(0, MAX_RATE),
                   help="diurnal: the rate at mid-period; on-off: the rate while on "
                        "(default 5 x --rate)")
    t.add_argument("--period-s", type=number(0, MAX_TRACE_SECONDS, above=True), default=3600.0,
                   help="diurnal or on-off period, s")
    t.add_argument("--on-s", type=number(0, MAX_TRACE_SECONDS), default=180.0,
                   help="on-off: seconds at --peak-rate at the start of every period")
    t.add_argument("--points", metavar="T:RATE,T:RATE,...",
                   help="points: the arrival rate (req/s) at times T (s), from 0, linear in "
                        "between and flat after the last, e.g. 0:2,300:2,2700:40,3600:2")
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
    t.add_argument("--burst-rates", default="20,60", metavar="LOW,HIGH",
                   help="bursts: each burst's rate is drawn from [LOW, HIGH] req/s")
    t.add_argument("--burst-s", default="2,10", metavar="MIN,MAX",
                   help="bursts: each burst lasts MIN..MAX seconds")
    t.add_argument("--gap-s", type=number(0, MAX_TRACE_SECONDS, above=True), default=60.0,
                   help="bursts: mean idle gap between bursts, s")
    t.add_argument("--counts", type=Path, help="azure: the invocations CSV")
    t.add_argument("--function", help="azure: one HashFunction's row (default: all summed)")
    t.add_argument("--prompt-tokens", type=number(1, MAX_TOKENS), default=512.0,
                   help="mean prompt tokens")
    t.add_argument("--output-tokens", type=number(1, MAX_TOKENS), default=128.0,
                   help="mean output tokens")
    t.add_argument("--seed", type=number(0, integer=True), default=1)
    t.add_argument("--out", type=Path, help="write here instead of stdout")


def _pair(text: str, flag: str) -> tuple[float, float]:
    from kubeplex.autoscaler.errors import TraceError

    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise TraceError(f"{flag} must be two numbers LOW,HIGH, got {text!r}") from None
    return low, high


def _points(text: str | None) -> tuple[list[float], list[float]]:
    """``--points T:RATE,...``: times from 0, increasing, and rates >= 0, all finite."""
    from kubeplex.autoscaler.errors import TraceError

    if not text:
        raise TraceError("--pattern points needs --points T:RATE,T:RATE,... (seconds from 0 "
                         "and req/s, e.g. 0:2,300:2,2700:40,3600:2)")
    times: list[float] = []
    rates: list[float] = []
    for item in text.split(","):
        try:
            t, rate = (float(v) for v in item.split(":"))
        except ValueError:
            raise TraceError(f"--points: {item!r} is not T:RATE (seconds:req/s)") from None
        if not (math.isfinite(t) and math.isfinite(rate)) or rate < 0:
            raise TraceError(f"--points: {item!r} needs a finite time and a rate >= 0")
        if times and t <= times[-1]:
            raise TraceError(f"--points: times must increase, {t:g} s comes after "
                             f"{times[-1]:g} s")
        times.append(t)
        rates.append(rate)
    if times[0] != 0:
        raise TraceError(f"--points: the first point must be at 0 s, not {times[0]:g} s")
    return times, rates


def _points_rate(times: list[float], rates: list[float]) -> RateFn:
    import numpy as np

    def fn(t: FloatArray) -> FloatArray:
        return np.asarray(np.interp(t, times, rates), dtype=np.float64)
    return fn


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


def load_profile(model: str | None, profile_file: Path | None, gpu_name: str,
                 flag: str = "--model") -> LLMProfile:
    """The latency profile a name (shape or shipped calibration) or a profile file gives on
    ``gpu_name``; errors name the flag."""
    import json

    from kubeplex.autoscaler.errors import AutoscalerConfigError
    from kubeplex.placement.calibration import calibration_from_dict
    from kubeplex.placement.hardware import gpu
    from kubeplex.placement.llm import LLMProfile, calibrated
    from kubeplex.placement.llm import model as shape

    if profile_file is not None:
        try:
            data = json.loads(profile_file.read_text())
        except (OSError, ValueError) as err:
            raise AutoscalerConfigError(f"cannot read the profile {profile_file}: {err}") from err
        return LLMProfile(calibrated(calibration_from_dict(data, str(profile_file))),
                          gpu(gpu_name))
    if model is None:
        raise AutoscalerConfigError(f"give {flag} NAME or a profile file")
    return LLMProfile(shape(model), gpu(gpu_name))


def _autoscale(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from kubeplex.autoscaler.errors import AutoscalerConfigError
    from kubeplex.autoscaler.evaluation import Scenario, replay
    from kubeplex.autoscaler.misses import replay_misses
    from kubeplex.autoscaler.spend import spend
    from kubeplex.autoscaler.trace import read_trace

    if not args.slo_ttft > 0:
        raise AutoscalerConfigError(f"--slo-ttft must be > 0 seconds, got {args.slo_ttft}")
    if not 0 < args.percentile < 100:
        raise AutoscalerConfigError(f"--percentile must be in (0, 100), got {args.percentile}")
    for flag, value in (("--cold-start-s", args.cold_start_s),
                        ("--warm-start-s", args.warm_start_s)):
        if value < 0:
            raise AutoscalerConfigError(f"{flag} must be >= 0, got {value}")
    warm = _warm_pool(args.warm_pool)
    # Unknown names fail here, before the trace is read and the progress bar draws.
    planning = load_profile(args.model, args.profile, args.gpu)
    fleet = None
    if args.fleet_model is not None or args.fleet_profile is not None:
        fleet = load_profile(args.fleet_model, args.fleet_profile, args.gpu, "--fleet-model")
    trace = read_trace(args.trace)
    scenario = Scenario(planning, args.slo_ttft, args.percentile, args.cold_start_s,
                        args.warm_start_s, warm, fleet, args.fleet_speed,
                        args.oracle_utilization, args.reactive_hold_s)
    policies: list[Any] = []
    with Progress(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task(f"replaying {len(trace)} requests ({args.policy})", total=1.0)
        result = replay(trace, scenario, args.policy,
                        progress=lambda done: progress.update(task, completed=done),
                        built=policies.append)
    found = (replay_misses(trace, result, scenario, getattr(policies[0], "reasons", ()))
             if args.explain else None)
    log = getattr(policies[0], "stages", None) if args.explain else None
    spent = spend(log, result.duration_s) if log else None
    if args.plot is not None:
        _plot(result, args.plot, args.slo_ttft, args.percentile, found, log)
    if args.json:
        out = {"policy": result.policy, "attainment": round(result.attainment, 6),
               "gpu_hours": round(result.gpu_hours, 4), "scale_events": result.scale_events,
               "max_replicas": result.max_replicas}
        if found is not None:
            out["misses"] = _misses_json(found, args.explain)
        if spent is not None:
            out["replica_hours"] = {"asked": round(spent.asked, 4), **spent.to_json()}
        print(json.dumps(out))
    else:
        pct = "inf" if math.isinf(result.ttft_percentile) else f"{result.ttft_percentile:.3f}"
        print(f"policy {result.policy}: {result.requests} requests, attainment "
              f"{result.attainment:.2%} (TTFT <= {args.slo_ttft:g} s), TTFT "
              f"p{args.percentile:g} {pct} s, {result.gpu_hours:.2f} GPU-hours, "
              f"{result.scale_events} scale events, max {result.max_replicas} replicas")
        if found is not None:
            for line in _misses_text(found, args.explain):
                print(line)
        if spent is not None:
            print(spent.describe())
    return 0


def _misses_text(found: Misses, n: int) -> list[str]:
    from kubeplex.autoscaler.misses import EPISODE_GAP_S

    if not found.late:
        return ["no request missed the SLO"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in found.by_kind().items() if count)
    lines = [f"late requests: {found.late}; by kind: {kinds} ({len(found.episodes)} episodes: "
             f"late requests under {EPISODE_GAP_S:g} s apart; alone: prompts no replica "
             "serves in time)"]
    if found.episodes and n:
        lines.append(f"the {min(n, len(found.episodes))} largest episodes:")
    for e in found.largest(n):
        lines.append("  " + e.describe())
        lines += [f"    {reason}" for reason in e.reasons]
    return lines


def _misses_json(found: Misses, n: int) -> dict[str, Any]:
    import dataclasses

    return {"late": found.late, "episodes": len(found.episodes), "by_kind": found.by_kind(),
            "largest": [dataclasses.asdict(e) for e in found.largest(n)]}


def _plot(result: SimResult, path: Path, slo: float, percentile: float,
          found: Misses | None = None, log: StageLog | None = None) -> None:
    """Arrivals, replicas and TTFT over time; with ``found``, its episodes shaded by kind;
    with ``log``, the target stacked by the stage that asked for each replica."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kubeplex.autoscaler.misses import KIND_COLORS, KINDS

    line = result.timeline
    minutes = [t / 60 for t in line.time]
    panels = 4 if log else 3
    fig, axes = plt.subplots(panels, 1, figsize=(10, 2.7 * panels), sharex=True)
    ax1, ax2, ax3 = axes[0], axes[1], axes[-1]
    ax1.plot(minutes, line.arrival_rate, lw=0.6, color="tab:gray")
    ax1.set_ylabel("arrivals (req/s)")
    ax1.set_title(f"{result.policy}: attainment {result.attainment:.2%}, "
                  f"{result.gpu_hours:.2f} GPU-hours, {result.scale_events} scale events")
    ax2.step(minutes, line.replicas, where="post", label="replicas (incl. starting)")
    ax2.step(minutes, line.ready, where="post", label="ready")
    ax2.step(minutes, line.warm, where="post", label="warm standbys", ls="--")
    ax2.set_ylabel("replicas")
    ax2.legend(loc="upper left", fontsize=8)
    if log:
        _plot_stages(axes[2], log)
    ax3.plot(minutes, line.ttft, lw=0.6, color="tab:red", label=f"TTFT p{percentile:g}")
    ax3.axhline(slo, color="black", ls=":", label="SLO")
    wide = result.duration_s / 250  # an episode of one request still shows
    for e in found.episodes if found is not None else ():
        for ax in axes:
            ax.axvspan(e.start / 60, max(e.end, e.start + wide) / 60,
                       color=KIND_COLORS[e.kind], alpha=0.25, lw=0)
    for kind in KINDS[:-1] if found is not None else ():  # episodes' kinds ("alone" is none)
        ax3.axvspan(0, 0, color=KIND_COLORS[kind], alpha=0.25, label=f"late: {kind}")
    ax3.set_yscale("log")
    ax3.set_ylabel("TTFT (s) per 2 s")
    ax3.set_xlabel("minutes")
    ax3.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_stages(ax: Any, log: StageLog) -> None:
    """The target over time, stacked by the stage that asked for each replica (what rate
    limits and scale to zero took away shows as the gap to the target's line)."""
    from kubeplex.autoscaler.spend import STAGE_COLORS, stacked

    times, layers = stacked(log)
    minutes = times / 60
    if layers:
        ax.stackplot(minutes, *layers.values(), labels=list(layers), step="post", alpha=0.7,
                     colors=[STAGE_COLORS.get(name, "tab:gray") for name in layers])
    target = [sum(change for _, change in changes) for _, changes, _ in log]
    ax.step(minutes, target, where="post", color="black", lw=0.6, label="target")
    ax.set_ylabel("replicas asked")
    ax.legend(loc="upper right", fontsize=7, ncol=4)


def _trace(args: argparse.Namespace) -> int:
    from kubeplex.autoscaler.errors import TraceError
    from kubeplex.autoscaler.trace import (
        burst_train_rate,
        diurnal_rate,
        from_minute_counts,
        generate,
        read_minute_counts,
        spike_rate,
        square_rate,
        write_trace,
    )

    if args.pattern == "azure":
        if args.counts is None:
            raise TraceError("--pattern azure needs --counts FILE.csv (Azure Functions "
                             "invocations per function per minute)")
        trace = from_minute_counts(read_minute_counts(args.counts, args.function), args.seed,
                                   args.prompt_tokens, args.output_tokens)
    elif args.pattern == "bursts":
        rates, lengths = _pair(args.burst_rates, "--burst-rates"), _pair(args.burst_s,
                                                                         "--burst-s")
        rate = burst_train_rate(args.rate, rates[0], rates[1], lengths, args.gap_s,
                                args.duration_s, args.seed)
        trace = generate(rate, args.duration_s, args.cv or 1.0, args.seed, args.prompt_tokens,
                         args.output_tokens)
    else:
        if args.rate <= 0:
            raise TraceError(f"--rate must be > 0 req/s, got {args.rate}")
        cv = args.cv if args.cv is not None else (4.0 if args.pattern == "gamma" else 1.0)
        peak = args.peak_rate if args.peak_rate is not None else 5 * args.rate
        if args.pattern == "diurnal":
            if peak < 0 or args.period_s <= 0:
                raise TraceError("--peak-rate must be >= 0 and --period-s > 0")
            rate = diurnal_rate(args.rate, peak, args.period_s)
        elif args.pattern == "on-off":
            if args.on_s > args.period_s:
                raise TraceError(f"--on-s ({args.on_s:g} s) must be at most --period-s "
                                 f"({args.period_s:g} s)")
            rate = square_rate(args.rate, peak, args.period_s, args.on_s)
        elif args.pattern == "points":
            rate = _points_rate(*_points(args.points))
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
