"""The operator's Prometheus metrics, in a registry per operator (no module-level globals)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubeplex.api import ModelServiceSpec
from kubeplex.autoscaler.alert_rules import (
    INFO_METRIC,
    QUEUE_TARGET_METRIC,
    SCALE_TO_ZERO_METRIC,
    SLO_TTFT_METRIC,
    quantile_label,
)

__all__ = ["OperatorMetrics"]

#: Buckets (seconds) of reconcile and placement time: a cycle is ms to seconds.
CYCLE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Buckets (seconds) of warm claim -> ready: a wake is 0.1-6 s, a load tens of seconds.
CLAIM_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
#: Buckets (seconds) of a cold start, created -> ready: an image pull and a large model's load
#: take minutes.
COLD_START_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1200)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter("kubeplex_operator_reconciles", "Pool reconcile cycles.",
                                  ["pool"], registry=r)
        self.errors = Counter("kubeplex_operator_errors", "Failed reconcile cycles or steps.",
                              ["pool", "kind"], registry=r)
        self.evaluations = Counter("kubeplex_operator_evaluations",
                                   "Autoscaler evaluations of a ModelService.",
                                   ["trigger"], registry=r)
        self.decisions = Counter("kubeplex_operator_scale_decisions",
                                 "Replica changes decided (direction up/down).",
                                 ["direction"], registry=r)
        self.reconcile_seconds = Histogram("kubeplex_operator_reconcile_seconds",
                                           "Time of one pool cycle.", ["pool"],
                                           buckets=CYCLE_BUCKETS, registry=r)
        self.placement_seconds = Histogram("kubeplex_operator_placement_seconds",
                                           "Time to compute one pool plan.",
                                           buckets=CYCLE_BUCKETS, registry=r)
        self.warm_claims = Counter("kubeplex_operator_warm_claims",
                                   "Warm pods claimed by a scale-up.", ["pool"], registry=r)
        self.cold_starts = Counter("kubeplex_operator_cold_starts",
                                   "Serving pods created cold.", ["pool"], registry=r)
        self.claim_seconds = Histogram("kubeplex_operator_warm_claim_seconds",
                                       "Warm claim to model ready.", buckets=CLAIM_BUCKETS,
                                       registry=r)
        self.cold_start_seconds = Histogram(
            "kubeplex_operator_cold_start_seconds", "A serving group started cold (no warm "
            "claim): created to first Ready.", buckets=COLD_START_BUCKETS, registry=r)
        self.api_writes = Counter("kubeplex_operator_api_writes",
                                  "Kubernetes API writes the operator made (create, patch, "
                                  "delete, event), by verb and kind.", ["verb", "kind"],
                                  registry=r)
        self.alerts = Counter("kubeplex_operator_alerts",
                              "Alert webhook posts by outcome.", ["outcome"], registry=r)
        # The per-ModelService series kubeplex's alert rules join on (label contract in
        # kubeplex.autoscaler.alert_rules): vLLM's model_name -> ModelService, and the targets.
        self.model_info = Gauge(INFO_METRIC, "Maps vLLM's model_name to its ModelService (1).",
                                ["namespace", "modelservice", "model_name"], registry=r)
        self.slo_ttft = Gauge(SLO_TTFT_METRIC, "The ModelService's TTFT SLO in seconds.",
                              ["namespace", "modelservice", "quantile"], registry=r)
        self.queue_target = Gauge(QUEUE_TARGET_METRIC, "spec.scaling.targetQueuePerReplica.",
                                  ["namespace", "modelservice"], registry=r)
        self.scale_to_zero = Gauge(SCALE_TO_ZERO_METRIC,
                                   "spec.scaling.scaleToZeroAfterSeconds (minReplicas 0 only).",
                                   ["namespace", "modelservice"], registry=r)
        # The dashboard's fleet series (helm/kubeplex/files/dashboards/kubeplex.json).
        labels = ["namespace", "modelservice"]
        self.desired_replicas = Gauge("kubeplex_modelservice_desired_replicas",
                                      "Replicas the autoscaler wants.", labels, registry=r)
        self.ready_replicas = Gauge("kubeplex_modelservice_ready_replicas",
                                    "Replicas ready and routed.", labels, registry=r)
        self.warm_replicas = Gauge("kubeplex_modelservice_warm_replicas",
                                   "Warm standbys its pool keeps in its namespace.", labels,
                                   registry=r)
        self.stage_replicas = Gauge(
            "kubeplex_modelservice_stage_replicas", "Replicas each stage of the autoscaler's "
            "latest decision added to its target (negative: took away; stages that changed "
            "nothing are absent); they sum to the replicas the control law asked for.",
            [*labels, "stage"], registry=r)
        self.pool_gpus = Gauge("kubeplex_gpupool_gpus", "The pool's GPUs by state (total, "
                               "allocated, warm, free).", ["pool", "state"], registry=r)
        self.warm_pods = Gauge("kubeplex_warmpool_pods", "The pool's warm pods by state (idle: "
                               "unclaimed; claimed: loading a model for a scale-up).",
                               ["pool", "state"], registry=r)
        #: Pool -> ModelService key -> the series last exported for it and their values.
        self._exported: dict[str, dict[str, dict[tuple[Gauge, tuple[str, ...]], float]]] = {}

    def export_services(self, pool: str,
                        services: Mapping[str, tuple[str, ModelServiceSpec]],
                        replicas: Mapping[str, tuple[int, int, int]],
                        stages: Mapping[str, tuple[tuple[str, int], ...]] | None = None) -> None:
        """Publish the rules' and the dashboard's series for a pool's servable ModelServices.

        ``services`` maps ``namespace/name`` to (the model_name its engines report, spec);
        ``replicas`` maps it to (desired, ready, warm); ``stages`` to what each stage of its
        latest autoscaler decision did to the target
        (:meth:`~kubeplex.autoscaler.policy.Decision.changes`). Series of ModelServices gone
        from the pool since its last cycle, and of stages that no longer change the target,
        are removed.
        """
        before = self._exported.get(pool, {})
        current: dict[str, dict[tuple[Gauge, tuple[str, ...]], float]] = {}
        for key, (served, spec) in services.items():
            ns, name = key.split("/", 1)
            desired, ready, warm = replicas.get(key, (0, 0, 0))
            series = {(self.model_info, (ns, name, served)): 1.0,
                      (self.desired_replicas, (ns, name)): float(desired),
                      (self.ready_replicas, (ns, name)): float(ready),
                      (self.warm_replicas, (ns, name)): float(warm),
                      (self.slo_ttft, (ns, name, quantile_label(spec.slo.percentile))):
                          spec.slo.ttft_seconds,
                      (self.queue_target, (ns, name)):
                          float(spec.scaling.target_queue_per_replica)}
            for stage, change in (stages or {}).get(key, ()):
                if change:
                    series[self.stage_replicas, (ns, name, stage)] = float(change)
            if spec.scaling.min_replicas == 0:
                series[self.scale_to_zero, (ns, name)] = float(
                    spec.scaling.scale_to_zero_after_seconds)
            old = before.get(key, {})
            for (gauge, labels), value in series.items():
                if old.get((gauge, labels)) != value:  # set only what changed (a cycle's
                    gauge.labels(*labels).set(value)   # labels() calls were ~5% of its CPU)
            current[key] = series
        for key, series_before in before.items():
            for gauge, labels in series_before.keys() - current.get(key, {}).keys():
                with contextlib.suppress(KeyError):  # removed already
                    gauge.remove(*labels)
                for exported in self._exported.values():  # a model that moved to another
                    for series in exported.values():      # pool: that pool sets it again
                        series.pop((gauge, labels), None)
        self._exported[pool] = current

    def export_pool(self, pool: str, gpus: Mapping[str, int], warm_pods: Mapping[str, int]) -> None:
        """Publish a pool's GPUs and warm pods by state."""
        for state, n in gpus.items():
            self.pool_gpus.labels(pool, state).set(n)
        for state, n in warm_pods.items():
            self.warm_pods.labels(pool, state).set(n)
