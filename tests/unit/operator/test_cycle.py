"""The pool cycle (plan -> executor -> status) against an in-memory fake of the Kubernetes
writes: what it creates, that a second run changes nothing, GPU shortfalls, deletions,
warm claims. The fake makes every pod scheduled and ready on its planned node (as KWOK does)."""

from __future__ import annotations

from operator_fakes import (
    NOW,
    FakeKube,
    context,
    msvc,
    nodes,
    pool,
    register,
    snapshot,
)

from kubeplex.operator._reconcile import Snapshot, group_name, run_cycle


def test_cycle_creates_groups_pods_and_a_second_run_changes_nothing() -> None:
    kube = FakeKube()
    models = [msvc("a", 2), msvc("b", 1, ns="other")]
    register(kube, *models)
    ctx, ns = context(kube), nodes(2)
    run_cycle(ctx, snapshot(kube, pool(), models, ns), NOW)
    groups = kube.of("ServingGroup")
    assert sorted(g["metadata"]["name"] for g in groups) == ["a-0", "a-1", "b-0"]
    assert {g["metadata"]["namespace"] for g in groups} == {"ns", "other"}
    assert len(kube.of("Pod")) == 3
    # Pods are now ready: the next cycles only settle statuses, then nothing at all.
    run_cycle(ctx, snapshot(kube, pool(), models, ns), NOW + 1)
    before = len(kube.writes)
    run_cycle(ctx, snapshot(kube, pool(), models, ns), NOW + 2)
    assert kube.writes[before:] == []
    status = kube.objects[("ModelService", "ns", "a")]["status"]
    assert status["ready"] == "2/2"
    assert status["selector"] == "model.kubeplex.io/a=true"


def test_a_pod_lost_after_its_group_was_created_is_recreated_once() -> None:
    kube = FakeKube()
    models = [msvc("a", 1)]
    register(kube, *models)
    ctx = context(kube)
    run_cycle(ctx, snapshot(kube, pool(), models, nodes(1)), NOW)
    kube.objects.pop(("Pod", "ns", "a-0"))  # e.g. the operator died between the two creates
    run_cycle(ctx, snapshot(kube, pool(), models, nodes(1)), NOW + 1)
    assert [p["metadata"]["name"] for p in kube.of("Pod")] == ["a-0"]
    assert len(kube.of("ServingGroup")) == 1


def test_demand_beyond_the_gpus_is_a_scaling_condition_not_a_pod() -> None:
    kube = FakeKube()
    models = [msvc("big", 5)]
    register(kube, *models)
    run_cycle(context(kube), snapshot(kube, pool(max_gpus=3), models, nodes(1)), NOW)
    assert len(kube.of("Pod")) == 3
    conds = {c["type"]: c for c in kube.objects[("ModelService", "ns", "big")]["status"][
        "conditions"]}
    assert conds["Scaling"]["reason"] == "InsufficientGPUs"
    assert "GPUPool p" in conds["Scaling"]["message"]
    assert any(r == "InsufficientGPUs" for r, _m in kube.events)


def test_fragmented_nodes_say_which_block_is_missing() -> None:
    kube = FakeKube()
    models = [msvc("wide", 1, ), msvc("other", 1)]
    models[0]["spec"]["parallelism"] = {"tensor": 4, "pipeline": 1}
    models[0]["spec"]["priority"] = 200  # planned first: the budget (4 GPUs) allows it
    register(kube, *models)
    # two nodes with 2 GPUs each: 4 free in total, but no node has 4
    run_cycle(context(kube), snapshot(kube, pool(), models, nodes(2, gpus=2)), NOW)
    assert not [g for g in kube.of("ServingGroup") if g["metadata"]["name"].startswith("wide")]
    conds = {c["type"]: c for c in kube.objects[("ModelService", "ns", "wide")]["status"][
        "conditions"]}
    assert conds["Scaling"]["reason"] == "InsufficientGPUs"
    assert "needs a node with 4 free GPUs" in conds["Scaling"]["message"]


def test_deleted_model_is_drained_and_its_objects_removed() -> None:
    kube = FakeKube()
    models = [msvc("a", 1)]
    register(kube, *models)
    ctx = context(kube)
    run_cycle(ctx, snapshot(kube, pool(), models, nodes(1)), NOW)
    run_cycle(ctx, snapshot(kube, pool(), [], nodes(1)), NOW + 1)
    assert kube.of("ServingGroup") == [] and kube.of("Pod") == []


def test_scale_down_keeps_a_ready_replica_and_scale_up_claims_the_warm_pod() -> None:
    kube = FakeKube()
    models = [msvc("a", 1)]
    register(kube, *models)
    ctx, warm_pool = context(kube), pool(warm=1)
    run_cycle(ctx, snapshot(kube, warm_pool, models, nodes(1)), NOW)
    run_cycle(ctx, snapshot(kube, warm_pool, models, nodes(1)), NOW + 1)
    warm = [g for g in kube.of("ServingGroup") if g["spec"]["warm"]]
    assert len(warm) == 1
    warm_name = warm[0]["metadata"]["name"]
    models[0]["spec"]["scaling"]["replicas"] = 2
    run_cycle(ctx, snapshot(kube, warm_pool, models, nodes(1)), NOW + 2)
    claimed = kube.objects[("ServingGroup", "ns", warm_name)]
    assert claimed["spec"]["models"][0]["modelService"] == "a"
    assert claimed["status"]["phase"] in ("Loading", "Ready")
    # without pod HTTP the claim completes at once: the pod joins the Service
    run_cycle(ctx, snapshot(kube, warm_pool, models, nodes(1)), NOW + 3)
    pod = kube.objects[("Pod", "ns", warm_name)]
    assert pod["metadata"]["labels"]["model.kubeplex.io/a"] == "true"
    assert "kubeplex.io/warm" not in pod["metadata"]["labels"]
    assert ("WarmClaim" in {r for r, _m in kube.events})
    # ... and the pool refills its standby
    run_cycle(ctx, snapshot(kube, warm_pool, models, nodes(1)), NOW + 4)
    assert len([g for g in kube.of("ServingGroup") if g["spec"]["warm"]]) == 1
    # scale down to 1: one serving group drained, the other kept
    models[0]["spec"]["scaling"]["replicas"] = 1
    run_cycle(ctx, snapshot(kube, warm_pool, models, nodes(1)), NOW + 5)
    serving = [g for g in kube.of("ServingGroup") if not g["spec"]["warm"]]
    assert len(serving) == 1


def test_group_names_are_deterministic_dns_labels() -> None:
    taken: set[str] = {"a-0"}
    assert group_name("a", taken) == "a-1"
    assert group_name("A_b", set()) == "a-b-0"
    assert len(group_name("x" * 80, set())) <= 63


def test_other_pools_pods_on_a_shared_node_count_as_used() -> None:
    kube = FakeKube()
    models = [msvc("a", 3)]
    register(kube, *models)
    snap = snapshot(kube, pool(), models, nodes(1, gpus=4))
    other = {"name": "x", "namespace": "ns", "node": "node-0", "labels": {
        "kubeplex.io/pool": "another"}, "managed": True, "done": False,
        "gpus": {"nvidia.com/gpu": 2}}
    mine = {**other, "labels": {"kubeplex.io/pool": "p"}}
    snap = Snapshot(snap.pool, snap.msvcs, snap.groups, snap.nodes,
                    {"node-0": [other, mine]}, snap.pods_by_group, snap.names_taken)
    run_cycle(context(kube), snap, NOW)
    # 4 GPUs, 2 held by another pool's pod: two replicas fit, the third is a shortfall
    assert len(kube.of("Pod")) == 2
