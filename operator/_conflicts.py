"""Pure decisions about two objects claiming one thing, over the plain copies kopf's indices
hold (``{"metadata": ..., "spec": ...}``); no I/O, no clock.

* **One served name per namespace.** Two ModelServices of a namespace with the same
  ``spec.model.servedName`` (default: the ModelService's name) would share the gateway's route
  and the alert rules' ``(namespace, model)`` joins. :func:`served_name_conflicts` keeps the
  oldest serving and refuses the others (``Degraded``, reason ``DuplicateServedName``); once the
  holder is deleted (or being deleted) the next oldest proceeds. The names of LoRA adapters
  (``spec.adapters[].name``) are served names too: one that an older ModelService serves (as
  its model or an adapter) refuses the younger ModelService the same way.
* **One pool per node.** Two GPUPools whose nodeSelectors match one node could both allocate
  its GPUs. :func:`node_owners` gives each node to the oldest pool that selects it (and has
  GPUs of that pool's resource there); the other pools neither count nor use it, and say in
  their status which nodes they lost to whom.

"Oldest" is ``metadata.creationTimestamp`` (RFC 3339, so text order is time order; the API
server stamps seconds), equal stamps fall back to the name, so every pool cycle and every
operator replica decides the same way. Objects being deleted claim nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubeplex.api import GPUPoolSpec
from kubeplex.api._types import parse_spec
from kubeplex.control import DegradedReason
from kubeplex.errors import KubeplexError

__all__ = [
    "DUPLICATE_SERVED_NAME",
    "NameConflict",
    "NodeOwnership",
    "adapter_names",
    "node_owners",
    "served_name",
    "served_name_conflicts",
]

#: Condition reason (and Event reason) of a refused ModelService.
DUPLICATE_SERVED_NAME = DegradedReason.DUPLICATE_SERVED_NAME


def _age(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return str(meta.get("creationTimestamp") or ""), str(meta["name"])


def _alive(obj: Mapping[str, Any]) -> bool:
    return not obj["metadata"].get("deletionTimestamp")


def served_name(msvc: Mapping[str, Any]) -> str:
    """The OpenAI model name clients use: ``spec.model.servedName``, else the object's name
    (the CRD's default)."""
    model = (msvc.get("spec") or {}).get("model") or {}
    return str(model.get("servedName") or msvc["metadata"]["name"])


@dataclass(frozen=True)
class NameConflict:
    """ModelService ``key`` is refused: ``holder`` (older) serves ``served_name`` already."""

    key: str
    holder: str
    served_name: str
    reason: str = DUPLICATE_SERVED_NAME
    #: True when the clashing name is one of this ModelService's adapters (spec.adapters).
    adapter: bool = False

    @property
    def message(self) -> str:
        namespace, holder = self.holder.split("/", 1)
        if self.adapter:
            return (f"spec.adapters: the adapter name {self.served_name!r} is already served in "
                    f"namespace {namespace} by ModelService {holder} (created earlier; as its "
                    f"model or one of its adapters), so this one is not served. Fix: rename "
                    f"the adapter, or delete {holder}; this one is served as soon as the name "
                    f"is free")
        return (f"spec.model.servedName {self.served_name!r} is already served in namespace "
                f"{namespace} by ModelService {holder} (created earlier); two ModelServices "
                f"with one served name cannot be routed or alerted apart, so this one is not "
                f"served. Fix: delete and re-create this ModelService with another "
                f"spec.model.servedName (the field is immutable), or delete {holder}; this "
                f"one is served as soon as the name is free")


def adapter_names(msvc: Mapping[str, Any]) -> list[str]:
    """The names of its LoRA adapters (``spec.adapters[].name``)."""
    return [str(a.get("name")) for a in (msvc.get("spec") or {}).get("adapters") or ()
            if isinstance(a, Mapping) and a.get("name")]


def served_name_conflicts(msvcs: Iterable[Mapping[str, Any]]) -> dict[str, NameConflict]:
    """Every refused ModelService (key ``namespace/name``) -> its conflict. Oldest first, each
    claims its served name and adapter names in its namespace unless an older one holds one
    of them (then it is refused and claims nothing)."""
    claimed: dict[tuple[str, str], str] = {}  # (namespace, name) -> holder key
    out: dict[str, NameConflict] = {}
    for m in sorted((m for m in msvcs if _alive(m)), key=_age):
        ns = str(m["metadata"].get("namespace") or "default")
        key = f"{ns}/{m['metadata']['name']}"
        names = [(served_name(m), False), *((a, True) for a in adapter_names(m))]
        clash = next(((n, a) for n, a in names if (ns, n) in claimed), None)
        if clash is not None:
            out[key] = NameConflict(key, claimed[ns, clash[0]], clash[0], adapter=clash[1])
            continue
        for name, _ in names:
            claimed[ns, name] = key
    return out


@dataclass(frozen=True)
class NodeOwnership:
    """``owner``: node -> the pool that may use it. ``lost``: pool -> {node: owner} for nodes
    its selector matches but an older pool owns."""

    owner: Mapping[str, str] = field(default_factory=dict)
    lost: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def usable(self, pool: str, node: str) -> bool:
        """Whether ``pool`` may count and use ``node`` (nodes nobody claims: yes; the pool's
        own selector still decides)."""
        return self.owner.get(node, pool) == pool

    def message(self, pool: str) -> str | None:
        """What ``pool``'s status says about nodes it lost (None: none)."""
        lost = self.lost.get(pool)
        if not lost:
            return None
        by_owner: dict[str, list[str]] = {}
        for node, owner in sorted(lost.items()):
            by_owner.setdefault(owner, []).append(node)
        parts = [f"node(s) {', '.join(nodes)} belong to GPUPool {owner} (older, its "
                 f"nodeSelector matches them too)" for owner, nodes in sorted(by_owner.items())]
        return (f"{'; '.join(parts)}: this pool neither counts nor uses their GPUs. Fix: make "
                f"the nodeSelectors disjoint (e.g. a label per pool)")


def _selects(pool: GPUPoolSpec, node: Mapping[str, Any]) -> bool:
    labels = node.get("labels") or {}
    if not all(labels.get(k) == v for k, v in pool.node_selector.items()):
        return False
    if pool.gpu.device_class_name is not None:
        return True  # DRA: the node's GPUs are devices in ResourceSlices, not allocatable
    gpus = str((node.get("allocatable") or {}).get(pool.gpu.resource_name, "0"))
    return gpus.isdigit() and int(gpus) > 0


def node_owners(pools: Iterable[Mapping[str, Any]],
                nodes: Iterable[Mapping[str, Any]]) -> NodeOwnership:
    """Each node's owning pool: the oldest live pool whose nodeSelector matches it and that has
    GPUs of its resource there. ``nodes``: the operator's node index entries (``name``,
    ``labels``, ``allocatable``). Pools whose spec does not parse claim nothing (their own
    cycle reports them)."""
    parsed: list[tuple[tuple[str, str], str, GPUPoolSpec]] = []
    for p in pools:
        if not _alive(p):
            continue
        try:
            spec = parse_spec(GPUPoolSpec, p.get("spec") or {})
        except (KubeplexError, KeyError, TypeError, ValueError):
            continue
        parsed.append((_age(p), str(p["metadata"]["name"]), spec))
    parsed.sort(key=lambda item: item[0])
    owner: dict[str, str] = {}
    lost: dict[str, dict[str, str]] = {}
    for node in nodes:
        name = str(node["name"])
        for _age_key, pool, spec in parsed:
            if not _selects(spec, node):
                continue
            if name not in owner:
                owner[name] = pool
            else:
                lost.setdefault(pool, {})[name] = owner[name]
    return NodeOwnership(owner, lost)
