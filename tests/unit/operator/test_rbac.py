"""The Helm chart grants the operator every API call its code makes (``RBAC_NEEDED`` in
kubeplex.operator._kube, which lists the calls of that module and kopf's watches), in both
modes: cluster-wide (ClusterRole) and namespaced (a Role per watched namespace)."""

from __future__ import annotations

from typing import Any

import pytest
from helmtool import helm_binary, helm_missing_reason, template

from kubeplex.operator._kube import RBAC_INFERENCE_POOLS, RBAC_NEEDED

pytestmark = pytest.mark.helm

#: Calls kopf itself makes with the operator's settings (peering on, events posted).
KOPF_NEEDS = {("apiextensions.k8s.io", "customresourcedefinitions", "list"),
              ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
              ("kopf.dev", "clusterkopfpeerings", "patch"),
              ("kopf.dev", "clusterkopfpeerings", "watch")}
CLUSTER_SCOPED = {"nodes", "gpupools", "gpupools/status", "customresourcedefinitions",
                  "clusterkopfpeerings", "resourceslices"}


def grants(docs: list[dict[str, Any]], kinds: tuple[str, ...]) -> set[tuple[str, str, str]]:
    out = set()
    for d in docs:
        if d.get("kind") not in kinds or not d["metadata"]["name"].endswith("operator"):
            continue
        for rule in d.get("rules") or ():
            assert "*" not in rule.get("verbs", ()), rule
            assert "*" not in rule.get("resources", ()), rule
            for g in rule.get("apiGroups", ()):
                for r in rule.get("resources", ()):
                    for v in rule.get("verbs", ()):
                        out.add((g, r, v))
    return out


@pytest.fixture(autouse=True)
def _helm() -> None:
    if helm_binary() is None:
        pytest.skip(helm_missing_reason())


def test_cluster_wide_role_covers_every_call() -> None:
    granted = grants(template(), ("ClusterRole",))
    missing = (set(RBAC_NEEDED) | KOPF_NEEDS) - granted
    assert not missing, f"the chart's operator ClusterRole lacks {sorted(missing)}"


def test_namespaced_roles_cover_every_namespaced_call() -> None:
    docs = template("--set", "operator.watchNamespaces={team-a}")
    cluster = grants(docs, ("ClusterRole",))
    namespaced = grants(docs, ("Role",))
    for need in set(RBAC_NEEDED):
        where = cluster if need[1] in CLUSTER_SCOPED else namespaced
        assert need in where, f"{need} not granted with watchNamespaces set"


def test_inference_pools_are_granted_only_when_enabled() -> None:
    for args in ((), ("--set", "operator.watchNamespaces={team-a}")):
        assert not RBAC_INFERENCE_POOLS & grants(template(*args), ("ClusterRole", "Role"))
        granted = grants(template("--set", "inferencePool.enabled=true", *args),
                         ("ClusterRole", "Role"))
        assert granted >= RBAC_INFERENCE_POOLS, sorted(RBAC_INFERENCE_POOLS - granted)
