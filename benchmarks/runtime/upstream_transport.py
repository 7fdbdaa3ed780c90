"""The router's upstream hop over TCP loopback vs a Unix domain socket: client CPU per request.

Issue 4's question: would the router -> engine hop over a Unix socket (vLLM's ``--uds``)
measurably cut the router's CPU per request? This isolates that hop: one sim engine (the
``kubeplex.runtime.sim`` server, at ``--time-scale 0.001`` so the engine never waits) listens
on both a loopback TCP port and a Unix socket, and this process plays the router's upstream
side with the same ``aiohttp`` client the router uses, alternating rounds between the two
transports (same machine noise). It reports this process's CPU seconds (user + system) per
request, medians of the rounds; compare them with the router's whole CPU per request in
``router_overhead.py``'s results.

    .venv/bin/python benchmarks/runtime/upstream_transport.py [--rounds 6] [--requests 2000]

Writes benchmarks/runtime/results/upstream_transport.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from rich.progress import Progress

from kubeplex.runtime._loop import run
from kubeplex.runtime.supervisor import free_port

RESULTS = Path(__file__).parent / "results"
TRANSPORTS = ("tcp", "uds")


async def serve(port: int, path: str) -> None:
    """One sim engine on both transports (the child process)."""
    from kubeplex.placement.llm import profile
    from kubeplex.runtime.sim import SimEngine, SimServer, VllmMetrics

    prof = profile("llama-3.1-8b", "H100-80GB")
    engine = SimEngine(prof, kv_capacity_tokens=prof.kv_capacity_tokens(0.9),
                       max_num_seqs=256, lanes=1, metrics=VllmMetrics("m", 4096),
                       time_scale=0.001)
    server = SimServer(engine, served_name="m", root="m", max_model_len=4096,
                       sleep_mode=False, wake_seconds=(0.0, 0.0))
    task = asyncio.create_task(engine.run())
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await web.UnixSite(runner, path).start()
    print("ready", flush=True)
    await asyncio.Event().wait()
    task.cancel()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_round(transport: str, port: int, path: str, requests: int, concurrency: int,
                    stream: bool, max_tokens: int) -> tuple[float, float]:
    """(CPU µs per request, requests/s) of one round on one transport."""
    connector: aiohttp.BaseConnector = (aiohttp.UnixConnector(path=path, limit=0)
                                        if transport == "uds" else
                                        aiohttp.TCPConnector(limit=0))
    url = ("http://localhost" if transport == "uds" else f"http://127.0.0.1:{port}") \
        + "/v1/completions"
    body = json.dumps({"model": "m", "prompt": "x", "max_tokens": max_tokens,
                       "stream": stream}).encode()
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.post(url, data=body, headers=headers) as answer:
                    while await answer.content.readany():
                        pass

        await worker(20)  # warm the pool
        cpu, started = _cpu(), time.perf_counter()
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        done = requests // concurrency * concurrency
        return (_cpu() - cpu) / done * 1e6, done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per transport and kind")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run(serve(int(args.serve[0]), args.serve[1]))
        return 0
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kubeplex-uds-") as tmp:
        path = str(Path(tmp) / "engine.sock")
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), path],
                                  stdout=subprocess.PIPE)
        try:
            if server.stdout is None or server.stdout.readline().strip() != b"ready":
                raise SystemExit("the sim server did not start")
            data: dict[str, dict[str, list[tuple[float, float]]]] = {
                kind: {t: [] for t in TRANSPORTS} for kind in ("plain", "stream")}
            with Progress() as bar:
                task = bar.add_task("rounds", total=2 * len(TRANSPORTS) * args.rounds)
                for i in range(args.rounds):
                    for kind in data:
                        order = TRANSPORTS if i % 2 == 0 else TRANSPORTS[::-1]
                        for transport in order:
                            data[kind][transport].append(run(one_round(
                                transport, port, path, args.requests, args.concurrency,
                                kind == "stream", args.max_tokens)))
                            bar.advance(task)
        finally:
            server.terminate()
            server.wait(10)
    out: dict[str, Any] = {"requests": args.requests, "concurrency": args.concurrency,
                           "max_tokens": args.max_tokens, "rounds": args.rounds}
    for kind, per in data.items():
        for transport, rounds in per.items():
            cpu = statistics.median(r[0] for r in rounds)
            rps = statistics.median(r[1] for r in rounds)
            out[f"{kind}_{transport}"] = {"cpu_us_per_request": cpu, "requests_per_s": rps,
                                          "rounds_cpu_us": [round(r[0]) for r in rounds]}
            print(f"{kind:>6} {transport}: {cpu:.0f} µs CPU per request (rounds "
                  f"{[round(r[0]) for r in rounds]}), {rps:.0f} req/s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "upstream_transport.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
