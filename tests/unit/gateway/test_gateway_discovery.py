"""The cluster gateway's pure parts: discovery from API objects, resolution of a request's
model, the held alert (through the operator's own parser), and the configuration contract."""

from __future__ import annotations

from typing import Any

import pytest

from kubeplex.autoscaler.alerts import REQUESTS_HELD_ALERT, AlertLedger, parse_webhook
from kubeplex.cli import main
from kubeplex.gateway import Route
from kubeplex.gateway._discovery import (
    Endpoint,
    PodURLs,
    desired,
    fingerprint,
    held_alert,
    parse_endpointslice,
    parse_modelservice,
    parse_pod,
    resolve,
)
from kubeplex.gateway.cluster import GATEWAY_ENV_DOCS, GatewaySettings
from kubeplex.operator.errors import ConfigError


def msvc(name: str, ns: str = "a", served: str | None = None, created: str = "2026-01-01T00:00:00Z",
         **status: Any) -> dict[str, Any]:
    model = {"uri": "hf://x/y"} | ({"servedName": served} if served else {})
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": {"model": model}, "status": status}


def eslice(service: str, ns: str = "a", *endpoints: dict[str, Any],
           port: int = 8000, port_name: str = "http") -> dict[str, Any]:
    return {"metadata": {"name": f"{service}-x1", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": port_name, "port": port}],
            "endpoints": list(endpoints)}


def ep(pod: str, address: str, **conditions: Any) -> dict[str, Any]:
    return {"addresses": [address], "conditions": conditions,
            "targetRef": {"kind": "Pod", "name": pod}}


# ---- parsing ---------------------------------------------------------------------------------

def test_modelservice_served_name_defaults_to_its_name_and_deleting_ones_are_dropped() -> None:
    entry = parse_modelservice(msvc("llama", served="meta/llama-3", replicas=2, readyReplicas=1))
    assert entry is not None
    assert (entry.key, entry.served, entry.replicas, entry.ready) == \
        ("a/llama", "meta/llama-3", 2, 1)
    assert entry.route == Route("meta/llama-3", "a", "llama")
    plain = parse_modelservice(msvc("qwen"))
    assert plain is not None and plain.served == "qwen" and plain.ready == 0
    gone = msvc("old")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert parse_modelservice(gone) is None


def test_endpointslice_readiness_ipv6_and_foreign_slices() -> None:
    parsed = parse_endpointslice(eslice(
        "llama", "a", ep("p1", "10.0.0.1", ready=True), ep("p2", "10.0.0.2", ready=False),
        ep("p3", "10.0.0.3"),  # ready unset: ready (API semantics)
        ep("p4", "10.0.0.4", ready=True, terminating=True), ep("p5", "fd00::5", ready=True)))
    assert parsed is not None and parsed.service == "llama"
    assert parsed.endpoints == (
        Endpoint("p1", "http://10.0.0.1:8000", True), Endpoint("p2", "http://10.0.0.2:8000", False),
        Endpoint("p3", "http://10.0.0.3:8000", True), Endpoint("p4", "http://10.0.0.4:8000", False),
        Endpoint("p5", "http://[fd00::5]:8000", True))
    assert parse_endpointslice(eslice("llama", "a", port_name="metrics")) is None
    unlabelled = eslice("llama")
    del unlabelled["metadata"]["labels"]
    assert parse_endpointslice(unlabelled) is None


def test_pod_urls_come_from_the_annotations() -> None:
    pod = {"metadata": {"annotations": {"kubeplex.io/router-url": "http://127.0.0.1:1",
                                        "kubeplex.io/control-url": "http://127.0.0.1:2"}}}
    assert parse_pod(pod) == PodURLs("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert parse_pod({"metadata": {}}) == PodURLs(None, None)


# ---- what to route ---------------------------------------------------------------------------

def _entries(*objs: dict[str, Any]) -> list[Any]:
    return [e for o in objs if (e := parse_modelservice(o)) is not None]


def _slices(*objs: dict[str, Any]) -> list[Any]:
    return [s for o in objs if (s := parse_endpointslice(o)) is not None]


def test_ready_endpoints_of_each_modelservice_service_are_its_replicas() -> None:
    models = _entries(msvc("llama", served="meta/llama"), msvc("idle"))
    slices = _slices(eslice("llama", "a", ep("p1", "10.0.0.1", ready=True),
                            ep("p2", "10.0.0.2", ready=False)),
                     eslice("unrelated", "a", ep("p9", "10.0.0.9", ready=True)),
                     eslice("llama", "b", ep("p8", "10.0.0.8", ready=True)))
    routes, replicas = desired(models, slices)
    assert routes == {"a/llama": Route("meta/llama", "a", "llama"),
                      "a/idle": Route("idle", "a", "idle")}
    assert replicas == {"a/llama": {"p1": "http://10.0.0.1:8000"}, "a/idle": {}}


def test_the_oldest_modelservice_of_a_served_name_in_a_namespace_wins() -> None:
    models = _entries(msvc("new", served="m", created="2026-02-01T00:00:00Z"),
                      msvc("old", served="m", created="2026-01-01T00:00:00Z"),
                      msvc("other-ns", ns="b", served="m"))
    routes, _ = desired(models, [])
    assert sorted(routes) == ["a/old", "b/other-ns"]


def _lora(obj: dict[str, Any], *names: str) -> dict[str, Any]:
    obj["spec"]["adapters"] = [{"name": n, "uri": f"hf://o/{n}"} for n in names]
    return obj


def test_adapters_route_to_their_modelservice_and_names_taken_first_are_kept() -> None:
    models = _entries(
        _lora(msvc("llama", created="2026-01-01T00:00:00Z"), "sql", "chat"),
        _lora(msvc("qwen", created="2026-02-01T00:00:00Z"), "chat", "poem", "llama"),
        _lora(msvc("other", ns="b"), "sql"))
    routes, _ = desired(models, [])
    assert routes["a/llama"] == Route("llama", "a", "llama", ("sql", "chat"))
    assert routes["a/qwen"].adapters == ("poem",)  # chat is llama's, llama its served name
    assert resolve("sql", "a", routes).route == "a/llama"
    assert resolve("poem", None, routes).route == "a/qwen"
    assert resolve("sql", None, routes).status == 400  # an adapter name in two namespaces
    assert resolve("llama", None, routes).route == "a/llama"  # a served name first
    missing = resolve("nope", None, routes)
    assert missing.status == 404 and "poem" in missing.message


def test_url_annotation_mode_needs_the_annotation_and_a_ready_probe() -> None:
    models = _entries(msvc("llama"))
    slices = _slices(eslice("llama", "a", ep("p1", "10.0.0.1", ready=True),
                            ep("p2", "10.0.0.2", ready=True), ep("p3", "10.0.0.3", ready=True)))
    pods = {("a", "p1"): PodURLs("http://127.0.0.1:1", "http://127.0.0.1:11"),
            ("a", "p2"): PodURLs("http://127.0.0.1:2", "http://127.0.0.1:12")}
    _, replicas = desired(models, slices, pods, {"http://127.0.0.1:11"})
    assert replicas == {"a/llama": {"p1": "http://127.0.0.1:1"}}


# ---- resolution ------------------------------------------------------------------------------

ROUTES = {"a/llama": Route("meta/llama", "a", "llama"),
          "b/llama": Route("meta/llama", "b", "llama"),
          "a/qwen": Route("qwen", "a", "qwen")}


def test_a_served_name_in_one_namespace_needs_no_header() -> None:
    assert resolve("qwen", None, ROUTES).route == "a/qwen"


def test_unknown_models_are_404_listing_the_models() -> None:
    for model, namespace in (("nope", None), (42, None), ("qwen", "b")):
        found = resolve(model, namespace, ROUTES)
        assert found.route is None and found.status == 404
        assert "Models: meta/llama, qwen." in found.message


def test_a_served_name_in_two_namespaces_needs_the_header() -> None:
    found = resolve("meta/llama", None, ROUTES)
    assert found.route is None and found.status == 400
    assert "X-Kubeplex-Namespace" in found.message and "a, b" in found.message
    assert resolve("meta/llama", "b", ROUTES).route == "b/llama"


# ---- the held alert --------------------------------------------------------------------------

def test_held_alert_is_one_operator_trigger_per_hold_episode() -> None:
    route = Route("meta/llama", "a", "llama")
    first = held_alert(route, 3, 1_700_000_000.25, "http://gw:8080/")
    parsed = parse_webhook(first, AlertLedger(), 1_700_000_001.0)
    assert [(t.key, t.alertname) for t in parsed.triggers] == [("a/llama", REQUESTS_HELD_ALERT)]
    assert first["alerts"][0]["startsAt"] == "2023-11-14T22:13:20.250Z"
    assert first["alerts"][0]["labels"]["model_name"] == "meta/llama"
    # the same episode re-posted: dropped by the ledger
    again = parse_webhook(held_alert(route, 5, 1_700_000_000.25, "x"), parsed.ledger,
                          1_700_000_020.0)
    assert again.triggers == () and "already seen" in again.ignored[0]
    # a new episode: a new trigger
    later = parse_webhook(held_alert(route, 1, 1_700_000_900.0, "x"), again.ledger,
                          1_700_000_901.0)
    assert [t.key for t in later.triggers] == ["a/llama"]
    assert fingerprint(route) == fingerprint(Route("renamed", "a", "llama"))
    assert fingerprint(route) != fingerprint(Route("meta/llama", "b", "llama"))


# ---- configuration ---------------------------------------------------------------------------

def test_settings_defaults_match_the_chart_contract() -> None:
    s = GatewaySettings.from_env({})
    assert (s.port, s.hold_timeout_s, s.max_held, s.watch_namespaces, s.operator_url) == \
        (8080, 300.0, 1000, (), "")
    s = GatewaySettings.from_env({"KUBEPLEX_WATCH_NAMESPACES": "a, b",
                                  "KUBEPLEX_OPERATOR_URL": "http://op.kubeplex.svc:8443",
                                  "KUBEPLEX_URL_ANNOTATIONS": "true"})
    assert s.watch_namespaces == ("a", "b") and s.url_annotations
    assert s.resume_plain  # plain requests resume by default
    assert not GatewaySettings.from_env({"KUBEPLEX_RESUME_PLAIN_REQUESTS": "false"}).resume_plain
    assert {"KUBEPLEX_GATEWAY_PORT", "KUBEPLEX_HOLD_TIMEOUT_SECONDS", "KUBEPLEX_MAX_HELD_REQUESTS",
            "KUBEPLEX_WATCH_NAMESPACES", "KUBEPLEX_OPERATOR_URL",
            "KUBEPLEX_ALERT_TOKEN_FILE"} <= set(GATEWAY_ENV_DOCS)


@pytest.mark.parametrize(("var", "value"), [
    ("KUBEPLEX_GATEWAY_PORT", "http"), ("KUBEPLEX_GATEWAY_PORT", "70000"),
    ("KUBEPLEX_HOLD_TIMEOUT_SECONDS", "0"), ("KUBEPLEX_HOLD_TIMEOUT_SECONDS", "soon"),
    ("KUBEPLEX_HOLD_TIMEOUT_SECONDS", "inf"), ("KUBEPLEX_MIGRATE_AFTER_SECONDS", "nan"),
    ("KUBEPLEX_MAX_HELD_REQUESTS", "-1"), ("KUBEPLEX_OPERATOR_URL", "kubeplex-operator:8443"),
    ("KUBEPLEX_URL_ANNOTATIONS", "maybe"), ("KUBEPLEX_RESUME_PLAIN_REQUESTS", "sometimes"),
])
def test_bad_settings_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        GatewaySettings.from_env({var: value})


def test_cli_bad_values_exit_2_naming_flag_or_variable(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --port: KUBEPLEX_GATEWAY_PORT=0") and "Traceback" not in err
    monkeypatch.setenv("KUBEPLEX_MAX_HELD_REQUESTS", "lots")
    assert main(["gateway"]) == 2
    assert "error: KUBEPLEX_MAX_HELD_REQUESTS='lots'" in capsys.readouterr().err
    monkeypatch.delenv("KUBEPLEX_MAX_HELD_REQUESTS")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["gateway", "--kubeconfig", "/nonexistent/kubeconfig"]) == 2
    assert "error: cannot reach a cluster" in capsys.readouterr().err
