"""Alertmanager webhook v4 payloads -> triggers; malformed bodies change nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubeplex.autoscaler import AlertLedger, AlertPayloadError, parse_webhook
from kubeplex.autoscaler.errors import AutoscalerConfigError

FIRING = "0001-01-01T00:00:00Z"


def _alert(name: str, fingerprint: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": name},
        "startsAt": "2026-11-21T05:00:00.000Z",
        "endsAt": FIRING if status == "firing" else "2026-11-21T05:05:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def _payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4", "groupKey": "{}:{alertname=\"x\"}", "truncatedAlerts": 0,
        "status": "firing", "receiver": "kubeplex", "groupLabels": {}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://alertmanager", "alerts": list(alerts),
    }


BODY = _payload(
    _alert("KubeplexTTFTBurn", "a1", namespace="prod", modelservice="llama", severity="page"),
    _alert("KubeplexQueueBacklog", "b2", namespace="prod", modelservice="llama"),
    _alert("KubeplexQueueBacklog", "c3", namespace="dev", modelservice="qwen"),
    _alert("KubeplexIdle", "d4", status="resolved", namespace="dev", modelservice="qwen"),
    _alert("NodeDown", "e5", instance="n1"),
)


def test_triggers_per_modelservice_and_skips_with_reasons() -> None:
    parsed = parse_webhook(BODY, AlertLedger(), now=100.0)
    assert [t.key for t in parsed.triggers] == ["prod/llama", "dev/qwen"]
    first = parsed.triggers[0]
    assert (first.alertname, first.severity, first.fingerprint) == ("KubeplexTTFTBurn", "page",
                                                                    "a1")
    assert any("resolved" in why for why in parsed.ignored)
    assert any("NodeDown: no namespace/modelservice" in why for why in parsed.ignored)


def test_redelivery_is_deduplicated_by_fingerprint_and_starts_at() -> None:
    first = parse_webhook(BODY, AlertLedger(), now=100.0)
    again = parse_webhook(BODY, first.ledger, now=130.0)
    assert again.triggers == ()
    assert sum("already seen" in why for why in again.ignored) == 3
    refired = copy.deepcopy(BODY)
    refired["alerts"][0]["startsAt"] = "2026-11-21T06:00:00Z"  # the same alert fires anew
    assert [t.key for t in parse_webhook(refired, first.ledger, 200.0).triggers] == [
        "prod/llama"]
    # the ledger forgets after the retention time
    later = parse_webhook(BODY, first.ledger, now=100.0 + 10, retention_s=5)
    assert len(later.triggers) == 2


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("alerts"), "alerts"),
        (lambda b: b.update(version="3"), "version"),
        (lambda b: b.update(status="weird"), "status"),
        (lambda b: b["alerts"][2].pop("fingerprint"), "alerts[2].fingerprint"),
        (lambda b: b["alerts"][1].update(startsAt="yesterday"), "alerts[1].startsAt"),
        (lambda b: b["alerts"][0].update(labels=["x"]), "alerts[0].labels"),
        (lambda b: b["alerts"][0]["labels"].update(namespace=3), "alerts[0].labels.namespace"),
        (lambda b: b["alerts"].append("nope"), "alerts[5]"),
    ],
)
def test_malformed_payloads_name_the_field_and_change_nothing(mutate: Any, field: str) -> None:
    ledger = parse_webhook(_payload(_alert("Old", "zz", namespace="a", modelservice="b")),
                           AlertLedger(), 1.0).ledger
    body = copy.deepcopy(BODY)
    mutate(body)
    with pytest.raises(AlertPayloadError) as err:
        parse_webhook(body, ledger, now=2.0)
    assert err.value.field == field
    assert f"alert payload field {field}:" in str(err.value)
    # nothing was recorded: the valid alerts of the rejected body still trigger afterwards
    assert len(parse_webhook(BODY, ledger, now=3.0).triggers) == 2


def test_body_must_be_an_object() -> None:
    with pytest.raises(AlertPayloadError, match="must be a JSON object"):
        parse_webhook([1, 2], AlertLedger(), 0.0)


def test_the_ledger_is_bounded_and_forgets_the_oldest_first() -> None:
    ledger = AlertLedger(capacity=100)
    for batch in range(7):  # 7 webhooks of 30 new alerts each: 210 > 100
        body = _payload(*(_alert("Flood", f"f{batch}-{i}", namespace="a", modelservice="b")
                          for i in range(30)))
        ledger = parse_webhook(body, ledger, now=float(batch)).ledger
        assert len(ledger) <= 100
    assert len(ledger) == 100
    assert ledger.contains("f6-29", "2026-11-21T05:00:00.000Z")  # the newest are kept
    assert not ledger.contains("f0-0", "2026-11-21T05:00:00.000Z")  # the oldest went first
    again = parse_webhook(_payload(_alert("Flood", "f0-0", namespace="a", modelservice="b")),
                          ledger, now=8.0)
    assert [t.key for t in again.triggers] == ["a/b"]  # forgotten: one more "look now"


def test_a_ledger_needs_room() -> None:
    with pytest.raises(AutoscalerConfigError, match="capacity must be an integer >= 1"):
        AlertLedger(capacity=0)
