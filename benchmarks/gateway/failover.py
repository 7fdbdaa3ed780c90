"""Failure detection and request migration in the gateway, measured on real runtimes (sim).

Three measurements, each repeated, medians reported (issue 15):

* **detection**: from ``kill -9`` of a runtime to the gateway routing around it, two ways:
  ``exit-watch`` (as local mode does: ``await process.wait()`` on the runtime's process, then
  ``Gateway.remove``; no load) and ``passive`` (nothing told: eight closed-loop clients keep
  sending, and the first request that meets the dead replica marks it down);
* **engine restart**: an engine killed inside its runtime (which restarts it); a request
  sent meanwhile is held by the gateway: how long after the engine was serving again the
  held request was answered (the probe's delay), against the restart itself;
* **migration gap**: a stream of ``--tokens`` tokens whose replica is killed (``failed``) or
  removed from routing (``left``, ``migrate_after_s`` = 0) after a third of them: the gap the
  client sees at the move (last token before -> first token after) against the stream's
  median inter-token gap and against a fresh request's time to first token on the same
  replicas (the move re-prefills the prompt plus the text so far).

The sim engine models Llama-3.1-8B on an H100 (about 9 ms per decode step).

    .venv/bin/python benchmarks/gateway/failover.py --repeats 5 \\
        --out benchmarks/gateway/results/failover.json \\
        --plot benchmarks/gateway/results/failover.png
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kubeplex.control import GroupPhase
from kubeplex.gateway import Gateway, MigrationPolicy, Replica
from kubeplex.operator.local.group import GroupProcess
from kubeplex.runtime.harness import RuntimeProcess, model_entry
from kubeplex.runtime.supervisor import free_port

PROMPT = "Tell me about foxes."
CLIENTS = 8


def _config() -> dict[str, Any]:
    return {"models": [model_entry("m", "sim", memory_share=0.5)],
            "restartInitialSeconds": 0.5, "drainGraceSeconds": 60}


async def _gateway() -> tuple[Gateway, Any, str]:
    gw = Gateway({"m": "default/m"}, hold_timeout=60, hold_limit=1000,
                 retry_after=lambda model: 1.0, migration=MigrationPolicy(migrate_after_s=0.0))
    port = free_port()
    runner = await gw.open("127.0.0.1", port)
    return gw, runner, f"http://127.0.0.1:{port}"


async def _groups(workdir: Path, names: list[str], client: httpx.AsyncClient,
                  gw: Gateway) -> list[GroupProcess]:
    groups = [GroupProcess(n, "pool", 1, _config(), workdir, GroupPhase.STARTING,
                           time.monotonic()) for n in names]
    for group in groups:
        await group.spawn()
    for group in groups:
        await group.wait_ready(client, 60)
        gw.add(Replica("m", group.id, group.url))
    return groups


async def detection(workdir: Path, watch: bool) -> float:
    """Seconds from kill -9 to the replica being out of routing."""
    gw, runner, url = await _gateway()
    async with httpx.AsyncClient(timeout=60) as client:
        groups = await _groups(workdir, ["a", "b"], client, gw)
        victim = groups[0]
        assert victim.process is not None
        process = victim.process
        removed: list[float] = []

        async def exit_watch() -> None:  # local mode's LocalMode._watch, then _bury_dead
            await process.wait()
            gw.remove("m", victim.id)
            removed.append(time.monotonic())

        watcher = asyncio.create_task(exit_watch()) if watch else None
        stop = asyncio.Event()

        async def client_loop() -> None:
            body = {"model": "m", "prompt": PROMPT, "max_tokens": 16, "stream": True}
            while not stop.is_set():
                async with client.stream("POST", url + "/v1/completions", json=body) as r:
                    async for _ in r.aiter_raw():
                        pass

        loops = [] if watch else [asyncio.create_task(client_loop()) for _ in range(CLIENTS)]
        await asyncio.sleep(1.0)
        killed = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        replica = gw.replicas["m"][0]
        if watcher is not None:
            await watcher
            seen = removed[0] - killed
        else:
            while replica.down_since is None:  # noqa: ASYNC110 - a 1 ms clock, no event
                await asyncio.sleep(0.001)
            seen = replica.down_since - killed
        stop.set()
        await asyncio.gather(*loops)
        for group in groups:
            await group.stop()
    await runner.cleanup()
    await gw.close()
    return seen


async def engine_restart(workdir: Path) -> tuple[float, float]:
    """(engine down -> serving again, engine serving again -> held request answered)."""
    gw, runner, url = await _gateway()
    with RuntimeProcess(_config(), workdir / "restart") as rt:
        gw.add(Replica("m", "a", rt.url))
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"model": "m", "prompt": PROMPT, "max_tokens": 2}
            await client.post(url + "/v1/completions", json=body)
            engine = rt.engine("m")
            killed = time.monotonic()
            os.kill(engine["pid"], signal.SIGKILL)
            await asyncio.sleep(0.1)
            held = asyncio.create_task(client.post(url + "/v1/completions", json=body))
            back = None
            while back is None:
                if (await client.get(rt.url + "/health", params={"model": "m"})).status_code \
                        == 200:
                    back = time.monotonic()
                await asyncio.sleep(0.005)
            await held
            answered = time.monotonic()
    await runner.cleanup()
    await gw.close()
    return back - killed, answered - back


async def migration_gap(workdir: Path, tokens: int, cause: str) -> dict[str, float]:
    """The client's view of one stream moved by ``cause`` (failed: kill -9; left: removed)."""
    gw, runner, url = await _gateway()
    async with httpx.AsyncClient(timeout=60) as client:
        groups = await _groups(workdir, ["a", "b"], client, gw)
        gw.replicas["m"][1].acquire()  # the stream starts on a
        body = {"model": "m", "prompt": PROMPT, "max_tokens": tokens, "stream": True}
        times: list[float] = []
        sent = time.monotonic()
        async with client.stream("POST", url + "/v1/completions", json=body) as answer:
            async for line in answer.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                times.append(time.monotonic())
                if len(times) == tokens // 3:
                    gw.replicas["m"][1].release()
                    moved_at = time.monotonic()
                    if cause == "failed":
                        assert groups[0].process is not None
                        os.kill(groups[0].process.pid, signal.SIGKILL)
                    else:
                        gw.remove("m", "a")
        cut = tokens // 3 - 1
        gaps = [b - a for a, b in itertools.pairwise(times)]
        fresh_sent = time.monotonic()
        short = {**body, "max_tokens": 1}
        async with client.stream("POST", url + "/v1/completions", json=short) as answer:
            async for _ in answer.aiter_lines():
                break
        fresh_ttft = time.monotonic() - fresh_sent
        for group in groups:
            await group.stop()
    await runner.cleanup()
    await gw.close()
    return {"ttft": times[0] - sent, "median_gap": statistics.median(gaps),
            "move_gap": times[cut + 1] - times[cut], "after_move": times[cut + 1] - moved_at,
            "fresh_ttft": fresh_ttft, "tokens": len(times)}


