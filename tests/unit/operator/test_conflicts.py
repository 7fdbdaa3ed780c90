"""Two objects claiming one thing: duplicate served names in a namespace (the older
ModelService serves, the newer is Degraded) and GPUPools whose selectors overlap (a node belongs
to the oldest pool selecting it). The pure rules, the pool daemon's snapshot that applies them
(``handlers._snapshot``), and what the pool cycle makes of them."""

from __future__ import annotations

import copy
from typing import Any

import operator_fakes as cyc
import pytest

from kubeplex.operator._conflicts import (
    DUPLICATE_SERVED_NAME,
    node_owners,
    served_name,
    served_name_conflicts,
)
from kubeplex.operator._reconcile import Snapshot, run_cycle
from kubeplex.operator.handlers import _snapshot

NOW = cyc.NOW


def _msvc(name: str, created: str, ns: str = "ns", served: str | None = None,
          deleting: bool = False) -> dict[str, Any]:
    m: dict[str, Any] = cyc.msvc(name, 1, ns=ns, **({"servedName": served} if served else {}))
    m["metadata"]["creationTimestamp"] = created
    if deleting:
        m["metadata"]["deletionTimestamp"] = "2027-01-15T09:00:00Z"
    return m


def _pool(name: str, created: str, selector: dict[str, str],
          resource: str = "nvidia.com/gpu") -> dict[str, Any]:
    p: dict[str, Any] = cyc.pool()
    p["metadata"].update(name=name, uid=f"uid-{name}", creationTimestamp=created)
    p["spec"]["nodeSelector"] = selector
    p["spec"]["gpu"]["resourceName"] = resource
    return p


def _node(name: str, gpus: int = 8, **labels: str) -> dict[str, Any]:
    return {"name": name, "labels": {"gpu": "h100", **labels},
            "allocatable": {"nvidia.com/gpu": str(gpus)}, "ready": True}


# ---- served names ---------------------------------------------------------------------------

def test_served_name_defaults_to_the_object_name() -> None:
    assert served_name(_msvc("a", "t")) == "a"
    assert served_name(_msvc("a", "t", served="org/model")) == "org/model"


@pytest.mark.parametrize(("first", "second", "refused"), [
    ("2027-01-01T00:00:00Z", "2027-01-01T00:00:05Z", "ns/b"),  # newer loses
    ("2027-01-01T00:00:09Z", "2027-01-01T00:00:05Z", "ns/a"),  # order of the list is irrelevant
    ("2027-01-01T00:00:00Z", "2027-01-01T00:00:00Z", "ns/b"),  # same second: name order
])
def test_the_newer_duplicate_is_refused_naming_the_holder(first: str, second: str,
                                                          refused: str) -> None:
    conflicts = served_name_conflicts([_msvc("a", first, served="m"),
                                       _msvc("b", second, served="m")])
    assert list(conflicts) == [refused]
    c = conflicts[refused]
    holder = "a" if refused == "ns/b" else "b"
    assert c.holder == f"ns/{holder}" and c.reason == DUPLICATE_SERVED_NAME
    assert f"by ModelService {holder}" in c.message and "servedName" in c.message
    assert "delete" in c.message  # says how to fix it


def test_a_default_served_name_collides_with_an_explicit_one() -> None:
    # b's default served name is "b"; a serves "b" explicitly and is older
    conflicts = served_name_conflicts([_msvc("a", "2027-01-01T00:00:00Z", served="b"),
                                       _msvc("b", "2027-01-01T00:00:01Z")])
    assert list(conflicts) == ["ns/b"]


def test_other_namespaces_and_deleting_holders_do_not_conflict() -> None:
    assert served_name_conflicts([_msvc("a", "t1", served="m"),
                                  _msvc("b", "t2", ns="other", served="m")]) == {}
    # the holder is being deleted: the newer one may proceed
    assert served_name_conflicts([_msvc("a", "t1", served="m", deleting=True),
                                  _msvc("b", "t2", served="m")]) == {}


def test_three_of_a_name_refuse_all_but_the_oldest() -> None:
    conflicts = served_name_conflicts([_msvc(n, f"2027-01-01T00:00:0{i}Z", served="m")
                                       for i, n in enumerate(["c", "a", "b"])])
    assert sorted(conflicts) == ["ns/a", "ns/b"]
    assert {c.holder for c in conflicts.values()} == {"ns/c"}


# ---- node ownership -------------------------------------------------------------------------

