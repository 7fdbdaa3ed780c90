"""kubeplex.autoscaler: how many replicas (and warm standbys) each ModelService needs.

A pure decision core (no Kubernetes, no HTTP, no clock reads); the callers read the metrics
and :mod:`kubeplex.autoscaler.sources` parses them. The control layer (:mod:`kubeplex.control`,
for the operator and local mode) calls it every few seconds per ModelService, and at once when
an alert arrives::

    from kubeplex.autoscaler import AutoscalerConfig, AutoscalerState, Observed, decide

    config = AutoscalerConfig(slo_ttft_s=1.0, percentile=95, min_replicas=0, max_replicas=8,
                              profile=profile("llama-3.1-8b", "H100-80GB"))
    state = AutoscalerState()                      # keep it per ModelService
    scrapes.append(parse_metrics_text(text_of_metrics, "llama", now))  # or parse_query_result
    decision = decide(Observed(tuple(scrapes), ready=2, starting=(Starting(since=t0),),
                               warm_available=1, free_gpus=3, trigger=None),
                      config, state, now)
    state = decision.state
    scale_to(decision.desired_replicas); keep_warm(decision.desired_warm)
    status.lastScale.reason = decision.reason    # one line, says which stage decided
    status.sloStatus = slo_status(decision.signals, config)

Contracts:

* ``now`` and every ``Scrape.time`` are seconds on the caller's clock (monotonic is fine).
  Keep the scrapes of at least the stable window (``config.stable_window_s``, 60 s).
* ``desired_replicas`` is the total the ModelService should have (ready + starting), already
  within min/max and the pool's GPU budget (``Observed.free_gpus``); ``desired_warm`` is the
  warm standbys to keep for it. Missing or stale metrics hold the current scale
  (``Decision.signals`` is then a :class:`NoData` with the reason).
* Alert webhooks: :func:`parse_webhook` validates an Alertmanager v4 body and returns
  :class:`AlertTrigger`\\ s (one per ``namespace/modelservice``, deduplicated by fingerprint and
  startsAt via the :class:`AlertLedger` you keep); for each, run ``decide`` now with
  ``Observed.trigger`` set to the alert name.
* CRD mapping: ``spec.slo.ttftSeconds``/``percentile`` -> ``slo_ttft_s``/``percentile``;
  ``spec.scaling.minReplicas``/``maxReplicas``/``prewarm``/``scaleToZeroAfterSeconds``/
  ``targetQueuePerReplica`` -> the fields of the same meaning; ``spec.workload.burstiness``
  squared can seed ``arrival_cv2`` before metrics exist; the placement's tp*pp is
  ``gpus_per_replica`` and its profile ``profile``. A manual ``spec.scaling.replicas`` means
  the caller does not call ``decide`` at all.
* Errors are :class:`AutoscalerError` subclasses (config, alert payload, metrics source, trace).

Modules: ``metrics`` (vLLM's metric names, one scrape), ``signals`` (the law's metric math),
``queueing`` (the M/G/c model), ``forecast`` (Holt), ``policy`` (the control law stages and
``decide``), ``alerts``, ``sources`` (metric parsers), ``trace`` (CSV and generators),
``fleet`` (the simulated fleet), ``baselines`` (HPA, KPA, static), ``evaluation``
(``replay``, behind ``kubeplex simulate autoscale``), ``misses`` (where a replay missed the
SLO, and why: ``--explain``).
"""

from kubeplex.autoscaler.alerts import AlertLedger, AlertTrigger, Parsed, parse_webhook
from kubeplex.autoscaler.errors import (
    AlertPayloadError,
    AutoscalerConfigError,
    AutoscalerError,
    MetricsSourceError,
    TraceError,
)
from kubeplex.autoscaler.forecast import HoltConfig, HoltState
from kubeplex.autoscaler.metrics import Scrape
from kubeplex.autoscaler.policy import (
    AutoscalerConfig,
    AutoscalerState,
    Decision,
    Observed,
    Stage,
    Starting,
    decide,
    slo_status,
)
from kubeplex.autoscaler.queueing import ReplicaCapacity
from kubeplex.autoscaler.signals import NoData, Signals, extract

__all__ = [
    "AlertLedger",
    "AlertPayloadError",
    "AlertTrigger",
    "AutoscalerConfig",
    "AutoscalerConfigError",
    "AutoscalerError",
    "AutoscalerState",
    "Decision",
    "HoltConfig",
    "HoltState",
    "MetricsSourceError",
    "NoData",
    "Observed",
    "Parsed",
    "ReplicaCapacity",
    "Scrape",
    "Signals",
    "Stage",
    "Starting",
    "TraceError",
    "decide",
    "extract",
    "parse_webhook",
    "slo_status",
]
