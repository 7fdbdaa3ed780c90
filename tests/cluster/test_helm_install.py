"""`helm install` of the chart into the real control plane (e2e/cluster), then upgrade and
uninstall: every object accepted by a real API server (schemas, RBAC escalation checks), the
Deployments Available (KWOK runs the pods), the peering hook, the webhook token kept across
upgrades by `lookup`, least-privilege RBAC checked with SubjectAccessReviews, CRDs kept.

Uses the session `cluster` fixture of tests/cluster/conftest.py (the control-plane area).
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest
from helmtool import CHART, crd_sources, helm_binary, helm_missing_reason

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

RELEASE = "kubeplex"
NAMESPACE = "kubeplex-system"
OPERATOR_SA = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-operator"
GATEWAY_SA = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-gateway"
#: helm --wait bound: KWOK makes pods Ready at once; the rest is API round trips.
HELM_TIMEOUT = "180s"


@pytest.fixture
def kube(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("cluster")
    except pytest.FixtureLookupError:
        pytest.skip("the session `cluster` fixture (tests/cluster/conftest.py from the "
                    "control-plane area) is not in this checkout")


def helm(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    binary = helm_binary()
    if binary is None:
        pytest.skip(helm_missing_reason())
    proc = subprocess.run([str(binary), f"--kubeconfig={cluster.kubeconfig}", *args],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stderr}{proc.stdout}"
    return proc


def token(cluster: Any) -> str:
    secret = cluster.kubectl_json("-n", NAMESPACE, "get", "secret", f"{RELEASE}-alerts")
    return base64.b64decode(secret["data"]["token"]).decode()


def can(cluster: Any, who: str, verb: str, resource: str, *extra: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", verb, resource, f"--as={who}", *extra, check=False)
    return proc.stdout.strip() == "yes"


def adopt_crds(cluster: Any, names: Sequence[str]) -> None:
    """The session cluster applied crds/ already; let the release take them over, the way a
    user moves from `kubectl apply` to Helm (Helm adopts objects carrying its metadata)."""
    for name in names:
        cluster.kubectl("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl("annotate", "--overwrite", "crd", name,
                        f"meta.helm.sh/release-name={RELEASE}",
                        f"meta.helm.sh/release-namespace={NAMESPACE}")


def test_install_upgrade_uninstall(kube: Any) -> None:
    cluster = kube
    crds = [d["metadata"]["name"] for d in crd_sources()]
    adopt_crds(cluster, crds)
    # The gateway is on by default (KWOK runs no container: this checks the objects and RBAC;
    # tests/cluster/test_gateway.py runs `kubeplex gateway` itself).
    helm(cluster, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
         "--wait", "--timeout", HELM_TIMEOUT)
    try:
        for component in ("operator", "gateway"):
            cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Available",
                            "--timeout=60s", f"deployment/{RELEASE}-{component}")
        # The post-install hook created the peering object kopf patches.
        assert cluster.kubectl_json("get", "clusterkopfpeering", "kubeplex")["kind"] == (
            "ClusterKopfPeering")
        for name in crds:
            crd = cluster.kubectl_json("get", "crd", name)
            assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

        # The generated token survives an upgrade (lookup reads it back); a given one wins.
        first = token(cluster)
        assert len(first) == 32
        helm(cluster, "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
             "--wait", "--timeout", HELM_TIMEOUT)
        assert token(cluster) == first
        helm(cluster, "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
             "--set", "alerts.token=rotated-token", "--wait", "--timeout", HELM_TIMEOUT)
        assert token(cluster) == "rotated-token"

        # Least privilege, as the API server's authorizer sees it.
        op = OPERATOR_SA
        assert can(cluster, op, "create", "pods", "-n", "team-a")
        assert can(cluster, op, "delete", "pods", "-n", "team-a")
        assert can(cluster, op, "create", "servinggroups.kubeplex.io", "-n", "team-a")
        assert can(cluster, op, "patch", "modelservices.kubeplex.io", "--subresource=status",
                   "-n", "team-a")
        assert can(cluster, op, "list", "nodes")
        # The token is a mounted file: no Secret access at all.
        assert not can(cluster, op, "get", f"secret/{RELEASE}-alerts", "-n", NAMESPACE)
        assert not can(cluster, op, "list", "secrets", "-n", NAMESPACE)
        assert not can(cluster, op, "update", "modelservices.kubeplex.io", "-n", "team-a")
        assert not can(cluster, op, "delete", "nodes")
        assert not can(cluster, op, "create", "modelservices.kubeplex.io", "-n", "team-a")
        assert not can(cluster, op, "create", "deployments.apps", "-n", "team-a")
        assert not can(cluster, op, "create", "clusterroles.rbac.authorization.k8s.io")
        assert can(cluster, GATEWAY_SA, "watch", "endpointslices.discovery.k8s.io")
        assert can(cluster, GATEWAY_SA, "list", "modelservices.kubeplex.io", "-n", "team-a")
        assert not can(cluster, GATEWAY_SA, "list", "pods", "-n", "team-a")
        assert not can(cluster, GATEWAY_SA, "get", f"secret/{RELEASE}-alerts", "-n", NAMESPACE)
        assert not can(cluster, GATEWAY_SA, "create", "pods", "-n", "team-a")
        assert not can(cluster, GATEWAY_SA, "patch", "modelservices.kubeplex.io", "-n", "team-a")
    finally:
        helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")

    # Uninstalled, but the CRDs (and any ModelService) are kept.
    gone = cluster.kubectl("-n", NAMESPACE, "get", f"deployment/{RELEASE}-operator",
                           check=False)
    assert gone.returncode != 0
    for name in crds:
        assert cluster.kubectl_json("get", "crd", name)["metadata"]["name"] == name
