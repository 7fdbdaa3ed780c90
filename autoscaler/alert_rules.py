"""The Prometheus alert rules kubeplex ships, as data.

Alerts are kubeplex's fast path: Alertmanager posts them to the operator's ``/alerts`` webhook,
which evaluates the labelled ModelService at once (with fresh metrics; the alert is only a
trigger). This module is the single source of the rule expressions: the Helm chart's
``files/prometheus-rules.yaml`` is generated from :func:`rule_groups` by
``kubeplex alerts rules`` and a test keeps the two identical.

Label contract (what the expressions join on)
---------------------------------------------
* Serving pods expose vLLM's series (``vllm:*``, label ``model_name`` = the ModelService's
  ``spec.model.servedName``). The scrape (the chart's PodMonitor) adds ``namespace``: the
  serving pod's namespace, which is the ModelService's namespace.
* The operator exports, per ModelService (scraped with ``honor_labels: true`` so its
  ``namespace`` label is kept, not renamed ``exported_namespace``):

  - :data:`INFO_METRIC` ``{namespace, modelservice, model_name} 1`` maps vLLM's ``model_name``
    to the ModelService;
  - :data:`SLO_TTFT_METRIC` ``{namespace, modelservice, quantile}``: ``spec.slo.ttftSeconds``,
    with ``quantile`` = :func:`quantile_label` of ``spec.slo.percentile`` (e.g. ``"0.95"``);
  - :data:`QUEUE_TARGET_METRIC` ``{namespace, modelservice}``:
    ``spec.scaling.targetQueuePerReplica``;
  - :data:`SCALE_TO_ZERO_METRIC` ``{namespace, modelservice}``:
    ``spec.scaling.scaleToZeroAfterSeconds``, exported only while ``minReplicas`` is 0.
* The operator's own scrape job is named :data:`OPERATOR_JOB`.
* ``(namespace, model_name)`` names one ModelService: two ModelServices of one namespace must
  not share a served name (the gateway could not route them apart either). A duplicate makes
  the ``group_left`` joins fail with "many-to-many matching", for every ModelService: the
  operator must refuse the second one (Degraded) and not export its info series.

Every ModelService alert carries the labels ``namespace`` and ``modelservice`` (the webhook maps
the alert to its object with them) and ``kubeplex_receiver="operator"`` (Alertmanager routes on
it). ``KubeplexOperatorDown`` is routed to people instead (``kubeplex_receiver="oncall"``):
posting it to the operator that is down would only be retried into the void.

A TTFT SLO can only be checked for the percentiles listed in :attr:`RuleSettings.percentiles`
(``histogram_quantile`` takes a constant quantile, so there is one rule per percentile); a
ModelService with another percentile is still scaled by the operator's periodic loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubeplex.autoscaler.errors import AutoscalerError

__all__ = [
    "ALERT_IDLE",
    "ALERT_OPERATOR_DOWN",
    "ALERT_QUEUE_BACKLOG",
    "ALERT_TTFT_SLO_BURN",
    "INFO_METRIC",
    "ONCALL_RECEIVER",
    "OPERATOR_JOB",
    "OPERATOR_RECEIVER",
    "QUEUE_TARGET_METRIC",
    "RECEIVER_LABEL",
    "SCALE_TO_ZERO_METRIC",
    "SLO_TTFT_METRIC",
    "AlertRulesError",
    "RuleSettings",
    "duration_seconds",
    "quantile_label",
    "rule_groups",
]


class AlertRulesError(AutoscalerError):
    """The rule settings cannot produce valid rules (bad percentile or duration)."""


# --- Names other areas rely on (the operator exports these; the chart scrapes them). ---
#: ``{namespace, modelservice, model_name} 1``: which vLLM ``model_name`` serves which object.
INFO_METRIC = "kubeplex_modelservice_info"
#: ``{namespace, modelservice, quantile}``: the TTFT SLO in seconds.
SLO_TTFT_METRIC = "kubeplex_modelservice_slo_ttft_seconds"
#: ``{namespace, modelservice}``: spec.scaling.targetQueuePerReplica.
QUEUE_TARGET_METRIC = "kubeplex_modelservice_target_queue_per_replica"
#: ``{namespace, modelservice}``: spec.scaling.scaleToZeroAfterSeconds (minReplicas 0 only).
SCALE_TO_ZERO_METRIC = "kubeplex_modelservice_scale_to_zero_seconds"
#: The ``job`` label of the operator's scrape target (the chart's ServiceMonitor sets it).
OPERATOR_JOB = "kubeplex-operator"
#: The routing label Alertmanager matches on, and its value for alerts the operator acts on.
RECEIVER_LABEL = "kubeplex_receiver"
OPERATOR_RECEIVER = "operator"
#: Where alerts no program can act on go (the example Alertmanager config routes it to people).
ONCALL_RECEIVER = "oncall"

ALERT_TTFT_SLO_BURN = "KubeplexTTFTSLOBurn"
ALERT_QUEUE_BACKLOG = "KubeplexQueueBacklog"
ALERT_IDLE = "KubeplexModelIdle"
ALERT_OPERATOR_DOWN = "KubeplexOperatorDown"

# --- vLLM 0.32/0.33 series (DESIGN.md "vLLM facts"). ---
_TTFT_BUCKET = "vllm:time_to_first_token_seconds_bucket"
_WAITING = "vllm:num_requests_waiting"
_RUNNING = "vllm:num_requests_running"
_SUCCESS = "vllm:request_success_total"

# Prometheus duration syntax, one or more unit groups (e.g. "90s", "1m30s").
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                     "y": 31536000}


@dataclass(frozen=True)
class RuleSettings:
    """Windows and hold times of the rules (Prometheus duration strings).

    The defaults suit a 15 s scrape interval: ``rate()`` windows span at least four scrapes
    (Prometheus' documented rule of thumb) and ``for`` clauses ride out one noisy evaluation.
    Tests with 1 s scrapes pass shorter ones (``kubeplex alerts rules --for 0s ...``).
    """

    #: The TTFT percentiles (0-100, exclusive) a ModelService SLO may use; one rule each.
    percentiles: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
    #: ``rate()`` window of the TTFT histogram: 4 scrapes of 15 s.
    ttft_window: str = "1m"
    #: How long the TTFT percentile must exceed the SLO before the alert fires.
    ttft_for: str = "30s"
    #: How long the mean queue per replica must exceed its target.
    queue_for: str = "30s"
    #: How far back idleness is measured; scale-to-zero windows longer than this never alert.
    idle_lookback: str = "1h"
    #: Resolution of the idle subquery (one scrape interval).
    idle_step: str = "15s"
    #: Window in which finished requests count as activity: 4 scrapes of 15 s.
    idle_activity_window: str = "1m"
    #: How long the operator target may be missing or down (rides out a rolling restart).
    operator_down_for: str = "2m"

    def __post_init__(self) -> None:
        for name in ("ttft_window", "ttft_for", "queue_for", "idle_lookback", "idle_step",
                     "idle_activity_window", "operator_down_for"):
            value = getattr(self, name)
            if not _DURATION.match(value):
                raise AlertRulesError(
                    f"{name}={value!r} is not a Prometheus duration; use e.g. '30s', '1m', '1h'")
        for name in ("ttft_window", "idle_lookback", "idle_step", "idle_activity_window"):
            if duration_seconds(getattr(self, name)) <= 0:
                raise AlertRulesError(f"{name} must be longer than 0s")
        if not self.percentiles:
            raise AlertRulesError("percentiles is empty; give at least one, e.g. 95")
        for p in self.percentiles:
            quantile_label(p)  # validates the range
        labels = [quantile_label(p) for p in self.percentiles]
        if len(set(labels)) != len(labels):
            raise AlertRulesError(f"percentiles {self.percentiles} repeat a value")


def duration_seconds(value: str) -> float:
    """Seconds in a Prometheus duration string such as ``"1m30s"``."""
    if not _DURATION.match(value):
        raise AlertRulesError(f"{value!r} is not a Prometheus duration; use e.g. '30s', '1m'")
    return sum(int(n) * _DURATION_SECONDS[unit]
               for n, unit in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", value))


def quantile_label(percentile: float) -> str:
    """The ``quantile`` label value for an SLO percentile: 95 -> ``"0.95"``, 99.9 -> ``"0.999"``.

    The operator must label :data:`SLO_TTFT_METRIC` with exactly this string.
    """
    if not 0.0 < percentile < 100.0:
        raise AlertRulesError(f"percentile {percentile} must be between 0 and 100 (exclusive)")
    # Rounding to 6 places removes float noise (99.9 / 100 == 0.9990000000000001).
    return format(round(percentile / 100.0, 6), "g")


def _against(observed: str, target: str) -> str:
    """``observed`` (keyed by namespace and model_name) compared with a per-ModelService target.

    ``group_left`` keeps the observed side's labels (``model_name`` too) in the alert.
    """
    return (f"(\n{_by_modelservice(observed)}\n)\n{target}")


def _by_modelservice(expr: str) -> str:
    """Attach ``modelservice`` to a series keyed by (namespace, model_name)."""
    return (f"(\n  {expr}\n)\n* on (namespace, model_name) group_left (modelservice)\n"
            f"  {INFO_METRIC}")


def _routed(severity: str) -> dict[str, str]:
    return {"severity": severity, RECEIVER_LABEL: OPERATOR_RECEIVER}


def _ttft_rule(percentile: float, s: RuleSettings) -> dict[str, Any]:
    q = quantile_label(percentile)
    observed = (f"histogram_quantile({q}, sum by (namespace, model_name, le) "
                f"(rate({_TTFT_BUCKET}[{s.ttft_window}])))")
    expr = _against(observed, f"> on (namespace, modelservice) group_left ()\n"
                              f"  {SLO_TTFT_METRIC}{{quantile=\"{q}\"}}")
    return {
        "alert": ALERT_TTFT_SLO_BURN,
        "expr": expr,
        "for": s.ttft_for,
        "labels": {**_routed("warning"), "quantile": q},
        "annotations": {
            "summary": f"TTFT p{q} of {{{{ $labels.namespace }}}}/"
                       "{{ $labels.modelservice }} is above its SLO",
            "description": f"The TTFT quantile {q} over the last "
                           f"{s.ttft_window} is {{{{ $value | humanizeDuration }}}}, above the "
                           "ModelService's spec.slo.ttftSeconds; kubeplex evaluates a "
                           "scale-up now.",
        },
    }


def _queue_rule(s: RuleSettings) -> dict[str, Any]:
    per_replica = f"avg by (namespace, model_name) ({_WAITING})"
    expr = _against(per_replica, f"> on (namespace, modelservice) group_left ()\n"
                                 f"  {QUEUE_TARGET_METRIC}")
    return {
        "alert": ALERT_QUEUE_BACKLOG,
        "expr": expr,
        "for": s.queue_for,
        "labels": _routed("warning"),
        "annotations": {
            "summary": "Requests queue up for {{ $labels.namespace }}/{{ $labels.modelservice }}",
            "description": "{{ $value }} requests wait per replica on average, above "
                           "spec.scaling.targetQueuePerReplica; kubeplex evaluates a "
                           "scale-up now.",
        },
    }


def _idle_rule(s: RuleSettings) -> dict[str, Any]:
    # "Busy" at a step: requests finished within the activity window, or some running or
    # waiting. Idle time = now - the last busy step; a model never busy within the lookback has
    # been idle since its series first appeared (a fresh replica is not idle for the lookback).
    busy = (f"(sum by (namespace, model_name) (increase({_SUCCESS}[{s.idle_activity_window}])) "
            f"> 0)\n    or\n    (sum by (namespace, model_name) ({_RUNNING}) > 0)\n    or\n"
            f"    (sum by (namespace, model_name) ({_WAITING}) > 0)")
    present = f"sum by (namespace, model_name) ({_WAITING})"
    window = f"[{s.idle_lookback}:{s.idle_step}]"
    idle_for = (f"(\n    time() - max_over_time(timestamp(\n    {busy}\n    ){window})\n  )\n"
                f"  or\n  (\n    time() - min_over_time(timestamp({present}){window})\n  )")
    expr = _against(idle_for, f">= on (namespace, modelservice) group_left ()\n"
                              f"  {SCALE_TO_ZERO_METRIC}")
    return {
        "alert": ALERT_IDLE,
        "expr": expr,
        "labels": _routed("info"),
        "annotations": {
            "summary": "{{ $labels.namespace }}/{{ $labels.modelservice }} is idle",
            "description": "No request for {{ $value | humanizeDuration }}, at least "
                           "spec.scaling.scaleToZeroAfterSeconds; kubeplex evaluates scale to "
                           "zero.",
        },
    }


def _operator_down_rule(s: RuleSettings) -> dict[str, Any]:
    return {
        "alert": ALERT_OPERATOR_DOWN,
        "expr": f'absent(up{{job="{OPERATOR_JOB}"}} == 1)',
        "for": s.operator_down_for,
        "labels": {"severity": "critical", RECEIVER_LABEL: ONCALL_RECEIVER},
        "annotations": {
            "summary": "The kubeplex operator is down",
            "description": f"No scrape target of job {OPERATOR_JOB} has been up for "
                           f"{s.operator_down_for}: nothing reconciles or autoscales "
                           "ModelServices.",
        },
    }


def rule_groups(settings: RuleSettings | None = None) -> list[dict[str, Any]]:
    """The rule groups (Prometheus rule-file ``groups:`` content, also PrometheusRule spec)."""
    s = settings or RuleSettings()
    scaling = [_ttft_rule(p, s) for p in s.percentiles]
    scaling += [_queue_rule(s), _idle_rule(s)]
    return [
        {"name": "kubeplex.autoscaling", "rules": scaling},
        {"name": "kubeplex.operator", "rules": [_operator_down_rule(s)]},
    ]
