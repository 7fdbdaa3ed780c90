"""Alertmanager webhook (v4) payloads -> "evaluate now" triggers per ModelService.

Alerts are a fast path, never the decision itself: a trigger only makes the operator (or local
mode) run :func:`~kubeplex.autoscaler.policy.decide` at once, on fresh metrics.

* The body must be a v4 webhook message (ENV.md lists the fields): ``version`` "4",
  ``status``, ``alerts`` (a list), and per alert ``status``, ``labels``, ``startsAt``,
  ``fingerprint``. Anything else -> :class:`~kubeplex.autoscaler.errors.AlertPayloadError`
  naming the field; nothing is recorded (the ledger passed in is not changed).
* An alert is mapped to a ModelService by its ``namespace`` and ``modelservice`` labels;
  alerts without them are not kubeplex's and are skipped (listed in ``ignored``).
* Resolved alerts never trigger (scale-down goes through stabilization, not alerts).
* Alertmanager re-sends a firing alert on every ``repeat_interval`` and group change: the
  pair (fingerprint, startsAt) identifies one firing, and each fires at most one trigger.
  The :class:`AlertLedger` remembers the pairs for ``retention_s`` (at most
  :data:`DEFAULT_LEDGER_CAPACITY` of them, the oldest forgotten first).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubeplex.autoscaler.errors import AlertPayloadError, AutoscalerConfigError

__all__ = [
    "DEFAULT_LEDGER_CAPACITY",
    "DEFAULT_RETENTION_S",
    "REQUESTS_HELD_ALERT",
    "AlertLedger",
    "AlertTrigger",
    "Parsed",
    "parse_webhook",
]

#: How long a (fingerprint, startsAt) pair is remembered: a day of Alertmanager's default
#: 4 h repeat_interval is plenty.
DEFAULT_RETENTION_S = 86_400.0
#: Most (fingerprint, startsAt) pairs remembered: a day of alerts from a large fleet (100
#: ModelServices x a few rules x re-fires) fits; a flood of made-up fingerprints cannot grow
#: the operator's memory or its per-webhook work without bound.
DEFAULT_LEDGER_CAPACITY = 10_000
WEBHOOK_VERSION = "4"
#: The alert the cluster gateway posts while it holds requests for a ModelService at zero
#: ready replicas (``kubeplex.gateway.cluster``): "scale from zero now".
REQUESTS_HELD_ALERT = "KubeplexRequestsHeld"
STATUSES = ("firing", "resolved")


@dataclass(frozen=True)
class AlertTrigger:
    """Evaluate ``namespace/modelservice`` now, because ``alertname`` fired at ``starts_at``."""

    namespace: str
    modelservice: str
    alertname: str
    fingerprint: str
    starts_at: str
    severity: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.modelservice}"


@dataclass(frozen=True)
class AlertLedger:
    """The (fingerprint, startsAt) pairs already turned into triggers, with when (s).

    Bounded: at most ``capacity`` pairs, the oldest forgotten first (a forgotten alert that
    is sent again triggers one more evaluation, which is harmless: a trigger only says "look
    now"). Lookups are O(1), so a webhook's cost does not grow with what was seen before.
    """

    #: (fingerprint, startsAt) -> when it was recorded, oldest first.
    seen: Mapping[tuple[str, str], float] = field(default_factory=dict)
    capacity: int = DEFAULT_LEDGER_CAPACITY

    def __post_init__(self) -> None:
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) \
                or self.capacity < 1:
            raise AutoscalerConfigError(f"alert ledger capacity must be an integer >= 1, got "
                                        f"{self.capacity!r}")

    def __len__(self) -> int:
        return len(self.seen)

    def contains(self, fingerprint: str, starts_at: str) -> bool:
        return (fingerprint, starts_at) in self.seen

    def expire(self, now: float, retention_s: float) -> AlertLedger:
        """The ledger without the pairs older than ``retention_s``."""
        stale = 0
        for recorded in self.seen.values():  # oldest first: stop at the first fresh one
            if now - recorded < retention_s:
                break
            stale += 1
        if not stale:
            return self
        return AlertLedger(dict(itertools.islice(self.seen.items(), stale, None)),
                           self.capacity)

    def record(self, pairs: list[tuple[str, str]], now: float) -> AlertLedger:
        seen = dict(self.seen)
        for pair in pairs:
            seen.pop(pair, None)
            seen[pair] = now
        excess = len(seen) - self.capacity
        if excess > 0:
            seen = dict(itertools.islice(seen.items(), excess, None))
        return AlertLedger(seen, self.capacity)


@dataclass(frozen=True)
class Parsed:
    """The triggers (one per ModelService), skipped alerts with why, and the next ledger."""

    triggers: tuple[AlertTrigger, ...]
    ignored: tuple[str, ...]
    ledger: AlertLedger


def _field(obj: Mapping[str, Any], name: str, path: str, kind: type) -> Any:
    if name not in obj:
        raise AlertPayloadError(f"{path}{name}", "is missing")
    value = obj[name]
    if not isinstance(value, kind):
        raise AlertPayloadError(f"{path}{name}",
                                f"must be {kind.__name__}, got {type(value).__name__}")
    return value


def _timestamp(value: str, where: str) -> None:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as err:
        raise AlertPayloadError(where, f"is not an RFC 3339 time: {value!r}") from err


def _check_alert(alert: object, where: str) -> dict[str, Any]:
    if not isinstance(alert, dict):
        raise AlertPayloadError(where, f"must be an object, got {type(alert).__name__}")
    status = _field(alert, "status", f"{where}.", str)
    if status not in STATUSES:
        raise AlertPayloadError(f"{where}.status", f"must be firing or resolved, got {status!r}")
    labels = _field(alert, "labels", f"{where}.", dict)
    for key, value in labels.items():
        if not isinstance(value, str):
            raise AlertPayloadError(f"{where}.labels.{key}", "label values must be strings")
    _timestamp(_field(alert, "startsAt", f"{where}.", str), f"{where}.startsAt")
    if not _field(alert, "fingerprint", f"{where}.", str):
        raise AlertPayloadError(f"{where}.fingerprint", "must not be empty")
    return alert


def parse_webhook(payload: object, ledger: AlertLedger, now: float,
                  retention_s: float = DEFAULT_RETENTION_S) -> Parsed:
    """Validate a webhook body (already JSON-decoded) and turn it into triggers.

    The whole body is validated before anything is recorded: a malformed alert anywhere
    raises :class:`AlertPayloadError` and ``ledger`` stays as it was.
    """
    if not isinstance(payload, dict):
        raise AlertPayloadError("(body)", f"must be a JSON object, got {type(payload).__name__}")
    version = _field(payload, "version", "", str)
    if version != WEBHOOK_VERSION:
        raise AlertPayloadError("version", f"must be {WEBHOOK_VERSION!r} (Alertmanager webhook "
                                           f"v4), got {version!r}")
    status = _field(payload, "status", "", str)
    if status not in STATUSES:
        raise AlertPayloadError("status", f"must be firing or resolved, got {status!r}")
    raw = _field(payload, "alerts", "", list)
    alerts = [_check_alert(alert, f"alerts[{i}]") for i, alert in enumerate(raw)]

    ledger = ledger.expire(now, retention_s)
    triggers: dict[str, AlertTrigger] = {}
    ignored: list[str] = []
    fresh: dict[tuple[str, str], None] = {}
    for i, alert in enumerate(alerts):
        labels: dict[str, str] = alert["labels"]
        name = labels.get("alertname", "(unnamed)")
        fingerprint, starts_at = alert["fingerprint"], alert["startsAt"]
        if alert["status"] != "firing":
            ignored.append(f"alerts[{i}] {name}: resolved")
            continue
        namespace, modelservice = labels.get("namespace"), labels.get("modelservice")
        if not namespace or not modelservice:
            ignored.append(f"alerts[{i}] {name}: no namespace/modelservice labels")
            continue
        if ledger.contains(fingerprint, starts_at) or (fingerprint, starts_at) in fresh:
            ignored.append(f"alerts[{i}] {name}: already seen (fingerprint {fingerprint})")
            continue
        fresh[fingerprint, starts_at] = None
        trigger = AlertTrigger(namespace, modelservice, name, fingerprint, starts_at,
                               labels.get("severity"))
        triggers.setdefault(trigger.key, trigger)
    return Parsed(tuple(triggers.values()), tuple(ignored),
                  ledger.record(list(fresh), now) if fresh else ledger)
