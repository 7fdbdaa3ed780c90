"""``kubeplex operator``: run the Kubernetes operator (kopf), configured by ``KUBEPLEX_*``
environment variables (see operator/README.md); ``kopf run -m kubeplex.operator.handlers``
runs the same handlers with kopf's own flags.

Before kopf starts, the cluster is looked for (in-cluster credentials, else ``KUBECONFIG`` or
``~/.kube/config``) and asked its version: no configuration, or an API server that does not
answer within :data:`PREFLIGHT_TIMEOUT_S`, exits 2 with one line saying so (kopf alone would
retry forever without a word a new user could act on)."""

from __future__ import annotations

import argparse
import logging
import os
import secrets

from kubeplex.cli import Commands
from kubeplex.errors import KubeplexError

#: Seconds the API server gets to answer the start-up version check (connect and read).
PREFLIGHT_TIMEOUT_S = 10.0


class OperatorCLIError(KubeplexError):
    """No cluster to run the operator against."""


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
    _preflight()
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


def _preflight() -> None:
    """Find the cluster and check that its API server answers (OperatorCLIError if not)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config()  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, TypeError, ValueError) as e:
        raise OperatorCLIError(f"no Kubernetes cluster configured ({' '.join(str(e).split())}); "
                               "run in a pod, or set KUBECONFIG / ~/.kube/config") from None
    configuration = client.Configuration.get_default_copy()
    configuration.retries = 0  # one try within the timeout, not urllib3's three
    try:
        with client.ApiClient(configuration) as api:
            client.VersionApi(api).get_code(_request_timeout=PREFLIGHT_TIMEOUT_S)
    except Exception as e:  # urllib3, SSL and API errors alike: say which one
        reason = " ".join(str(e).split())[:200]
        raise OperatorCLIError(f"the Kubernetes API server at {configuration.host} does not answer "
                               f"({type(e).__name__}: {reason}); check that the cluster runs "
                               "and KUBECONFIG points at it") from None
