"""LoRA adapters at the gateway: each adapter of a ModelService is routed like its model.

A :class:`~kubeplex.gateway._gateway.Route` carries its ModelService's adapter names; a request
naming one goes to that route's replicas unchanged (the replica's runtime sends it to the engine
serving the adapter), counted under the base model (its replicas do the work, so its arrival
rate drives their scaling). ``GET /v1/models`` lists each adapter with its model as ``parent``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubeplex.gateway._gateway import Route

__all__ = ["adapter_cards"]


def adapter_cards(routes: Mapping[str, Route], replicas: Mapping[str, Sequence[object]]
                  ) -> list[dict[str, Any]]:
    """``/v1/models`` entries of every routed adapter, ordered like the models."""
    return [{"id": name, "object": "model", "created": 0, "owned_by": "kubeplex",
             "root": f"{r.namespace}/{r.modelservice}", "parent": r.model,
             "replicas": len(replicas.get(key, ()))}
            for key, r in sorted(routes.items(), key=lambda item: item[1].labels)
            for name in r.adapters]
