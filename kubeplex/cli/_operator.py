"""``kubeplex operator``: run the Kubernetes operator (kopf), configured by ``KUBEPLEX_*``
environment variables (see operator/README.md); ``kopf run -m kubeplex.operator.handlers``
runs the same handlers with kopf's own flags."""

from __future__ import annotations

import argparse
import logging
import os
import secrets

from kubeplex.cli import Commands


def register(cli: Commands) -> None:
    p = cli.command("operator", "run the kubeplex Kubernetes operator", _operator)
    p.add_argument("--namespace", "-n", action="append", default=None,
                   help="serve only this namespace (repeat; default: KUBEPLEX_WATCH_NAMESPACES, "
                        "else all namespaces)")
    p.add_argument("--standalone", action="store_true",
                   help="no kopf peering even when KUBEPLEX_PEERING is set")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _operator(args: argparse.Namespace) -> int:
    import kopf

    from kubeplex.operator import handlers  # noqa: F401  (registers the handlers)
    from kubeplex.operator._settings import Settings

    settings = Settings.from_env()  # bad variables fail here, before any connection
    level = "DEBUG" if args.verbose else os.environ.get("KUBEPLEX_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # kopf logs every handler success at INFO: one line per pod event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    namespaces = args.namespace or list(settings.watch_namespaces)
    peering = "" if args.standalone else settings.peering
    # Random priorities: kopf pauses *every* operator when peers tie (kopf peering docs).
    priority = settings.peering_priority or secrets.randbelow(2**30) + 1
    memo = kopf.Memo()
    memo.settings = settings
    kopf.run(
        standalone=not peering,
        peering_name=peering or None,
        priority=priority,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://{settings.bind_address}:{settings.health_port}/healthz",
        memo=memo,
    )
    return 0