async def run(repeats: int, tokens: int) -> dict[str, Any]:
    out: dict[str, Any] = {"detection_exit_watch": [], "detection_passive": [],
                           "engine_restart": [], "held_release": [], "failed": [], "left": []}
    with tempfile.TemporaryDirectory(prefix="kubeplex-failover-") as tmp, \
            Progress(transient=True) as progress:
        task = progress.add_task("failover", total=repeats * 5)
        for i in range(repeats):
            workdir = Path(tmp) / str(i)
            out["detection_exit_watch"].append(await detection(workdir / "w", watch=True))
            progress.advance(task)
            out["detection_passive"].append(await detection(workdir / "p", watch=False))
            progress.advance(task)
            restart, release = await engine_restart(workdir)
            out["engine_restart"].append(restart)
            out["held_release"].append(release)
            progress.advance(task)
            for cause in ("failed", "left"):
                out[cause].append(await migration_gap(workdir / cause, tokens, cause))
                progress.advance(task)
    return out


def summary(raw: dict[str, Any]) -> dict[str, float]:
    med = statistics.median
    return {
        "detection_exit_watch_ms": 1000 * med(raw["detection_exit_watch"]),
        "detection_passive_ms": 1000 * med(raw["detection_passive"]),
        "engine_restart_s": med(raw["engine_restart"]),
        "held_release_after_engine_back_ms": 1000 * med(raw["held_release"]),
        **{f"{cause}_{key}_ms": 1000 * med(r[key] for r in raw[cause])
           for cause in ("failed", "left")
           for key in ("median_gap", "move_gap", "fresh_ttft", "ttft")},
    }


def plot(raw: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["exit watch", "passive (8 clients)"]
    left.boxplot([[1000 * v for v in raw["detection_exit_watch"]],
                  [1000 * v for v in raw["detection_passive"]]], tick_labels=names)
    left.set_ylabel("kill -9 -> out of routing (ms)")
    left.set_title("failure detection")
    series = {
        "inter-token gap": [1000 * r["median_gap"] for r in raw["failed"] + raw["left"]],
        "move gap (failed)": [1000 * r["move_gap"] for r in raw["failed"]],
        "move gap (left)": [1000 * r["move_gap"] for r in raw["left"]],
        "fresh TTFT": [1000 * r["fresh_ttft"] for r in raw["failed"] + raw["left"]],
    }
    right.boxplot(list(series.values()), tick_labels=list(series))
    right.set_ylabel("ms")
    right.set_title("what a moved stream's client sees")
    right.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    raw = asyncio.run(run(args.repeats, args.tokens))
    result = {"repeats": args.repeats, "tokens": args.tokens, "summary": summary(raw),
              "raw": raw}
    table = Table(title=f"gateway failover (sim, medians of {args.repeats})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result["summary"].items():
        table.add_row(key, f"{value:.1f}")
    Console().print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot is not None:
        plot(raw, args.plot)


if __name__ == "__main__":
    main()
