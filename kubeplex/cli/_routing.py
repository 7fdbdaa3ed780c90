"""``kubeplex simulate routing`` and ``kubeplex simulate prefix-trace``: prefix-cache-aware
routing, replayed on simulated replicas."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeplex.cli import Commands
from kubeplex.errors import KubeplexError

if TYPE_CHECKING:
    from kubeplex.runtime.sim.replay import ReplayResult

#: Width (s) of the windows the plot's TTFT percentile line is drawn over.
PLOT_WINDOW_S = 30.0


def register(cli: Commands) -> None:
    from kubeplex.runtime.routing import DEFAULT_POLICY, POLICIES

    p = cli.command("routing", "replay a prefix-sharing trace through N simulated replicas "
                    "behind the gateway's routing policy; report TTFT, prefix-cache hits and "
                    "load balance", _routing, group="simulate")
    p.add_argument("--trace", required=True, type=Path,
                   help="Mooncake JSONL (timestamp ms, input_length, output_length, hash_ids) "
                        "or CSV (arrival_s,prompt_tokens,output_tokens[,hash_ids])")
    p.add_argument("--model", required=True, help="model profile, e.g. llama-3.1-8b")
    p.add_argument("--gpu", required=True, help="GPU, e.g. H100-80GB, A100-80GB, L4")
    p.add_argument("--replicas", required=True, type=int, help="replicas behind the router")
    p.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY.value,
                   help="routing policy (default: %(default)s)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size of a replica")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size of a replica")
    p.add_argument("--memory-share", type=float, default=0.9,
                   help="--gpu-memory-utilization of a replica (its KV capacity follows; "
                        "default %(default)s)")
    p.add_argument("--max-num-seqs", type=int, default=256,
                   help="vLLM's --max-num-seqs (default %(default)s)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="vLLM's --max-num-batched-tokens: tokens one step may compute, long "
                        "prompts prefilled in chunks (default: vLLM's for the GPU: 8192 on "
                        "H100/H200, 2048 on A100 and L4)")
    p.add_argument("--block-size", type=int, default=512,
                   help="tokens per hash id of the trace (Mooncake's: %(default)s)")
    p.add_argument("--no-kv-events", dest="kv_events", action="store_false",
                   help="route on what the router sent and saw come back only (the gateway's "
                        "view), not on the replicas' KV events and queue reports")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="write TTFT and requests in flight per replica over time as a PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    t = cli.command("prefix-trace", "generate a prefix-sharing trace (Mooncake JSONL) of "
                    "another shape, to stdout or --out", _prefix_trace, group="simulate")
    t.add_argument("--shape", required=True,
                   help="chat: multi-turn conversations; system-prompts: single turns behind "
                        "a few long system prompts (a hot prefix); documents: questions about "
                        "shared documents (RAG); agents: tool-calling loops (long sessions "
                        "whose next step comes within seconds)")
    t.add_argument("--rate", type=float, default=10.0, help="requests/s (default %(default)s)")
    t.add_argument("--duration-s", type=float, default=600.0, help="default %(default)s")
    t.add_argument("--cv", type=float, default=1.0,
                   help="inter-arrival coefficient of variation (1: Poisson; default %(default)s)")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--out", type=Path, help="write here instead of stdout")


def _routing(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from kubeplex.placement.llm import profile
    from kubeplex.runtime.sim.replay import replay, shared_cache_hit_rate
    from kubeplex.runtime.sim.scheduler import vllm_batched_tokens
    from kubeplex.runtime.sim.traces import read_trace

    for flag, value in (("--replicas", args.replicas), ("--max-num-seqs", args.max_num_seqs),
                        ("--block-size", args.block_size),
                        ("--max-num-batched-tokens", 1 if args.max_num_batched_tokens is None
                         else args.max_num_batched_tokens)):
        if value < 1:
            raise KubeplexError(f"{flag} must be >= 1, got {value}")
    if not 0 < args.memory_share <= 1:
        raise KubeplexError(f"--memory-share must be in (0, 1], got {args.memory_share}")
    prof = profile(args.model, args.gpu, args.tp, args.pp)
    capacity = prof.kv_capacity_tokens(args.memory_share)
    if capacity <= 0:
        raise KubeplexError(f"{prof.model.name} does not fit {args.memory_share:g} of "
                            f"{args.tp}x{args.pp} {prof.gpu.name}: no memory left for the KV "
                            "cache; raise --memory-share, --tp or --pp")
    max_len = min(prof.model.max_model_len, capacity)
    trace = read_trace(args.trace, args.block_size)
    fits = [r for r in trace if r.prompt_tokens + r.output_tokens <= max_len]
    if not fits:
        raise KubeplexError(f"{args.trace}: no request fits one replica ({max_len} tokens of "
                            "prompt + output)")
    with Progress(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task(f"replaying {len(fits)} requests ({args.policy}, "
                                 f"{args.replicas} replicas)", total=1.0)
        result = replay(fits, prof, replicas=args.replicas, policy=args.policy,
                        kv_capacity_tokens=capacity, max_model_len=max_len,
                        max_num_seqs=args.max_num_seqs, lanes=prof.pipeline_depth,
                        kv_events=args.kv_events,
                        max_batched_tokens=args.max_num_batched_tokens
                        or vllm_batched_tokens(prof.gpu),
                        progress=lambda done: progress.update(task, completed=done))
    shared = shared_cache_hit_rate(fits, capacity * args.replicas)
    summary = _summary(result, shared, len(trace) - len(fits), capacity)
    if args.plot is not None:
        _plot(result, args.plot)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"policy {result.policy}, {result.replicas} replicas of {prof.model.name} on "
          f"{args.tp}x{args.pp} {prof.gpu.name} (KV {capacity} tokens each): "
          f"{len(result.ttft_s)} requests ({summary['rejected']} too long for a replica)")
    print(f"  TTFT p50 {summary['ttft_p50_s']:.3f} s, p95 {summary['ttft_p95_s']:.3f} s, "
          f"p99 {summary['ttft_p99_s']:.3f} s")
    reference = (f"one shared cache of the same total size: {shared:.1%}; "
                 f"{summary['hit_rate_vs_shared']:.0%} of it" if shared
                 else "no prompt prefix repeats in this trace")
    print(f"  prefix hits {summary['prefix_hit_rate']:.1%} of prompt blocks ({reference})")
    print(f"  requests per replica {summary['requests_per_replica']} (busiest "
          f"{summary['max_fair_share']:.2f}x its fair share); output "
          f"{summary['throughput_tokens_s']:.0f} tokens/s")
    return 0


def _summary(result: ReplayResult, shared: float, rejected: int,
             capacity: int) -> dict[str, Any]:
    per_replica = result.requests_per_replica
    served = len(result.ttft_s)
    return {
        "policy": result.policy, "replicas": result.replicas, "requests": served,
        "rejected": rejected, "kv_capacity_tokens": capacity,
        "ttft_p50_s": round(result.ttft_percentile(50), 6),
        "ttft_p95_s": round(result.ttft_percentile(95), 6),
        "ttft_p99_s": round(result.ttft_percentile(99), 6),
        "prefix_hit_rate": round(result.prefix_hit_rate, 6),
        "shared_cache_hit_rate": round(shared, 6),
        "hit_rate_vs_shared": round(result.prefix_hit_rate / shared, 6) if shared else None,
        "cached_token_fraction": round(result.cached_tokens / result.prompt_tokens, 6)
        if result.prompt_tokens else 0.0,
        "requests_per_replica": per_replica,
        "max_fair_share": round(max(per_replica) * result.replicas / served, 6)
        if served else 0.0,
        "throughput_tokens_s": round(result.throughput_tokens_s, 3),
        "duration_s": round(result.duration_s, 3),
        "causes": result.causes,
    }


def _plot(result: ReplayResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    minutes = [t / 60 for t in result.arrival_s]
    top.scatter(minutes, result.ttft_s, s=2, alpha=0.3, color="tab:gray", label="requests")
    windows: dict[int, list[float]] = {}
    for t, ttft in zip(result.arrival_s, result.ttft_s, strict=True):
        windows.setdefault(int(t // PLOT_WINDOW_S), []).append(ttft)
    edges = sorted(windows)
    p95 = [sorted(windows[w])[min(len(windows[w]) - 1, math.ceil(0.95 * len(windows[w])) - 1)]
           for w in edges]
    top.plot([(w + 0.5) * PLOT_WINDOW_S / 60 for w in edges], p95, color="tab:red",
             label=f"p95 per {PLOT_WINDOW_S:g} s")
    top.set_yscale("log")
    top.set_ylabel("TTFT (s)")
    top.set_title(f"{result.policy}, {result.replicas} replicas: TTFT p95 "
                  f"{result.ttft_percentile(95):.2f} s, prefix hits "
                  f"{result.prefix_hit_rate:.1%} of prompt blocks")
    top.legend(loc="upper left", fontsize=8)
    times = [t / 60 for t, _ in result.timeline]
    for i in range(result.replicas):
        bottom.plot(times, [load[i] for _, load in result.timeline], lw=0.7,
                    label=f"replica {i}")
    bottom.set_ylabel("requests in flight")
    bottom.set_xlabel("minutes")
    if result.replicas <= 8:
        bottom.legend(loc="upper left", fontsize=8, ncol=4)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _prefix_trace(args: argparse.Namespace) -> int:
    from kubeplex.runtime.sim.traces import generate, write_jsonl

    rows = generate(args.shape, rate=args.rate, duration_s=args.duration_s, seed=args.seed,
                    cv=args.cv)
    text = write_jsonl(rows)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    print(f"{len(rows)} requests over {args.duration_s:g} s ({args.shape})", file=sys.stderr)
    return 0
