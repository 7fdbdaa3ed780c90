"""Live: the gateway's prefix-aware routing with and without its replicas' engine load reports.

Two ``kubeplex-runtime`` replicas, each one sim engine (llama-3.1-8b on an H100 profile, run
``--time-scale`` times real time), behind one in-process gateway whose route is prefix-aware.
Rounds alternate between following the engines' load streams (``/kubeplex/v1/load``, what
the gateway does with sim replicas) and the gateway's own view (what it does with vLLM's),
so both see the same machine noise. Every round sends the same seeded open-loop trace: Poisson
arrivals, prompts of log-normal length (median ``--prompt-median`` tokens, the sim's
``prompt_tokens`` hint) with no shared prefix, so only the queue estimate differs between the
modes; streamed, TTFT is the first chunk through the gateway (in the sim's seconds: wall
seconds / time scale).

    .venv/bin/python benchmarks/routing/live_load.py            # ~8 min

Writes benchmarks/routing/results/live_load.json and live_load.png (TTFT CDF per mode).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

from kubeplex.gateway import Gateway, Replica, Route
from kubeplex.runtime.harness import RuntimeProcess, model_entry
from kubeplex.runtime.supervisor import free_port

RESULTS = Path(__file__).parent / "results"
MODES = ("engine load", "own view")
#: Log-normal spread of the prompt lengths (sigma of the log): Mooncake's prompts span about
#: two orders of magnitude.
PROMPT_SIGMA = 0.9
#: Longest prompt sent (tokens): within llama-3.1-8b's context, with room for the output.
MAX_PROMPT = 100_000


def trace(rate: float, seconds: float, median: int, max_tokens: int,
          seed: int) -> list[tuple[float, int]]:
    """(arrival s, prompt tokens) of one round, in the sim's seconds."""
    rng = random.Random(seed)
    out, t = [], rng.expovariate(rate)
    while t < seconds:
        tokens = int(min(MAX_PROMPT, median * math.exp(rng.gauss(0, PROMPT_SIGMA))))
        out.append((t, max(16, tokens)))
        t += rng.expovariate(rate)
    return out


async def _one(client: httpx.AsyncClient, n: int, tokens: int, max_tokens: int) -> float:
    body = {"model": "m", "prompt": f"request {n}", "prompt_tokens": tokens,
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    started = time.monotonic()
    async with client.stream("POST", "/v1/completions", json=body) as answer:
        answer.raise_for_status()
        async for _ in answer.aiter_bytes():
            return time.monotonic() - started
    raise RuntimeError("an empty answer")


async def _round(url: str, arrivals: list[tuple[float, int]], max_tokens: int,
                 scale: float) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 limits=httpx.Limits(max_connections=1000)) as client:
        start = time.monotonic()
        tasks = []
        for n, (at, tokens) in enumerate(arrivals):
            await asyncio.sleep(max(0.0, start + at * scale - time.monotonic()))
            tasks.append(asyncio.create_task(_one(client, n, tokens, max_tokens)))
        return [t / scale for t in await asyncio.gather(*tasks)]


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


async def measure(urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    gateway = Gateway({"m": "default/m"}, hold_timeout=60, hold_limit=10_000,
                      retry_after=lambda route: 1.0)
    port = free_port()
    runner = await gateway.open("127.0.0.1", port)
    data: dict[str, list[list[float]]] = {m: [] for m in MODES}
    try:
        for i, url in enumerate(urls):
            gateway.add(Replica("m", f"replica-{i}", url))
        with Progress(console=Console(stderr=True)) as progress:
            task = progress.add_task("rounds", total=2 * args.rounds)
            for n in range(args.rounds):
                arrivals = trace(args.rate, args.seconds, args.prompt_median, args.max_tokens,
                                 seed=n)
                order = MODES if n % 2 == 0 else MODES[::-1]
                for mode in order:
                    gateway.set_routes({"m": Route.of_key("m", "default/m", "least-loaded")})
                    gateway.set_routes({"m": Route.of_key("m", "default/m", "prefix-aware")})
                    gateway.set_follow_engine_load(mode == "engine load")
                    await asyncio.sleep(0.5)  # the streams open
                    data[mode].append(await _round(f"http://127.0.0.1:{port}", arrivals,
                                                   args.max_tokens, args.time_scale))
                    progress.advance(task)
    finally:
        await runner.cleanup()
        await gateway.close()
    out: dict[str, Any] = {"args": vars(args), "rounds": data}
    for mode, rounds in data.items():
        every = [t for r in rounds for t in r]
        out[mode] = {"requests": len(every), "ttft_p50_s": _p(every, 50),
                     "ttft_p95_s": _p(every, 95), "ttft_p99_s": _p(every, 99),
                     "round_p95_s": [_p(r, 95) for r in rounds]}
    out["p95_ratio"] = out["engine load"]["ttft_p95_s"] / out["own view"]["ttft_p95_s"]
    out["round_p95_ratios"] = [a / b for a, b in zip(out["engine load"]["round_p95_s"],
                                                     out["own view"]["round_p95_s"],
                                                     strict=True)]
    return out


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in MODES:
        values = sorted(t for r in result["rounds"][mode] for t in r)
        ax.plot(values, [i / len(values) for i in range(len(values))],
                label=f"{mode}: p95 {result[mode]['ttft_p95_s']:.2f} s")
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s, the sim's time)")
    ax.set_ylabel("CDF")
    ax.set_title("prefix-aware routing, 2 sim replicas, live", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4, help="rounds per mode (alternating)")
    p.add_argument("--seconds", type=float, default=240.0,
                   help="arrivals per round, in the sim's seconds")
    p.add_argument("--rate", type=float, default=2.2, help="requests per sim second")
    p.add_argument("--prompt-median", type=int, default=8000, help="median prompt tokens")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--time-scale", type=float, default=0.25,
                   help="wall seconds per sim second (the engines and the arrivals)")
    args = p.parse_args()
    entry = model_entry("m", "sim", memory_share=0.9,
                        sim_args=("--time-scale", str(args.time_scale)))
    with tempfile.TemporaryDirectory() as tmp, \
            RuntimeProcess({"models": [entry]}, Path(tmp) / "a") as a, \
            RuntimeProcess({"models": [entry]}, Path(tmp) / "b") as b:
        result = asyncio.run(measure([a.url, b.url], args))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "live_load.json"
    out.write_text(json.dumps(result, indent=1))
    _plot(result, out.with_suffix(".png"))
    for mode in MODES:
        r = result[mode]
        print(f"{mode:12s} {r['requests']} requests: TTFT p50 {r['ttft_p50_s']:.3f} s, "
              f"p95 {r['ttft_p95_s']:.3f} s, p99 {r['ttft_p99_s']:.3f} s; round p95s "
              + ", ".join(f"{x:.2f}" for x in r["round_p95_s"]))
    ratios = result["round_p95_ratios"]
    print(f"p95 engine load / own view: {result['p95_ratio']:.3f} (rounds: "
          + ", ".join(f"{x:.2f}" for x in ratios) + f"; median {statistics.median(ratios):.2f})")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
