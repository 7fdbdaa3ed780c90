"""Router overhead: the same load sent to an engine directly and through kubeplex-runtime.

One runtime hosts one model; the load generator alternates rounds between the engine's own
port ("direct") and the router ("router"), same concurrency, same requests, so both see the
same machine noise. Per mode it reports throughput (requests/s) and latency p50/p99 (for
streams: time to first chunk and to the end). Targets (issue 4): <= 3% throughput loss and
<= 2 ms added p50.

    .venv/bin/python benchmarks/runtime/router_overhead.py --engine sim
    .venv/bin/python benchmarks/runtime/router_overhead.py --engine vllm   # needs the venv

Writes benchmarks/runtime/results/router_overhead_<engine>_c<concurrency>.json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kubeplex.runtime.harness import (
    VLLM_MISSING_REASON,
    RuntimeProcess,
    model_entry,
    vllm_python_path,
)
from kubeplex.runtime.tiny_model import ensure_tiny_model

RESULTS = Path(__file__).parent / "results"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
               stream: bool) -> tuple[float, float]:
    """(time to first byte, total time) of one request."""
    start = time.perf_counter()
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status} {await resp.text()}")
        if stream:
            first = None
            async for _ in resp.content.iter_any():
                if first is None:
                    first = time.perf_counter() - start
            return first or 0.0, time.perf_counter() - start
        await resp.read()
        elapsed = time.perf_counter() - start
        return elapsed, elapsed


async def _round(url: str, body: dict[str, Any], stream: bool, concurrency: int,
                 seconds: float) -> tuple[int, list[float], list[float], float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _one(session, url, body, stream)  # open connections outside the window
        ttfb: list[float] = []
        total: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                first, whole = await _one(session, url, body, stream)
                ttfb.append(first)
                total.append(whole)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(total), ttfb, total, time.perf_counter() - start


async def measure(direct: str, router: str, body: dict[str, Any], stream: bool,
                  concurrency: int, seconds: float, rounds: int,
                  router_pid: int) -> dict[str, Any]:
    data: dict[str, dict[str, list[float]]] = {
        m: {"ttfb": [], "total": [], "rps": [], "router_cpu": []} for m in ("direct", "router")}
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task(f"{'stream' if stream else 'plain'} rounds", total=2 * rounds)
        for i in range(rounds):
            # Alternate which mode goes first so drift does not favour one.
            order = ("direct", "router") if i % 2 == 0 else ("router", "direct")
            for mode in order:
                url = (direct if mode == "direct" else router) + "/v1/completions"
                cpu = _cpu_seconds(router_pid)
                n, ttfb, total, elapsed = await _round(url, body, stream, concurrency, seconds)
                data[mode]["router_cpu"].append((_cpu_seconds(router_pid) - cpu) / max(1, n))
                data[mode]["ttfb"] += ttfb
                data[mode]["total"] += total
                data[mode]["rps"].append(n / elapsed)
                progress.advance(task)
    out: dict[str, Any] = {}
    for mode, d in data.items():
        out[mode] = {
            "requests": len(d["total"]),
            "throughput_rps_median": statistics.median(d["rps"]),
            "rounds_rps": d["rps"],
            "p50_ms": 1000 * _pct(d["total"], 0.5), "p99_ms": 1000 * _pct(d["total"], 0.99),
            "ttfb_p50_ms": 1000 * _pct(d["ttfb"], 0.5),
            "ttfb_p99_ms": 1000 * _pct(d["ttfb"], 0.99),
        }
    # CPU the runtime process spent per request forwarded (noise-robust: what the router
    # costs when CPU is the bottleneck, as on a shared 2-core machine).
    out["router_cpu_us_per_request"] = 1e6 * statistics.median(data["router"]["router_cpu"])
    out["throughput_loss_pct"] = 100 * (1 - out["router"]["throughput_rps_median"]
                                        / out["direct"]["throughput_rps_median"])
    out["added_p50_ms"] = out["router"]["p50_ms"] - out["direct"]["p50_ms"]
    out["added_p99_ms"] = out["router"]["p99_ms"] - out["direct"]["p99_ms"]
    out["added_ttfb_p50_ms"] = out["router"]["ttfb_p50_ms"] - out["direct"]["ttfb_p50_ms"]
    out["load_average_after"] = os.getloadavg()[0]
    out["_samples"] = data
    return out


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        for mode, style in (("direct", "-"), ("router", "--")):
            values = sorted(1000 * v for v in res["_samples"][mode]["total"])
            ax.plot(values, [i / len(values) for i in range(len(values))], style, label=mode)
        ax.set_title(f"{name}: loss {res['throughput_loss_pct']:.1f}%, "
                     f"+{res['added_p50_ms']:.2f} ms p50")
        ax.set_xlabel("request latency (ms)")
        ax.set_ylabel("CDF")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0, help="length of one round")
    p.add_argument("--rounds", type=int, default=6, help="rounds per mode (interleaved)")
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args()
    tiny = None
    if args.engine == "vllm":
        python = vllm_python_path()
        if python is None:
            print(VLLM_MISSING_REASON, file=sys.stderr)
            return 2
        tiny = ensure_tiny_model(python)
    config = {"models": [model_entry("m", args.engine, tiny_model=tiny, memory_share=0.9)]}
    body = {"model": "m", "prompt": "the model serves tokens", "max_tokens": args.max_tokens,
            "ignore_eos": True, "temperature": 0}
    with tempfile.TemporaryDirectory() as tmp, \
            RuntimeProcess(config, Path(tmp), ready_timeout=600) as rt:
        engine_port = rt.engine("m")["port"]
        router_pid = rt.proc.pid if rt.proc is not None else 0
        direct = f"http://127.0.0.1:{engine_port}"
        results = {}
        for stream in (False, True):
            name = "stream" if stream else "plain"
            results[name] = asyncio.run(measure(direct, rt.url, {**body, "stream": stream},
                                                stream, args.concurrency, args.seconds,
                                                args.rounds, router_pid))
    table = Table(title=f"router overhead, {args.engine} engine, {args.concurrency} concurrent")
    for col in ("mode", "req/s", "p50 ms", "p99 ms", "TTFB p50 ms", "loss %", "+p50 ms",
                "router CPU µs/req"):
        table.add_column(col)
    for name, res in results.items():
        for mode in ("direct", "router"):
            r = res[mode]
            table.add_row(f"{name}/{mode}", f"{r['throughput_rps_median']:.1f}",
                          f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['ttfb_p50_ms']:.2f}",
                          f"{res['throughput_loss_pct']:.2f}" if mode == "router" else "",
                          f"{res['added_p50_ms']:.2f}" if mode == "router" else "",
                          f"{res['router_cpu_us_per_request']:.0f}" if mode == "router" else "")
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"router_overhead_{args.engine}_c{args.concurrency}.json"
    _plot(results, out.with_suffix(".png"))
    for res in results.values():
        res.pop("_samples")
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
