"""The Helm chart: lint, render under a matrix of values, validate against Kubernetes schemas,
security and RBAC properties, the values schema, CRDs from crds/, the dashboard."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helmtool import (
    CHART,
    crd_sources,
    helm_binary,
    helm_missing_reason,
    load_all,
    run_helm,
    template,
)

pytestmark = pytest.mark.helm

REPO = Path(__file__).resolve().parent.parent.parent
#: Kubernetes version the manifests are validated against (kubernetes-validate's schemas;
#: the project's control plane is 1.34/1.35, ENV.md).
KUBE_VERSION = "1.34.0"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "AlertmanagerConfig"}
#: Kinds kubernetes-validate has no schema for (CRD instances); checked structurally below.
CUSTOM_KINDS = MONITORING_KINDS | {"ClusterKopfPeering", "KopfPeering"}
SHA = "sha256:" + "a" * 64

#: The values matrix: name -> extra `helm template` flags.
MATRIX: dict[str, list[str]] = {
    "defaults": [],
    "monitoring-on": ["--set", "monitoring.serviceMonitor.enabled=true",
                      "--set", "monitoring.podMonitor.enabled=true",
                      "--set", "monitoring.prometheusRule.enabled=true",
                      "--set", "monitoring.grafanaDashboard.enabled=true",
                      "--set", "monitoring.alertmanagerConfig.enabled=true",
                      "--set", "monitoring.prometheusRule.labels.release=prometheus"],
    "crds-off": ["--set", "crds.install=false"],
    "crds-not-kept": ["--set", "crds.keep=false"],
    "custom-image": ["--set", "image.repository=registry.example.com/team/kubeplex",
                     "--set", "image.tag=1.2.3", "--set", "image.pullPolicy=Always",
                     "--set", "imagePullSecrets[0].name=regcred"],
    "image-digest": ["--set", f"image.digest={SHA}"],
    "gateway-on": ["--set", "gateway.enabled=true"],
    "gateway-off": ["--set", "gateway.enabled=false"],
    "namespaced": ["--set", "operator.watchNamespaces={team-a,team-b}"],
    "no-peering": ["--set", "operator.peering.enabled=false"],
    "existing-secret": ["--set", "alerts.existingSecret=my-alert-token"],
    "ha-and-scheduling": ["--set", "operator.replicas=2",
                          "--set", "operator.nodeSelector.role=control",
                          "--set", "operator.tolerations[0].key=dedicated",
                          "--set", "operator.tolerations[0].operator=Exists",
                          "--set", "operator.extraEnv[0].name=EXTRA",
                          "--set-string", "operator.extraEnv[0].value=1",
                          "--set-json", 'operator.rbac.extraRules=[{"apiGroups": [""], '
                          '"resources": ["configmaps"], "verbs": ["get"]}]'],
}


@pytest.fixture(scope="module", autouse=True)
def _need_helm() -> None:
    if helm_binary() is None:
        pytest.skip(helm_missing_reason())


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: template(*flags) for name, flags in MATRIX.items()}


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    return doc


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for dep in of_kind(docs, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        for c in pod["containers"]:
            yield dep["metadata"]["name"], pod, c


# --- lint and render ---

@pytest.mark.parametrize("flags", [[], MATRIX["monitoring-on"]], ids=["defaults", "monitoring"])
def test_helm_lint_strict(flags: list[str]) -> None:
    result = run_helm(["lint", str(CHART), "--strict", *flags])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_matrix_renders_valid_kubernetes_objects(rendered: dict[str, list[dict[str, Any]]],
                                                 case: str) -> None:
    docs = rendered[case]
    assert docs, "nothing rendered"
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubeplex", name
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"] in {"monitoring.coreos.com/v1", "kopf.dev/v1",
                                         "monitoring.coreos.com/v1alpha1"}, name
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{case}: {name} is invalid for Kubernetes {KUBE_VERSION}: {err}")


def test_schema_validation_catches_a_bad_manifest(rendered: dict[str, list[dict[str, Any]]]
                                                  ) -> None:
    """The validator used above does reject mistakes (so its passing means something)."""
    dep = json.loads(json.dumps(named(rendered["defaults"], "Deployment", "-operator")))
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy_typo"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSION, strict=True)


def test_defaults_render_the_expected_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not {d["kind"] for d in rendered["defaults"]} & MONITORING_KINDS
    assert not [d for d in rendered["defaults"] if d["kind"] == "ConfigMap"]
    docs = rendered["gateway-on"]
    assert len(of_kind(docs, "Deployment")) == 2
    operator = named(docs, "Deployment", "-operator")
    gateway = named(docs, "Deployment", "-gateway")
    assert operator["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "kubeplex", "operator"]
    assert gateway["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "kubeplex", "gateway"]
    ports = {p["name"]: p["port"] for p in named(docs, "Service", "-operator")["spec"]["ports"]}
    assert ports == {"webhook": 8443, "metrics": 9090}
    assert named(docs, "Service", "-gateway")["spec"]["ports"][0]["port"] == 80
    (peering,) = of_kind(docs, "ClusterKopfPeering")
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    # Service selectors pick exactly their Deployment's pods.
    for component in ("operator", "gateway"):
        svc = named(docs, "Service", f"-{component}")
        dep = named(docs, "Deployment", f"-{component}")
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_security_context_and_probes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case, docs in rendered.items():
        for name, pod, c in containers(docs):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, (case, name)
            assert sc["readOnlyRootFilesystem"] is True, (case, name)
            assert sc["allowPrivilegeEscalation"] is False, (case, name)
            assert sc["capabilities"]["drop"] == ["ALL"], (case, name)
            assert pod["securityContext"]["runAsNonRoot"] is True, (case, name)
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            assert c["resources"]["requests"], (case, name)
            assert c["resources"]["limits"], (case, name)
            # A read-only root needs somewhere to write.
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], (case, name)
            for probe in ("livenessProbe", "readinessProbe"):
                port = c[probe]["httpGet"]["port"]
                assert port in {p["name"] for p in c["ports"]}, (case, name, probe)
    operator = named(rendered["defaults"], "Deployment", "-operator")
    c = operator["spec"]["template"]["spec"]["containers"][0]
    health = {p["name"]: p["containerPort"] for p in c["ports"]}["health"]
    assert health == 8080
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_custom_image_and_digest(rendered: dict[str, list[dict[str, Any]]]) -> None:
    images = {c["image"] for _, _, c in containers(rendered["custom-image"])}
    assert images == {"registry.example.com/team/kubeplex:1.2.3"}
    assert {c["imagePullPolicy"] for _, _, c in containers(rendered["custom-image"])} == {
        "Always"}
    for dep in of_kind(rendered["custom-image"], "Deployment"):
        assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert {c["image"] for _, _, c in containers(rendered["image-digest"])} == {
        f"ghcr.io/kubeplex/kubeplex@{SHA}"}
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert {c["image"] for _, _, c in containers(rendered["defaults"])} == {
        f"ghcr.io/kubeplex/kubeplex:{app_version}"}


def test_gateway_on_by_default_and_off_renders_no_gateway(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert len(of_kind(rendered["defaults"], "Deployment")) == 2
    docs = rendered["gateway-off"]
    assert not [d for d in docs if d["metadata"]["name"].endswith("-gateway")]
    assert len(of_kind(docs, "Deployment")) == 1


def test_gateway_runs_the_command_with_the_env_its_code_reads(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The Deployment's environment is the contract of `kubeplex gateway`: every variable it
    sets is one GatewaySettings reads, and the rendered values parse."""
    from kubeplex.gateway.cluster import GATEWAY_ENV_DOCS, GatewaySettings

    docs = rendered["defaults"]
    pod = named(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["kubeplex", "gateway"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert set(env) - {"KUBEPLEX_LOG_LEVEL", "NUMBA_CACHE_DIR"} <= set(GATEWAY_ENV_DOCS), set(env)
    settings = GatewaySettings.from_env(env)
    assert settings.port == {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert (settings.hold_timeout_s, settings.max_held) == (300.0, 1000)
    assert settings.resume_plain
    assert settings.operator_url == "http://kubeplex-operator.kubeplex-system.svc:8443"
    # the token file is the alert Secret, mounted
    mount = next(m for m in c["volumeMounts"] if m["name"] == "alert-token")
    assert settings.alert_token_file == f"{mount['mountPath']}/token"
    (secret,) = of_kind(docs, "Secret")
    volume = next(v for v in pod["volumes"] if v["name"] == "alert-token")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert {c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]} == {
        "/readyz", "/healthz"}
    namespaced = named(rendered["namespaced"], "Deployment", "-gateway")
    env = {e["name"]: e["value"]
           for e in namespaced["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert GatewaySettings.from_env(env).watch_namespaces == ("team-a", "team-b")


def test_operator_reads_held_requests_from_the_gateway_service(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    def env(docs: list[dict[str, Any]]) -> dict[str, Any]:
        c = named(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in c["env"]}

    docs = rendered["defaults"]  # the gateway is on by default
    svc = named(docs, "Service", "-gateway")
    url = (f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:"
           f"{svc['spec']['ports'][0]['port']}/metrics")
    assert env(docs)["KUBEPLEX_GATEWAY_METRICS_URL"] == url
    assert "KUBEPLEX_GATEWAY_METRICS_URL" not in env(rendered["gateway-off"])
    from kubeplex.operator._settings import Settings

    # Every replica: the operator lists the gateway Service's EndpointSlices (it may).
    service = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
    assert env(docs)["KUBEPLEX_GATEWAY_SERVICE"] == service
    assert Settings.from_env({k: v for k, v in env(docs).items() if v is not None}
                             ).gateway_service == service
    assert svc["spec"]["ports"][0]["name"] == "http"  # the port Kube.service_urls picks
    assert "KUBEPLEX_GATEWAY_SERVICE" not in env(rendered["gateway-off"])
    assert ("discovery.k8s.io", "endpointslices", "list") in grants(docs, "-operator")
    # Namespaced, the release namespace not watched: a Role there for the slices only.
    (role,) = [d for d in of_kind(rendered["namespaced"], "Role")
               if d["metadata"]["name"].endswith("-gateway-endpoints")]
    assert role["metadata"]["namespace"] == svc["metadata"]["namespace"]
    assert grants([role], "-gateway-endpoints") == {
        ("discovery.k8s.io", "endpointslices", "list")}
    assert not [d for d in of_kind(rendered["gateway-off"], "Role")
                if d["metadata"]["name"].endswith("-gateway-endpoints")]


def test_alert_secret_generated_given_or_existing(rendered: dict[str, list[dict[str, Any]]]
                                                  ) -> None:
    import base64

    (secret,) = of_kind(rendered["defaults"], "Secret")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", token)
    given = template("--set", "alerts.token=s3cret-token")
    (secret,) = of_kind(given, "Secret")
    assert base64.b64decode(secret["data"]["token"]).decode() == "s3cret-token"
    docs = rendered["existing-secret"]
    assert not of_kind(docs, "Secret")
    pod = named(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    assert {"name": "alert-token", "secret": {
        "secretName": "my-alert-token", "items": [{"key": "token", "path": "token"}]}} in pod[
            "volumes"]


# --- RBAC ---

def rbac_rules(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in {"ClusterRole", "Role"}:
            for rule in doc["rules"]:
                yield f"{doc['kind']}/{doc['metadata']['name']}", rule


def grants(docs: list[dict[str, Any]], suffix: str) -> set[tuple[str, str, str]]:
    out = set()
    for doc in docs:
        if doc["kind"] in {"ClusterRole", "Role"} and doc["metadata"]["name"].endswith(suffix):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            out.add((group, resource, verb))
    return out


def test_rbac_has_no_wildcards_and_no_secrets(rendered: dict[str, list[dict[str, Any]]]
                                              ) -> None:
    """No wildcard anywhere; no Secret access (the token is a mounted file)."""
    for case, docs in rendered.items():
        for where, rule in rbac_rules(docs):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (case, where, rule)
            assert "secrets" not in rule["resources"], (case, where, rule)


def test_operator_rbac_is_exactly_what_it_needs(rendered: dict[str, list[dict[str, Any]]]
                                                ) -> None:
    read = {"get", "list", "watch"}
    expected = set()
    for group, resource, verbs in [
        ("kubeplex.io", "modelservices", read | {"patch"}),
        ("kubeplex.io", "gpupools", read | {"patch"}),
        ("kubeplex.io", "servinggroups", read | {"create", "patch", "delete"}),
        ("kubeplex.io", "modelservices/status", {"get", "patch"}),
        ("kubeplex.io", "gpupools/status", {"get", "patch"}),
        ("kubeplex.io", "servinggroups/status", {"get", "patch"}),
        ("", "pods", read | {"create", "patch", "delete"}),
        ("", "services", {"get", "create", "patch", "delete"}),
        ("", "events", {"create"}),
        ("", "nodes", read),
        ("discovery.k8s.io", "endpointslices", {"list"}),  # two-phase scale-down (main)
        ("resource.k8s.io", "resourceclaimtemplates", {"create"}),  # DRA pools
        ("resource.k8s.io", "resourceslices", {"list"}),
        ("apiextensions.k8s.io", "customresourcedefinitions", {"list", "watch"}),
        ("kopf.dev", "clusterkopfpeerings", read | {"patch"}),
        ("kopf.dev", "kopfpeerings", read | {"patch"}),
    ]:
        expected |= {(group, resource, verb) for verb in verbs}
    docs = rendered["defaults"]
    assert grants(docs, "-operator") == expected
    # Namespaced mode: the namespaced rules move into one Role per watched namespace.
    docs = rendered["namespaced"]
    roles = {d["metadata"]["namespace"] for d in of_kind(docs, "Role")
             if d["metadata"]["name"].endswith("-operator")}
    assert roles == {"team-a", "team-b"}
    assert ("", "pods", "create") not in {
        g for d in of_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("-operator")
        for g in grants([d], "-operator")}
    assert {d["metadata"]["namespace"] for d in of_kind(docs, "KopfPeering")} == {
        "team-a", "team-b"}
    # No peering: no kopf grants, no peering CRDs, no peering object.
    docs = rendered["no-peering"]
    assert not {g for g in grants(docs, "-operator") if g[0] == "kopf.dev"}
    assert not [d for d in docs if "kopf" in d["metadata"]["name"]
                or d["kind"].endswith("KopfPeering")]
    # extraRules are appended.
    assert ("", "configmaps", "get") in grants(rendered["ha-and-scheduling"], "-operator")


def test_gateway_rbac_is_exactly_what_it_needs(rendered: dict[str, list[dict[str, Any]]]
                                               ) -> None:
    from kubeplex.gateway.cluster import RBAC_NEEDED

    assert grants(rendered["defaults"], "-gateway") == set(RBAC_NEEDED)
    assert {verb for _, _, verb in RBAC_NEEDED} == {"list", "watch"}
    # Namespaced mode: one Role per watched namespace, no ClusterRole.
    docs = rendered["namespaced"]
    roles = [d for d in docs if d["kind"] in {"Role", "ClusterRole"}
             and d["metadata"]["name"].endswith("-gateway")]
    assert {(d["kind"], d["metadata"]["namespace"]) for d in roles} == {
        ("Role", "team-a"), ("Role", "team-b")}
    assert grants(docs, "-gateway") == set(RBAC_NEEDED)


# --- values and schema ---

@pytest.mark.parametrize(("flags", "message"), [
    (["--set", "bogus=1"], "bogus"),
    (["--set", "operator.replica=2"], "replica"),
    (["--set", "monitoring.serviceMonitor.enable=true"], "enable"),
    (["--set-string", "operator.replicas=two"], "replicas"),
    (["--set", "gateway.port=70000"], "port"),
    (["--set", "crds.install=maybe"], "install"),
    (["--set", "operator.logLevel=verbose"], "logLevel"),
    (["--set", "image.digest=latest"], "digest"),
    (["--set", "monitoring.podMonitor.interval=soon"], "interval"),
], ids=["unknown-top", "unknown-nested", "unknown-deep", "wrong-type", "out-of-range",
        "not-bool", "not-enum", "bad-digest", "bad-duration"])
def test_schema_rejects_bad_values(flags: list[str], message: str) -> None:
    result = run_helm(["template", "kubeplex", str(CHART), *flags])
    assert result.returncode != 0, f"{flags} rendered but must be refused"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def walk_values(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        yield path, value
        if isinstance(value, dict):
            yield from walk_values(value, path + ".")


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_value_is_documented_and_in_the_schema() -> None:
    text = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(text):
        if re.match(r"^\s*[A-Za-z_][\w-]*:", line):
            above = text[i - 1].strip() if i else ""
            assert above.startswith("#"), f"values.yaml:{i + 1} {line.strip()!r} has no comment"
    values = yaml.safe_load("\n".join(text))
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, _ in walk_values(values):
        node: dict[str, Any] = schema
        for part in path.split("."):
            node = resolve(schema, node)
            props = node.get("properties")
            if props is None:  # a free map (labels, nodeSelector): its keys are data
                break
            assert part in props, f"values.yaml key {path} is not in values.schema.json"
            node = props[part]


def test_schema_objects_refuse_unknown_keys() -> None:
    """additionalProperties: false everywhere but string maps and Kubernetes pass-throughs."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed_open = {"passThrough"}

    def check(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and where.rsplit("/", 1)[-1] not in allowed_open:
                assert "additionalProperties" in node, f"{where} accepts unknown keys"
                extra = node["additionalProperties"]
                assert extra is False or extra == {"type": "string"}, where
            for key, value in node.items():
                check(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                check(value, f"{where}/{i}")

    check(schema, "#")


# --- CRDs from the single source in crds/ ---

def test_chart_crds_are_the_repository_crds() -> None:
    link = CHART / "files" / "crds"
    assert link.is_symlink()
    assert link.resolve() == (REPO / "crds").resolve()


def test_rendered_crds_equal_the_sources(rendered: dict[str, list[dict[str, Any]]]) -> None:
    sources = {d["metadata"]["name"]: d for d in crd_sources()}
    out = {d["metadata"]["name"]: d for d in of_kind(rendered["defaults"],
                                                     "CustomResourceDefinition")
           if not d["metadata"]["name"].endswith(".kopf.dev")}
    assert out.keys() == sources.keys()
    for name, crd in out.items():
        assert crd["spec"] == sources[name]["spec"], name
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not of_kind(rendered["crds-off"], "CustomResourceDefinition")


SAMPLE_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: samples.kubeplex.io
  annotations:
    example.com/note: kept
spec:
  group: kubeplex.io
  scope: Namespaced
  names: {kind: Sample, plural: samples, singular: sample, shortNames: [smp]}
  versions:
    - name: v1alpha1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                replicas: {type: integer, minimum: 0, maximum: 100000000}
                ratio: {type: number}
              x-kubernetes-validations:
                - rule: "self.replicas <= 100"
                  message: "replicas must be at most 100"
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: others.kubeplex.io
spec:
  group: kubeplex.io
  scope: Cluster
  names: {kind: Other, plural: others}
  versions:
    - {name: v1alpha1, served: true, storage: true,
       schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
"""


def test_crd_rendering_mechanism_on_a_sample(tmp_path: Path) -> None:
    """With CRDs in crds/ (multi-document files too), each renders once, unchanged but for
    the chart's labels and the keep annotation, and only when crds.install is true."""
    chart = tmp_path / "kubeplex"
    shutil.copytree(CHART, chart, symlinks=False)
    (chart / "files" / "crds" / "sample.yaml").write_text(SAMPLE_CRD)
    sources = {d["metadata"]["name"]: d for d in load_all(SAMPLE_CRD)}
    docs = template(chart=chart)
    out = {d["metadata"]["name"]: d for d in of_kind(docs, "CustomResourceDefinition")}
    for name, source in sources.items():
        assert out[name]["spec"] == source["spec"]
        annotations = out[name]["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep"
        assert annotations.items() >= source["metadata"].get("annotations", {}).items()
        kubernetes_validate.validate(out[name], KUBE_VERSION, strict=True)
    assert "helm.sh/resource-policy" not in {
        k for d in of_kind(template("--set", "crds.keep=false", chart=chart),
                           "CustomResourceDefinition")
        for k in d["metadata"].get("annotations", {})}
    assert not of_kind(template("--set", "crds.install=false", chart=chart),
                       "CustomResourceDefinition")


# --- monitoring ---

def test_monitoring_objects_render_only_when_enabled(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["monitoring-on"]
    assert {d["kind"] for d in docs} >= MONITORING_KINDS | {"ConfigMap"}
    for component, port in (("operator", "metrics"), ("gateway", "http")):
        sm = named(docs, "ServiceMonitor", f"-{component}")
        endpoint = sm["spec"]["endpoints"][0]
        assert endpoint["port"] == port
        assert endpoint["honorLabels"] is True
        assert {"targetLabel": "job", "replacement": f"kubeplex-{component}"} in endpoint[
            "relabelings"]
        assert sm["spec"]["selector"]["matchLabels"] == named(
            docs, "Service", f"-{component}")["spec"]["selector"]
    off = template(*MATRIX["monitoring-on"], *MATRIX["gateway-off"])
    assert len(of_kind(off, "ServiceMonitor")) == 1
    (pm,) = of_kind(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    (rule,) = of_kind(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    committed = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rule["spec"] == committed
    (cm,) = of_kind(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["kubeplex.json"]) == json.loads(
        (CHART / "files" / "dashboards" / "kubeplex.json").read_text())


def test_alertmanager_config_matches_the_example(rendered: dict[str, list[dict[str, Any]]]
                                                ) -> None:
    """The AlertmanagerConfig routes like files/alertmanager-example.yaml, to this release's
    operator Service, with this release's token Secret."""
    (amc,) = of_kind(rendered["monitoring-on"], "AlertmanagerConfig")
    example = yaml.safe_load((CHART / "files" / "alertmanager-example.yaml").read_text())
    (route,) = [r for r in example["route"]["routes"] if r["receiver"] == "kubeplex-operator"]
    spec = amc["spec"]
    assert route["matchers"] == ['kubeplex_receiver="operator"']
    assert spec["route"]["matchers"] == [
        {"name": "kubeplex_receiver", "value": "operator", "matchType": "="}]
    for ours, theirs in [("groupBy", "group_by"), ("groupWait", "group_wait"),
                         ("groupInterval", "group_interval"),
                         ("repeatInterval", "repeat_interval")]:
        assert spec["route"][ours] == route[theirs], ours
    (hook,) = spec["receivers"][0]["webhookConfigs"]
    assert hook["url"] == "http://kubeplex-operator.kubeplex-system.svc:8443/alerts"
    assert hook["httpConfig"]["authorization"]["credentials"] == {
        "name": "kubeplex-alerts", "key": "token"}
    (secret,) = of_kind(rendered["monitoring-on"], "Secret")
    assert secret["metadata"]["name"] == "kubeplex-alerts"


#: vLLM 0.32/0.33 series the dashboard may use (DESIGN.md "vLLM facts").
VLLM_SERIES = {"vllm:num_requests_waiting", "vllm:num_requests_running",
               "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_bucket",
               "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
               "vllm:request_success_total", "vllm:prompt_tokens_total",
               "vllm:generation_tokens_total"}


def test_dashboard_panels_and_metric_names() -> None:
    dash = json.loads((CHART / "files" / "dashboards" / "kubeplex.json").read_text())
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("ttft", "slo", "queue", "replicas", "warm pool", "gpu"):
        assert topic in titles, f"no dashboard panel about {topic}"
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used_vllm = {m for e in exprs for m in re.findall(r"vllm:\w+", e)}
    assert used_vllm <= VLLM_SERIES, used_vllm - VLLM_SERIES
    readme = (CHART / "README.md").read_text()
    used_kubeplex = {m for e in exprs for m in re.findall(r"\bkubeplex_\w+", e)}
    undocumented = {m for m in used_kubeplex
                    if re.sub(r"_bucket$", "", m) not in readme}
    assert not undocumented, f"dashboard metrics missing from the chart README: {undocumented}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


NOTES_CHECK = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes-check
data:
  notes: {{ tpl (.Files.Get "NOTES.check") . | quote }}
"""


@pytest.mark.parametrize("flags", [["--set", "gateway.enabled=true"],
                                   ["--set", "crds.install=false", "--set",
                                    "gateway.enabled=false"]],
                         ids=["gateway-on", "crds-off-gateway-off"])
def test_notes_render(tmp_path: Path, flags: list[str]) -> None:
    """NOTES.txt renders (helm template skips it, so a copy renders it into a ConfigMap)."""
    chart = tmp_path / "kubeplex"
    shutil.copytree(CHART, chart, symlinks=False)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "NOTES.check")
    (chart / "templates" / "notes-check.yaml").write_text(NOTES_CHECK)
    docs = template(*flags, "--show-only", "templates/notes-check.yaml", chart=chart)
    notes = docs[0]["data"]["notes"]
    assert "rollout status deployment/kubeplex-operator" in notes
    assert "http://kubeplex-operator.kubeplex-system.svc:8443/alerts" in notes
    gateway = "gateway.enabled=true" in flags
    assert ("port-forward svc/kubeplex-gateway" in notes) == gateway
    assert ("X-Kubeplex-Namespace" in notes) == gateway
    assert ("kubeplex crds | kubectl apply" in notes) == (not gateway)


# --- packaging and set-up ---

def test_package_resolves_the_crd_link(tmp_path: Path) -> None:
    """`helm package` puts the CRD YAML (through the link) in the archive, not crds/'s Python."""
    import tarfile

    result = run_helm(["package", str(CHART), "--destination", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob("kubeplex-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    expected = {f"kubeplex/files/crds/{p.name}" for p in (REPO / "crds").glob("*.yaml")}
    assert expected <= names
    assert not [n for n in names if n.endswith((".py", ".pyc", "py.typed"))]
    assert "kubeplex/values.schema.json" in names


def test_ensure_helm_is_idempotent_and_prints_the_binary() -> None:
    import subprocess

    proc = subprocess.run(["bash", str(REPO / "helm" / "ensure-helm.sh")], capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path == helm_binary()
    version = subprocess.run([str(path), "version", "--template", "{{.Version}}"],
                             capture_output=True, text=True, check=True).stdout
    assert version == "v3.19.0"


def test_numba_caches_where_the_read_only_pods_can_write(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Every `kubeplex` command imports numba-compiled code with an on-disk cache; with a
    read-only root filesystem it must point into the writable emptyDir, or the process dies at
    import ("no locator available"; seen on the real-node tier, tests/realpods)."""
    for component in ("-operator", "-gateway"):
        pod = named(rendered["defaults"], "Deployment", component)["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e.get("value") for e in c["env"]}
        writable = [m["mountPath"] for m in c["volumeMounts"]
                    if any(v["name"] == m["name"] and "emptyDir" in v for v in pod["volumes"])]
        assert any(env["NUMBA_CACHE_DIR"].startswith(w + "/") for w in writable), (env, writable)
