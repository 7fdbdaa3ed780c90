"""The operator's Prometheus metrics, in a registry per operator (no module-level globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["OperatorMetrics"]

#: Buckets (seconds) of reconcile and placement time: a cycle is ms to seconds.
CYCLE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Buckets (seconds) of warm claim -> ready: a wake is 0.1-6 s, a load tens of seconds.
CLAIM_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


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
        self.alerts = Counter("kubeplex_operator_alerts",
                              "Alert webhook posts by outcome.", ["outcome"], registry=r)
