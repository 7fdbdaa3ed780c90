"""kubeplex.autoscaler.alert_rules: the rule data and its settings (pure, no binaries)."""

from __future__ import annotations

import pytest

from kubeplex.autoscaler.alert_rules import (
    ALERT_IDLE,
    ALERT_OPERATOR_DOWN,
    ALERT_QUEUE_BACKLOG,
    ALERT_TTFT_SLO_BURN,
    RECEIVER_LABEL,
    AlertRulesError,
    RuleSettings,
    duration_seconds,
    quantile_label,
    rule_groups,
)
from kubeplex.autoscaler.errors import AutoscalerError
from kubeplex.errors import KubeplexError


@pytest.mark.parametrize(("percentile", "label"), [
    (50, "0.5"), (90, "0.9"), (95, "0.95"), (99, "0.99"), (99.9, "0.999"), (99.99, "0.9999"),
    (12.5, "0.125"),
])
def test_quantile_label(percentile: float, label: str) -> None:
    assert quantile_label(percentile) == label


@pytest.mark.parametrize("percentile", [0, 100, -5, 150])
def test_quantile_label_refuses_out_of_range(percentile: float) -> None:
    with pytest.raises(AlertRulesError, match="between 0 and 100"):
        quantile_label(percentile)


def test_errors_are_kubeplex_errors() -> None:
    assert issubclass(AlertRulesError, AutoscalerError)
    assert issubclass(AlertRulesError, KubeplexError)


@pytest.mark.parametrize(("value", "seconds"), [("30s", 30), ("1m30s", 90), ("1h", 3600),
                                                ("500ms", 0.5), ("0s", 0)])
def test_duration_seconds(value: str, seconds: float) -> None:
    assert duration_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("kwargs", [
    {"ttft_window": "1 m"}, {"queue_for": "-1s"}, {"idle_step": "0s"}, {"percentiles": ()},
    {"percentiles": (95.0, 95.0)}, {"ttft_window": "0s"},
])
def test_settings_refuse_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(AlertRulesError):
        RuleSettings(**kwargs)  # type: ignore[arg-type]


def test_every_alert_is_routed_and_scaling_alerts_name_their_modelservice() -> None:
    rules = [r for g in rule_groups() for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert names == {ALERT_TTFT_SLO_BURN, ALERT_QUEUE_BACKLOG, ALERT_IDLE, ALERT_OPERATOR_DOWN}
    for rule in rules:
        assert rule["labels"][RECEIVER_LABEL] in {"operator", "oncall"}
        if rule["alert"] == ALERT_OPERATOR_DOWN:
            assert rule["labels"][RECEIVER_LABEL] == "oncall"
            continue
        assert rule["labels"][RECEIVER_LABEL] == "operator"
        # The result keeps namespace + modelservice: joined via the info series, compared
        # with group_left so the left side's labels survive.
        assert "group_left (modelservice)" in rule["expr"]
        assert "on (namespace, modelservice) group_left ()" in rule["expr"]


def test_one_ttft_rule_per_percentile() -> None:
    settings = RuleSettings(percentiles=(95.0, 99.0))
    ttft = [r for g in rule_groups(settings) for r in g["rules"]
            if r["alert"] == ALERT_TTFT_SLO_BURN]
    assert [r["labels"]["quantile"] for r in ttft] == ["0.95", "0.99"]
    assert 'quantile="0.95"' in ttft[0]["expr"]
    assert "histogram_quantile(0.95," in ttft[0]["expr"]


def test_settings_reach_the_expressions() -> None:
    settings = RuleSettings(ttft_window="2m", ttft_for="0s", idle_lookback="3h",
                            idle_step="30s", operator_down_for="5m")
    rules = {r["alert"]: r for g in rule_groups(settings) for r in g["rules"]}
    assert "[2m]" in rules[ALERT_TTFT_SLO_BURN]["expr"]
    assert rules[ALERT_TTFT_SLO_BURN]["for"] == "0s"
    assert "[3h:30s]" in rules[ALERT_IDLE]["expr"]
    assert rules[ALERT_OPERATOR_DOWN]["for"] == "5m"
