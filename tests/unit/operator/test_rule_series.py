"""The operator publishes the per-ModelService series kubeplex's alert rules join on."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubeplex.api import load_documents
from kubeplex.autoscaler.alert_rules import (
    INFO_METRIC,
    QUEUE_TARGET_METRIC,
    SCALE_TO_ZERO_METRIC,
    SLO_TTFT_METRIC,
)
from kubeplex.operator._metrics import OperatorMetrics

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


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
                                            coder.key: ("coder-7b", coder.spec)})
    got = samples(metrics)
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

    metrics.export_services("h100-shared", {chat.key: ("chat-8b", chat.spec)})
    got = samples(metrics)
    assert all(dict(labels)["modelservice"] == "chat-8b"
               for name in (INFO_METRIC, SLO_TTFT_METRIC, QUEUE_TARGET_METRIC)
               for labels in got.get(name, {}))
    assert SCALE_TO_ZERO_METRIC not in got or not got[SCALE_TO_ZERO_METRIC]
