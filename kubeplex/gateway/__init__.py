"""kubeplex.gateway: one OpenAI-compatible endpoint for every model, in front of the replicas.

Both modes run it: local mode (``kubeplex up``) feeds it replicas from its own processes, and
the cluster gateway (``kubeplex gateway``, :mod:`kubeplex.gateway.cluster`, which imports the
Kubernetes client) feeds it routes and replicas from ModelService and EndpointSlice watches
(the pure mapping is in :mod:`kubeplex.gateway._discovery`). The router itself, holding
requests at zero replicas, the retry on a leaving replica, failure detection and request
migration, is :class:`Gateway`.
"""

from kubeplex.gateway._gateway import METRIC_LABELS, Gateway, Replica, Route
from kubeplex.gateway._migration import DEFAULT_MIGRATE_AFTER_SECONDS, MigrationPolicy

__all__ = ["DEFAULT_MIGRATE_AFTER_SECONDS", "METRIC_LABELS", "Gateway", "MigrationPolicy",
           "Replica", "Route"]