def test_a_node_belongs_to_the_oldest_pool_selecting_it() -> None:
    old = _pool("old", "2027-01-01T00:00:00Z", {"gpu": "h100"})
    new = _pool("new", "2027-01-02T00:00:00Z", {"zone": "a"})
    nodes = [_node("n0", zone="a"), _node("n1", zone="b"), _node("n2")]
    own = node_owners([new, old], nodes)
    assert own.owner == {"n0": "old", "n1": "old", "n2": "old"}
    assert own.lost == {"new": {"n0": "old"}}
    assert own.usable("old", "n0") and not own.usable("new", "n0")
    assert own.usable("new", "unclaimed-node")
    message = own.message("new")
    assert message is not None and "n0" in message and "GPUPool old" in message
    assert "disjoint" in message  # says how to fix it
    assert own.message("old") is None


def test_ownership_ignores_nodes_without_the_pools_gpus_and_deleting_pools() -> None:
    old = _pool("old", "2027-01-01T00:00:00Z", {"gpu": "h100"}, resource="amd.com/gpu")
    new = _pool("new", "2027-01-02T00:00:00Z", {"gpu": "h100"})
    own = node_owners([old, new], [_node("n0")])  # n0 has no amd.com/gpu: old cannot use it
    assert own.owner == {"n0": "new"} and own.lost == {}
    gone = _pool("gone", "2026-01-01T00:00:00Z", {"gpu": "h100"})
    gone["metadata"]["deletionTimestamp"] = "2027-01-03T00:00:00Z"
    own = node_owners([gone, new], [_node("n0")])
    assert own.owner == {"n0": "new"}
    broken = {"metadata": {"name": "broken", "creationTimestamp": "2020-01-01T00:00:00Z"},
              "spec": {"nodeSelector": "not a mapping"}}
    assert node_owners([broken, new], [_node("n0")]).owner == {"n0": "new"}


# ---- the daemon's snapshot applies both rules -----------------------------------------------

