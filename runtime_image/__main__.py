"""``kubeplex-runtime --config FILE [--port 8000] [--control-port 8001] [--host 127.0.0.1]``.

Runs the serving runtime (see runtime_image/README.md): one engine per hosted model, the
OpenAI router on ``--port`` and the control API on ``--control-port``. SIGTERM drains
(stop accepting, finish in-flight requests up to ``drainGraceSeconds``, stop the engines) and
exits 0; a second SIGTERM or SIGINT stops at once. An invalid config exits 2 with a message
naming the field.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from kubeplex.runtime._loop import run
from kubeplex.runtime.app import Runtime
from kubeplex.runtime.config import load_config
from kubeplex.runtime.errors import RuntimeError_
from kubeplex.runtime.tracing import AccessLog

__all__ = ["main"]

#: Exit status for user errors (bad config), like the kubeplex CLI.
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubeplex-runtime", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", required=True, help="runtime config file (YAML or JSON)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address both servers bind (a pod uses 0.0.0.0; default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="router port (default: %(default)s)")
    p.add_argument("--control-port", type=int, default=8001,
                   help="control API port (default: %(default)s)")
    p.add_argument("--access-log", action="store_true",
                   help="one stderr line per forwarded request, with its trace id (also "
                        "KUBEPLEX_ACCESS_LOG=true)")
    return p


async def _run(args: argparse.Namespace) -> None:
    runtime = Runtime(load_config(args.config))
    if args.access_log:
        runtime.proxy.access_log = AccessLog()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():  # second signal: do not wait for the drain
            print(f"kubeplex-runtime: {sig.name} again: stopping now", file=sys.stderr)
            for task in asyncio.all_tasks(loop):
                task.cancel()
            return
        print(f"kubeplex-runtime: {sig.name}: draining", file=sys.stderr, flush=True)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await runtime.serve(args.host, args.port, args.control_port, stop)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        load_config(args.config)  # fail fast, before any port or process
        run(_run(args))
    except RuntimeError_ as exc:
        print(f"kubeplex-runtime: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"kubeplex-runtime: error: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
