"""Routing policies replayed on simulated replicas: the Mooncake trace and generated shapes.

For each trace, every policy (``prefix-aware``, fed the replicas' KV events and queue reports
or routing on its own view, ``least-loaded``, ``round-robin``) is replayed through the same
simulated replicas (``kubeplex simulate routing``'s code: the sim engine's
scheduler and prefix cache, the gateway's routing code), next to the hit rate of one ideal
shared cache of the same total size. Deterministic: the same command gives the same numbers
on any machine.

    .venv/bin/python benchmarks/routing/replay.py            # Mooncake + generated traces
    .venv/bin/python benchmarks/routing/replay.py --quick    # generated traces only, shorter

Writes benchmarks/routing/results/replay.json, a markdown table on stdout, and a PNG per
trace (TTFT CDF per policy).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from kubeplex.placement.llm import profile
from kubeplex.runtime.sim.replay import ReplayResult, TraceRequest, replay, shared_cache_hit_rate
from kubeplex.runtime.sim.scheduler import vllm_batched_tokens
from kubeplex.runtime.sim.traces import generate, read_trace, write_jsonl

RESULTS = Path(__file__).parent / "results"
MOONCAKE = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / \
    "mooncake_conversation_trace.jsonl"
#: What is compared: (row name, policy, whether the router is fed the replicas' KV events and
#: queue reports). ``prefix-aware`` is what ``kubeplex simulate routing`` does by default;
#: ``prefix-aware (own view)`` routes on what the router sent and saw come back only (the
#: gateway's view today); the other policies look at neither.
RUNS = (("prefix-aware", "prefix-aware", True), ("prefix-aware (own view)", "prefix-aware", False),
        ("least-loaded", "least-loaded", False), ("round-robin", "round-robin", False))
#: Generated traces: (shape, requests/s, inter-arrival cv), 10 minutes each; the rates load
#: four H100 replicas of llama-3.1-8b moderately (chat, documents) to heavily (bursty;
#: agents at 6/s overload least-loaded routing, whose replicas recompute long contexts).
GENERATED = (("chat", 14.0, 1.0), ("chat", 10.0, 3.0), ("system-prompts", 14.0, 1.0),
             ("system-prompts", 30.0, 2.0), ("documents", 12.0, 2.0), ("documents", 16.0, 1.0),
             ("agents", 4.0, 1.0), ("agents", 6.0, 2.0))


def _summary(result: ReplayResult, shared: float) -> dict[str, Any]:
    served = len(result.ttft_s)
    return {"ttft_p50_s": result.ttft_percentile(50), "ttft_p95_s": result.ttft_percentile(95),
            "ttft_p99_s": result.ttft_percentile(99), "prefix_hit_rate": result.prefix_hit_rate,
            "hit_rate_vs_shared": result.prefix_hit_rate / shared if shared else None,
            "requests_per_replica": result.requests_per_replica,
            "max_fair_share": max(result.requests_per_replica) * result.replicas / served,
            "throughput_tokens_s": result.throughput_tokens_s}


def _plot(name: str, results: dict[str, ReplayResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, result in results.items():
        values = sorted(result.ttft_s)
        ax.plot(values, [i / len(values) for i in range(len(values))],
                label=f"{policy}: p95 {result.ttft_percentile(95):.2f} s, hits "
                      f"{result.prefix_hit_rate:.1%}")
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("CDF")
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--gpu", default="H100-80GB")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="generated traces only, 5 minutes")
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="each replica's step budget (default: vLLM's for the GPU)")
    args = p.parse_args()
    prof = profile(args.model, args.gpu)
    capacity = prof.kv_capacity_tokens(0.9)
    max_len = min(capacity, prof.model.max_model_len)
    budget = args.max_num_batched_tokens or vllm_batched_tokens(prof.gpu)
    traces: dict[str, list[TraceRequest]] = {}
    if MOONCAKE.exists() and not args.quick:
        traces["mooncake"] = read_trace(MOONCAKE)
    with tempfile.TemporaryDirectory() as tmp:
        for shape, rate, cv in GENERATED:
            path = Path(tmp) / f"{shape}.jsonl"
            path.write_text(write_jsonl(generate(shape, rate=rate, cv=cv, seed=1,
                                                 duration_s=300 if args.quick else 600)))
            traces[f"{shape} {rate:g}/s cv {cv:g}"] = read_trace(path)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"args": vars(args), "kv_capacity_tokens": capacity,
                              "max_num_batched_tokens": budget, "traces": {}}
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("replays", total=len(traces) * len(RUNS))
        for name, trace in traces.items():
            fits = [r for r in trace if r.prompt_tokens + r.output_tokens <= max_len]
            shared = shared_cache_hit_rate(fits, capacity * args.replicas)
            results = {}
            for run, policy, kv_events in RUNS:
                results[run] = replay(fits, prof, replicas=args.replicas, policy=policy,
                                      kv_capacity_tokens=capacity, max_model_len=max_len,
                                      kv_events=kv_events, max_batched_tokens=budget)
                progress.advance(task)
            slug = name.replace(" ", "_").replace("/", "")
            _plot(f"{name}, {args.replicas} x {args.model} on {args.gpu}", results,
                  RESULTS / f"replay_{slug}.png")
            report["traces"][name] = {"requests": len(fits), "shared_cache_hit_rate": shared,
                                      **{k: _summary(r, shared) for k, r in results.items()}}
    print("| trace | policy | TTFT p50 s | TTFT p95 s | p95 vs least-loaded | prefix hits | "
          "vs shared cache | busiest replica vs fair |")
    print("|---|---|---|---|---|---|---|---|")
    for name, entry in report["traces"].items():
        base = entry["least-loaded"]["ttft_p95_s"]
        for run, _, _ in RUNS:
            r = entry[run]
            print(f"| {name} | {run} | {r['ttft_p50_s']:.3f} | {r['ttft_p95_s']:.3f} | "
                  f"{r['ttft_p95_s'] / base:.2f}x | {r['prefix_hit_rate']:.1%} | "
                  f"{r['hit_rate_vs_shared']:.0%} of {entry['shared_cache_hit_rate']:.1%} | "
                  f"{r['max_fair_share']:.2f}x |")
    out = RESULTS / "replay.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