def _indices(pools: list[dict[str, Any]], msvcs: list[dict[str, Any]],
             nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """kopf's index stores as the pool daemon receives them (key -> collection)."""
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for m in msvcs:
        by_pool.setdefault(m["spec"]["pool"], []).append(m)
    return {"pools": {p["metadata"]["name"]: [p] for p in pools},
            "msvc_by_pool": by_pool, "groups_by_pool": {},
            "nodes": {n["name"]: [n] for n in nodes},
            "pods_by_node": {}, "pods_by_group": {}}


def test_snapshot_refuses_a_duplicate_from_another_pool_and_drops_lost_nodes() -> None:
    old = _pool("p", "2027-01-01T00:00:00Z", {"gpu": "h100"})
    new = _pool("q", "2027-01-02T00:00:00Z", {"zone": "a"})
    a = _msvc("a", "2027-01-01T00:00:00Z", served="m")
    b = _msvc("b", "2027-01-01T00:00:01Z", served="m")
    b["spec"]["pool"] = "q"
    kw = _indices([old, new], [a, b], [_node("n0", zone="a"), _node("n1", zone="a", gpu="x")])
    snap_q = _snapshot("q", {}, kw)
    assert snap_q is not None
    assert [n["name"] for n in snap_q.nodes] == ["n1"]  # n0 is p's
    assert snap_q.lost_nodes is not None and "n0" in snap_q.lost_nodes
    assert snap_q.refused["ns/b"][0] == DUPLICATE_SERVED_NAME
    snap_p = _snapshot("p", {}, kw)
    assert snap_p is not None
    assert [n["name"] for n in snap_p.nodes] == ["n0"]  # n1 (q's only) is not offered
    assert snap_p.refused == {} and snap_p.lost_nodes is None


# ---- the pool cycle -------------------------------------------------------------------------

def test_cycle_serves_the_holder_and_degrades_the_duplicate_with_an_event() -> None:
    kube = cyc.FakeKube()
    a, b = _msvc("a", "t1", served="m"), _msvc("b", "t2", served="m")
    cyc.register(kube, a, b)
    ctx = cyc.context(kube)
    conflict = served_name_conflicts([a, b])["ns/b"]
    snap = cyc.snapshot(kube, cyc.pool(), [a, b], cyc.nodes(1))
    snap = Snapshot(**{**snap.__dict__, "refused": {"ns/b": (conflict.reason,
                                                              conflict.message)}})
    run_cycle(ctx, snap, NOW)
    assert [g["metadata"]["name"] for g in kube.of("ServingGroup")] == ["a-0"]
    conds = {c["type"]: c for c in kube.objects[("ModelService", "ns", "b")]["status"][
        "conditions"]}
    assert conds["Degraded"]["status"] == "True"
    assert conds["Degraded"]["reason"] == DUPLICATE_SERVED_NAME
    assert "ModelService a" in conds["Degraded"]["message"]
    assert conds["Ready"]["status"] == "False"
    assert [r for r, _m in kube.events].count(DUPLICATE_SERVED_NAME) == 1
    # the holder is gone: the next cycle serves b
    snap = cyc.snapshot(kube, cyc.pool(), [b], cyc.nodes(1))
    run_cycle(ctx, snap, NOW + 1)
    assert any(g["metadata"]["name"] == "b-0" for g in kube.of("ServingGroup"))
    conds = {c["type"]: c for c in kube.objects[("ModelService", "ns", "b")]["status"][
        "conditions"]}
    assert conds["Degraded"]["status"] == "False"


def test_pool_status_says_which_nodes_it_lost_and_counts_only_its_own() -> None:
    kube = cyc.FakeKube()
    cyc.register(kube)
    ctx = cyc.context(kube)
    pool_obj = cyc.pool()
    own = node_owners([_pool("older", "2020-01-01T00:00:00Z", {"zone": "a"}),
                       {**copy.deepcopy(pool_obj), "metadata": {
                           **pool_obj["metadata"], "creationTimestamp": "2027-01-01T00:00:00Z"}}],
                      [_node("node-0", zone="a"), _node("node-1")])
    mine = [n for n in cyc.nodes(2) if own.usable("p", n["name"])]
    snap = cyc.snapshot(kube, pool_obj, [], mine)
    snap = Snapshot(**{**snap.__dict__, "lost_nodes": own.message("p")})
    run_cycle(ctx, snap, NOW)
    status = kube.objects[("GPUPool", None, "p")]["status"]
    assert status["totalGPUs"] == 8 and status["nodes"] == 1
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Overlapping"]["status"] == "True"
    assert "node-0" in conds["Overlapping"]["message"]
    assert "GPUPool older" in conds["Overlapping"]["message"]
    assert [r for r, _m in kube.events] == ["Overlapping"]
    run_cycle(ctx, cyc.snapshot(kube, pool_obj, [], cyc.nodes(2)), NOW + 1)
    conds = {c["type"]: c for c in kube.objects[("GPUPool", None, "p")]["status"][
        "conditions"]}
    assert conds["Overlapping"]["status"] == "False"


def _with_adapters(m: dict[str, Any], *names: str) -> dict[str, Any]:
    m["spec"]["adapters"] = [{"name": n, "uri": f"hf://org/{n}", "rank": 16} for n in names]
    return m


def test_adapter_names_are_served_names_the_oldest_holder_keeps() -> None:
    old = _with_adapters(_msvc("llama", "2027-01-01T00:00:00Z"), "sql", "chat")
    clash_model = _msvc("sql", "2027-01-02T00:00:00Z")  # served name = an older adapter
    clash_adapter = _with_adapters(_msvc("qwen", "2027-01-03T00:00:00Z"), "chat")
    other_ns = _with_adapters(_msvc("qwen", "2027-01-03T00:00:00Z", ns="other"), "chat")
    fine = _with_adapters(_msvc("mistral", "2027-01-04T00:00:00Z"), "poem")
    out = served_name_conflicts([fine, other_ns, clash_adapter, clash_model, old])
    assert set(out) == {"ns/sql", "ns/qwen"}
    assert out["ns/sql"].holder == "ns/llama" and not out["ns/sql"].adapter
    assert out["ns/qwen"].adapter and out["ns/qwen"].served_name == "chat"
    assert out["ns/qwen"].message.startswith("spec.adapters: the adapter name 'chat' is "
                                             "already served in namespace ns by ModelService "
                                             "llama")
    # A refused ModelService claims nothing: its adapters stay free for younger ones.
    late = _with_adapters(_msvc("late", "2027-01-05T00:00:00Z"), "qwen-only")
    refused = _with_adapters(_msvc("qwen", "2027-01-03T00:00:00Z"), "chat", "qwen-only")
    assert set(served_name_conflicts([old, refused, late])) == {"ns/qwen"}
