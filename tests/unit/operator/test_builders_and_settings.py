"""Pure pieces of the operator: manifests, settings, alert-free helpers."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from kubeplex.api import GPUPoolSpec, ModelService, ModelServiceSpec, ObjectMeta, from_dict
from kubeplex.control import (
    ReplicaTemplate,
    ResolvedModel,
    UnsupportedSourceError,
    resolve_model,
)
from kubeplex.operator._builders import (
    adapters_fingerprint,
    model_label,
    pod_manifest,
    runtime_model,
    selector,
    service_manifest,
    serving_group_manifest,
)
from kubeplex.operator._settings import ENV_DOCS, Settings, parse_overrides
from kubeplex.operator._status import merge_conditions
from kubeplex.operator.errors import ConfigError
from kubeplex.placement.hardware import gpu
from kubeplex.runtime.config import parse_config


def msvc_spec(**spec: Any) -> ModelServiceSpec:
    body = {"apiVersion": "kubeplex.io/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
                               "profile": "llama-3.1-8b"}, "pool": "p",
                     "slo": {"ttftSeconds": 0.5}, **spec}}
    spec_: Any = from_dict(body).spec
    assert isinstance(spec_, ModelServiceSpec)
    return spec_


def hosted(spec: ModelServiceSpec, share: float = 0.9, name: str = "m") -> ResolvedModel:
    """``spec`` resolved as the control layer does, placed on one H100 with ``share``."""
    svc = ModelService(ObjectMeta.from_dict({"name": name, "namespace": "ns"}), spec)
    return resolve_model(svc, ReplicaTemplate(svc.key, "p", 1, 1, share), gpu("H100-80GB"))


def pool_spec(**spec: Any) -> GPUPoolSpec:
    body = {"apiVersion": "kubeplex.io/v1alpha1", "kind": "GPUPool", "metadata": {"name": "p"},
            "spec": {"gpu": {"product": "H100-80GB"},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                      "effect": "NoSchedule"}], **spec}}
    spec_: Any = from_dict(body).spec
    assert isinstance(spec_, GPUPoolSpec)
    return spec_


def test_pod_requests_the_groups_gpus_on_the_planned_node_with_probes_and_config() -> None:
    settings = Settings()
    config = [runtime_model(hosted(msvc_spec(engine="sim")), 2, 2)]
    pod = pod_manifest(settings, "ns", "m-0", "p", pool_spec(), "node-3", 2, 2, config, ["m"],
                       False, "uid-1")
    c = pod["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "4"
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                       "values": ["node-3"]}]}]
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                           "effect": "NoSchedule"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "control"}
    assert pod["metadata"]["labels"][model_label("m")] == "true"
    assert pod["metadata"]["ownerReferences"][0] | {"uid": "x"} == {
        "apiVersion": "kubeplex.io/v1alpha1", "kind": "ServingGroup", "name": "m-0",
        "uid": "x", "controller": True, "blockOwnerDeletion": True}
    # the config the pod carries is one the runtime accepts
    env = {e["name"]: e["value"] for e in c["env"]}
    parsed = parse_config(json.loads(env["KUBEPLEX_RUNTIME_CONFIG"]))
    assert parsed.models[0].engine == "sim"
    assert (parsed.models[0].tensor_parallel, parsed.models[0].pipeline_parallel) == (2, 2)


def test_custom_gpu_resource_and_warm_pods() -> None:
    spec = pool_spec(gpu={"product": "H100-80GB", "resourceName": "example.com/gpu"})
    pod = pod_manifest(Settings(), "ns", "warm-p-0", "p", spec, "n", 1, 1, [], [], True, "u")
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"example.com/gpu": "1"}
    assert pod["metadata"]["labels"]["kubeplex.io/warm"] == "true"
    assert not any(k.startswith("model.kubeplex.io/") for k in pod["metadata"]["labels"])
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert parse_config(json.loads(env["KUBEPLEX_RUNTIME_CONFIG"])).models == ()


def test_pvc_models_are_mounted_and_s3_is_refused_with_a_fix() -> None:
    cfg = runtime_model(hosted(msvc_spec(model={"uri": "pvc://cache/meta/llama",
                                                "profile": "llama-3.1-8b"})), 1, 1)
    assert cfg["model"] == "/models/cache/meta/llama"
    assert cfg["args"][:2] == ["--dtype", "auto"]
    pod = pod_manifest(Settings(), "ns", "m-0", "p", pool_spec(), "n", 1, 1, [cfg], ["m"],
                       False, "u")
    assert pod["spec"]["volumes"] == [{"name": "models-0", "persistentVolumeClaim": {
        "claimName": "cache", "readOnly": True}}]
    s3_spec = msvc_spec(model={"uri": "s3://bucket/x", "profile": "llama-3.1-8b"})
    with pytest.raises(UnsupportedSourceError, match="pvc://"):
        hosted(s3_spec)  # refused when resolved: Degraded before any pod
    with pytest.raises(UnsupportedSourceError, match="pvc://"):
        runtime_model(replace(hosted(msvc_spec()), spec=s3_spec), 1, 1)


def test_served_name_is_the_declared_one_verbatim() -> None:
    # Clients ask for the servedName they declared, 'org/model' style included.
    spec = msvc_spec(model={"uri": "hf://a/b", "profile": "llama-3.1-8b",
                            "servedName": "meta-llama/Llama-3.1-8B-Instruct"})
    assert hosted(spec, name="llama").served_name == "meta-llama/Llama-3.1-8B-Instruct"
    spec = msvc_spec(model={"uri": "hf://a/b", "profile": "llama-3.1-8b"})
    assert hosted(spec, name="llama").served_name == "llama"


def test_labels_service_and_group() -> None:
    long = "x" * 100
    label = model_label(long)
    assert len(label.split("/", 1)[1]) <= 63
    assert model_label(long) == label != model_label("y" * 100)
    assert selector("m") == "model.kubeplex.io/m=true"
    svc = service_manifest("ns", "m", "uid", 8000)
    assert svc["spec"]["selector"] == {"model.kubeplex.io/m": "true"}
    assert svc["spec"]["ports"][0]["targetPort"] == 8000
    assert svc["metadata"]["ownerReferences"][0]["kind"] == "ModelService"
    group = serving_group_manifest("ns", "m-0", "p", "n", 2, 1, [hosted(msvc_spec())], False,
                                   [])
    assert group["spec"]["gpus"] == 2
    assert group["spec"]["models"] == [{"modelService": "m", "servedName": "m",
                                        "memoryShare": 0.9}]


def test_settings_defaults_and_errors_name_the_variable() -> None:
    s = Settings.from_env({})
    assert (s.health_port, s.metrics_port, s.webhook_port) == (8080, 9090, 8443)
    assert s.scrape == "pods"
    assert Settings.from_env({"KUBEPLEX_PROMETHEUS_URL": "http://p:9090"}).scrape == "prometheus"
    assert Settings.from_env({"KUBEPLEX_WATCH_NAMESPACES": "a, b,"}).watch_namespaces == (
        "a", "b")
    with pytest.raises(ConfigError, match="KUBEPLEX_WEBHOOK_PORT"):
        Settings.from_env({"KUBEPLEX_WEBHOOK_PORT": "http"})
    with pytest.raises(ConfigError, match="KUBEPLEX_SCRAPE"):
        Settings.from_env({"KUBEPLEX_SCRAPE": "sometimes"})
    with pytest.raises(ConfigError, match="needs KUBEPLEX_PROMETHEUS_URL"):
        Settings.from_env({"KUBEPLEX_SCRAPE": "prometheus"})
    assert all(var.startswith("KUBEPLEX_") for var in ENV_DOCS)


def test_alert_token_file_is_reread(tmp_path: Any) -> None:
    f = tmp_path / "token"
    f.write_text("one\n")
    s = Settings.from_env({"KUBEPLEX_ALERT_TOKEN_FILE": str(f)})
    assert s.token() == "one"
    f.write_text("two")
    assert s.token() == "two"
    assert Settings.from_env({"KUBEPLEX_ALERT_TOKEN_FILE": str(tmp_path / "no")}).token() == ""


def test_autoscaler_overrides_are_checked() -> None:
    assert parse_overrides('{"stable_window_s": 10}') == {"stable_window_s": 10.0}
    assert parse_overrides("") == {}
    for bad, match in (("{", "not JSON"), ('{"min_replicas": 1}', "unknown key"),
                       ('{"stable_window_s": "x"}', "must be a number"), ("[]", "object")):
        with pytest.raises(ConfigError, match=match):
            parse_overrides(bad)


def test_conditions_keep_their_transition_time() -> None:
    first = merge_conditions(None, [{"type": "Ready", "status": "True"}], 0.0)
    same = merge_conditions(first, [{"type": "Ready", "status": "True"}], 100.0)
    flipped = merge_conditions(first, [{"type": "Ready", "status": "False"}], 100.0)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert flipped[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]
def test_adapters_follow_the_models_sources_and_mark_the_group() -> None:
    adapters = [{"name": "sql", "uri": "pvc://loras/sql", "rank": 8},
                {"name": "chat", "uri": "hf://org/chat-lora"}]
    model = hosted(msvc_spec(adapters=adapters))
    cfg = runtime_model(model, 1, 1)
    assert cfg["adapters"] == [{"name": "sql", "path": "/models/loras/sql", "rank": 8},
                               {"name": "chat", "path": "hf://org/chat-lora", "rank": 16}]
    pod = pod_manifest(Settings(), "ns", "m-0", "p", pool_spec(), "n", 1, 1, [cfg], ["m"],
                       False, "u")
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]] == \
        ["loras"]
    assert parse_config({"models": [cfg]}).models[0].adapters[0].path == "/models/loras/sql"
    sim = runtime_model(hosted(msvc_spec(engine="sim", adapters=adapters)), 1, 1)
    assert [a["path"] for a in sim["adapters"]] == ["pvc://loras/sql", "hf://org/chat-lora"]
    s3_spec = msvc_spec(adapters=[{"name": "x", "uri": "s3://bucket/x"}])
    with pytest.raises(UnsupportedSourceError, match=r"spec.adapters\[\].uri 's3://bucket/x'"):
        hosted(s3_spec)  # refused when resolved: Degraded before any pod
    with pytest.raises(UnsupportedSourceError, match=r"spec.adapters\[\].uri 's3://bucket/x'"):
        runtime_model(replace(hosted(msvc_spec()), spec=s3_spec), 1, 1)
    group = serving_group_manifest("ns", "m-0", "p", "n", 1, 1, [model], False, [])
    fingerprint = group["metadata"]["annotations"]["kubeplex.io/adapters"]
    assert fingerprint == adapters_fingerprint([model])
    other = hosted(msvc_spec(adapters=adapters[:1]))
    assert adapters_fingerprint([other]) not in ("", fingerprint)
    plain = serving_group_manifest("ns", "m-0", "p", "n", 1, 1, [hosted(msvc_spec())], False,
                                   [])
    assert "annotations" not in plain["metadata"]
