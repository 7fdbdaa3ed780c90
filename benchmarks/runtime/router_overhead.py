"""Router overhead: the same load sent to an engine directly and through kubeplex-runtime.

One runtime hosts one model; the load generator alternates rounds between the engine's own
port ("direct") and the router ("router"), same concurrency, same requests, so both see the
same machine noise. Per mode it reports throughput (requests/s) and latency p50/p99 (for
streams: time to first chunk and to the end). Targets (issue 4): <= 3% throughput loss and
<= 2 ms added p50.

Each closed-loop client draws its requests' ``max_tokens`` from a seeded uniform spread around
``--max-tokens`` (the same sequence in both modes). With identical requests
(``--token-spread 0``) the clients run in lock-step: all finish in the same engine step and
come back together, and any delay, the router's included, decides whether they are admitted
in the same step or one step (~10 ms) later; that amplifies a sub-millisecond delay into a
step-sized one, which real, unsynchronised traffic does not do.

The load-independent number is the router's CPU per request (from /proc), next to the
engine's; and the machine's CPU busy fraction per mode says whether the cores were saturated
(then every extra process hop waits for a core, whatever the router does).

    .venv/bin/python benchmarks/runtime/router_overhead.py --engine sim --concurrency 4
    .venv/bin/python benchmarks/runtime/router_overhead.py --engine vllm   # needs the venv

``--gateway`` measures the gateway instead of the runtime's router: one gateway process per
routing policy named (``kubeplex.gateway.Gateway``, two replicas that both point at the
engine, so the policy has a choice to make every request), each mode against the engine
directly, rounds interleaved over all modes. ``--prompt-chars`` sends longer prompts (the
prefix-aware policy hashes every 64 characters of them). ``--no-resume-plain`` adds, per
policy, a gateway that forwards plain requests as they came (``resume_plain`` off) beside the
default one, which streams them from the engine so that they can resume mid-generation.

Writes benchmarks/runtime/results/router_overhead_<engine>_c<concurrency>[_lockstep]
[_gateway].json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kubeplex.runtime._loop import run
from kubeplex.runtime.harness import RuntimeProcess, benchmark_tiny_model, model_entry
from kubeplex.runtime.routing import POLICIES
from kubeplex.runtime.supervisor import free_port

RESULTS = Path(__file__).parent / "results"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine since boot (Linux /proc/stat)."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


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
                 seconds: float, spread: float,
                 seed: int) -> tuple[int, list[float], list[float], float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _one(session, url, body, stream)  # open connections outside the window
        ttfb: list[float] = []
        total: list[float] = []
        stop_at = time.perf_counter() + seconds
        mean = body["max_tokens"]
        low, high = max(1, round(mean * (1 - spread))), round(mean * (1 + spread))

        async def worker(i: int) -> None:
            draw = random.Random(seed * 10_000 + i)  # same requests in both modes
            while time.perf_counter() < stop_at:
                request = {**body, "max_tokens": draw.randint(low, high)}
                first, whole = await _one(session, url, request, stream)
                ttfb.append(first)
                total.append(whole)

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return len(total), ttfb, total, time.perf_counter() - start


async def measure(urls: dict[str, str], body: dict[str, Any], stream: bool,
                  concurrency: int, seconds: float, rounds: int, spread: float,
                  pids: dict[str, int], engine_pid: int) -> dict[str, Any]:
    """``urls``: mode -> base URL, ``direct`` (the engine) first; ``pids``: the router
    process of every other mode."""
    modes = list(urls)
    data: dict[str, dict[str, list[float]]] = {
        m: {"ttfb": [], "total": [], "rps": [], "router_cpu": [], "engine_cpu": [],
            "machine_busy": []} for m in modes}
    load_before = os.getloadavg()[0]
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task(f"{'stream' if stream else 'plain'} rounds",
                                 total=len(modes) * rounds)
        for i in range(rounds):
            # Rotate which mode goes first so drift does not favour one.
            order = modes[i % len(modes):] + modes[:i % len(modes)]
            for mode in order:
                url = urls[mode] + "/v1/completions"
                router_pid = pids.get(mode, engine_pid)
                cpu, engine_cpu = _cpu_seconds(router_pid), _cpu_seconds(engine_pid)
                busy, jiffies = _machine_cpu()
                n, ttfb, total, elapsed = await _round(url, body, stream, concurrency, seconds,
                                                       spread, seed=i)
                busy_after, jiffies_after = _machine_cpu()
                data[mode]["machine_busy"].append((busy_after - busy) / (jiffies_after - jiffies))
                data[mode]["router_cpu"].append((_cpu_seconds(router_pid) - cpu) / max(1, n))
                data[mode]["engine_cpu"].append((_cpu_seconds(engine_pid) - engine_cpu)
                                                / max(1, n))
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
            "machine_cpu_busy_pct": 100 * statistics.median(d["machine_busy"]),
        }
    # CPU the router process spent per request forwarded (noise-robust: what the router
    # costs when CPU is the bottleneck, as on a shared 2-core machine).
    out["engine_cpu_us_per_request"] = 1e6 * statistics.median(data["direct"]["engine_cpu"])
    for mode in modes[1:]:
        r, d = out[mode], out["direct"]
        r["router_cpu_us_per_request"] = 1e6 * statistics.median(data[mode]["router_cpu"])
        r["throughput_loss_pct"] = 100 * (1 - r["throughput_rps_median"]
                                          / d["throughput_rps_median"])
        r["added_p50_ms"] = r["p50_ms"] - d["p50_ms"]
        r["added_p99_ms"] = r["p99_ms"] - d["p99_ms"]
        r["added_ttfb_p50_ms"] = r["ttfb_p50_ms"] - d["ttfb_p50_ms"]
    out["load_average_before"] = load_before
    out["load_average_after"] = os.getloadavg()[0]
    out["_samples"] = data
    return out


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        modes = list(res["_samples"])
        for mode, style in zip(modes, ("-", "--", ":", "-."), strict=False):
            values = sorted(1000 * v for v in res["_samples"][mode]["total"])
            ax.plot(values, [i / len(values) for i in range(len(values))], style, label=mode)
        ax.set_title(f"{name}: " + ", ".join(
            f"{m} {res[m]['throughput_loss_pct']:.1f}% / +{res[m]['added_p50_ms']:.2f} ms"
            for m in modes[1:]), fontsize=8)
        ax.set_xlabel("request latency (ms)")
        ax.set_ylabel("CDF")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


#: A gateway mode's name suffix when it forwards plain requests as plain (``resume_plain`` off).
PLAIN_UPSTREAM = " (plain upstream)"


async def _serve_gateway(port: int, mode: str, engine_url: str) -> None:
    """This process as a gateway over two replicas, both the engine at ``engine_url``."""
    from kubeplex.gateway import Gateway, MigrationPolicy, Replica, Route

    policy = mode.removesuffix(PLAIN_UPSTREAM)
    gateway = Gateway({"m": "default/m"}, hold_timeout=10, hold_limit=10,
                      retry_after=lambda route: 1.0,
                      migration=MigrationPolicy(resume_plain=policy == mode))
    gateway.set_routes({"m": Route.of_key("m", "default/m", policy)})
    for group in ("a", "b"):
        gateway.add(Replica("m", group, engine_url))
    runner = await gateway.open("127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    await gateway.close()


def _start_gateway(policy: str, engine_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-gateway", policy,
                             "--gateway-port", str(port), "--engine-url", engine_url])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"the {policy} gateway did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0, help="length of one round")
    p.add_argument("--rounds", type=int, default=6, help="rounds per mode (interleaved)")
    p.add_argument("--max-tokens", type=int, default=16, help="mean max_tokens of a request")
    p.add_argument("--token-spread", type=float, default=0.5,
                   help="max_tokens uniform in mean x (1 +- spread); 0: identical requests, "
                        "lock-step clients (see the module doc)")
    p.add_argument("--gateway", nargs="*", choices=POLICIES, metavar="POLICY",
                   help="measure the gateway with these routing policies instead of the "
                        f"runtime's router ({', '.join(POLICIES)})")
    p.add_argument("--no-resume-plain", action="store_true",
                   help="with --gateway: also measure each policy with plain requests "
                        "forwarded as plain (not streamed from the engine to be resumable)")
    p.add_argument("--prompt-chars", type=int, default=0,
                   help="prompt length in characters (default: a 4-token prompt)")
    p.add_argument("--serve-gateway", help=argparse.SUPPRESS)
    p.add_argument("--gateway-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--engine-url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_gateway:
        run(_serve_gateway(args.gateway_port, args.serve_gateway, args.engine_url))
        return 0
    tiny = None
    if args.engine == "vllm":
        tiny = benchmark_tiny_model()
        if tiny is None:
            return 2
    config = {"models": [model_entry("m", args.engine, tiny_model=tiny, memory_share=0.9)]}
    prompt = " ".join(["the model serves tokens"] * max(1, args.prompt_chars // 24))
    body = {"model": "m", "prompt": prompt, "max_tokens": args.max_tokens,
            "ignore_eos": True, "temperature": 0}
    gateways: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp, \
            RuntimeProcess(config, Path(tmp), ready_timeout=600) as rt:
        engine_pid = int(rt.engine("m")["pid"])
        direct = f"http://127.0.0.1:{rt.engine('m')['port']}"
        urls = {"direct": direct}
        pids = {}
        try:
            if args.gateway:
                modes = [m for policy in args.gateway for m in (
                    policy, *((policy + PLAIN_UPSTREAM,) if args.no_resume_plain else ()))]
                for mode in modes:
                    gateways[mode], urls[mode] = _start_gateway(mode, direct)
                    pids[mode] = gateways[mode].pid
            else:
                urls["router"] = rt.url
                pids["router"] = rt.proc.pid if rt.proc is not None else 0
            results = {}
            for stream in (False, True):
                name = "stream" if stream else "plain"
                results[name] = asyncio.run(measure(
                    urls, {**body, "stream": stream}, stream, args.concurrency, args.seconds,
                    args.rounds, args.token_spread, pids, engine_pid))
        finally:
            for proc in gateways.values():
                proc.terminate()
                proc.wait(10)
    what = f"gateway ({', '.join(args.gateway)})" if args.gateway else "router"
    table = Table(title=f"{what} overhead, {args.engine} engine, {args.concurrency} concurrent, "
                        f"max_tokens {args.max_tokens} ± {100 * args.token_spread:.0f}%, "
                        f"prompt {len(prompt)} characters")
    for col in ("mode", "req/s", "p50 ms", "p99 ms", "TTFB p50 ms", "loss %", "+p50 ms",
                "+TTFB p50 ms", "CPU µs/req (router | engine)", "machine busy %", "load avg"):
        table.add_column(col)
    for name, res in results.items():
        for mode in urls:
            r = res[mode]
            router = mode != "direct"
            table.add_row(f"{name}/{mode}", f"{r['throughput_rps_median']:.1f}",
                          f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['ttfb_p50_ms']:.2f}",
                          f"{r['throughput_loss_pct']:.2f}" if router else "",
                          f"{r['added_p50_ms']:.2f}" if router else "",
                          f"{r['added_ttfb_p50_ms']:.2f}" if router else "",
                          f"{r['router_cpu_us_per_request']:.0f} | "
                          f"{res['engine_cpu_us_per_request']:.0f}" if router else "",
                          f"{r['machine_cpu_busy_pct']:.0f}",
                          f"{res['load_average_before']:.1f} -> {res['load_average_after']:.1f}"
                          if router else "")
    Console(width=200).print(table)
    RESULTS.mkdir(exist_ok=True)
    suffix = ("_lockstep" if args.token_spread == 0 else "") + ("_gateway" if args.gateway
                                                                else "") \
        + ("_plain_upstream" if args.gateway and args.no_resume_plain else "")
    out = RESULTS / f"router_overhead_{args.engine}_c{args.concurrency}{suffix}.json"
    _plot(results, out.with_suffix(".png"))
    for res in results.values():
        res.pop("_samples")
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
