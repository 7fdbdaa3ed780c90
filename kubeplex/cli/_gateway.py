"""``kubeplex gateway``: the cluster gateway (one OpenAI endpoint for every ModelService; holds
requests while a model scales from zero). Configured by ``KUBEPLEX_*`` variables (the Helm
chart's contract, see ``kubeplex.gateway.cluster``); flags override them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

from kubeplex.cli import Commands
from kubeplex.errors import KubeplexError

if TYPE_CHECKING:
    from kubeplex.gateway.cluster import GatewaySettings

#: Flag -> the variable it overrides (errors name both).
FLAGS = {"port": "KUBEPLEX_GATEWAY_PORT", "host": "KUBEPLEX_BIND_ADDRESS",
         "hold_timeout": "KUBEPLEX_HOLD_TIMEOUT_SECONDS",
         "max_held": "KUBEPLEX_MAX_HELD_REQUESTS", "operator_url": "KUBEPLEX_OPERATOR_URL",
         "migrate_after": "KUBEPLEX_MIGRATE_AFTER_SECONDS",
         "resume_plain": "KUBEPLEX_RESUME_PLAIN_REQUESTS"}


class GatewayCLIError(KubeplexError):
    """Bad flags or no way to reach the cluster."""


def register(cli: Commands) -> None:
    p = cli.command("gateway", "run the cluster gateway: one OpenAI endpoint for every "
                               "ModelService, holding requests while a model scales from zero",
                    _gateway)
    p.add_argument("--port", help="listen port (KUBEPLEX_GATEWAY_PORT, default 8080)")
    p.add_argument("--host", help="bind address (KUBEPLEX_BIND_ADDRESS, default 0.0.0.0)")
    p.add_argument("--hold-timeout", help="seconds a request waits for a first replica "
                                          "(KUBEPLEX_HOLD_TIMEOUT_SECONDS, default 300)")
    p.add_argument("--max-held", help="requests held per model at zero replicas "
                                      "(KUBEPLEX_MAX_HELD_REQUESTS, default 1000)")
    p.add_argument("--migrate-after", metavar="S",
                   help="seconds a replica leaving routing keeps its in-flight generations "
                        "before they resume on another replica (KUBEPLEX_MIGRATE_AFTER_SECONDS, "
                        "default 5)")
    p.add_argument("--resume-plain", choices=("true", "false"),
                   help="stream plain requests from the replica so they resume mid-generation "
                        "too (KUBEPLEX_RESUME_PLAIN_REQUESTS, default true; false saves the "
                        "engine an SSE event per token)")
    p.add_argument("--operator-url", help="operator webhook base URL for scale-from-zero "
                                          "alerts (KUBEPLEX_OPERATOR_URL)")
    p.add_argument("--namespace", "-n", action="append", default=None,
                   help="route only this namespace (repeat; default: KUBEPLEX_WATCH_NAMESPACES, "
                        "else all namespaces)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else KUBECONFIG "
                                        "or ~/.kube/config)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _settings(args: argparse.Namespace) -> GatewaySettings:
    from kubeplex.gateway.cluster import GatewaySettings
    from kubeplex.operator.errors import ConfigError

    env = dict(os.environ)
    given = {var: flag for flag, var in FLAGS.items() if getattr(args, flag) is not None}
    for var, flag in given.items():
        env[var] = str(getattr(args, flag))
    if args.namespace:
        env["KUBEPLEX_WATCH_NAMESPACES"] = ",".join(args.namespace)
    try:
        return GatewaySettings.from_env(env)
    except ConfigError as e:
        culprit = next((f for var, f in given.items() if str(e).startswith(var)), None)
        if culprit is None:
            raise
        raise GatewayCLIError(f"--{culprit.replace('_', '-')}: {e}") from None


def _api_client(kubeconfig: str | None) -> Any:
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig)
    except (ConfigException, OSError) as e:
        raise GatewayCLIError(f"cannot reach a cluster: {e}; run in a pod, set KUBECONFIG or "
                              "pass --kubeconfig") from None


def _gateway(args: argparse.Namespace) -> int:
    from kubeplex.gateway.cluster import serve

    settings = _settings(args)  # bad values fail here, before any connection
    level = "DEBUG" if args.verbose else os.environ.get("KUBEPLEX_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_client = _api_client(args.kubeconfig)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await serve(settings, api_client, stop)
        except OSError as e:
            raise GatewayCLIError(f"cannot listen on {settings.bind_address}:{settings.port}: "
                                  f"{e.strerror}; pick another --port") from None

    asyncio.run(main())
    return 0
