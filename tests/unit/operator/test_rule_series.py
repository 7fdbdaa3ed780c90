"""The operator publishes the per-ModelService series kubeplex's alert rules join on."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubeplex.api import load_documents
from kubeplex.autoscaler.alert_rules import (
    INFO_METRIC,
    QUEUE_TARGET_METRIC,
    SCALE_TO_ZERO_METRIC,
    SLO_TTFT_METRIC,
)
from kubeplex.cli._alerts import render_rules
from kubeplex.gateway.cluster import ClusterGateway, GatewaySettings
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.runtime.metrics import RouterMetrics

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
DASHBOARD = (Path(__file__).resolve().parents[3] / "helm" / "kubeplex" / "files" / "dashboards"
             / "kubeplex.json")


def samples(metrics: OperatorMetrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_series_follow_the_specs_and_disappear_with_the_service() -> None:
    services, _ = load_documents([EXAMPLES / "multi-model-h100.yaml"]).split()
    by_key = {s.key: s for s in services}
    chat, coder = by_key["team-a/chat-8b"], by_key["team-a/coder-7b"]
    metrics = OperatorMetrics()
    metrics.export_services("h100-shared", {chat.key: ("chat-8b", chat.spec),
                                            coder.key: ("coder-7b", coder.spec)},
                            {chat.key: (3, 2, 1)})
    got = samples(metrics)
    chat_labels = (("modelservice", "chat-8b"), ("namespace", "team-a"))
    assert [got[f"kubeplex_modelservice_{kind}_replicas"][chat_labels]
            for kind in ("desired", "ready", "warm")] == [3, 2, 1]
    assert got["kubeplex_modelservice_ready_replicas"][(("modelservice", "coder-7b"),
                                                        ("namespace", "team-a"))] == 0
    assert got[INFO_METRIC][(("model_name", "chat-8b"), ("modelservice", "chat-8b"),
                             ("namespace", "team-a"))] == 1
    assert got[SLO_TTFT_METRIC][(("modelservice", "chat-8b"), ("namespace", "team-a"),
                                 ("quantile", "0.95"))] == 0.5
    assert got[QUEUE_TARGET_METRIC][(("modelservice", "coder-7b"), ("namespace", "team-a"))] == 8
    # Only a model that may scale to zero carries the idle window (minReplicas 0: coder-7b).
    assert list(got[SCALE_TO_ZERO_METRIC]) == [(("modelservice", "coder-7b"),
                                                ("namespace", "team-a"))]
    assert got[SCALE_TO_ZERO_METRIC][(("modelservice", "coder-7b"),
                                      ("namespace", "team-a"))] == 600

    metrics.export_services("h100-shared", {chat.key: ("chat-8b", chat.spec)}, {})
    got = samples(metrics)
    assert all(dict(labels)["modelservice"] == "chat-8b"
               for name in (INFO_METRIC, SLO_TTFT_METRIC, QUEUE_TARGET_METRIC,
                            "kubeplex_modelservice_ready_replicas")
               for labels in got.get(name, {}))
    assert SCALE_TO_ZERO_METRIC not in got or not got[SCALE_TO_ZERO_METRIC]


def test_changed_values_are_exported_and_a_model_that_moves_pool_keeps_its_series() -> None:
    services, _ = load_documents([EXAMPLES / "multi-model-h100.yaml"]).split()
    chat = next(s for s in services if s.key == "team-a/chat-8b")
    ready = "kubeplex_modelservice_ready_replicas"
    labels = (("modelservice", "chat-8b"), ("namespace", "team-a"))
    metrics = OperatorMetrics()
    metrics.export_services("a", {chat.key: ("chat-8b", chat.spec)}, {chat.key: (2, 1, 0)})
    metrics.export_services("a", {chat.key: ("chat-8b", chat.spec)}, {chat.key: (2, 2, 0)})
    assert samples(metrics)[ready][labels] == 2
    # It moves to pool b: b's cycle exports it, then a's next cycle drops it from a.
    metrics.export_services("b", {chat.key: ("chat-8b", chat.spec)}, {chat.key: (2, 2, 0)})
    metrics.export_services("a", {}, {})
    assert ready not in samples(metrics) or labels not in samples(metrics)[ready]
    metrics.export_services("b", {chat.key: ("chat-8b", chat.spec)}, {chat.key: (2, 2, 0)})
    assert samples(metrics)[ready][labels] == 2  # b's next cycle exports it again


def test_each_stage_that_changed_the_target_has_a_series_until_it_no_longer_does() -> None:
    services, _ = load_documents([EXAMPLES / "multi-model-h100.yaml"]).split()
    chat = next(s for s in services if s.key == "team-a/chat-8b")
    spec = {chat.key: ("chat-8b", chat.spec)}
    metrics = OperatorMetrics()
    name = "kubeplex_modelservice_stage_replicas"

    def by_stage() -> dict[str, float]:
        return {dict(labels)["stage"]: value
                for labels, value in samples(metrics).get(name, {}).items()}

    metrics.export_services("a", spec, {chat.key: (4, 3, 0)},
                            {chat.key: (("slo", 3), ("rise", 0), ("hold", 1))})
    assert by_stage() == {"slo": 3, "hold": 1}  # the rise changed nothing: no series
    metrics.export_services("a", spec, {chat.key: (2, 3, 0)},
                            {chat.key: (("slo", 3), ("hold", 0), ("rate_limit", -1))})
    assert by_stage() == {"slo": 3, "rate_limit": -1}  # the hold's series is gone
    metrics.export_services("a", {}, {})
    assert by_stage() == {}


def _exposable(*registries: CollectorRegistry) -> set[str]:
    """Every sample name the registries' families can expose (labelled families included,
    even before a child exists)."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count", "_created")}
    return {family.name + suffix for registry in registries for family in registry.collect()
            for suffix in suffixes.get(family.type, ("",))}


def test_every_kubeplex_series_the_dashboard_and_rules_query_is_exported() -> None:
    """The chart's dashboard and alert rules query only ``kubeplex_*`` series that the
    operator, the gateway or the runtime's router register (a panel on a series nobody
    exports stays empty without an error anywhere)."""
    gateway = ClusterGateway(GatewaySettings(), kubernetes.client.ApiClient()).gateway
    exported = _exposable(OperatorMetrics().registry, RouterMetrics().registry,
                          gateway.metrics.registry)
    texts = {"dashboard": DASHBOARD.read_text(), "rules": render_rules()}
    for where, text in texts.items():
        # Not label names (kubeplex_receiver="operator", or a YAML key `kubeplex_receiver:`).
        queried = set(re.findall(r"\b(kubeplex_[a-z0-9_]+)\b(?!\s*[=:!~])", text))
        assert queried, f"no kubeplex series found in the {where}: the pattern is stale"
        assert queried <= exported, f"{where} queries series nobody exports: " \
            f"{sorted(queried - exported)}"
