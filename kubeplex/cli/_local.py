"""``kubeplex up``, ``kubeplex status`` and ``kubeplex load``: local mode from the terminal."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeplex.cli import Commands
from kubeplex.cli._args import MAX_RATE, MAX_SECONDS, MAX_TOKENS, number, port
from kubeplex.errors import KubeplexError

if TYPE_CHECKING:
    from kubeplex.operator.local.load import LoadResult
    from kubeplex.operator.local.verdict import FleetPoint

__all__ = ["register"]

#: Where ``kubeplex status`` and ``kubeplex load`` look by default (``kubeplex up``'s port).
DEFAULT_GATEWAY = "http://127.0.0.1:8080"
#: The demo's burst peaks at this share of what ``maxReplicas`` replicas serve at their
#: modelled capacity: it needs a scale-up from one replica (warm standby first) to most of
#: them, and stays within what ``maxReplicas`` allows, whatever one replica's shape.
DEMO_FLEET_SHARE = 0.5
#: The demo gives up waiting for scale-to-zero after this many seconds past the idle delay.
DEMO_IDLE_MARGIN_S = 30.0


class CLIError(KubeplexError):
    """Bad command-line use of the local-mode commands."""


def register(cli: Commands) -> None:
    up = cli.command("up", "run kubeplex on this machine: placement, runtimes, gateway, "
                           "autoscaling (local mode)", _up)
    up.add_argument("paths", nargs="+", metavar="DIR-or-FILE",
                    help="YAML with ModelServices, GPUPools and optionally LocalSettings")
    up.add_argument("--gateway-port", type=port, default=8080,
                    help="port of the OpenAI-compatible gateway (default: %(default)s)")
    up.add_argument("--host", default="127.0.0.1", help="gateway address (default: loopback)")
    up.add_argument("--engine", choices=("auto", "sim", "vllm"), default=None,
                    help="override LocalSettings engine (auto: vllm where it can run)")
    up.add_argument("--cold-start", type=number(0, MAX_SECONDS), default=None, metavar="S",
                    help="override the sim engine's simulated cold start (seconds)")
    up.add_argument("--tick", type=number(0, MAX_SECONDS, above=True), default=None,
                    metavar="S",
                    help="override the autoscaling loop period (seconds)")
    up.add_argument("--migrate-after", type=number(0, MAX_SECONDS), default=None, metavar="S",
                    help="override LocalSettings migrateAfterSeconds: how long a replica "
                         "leaving routing keeps its in-flight generations before they resume "
                         "on another replica")
    up.add_argument("--workdir", type=Path, default=None,
                    help="where runtime configs and logs go (default: a new temp dir)")
    up.add_argument("--no-live", action="store_true",
                    help="print events line by line instead of the live screen")
    up.add_argument("--demo", action="store_true",
                    help="run a built-in scenario (first request from zero, a burst, idle) "
                         "against the first model, print what happened, and exit")
    up.add_argument("--demo-rate", type=number(0, MAX_RATE, above=True), default=None,
                    metavar="REQ/S",
                    help="the demo burst's peak rate (default: half of what maxReplicas replicas "
                         "serve)")
    up.add_argument("--demo-duration", type=number(0, MAX_SECONDS, above=True), default=45.0,
                    metavar="S",
                    help="length of the demo's load run (default: %(default)s)")

    status = cli.command("status", "show what a running `kubeplex up` is doing", _status)
    status.add_argument("--gateway", default=DEFAULT_GATEWAY,
                        help="the gateway of `kubeplex up` (default: %(default)s)")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")

    load = cli.command("load", "offer load to a gateway and print a latency summary", _load)
    load.add_argument("--gateway", default=DEFAULT_GATEWAY,
                      help="gateway URL (default: %(default)s)")
    load.add_argument("--model", default=None,
                      help="served model name (default: the gateway's first model)")
    load.add_argument("--rate", type=number(0, MAX_RATE, above=True), required=True,
                      help="peak arrival rate, req/s")
    load.add_argument("--duration", type=number(0, MAX_SECONDS, above=True), required=True,
                      help="seconds of arrivals")
    load.add_argument("--pattern", choices=("constant", "burst", "ramp"), default="constant")
    load.add_argument("--prompt-tokens", type=number(1, MAX_TOKENS, integer=True), default=512)
    load.add_argument("--max-tokens", type=number(1, MAX_TOKENS, integer=True), default=64)
    load.add_argument("--seed", type=number(0, integer=True), default=0)
    load.add_argument("--plot", type=Path, default=None, metavar="PNG",
                      help="write TTFT over time to this PNG")


# ---- kubeplex up ---------------------------------------------------------------------------

def _up(args: argparse.Namespace) -> int:
    from kubeplex.operator.local import LocalMode

    if args.workdir is not None and args.workdir.exists() and not args.workdir.is_dir():
        raise CLIError(f"--workdir {args.workdir}: exists and is not a directory; give a "
                       "directory (it is made if missing)")
    mode = LocalMode.prepare(args.paths, port=args.gateway_port, workdir=args.workdir,
                             engine=args.engine, cold_start_seconds=args.cold_start,
                             tick_seconds=args.tick,
                             migrate_after_seconds=args.migrate_after)
    mode.host = args.host
    for name, text in mode.explanations.items():
        print(f"placement of {name}:\n  " + text.replace("\n", "\n  "), flush=True)
    for run in mode.runs.values():
        print(f"{run.served}: {run.template.tp}x{run.template.pp} {run.gpu} per replica, "
              f"engine {run.engine} ({run.engine_reason})", flush=True)
    return asyncio.run(_serve(mode, args))


async def _serve(mode: Any, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for the drain
            print("kubeplex up: stopping now (no drain)", file=sys.stderr, flush=True)
            mode.kill_now()
            os._exit(130)
        print("kubeplex up: draining and stopping (Ctrl-C again: at once)", file=sys.stderr,
              flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    live_screen = sys.stdout.isatty() and not args.no_live and not args.demo
    demo_task = None
    exit_code = 0
    if args.demo:
        demo_task = asyncio.create_task(_demo(mode, args, stop))
    if live_screen:
        from rich.live import Live

        from kubeplex.operator.local.view import render_status

        with Live(refresh_per_second=2, screen=False) as live:
            await mode.run(stop, on_tick=lambda m: live.update(render_status(m.status())))
    else:
        mode.listeners.append(lambda line: print(line, flush=True))
        await mode.run(stop)
    if demo_task is not None:
        exit_code = await demo_task
    print("kubeplex up: stopped; every runtime process drained and exited", flush=True)
    return exit_code


async def _demo(mode: Any, args: argparse.Namespace, stop: asyncio.Event) -> int:
    """First request from zero, a burst, then idle until the fleet is back at zero."""
    import httpx

    from kubeplex.autoscaler.policy import profile_capacity
    from kubeplex.operator.local.load import run_load, watched

    try:
        run = next(iter(mode.runs.values()))
        workload = run.svc.spec.workload
        url = f"http://{mode.host}:{mode.port}"
        await _wait_gateway(url)
        print(f"demo: one request to {run.served} at zero replicas (the gateway holds it)",
              flush=True)
        sent = time.monotonic()
        body = {"model": run.served, "prompt": "hello", "prompt_tokens": workload.prompt_tokens,
                "max_tokens": 8}
        async with httpx.AsyncClient(timeout=600) as client:
            answer = await client.post(url + "/v1/completions", json=body)
        print(f"demo: answered {answer.status_code} after {time.monotonic() - sent:.1f} s "
              "(held through the cold start)", flush=True)
        capacity = run.config.profile and profile_capacity(
            run.config.profile, workload.prompt_tokens, workload.output_tokens)[0]
        most = run.svc.spec.scaling.max_replicas
        rate = args.demo_rate or round(DEMO_FLEET_SHARE * most * (
            capacity.service_rate if capacity else 1.0), 1)
        print(f"demo: burst to {rate:g} req/s over {args.demo_duration:g} s", flush=True)

        async def model_state() -> dict[str, object]:
            entry: dict[str, object] = mode.status()["models"][0]
            return entry

        result, fleet = await watched(run_load(
            url, run.served, rate=rate, duration=args.demo_duration, pattern="burst",
            prompt_tokens=workload.prompt_tokens, max_tokens=workload.output_tokens),
            model_state)
        for key, value in result.summary(phases=False):
            print(f"demo: {key:>24}: {value}", flush=True)
        # Each phase against the SLO; a miss with its late requests and the fleet's timeline.
        for line in result.verdicts(run.config.slo_ttft_s, run.config.percentile, fleet):
            print(f"demo: {line}", flush=True)
        limit = time.monotonic() + run.config.scale_to_zero_after_s + \
            run.config.scale_down_delay_s + DEMO_IDLE_MARGIN_S
        print("demo: idle; waiting for the fleet to scale to zero", flush=True)
        while time.monotonic() < limit:
            state = mode.status()["models"][0]
            if state["ready"] + state["starting"] + state["draining"] == 0:
                print("demo: back at zero replicas", flush=True)
                break
            await asyncio.sleep(1)
        else:
            print("demo: the fleet did not reach zero in time", flush=True)
            return 1
        return 0 if not result.failed else 1
    finally:
        stop.set()


async def _wait_gateway(url: str, limit_s: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url + "/v1/models")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise CLIError(f"the gateway did not answer at {url} within {limit_s:g} s")


# ---- kubeplex status -----------------------------------------------------------------------

def _fetch_status(gateway: str) -> dict[str, Any]:
    import httpx

    url = gateway.rstrip("/") + "/kubeplex/v1/status"
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError as exc:
        raise CLIError(f"no `kubeplex up` answers at {gateway} ({exc.__class__.__name__}); "
                       "start one, or pass --gateway URL") from exc
    if response.status_code != 200:
        raise CLIError(f"{url} answered {response.status_code}: is this a kubeplex gateway?")
    data: dict[str, Any] = response.json()
    return data


def _status(args: argparse.Namespace) -> int:
    status = _fetch_status(args.gateway)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    from rich.console import Console

    from kubeplex.operator.local.view import render_status

    if status.get("kind") == "cluster-gateway":  # `kubeplex gateway`: routes, no local fleet
        from rich.table import Table

        table = Table(title=f"kubeplex cluster gateway  {args.gateway}")
        for column in ("model", "modelservice", "replicas", "in flight", "held"):
            table.add_column(column)
        for m in status.get("models", ()):
            replicas = m.get("replicas") or {}
            table.add_row(m["model"], f"{m['namespace']}/{m['modelService']}",
                          str(len(replicas)),
                          str(sum(r.get("inFlight", 0) for r in replicas.values())),
                          str(m.get("held", 0)))
        Console().print(table)
        return 0
    Console().print(render_status(status, events=12))
    return 0


# ---- kubeplex load -------------------------------------------------------------------------

async def _load_watched(
        args: argparse.Namespace, model: str, progress: Callable[[float], None],
) -> tuple[LoadResult, list[FleetPoint], tuple[float, float] | None]:
    """The load, with the model's fleet read from the gateway's status meanwhile: (result,
    fleet record, (SLO seconds, percentile) or None when the status does not list it)."""
    import httpx

    from kubeplex.operator.local.load import run_load, watched

    status_url = args.gateway.rstrip("/") + "/kubeplex/v1/status"
    slo: list[tuple[float, float]] = []
    async with httpx.AsyncClient(timeout=2) as client:

        async def model_state() -> dict[str, object] | None:
            try:  # a gateway that is not kubeplex's answers anything: nothing to record
                models = list((await client.get(status_url)).json().get("models") or [])
            except (httpx.HTTPError, ValueError, AttributeError, TypeError):
                return None
            entry = next((m for m in models if isinstance(m, dict) and m.get("name") == model),
                         None)
            target, percentile = (entry or {}).get("sloTTFT"), (entry or {}).get("percentile")
            if not slo and isinstance(target, int | float) and target > 0 \
                    and isinstance(percentile, int | float) and 0 < percentile < 100:
                slo.append((float(target), float(percentile)))
            return entry

        result, fleet = await watched(run_load(
            args.gateway, model, rate=args.rate, duration=args.duration, pattern=args.pattern,
            prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens, seed=args.seed,
            progress=progress), model_state)
        return result, fleet, slo[0] if slo else None


def _load(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    model = args.model
    if model is None:
        try:
            listed = httpx.get(args.gateway.rstrip("/") + "/v1/models", timeout=5).json()
            model = listed["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            raise CLIError(f"cannot list models at {args.gateway}: {exc!r}; pass --model or "
                           "check --gateway") from exc
    with Progress(transient=True) as progress:
        bar = progress.add_task(f"{args.pattern} load on {model}", total=args.duration)
        result, fleet, slo = asyncio.run(_load_watched(
            args, model, lambda t: progress.update(bar, completed=t)))
    table = Table(title="kubeplex load", show_header=False)
    for key, value in result.summary(phases=slo is None):
        table.add_row(key, value)
    Console().print(table)
    if slo is None:
        print("SLO not judged: the gateway's /kubeplex/v1/status does not list this model "
              "(not a `kubeplex up` gateway?)")
    else:
        for line in result.verdicts(*slo, fleet):
            print(line)
    if args.plot is not None:
        result.plot(args.plot, slo[0] if slo else None)
        print(f"plot: {args.plot}")
    return 0 if not result.failed else 1
