"""The pool cycle (plan -> executor -> status) against an in-memory fake of the Kubernetes
writes: what it creates, that a second run changes nothing, GPU shortfalls, deletions,
warm claims. The fake makes every pod scheduled and ready on its planned node (as KWOK does)."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

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

from kubeplex.control import ActionKind, group_name
from kubeplex.operator._builders import POOL_LABEL
from kubeplex.operator._executor import POD_SHOWS_S
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._placement import Templates
from kubeplex.operator._reconcile import Context, Snapshot, run_cycle
from kubeplex.operator._runtime_client import RuntimeClient
from kubeplex.operator._settings import Settings


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
    # The dashboard's series say the same as the statuses.
    value = ctx.metrics.registry.get_sample_value
    assert value("kubeplex_modelservice_ready_replicas", {"namespace": "ns",
                                                          "modelservice": "a"}) == 2
    pool_status = kube.objects[("GPUPool", None, "p")]["status"]
    assert {state: value("kubeplex_gpupool_gpus", {"pool": "p", "state": state})
            for state in ("total", "allocated", "free")} == {
        "total": pool_status["totalGPUs"], "allocated": pool_status["allocatedGPUs"],
        "free": pool_status["freeGPUs"]}


def test_a_pod_lost_after_its_group_was_created_is_recreated_once() -> None:
    kube = FakeKube()
    models = [msvc("a", 1)]
    register(kube, *models)
    run_cycle(context(kube), snapshot(kube, pool(), models, nodes(1)), NOW)
    kube.objects.pop(("Pod", "ns", "a-0"))  # e.g. the operator died between the two creates
    run_cycle(context(kube), snapshot(kube, pool(), models, nodes(1)), NOW + 1)
    assert [p["metadata"]["name"] for p in kube.of("Pod")] == ["a-0"]
    assert len(kube.of("ServingGroup")) == 1


def test_a_pod_its_watch_has_not_shown_yet_is_not_made_again() -> None:
    """In a mass apply the pod watch shows a new pod seconds after the group's: the next
    cycle sees the group without it. The pod this process made is expected, not made again
    (an "already exists" write each), until ``POD_SHOWS_S`` have passed."""
    kube = FakeKube()
    models = [msvc("a", 1)]
    register(kube, *models)
    ctx = context(kube)
    run_cycle(ctx, snapshot(kube, pool(), models, nodes(1)), NOW)
    pod = kube.objects.pop(("Pod", "ns", "a-0"))  # not in the watch's index yet
    run_cycle(ctx, snapshot(kube, pool(), models, nodes(1)), NOW + 1)
    assert kube.of("Pod") == []
    ctx.pods_made["ns/a-0"] -= POD_SHOWS_S  # never shown: made again
    run_cycle(ctx, snapshot(kube, pool(), models, nodes(1)), NOW + 2)
    assert [p["metadata"]["name"] for p in kube.of("Pod")] == ["a-0"]
    assert pod["spec"] == kube.objects[("Pod", "ns", "a-0")]["spec"]


def test_a_pod_lost_after_it_served_is_replaced_by_the_warm_standby() -> None:
    kube = FakeKube()
    models = [msvc("a", 1)]
    register(kube, *models)
    ctx, warm_pool = context(kube), pool(warm=1)
    for t in range(3):
        run_cycle(ctx, snapshot(kube, warm_pool, models, nodes(1)), NOW + t)
    assert kube.objects[("ServingGroup", "ns", "a-0")]["status"]["phase"] == "Ready"
    standby = next(g["metadata"]["name"] for g in kube.of("ServingGroup") if g["spec"]["warm"])
    kube.objects.pop(("Pod", "ns", "a-0"))  # deleted by someone, or the node went away
    report = run_cycle(ctx, snapshot(kube, warm_pool, models, nodes(1)), NOW + 3)
    assert ("ServingGroup", "ns", "a-0") not in kube.objects
    first = report.plan.actions[0]
    assert (first.kind, first.group) == (ActionKind.CLAIM, f"ns/{standby}")
    lost = [m for r, m in kube.events if r == "ReplicaLost"]
    assert len(lost) == 1 and "a-0" in lost[0]


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
    models[0]["metadata"]["generation"] += 1  # as the API server counts spec changes
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
    models[0]["metadata"]["generation"] += 1  # /scale changes the spec: a new generation
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
    models[0]["metadata"]["generation"] += 1
    run_cycle(ctx, snapshot(kube, warm_pool, models, nodes(1)), NOW + 5)
    serving = [g for g in kube.of("ServingGroup") if not g["spec"]["warm"]]
    assert len(serving) == 1
    # The autoscaler was handed one cold start, a-0's (created at NOW, Ready at NOW + 1):
    # neither the claimed standby nor the standbys started cold count.
    assert ctx.memory["p"].models["ns/a"].cold_starts == (1.0,)


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


def _small(name: str, replicas: int, profile: str, uri: str) -> dict[str, Any]:
    m = msvc(name, replicas, uri=uri, profile=profile)
    m["spec"]["workload"] = {"requestsPerSecond": 0.5, "burstiness": 4, "promptTokens": 512,
                             "outputTokens": 128}
    m["spec"]["slo"]["ttftSeconds"] = 1.0
    return m


def _pair() -> tuple[FakeKube, list[dict[str, Any]], Context]:
    """Two small models that placement packs into one 2-GPU group, registered, and a cycle
    context that plans inline (no background placement) and talks to no pod."""
    kube = FakeKube()
    models = [_small("chat", 1, "llama-3.1-8b", "hf://meta-llama/Llama-3.1-8B-Instruct"),
              _small("coder", 1, "qwen-2.5-7b", "hf://Qwen/Qwen2.5-7B-Instruct")]
    register(kube, *models)
    settings = Settings(scrape="off")
    return kube, models, Context(settings, kube, RuntimeClient(settings), OperatorMetrics(),
                                 templates=Templates(background=False, inline=True))


def test_colocated_models_share_one_pod_and_scale_one_at_a_time() -> None:
    kube, models, ctx = _pair()
    ns = nodes(1, gpus=2)

    def cycle(t: float) -> None:
        run_cycle(ctx, snapshot(kube, pool(), models, ns), NOW + t)

    cycle(0)
    groups, pods = kube.of("ServingGroup"), kube.of("Pod")
    assert [g["metadata"]["name"] for g in groups] == ["chat-coder-0"], groups
    entries = groups[0]["spec"]["models"]
    assert [e["modelService"] for e in entries] == ["chat", "coder"]
    assert sum(e["memoryShare"] for e in entries) <= 0.9 + 1e-3
    assert {o["name"] for o in groups[0]["metadata"]["ownerReferences"]} == {"chat", "coder"}
    labels = pods[0]["metadata"]["labels"]
    assert labels["model.kubeplex.io/chat"] == labels["model.kubeplex.io/coder"] == "true"
    config = json.loads(pods[0]["spec"]["containers"][0]["env"][0]["value"])
    assert [m["name"] for m in config["models"]] == ["chat", "coder"]
    assert pods[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cycle(1)
    before = len(kube.writes)
    cycle(2)
    assert kube.writes[before:] == []  # idempotent
    status = kube.objects[("ModelService", "ns", "coder")]["status"]
    assert status["ready"] == "1/1" and status["placement"][0]["group"] == "chat-coder-0"
    assert status["placement"][0]["memoryShare"] < 0.9

    # coder scales to zero: unloaded from the shared pod, which keeps serving chat.
    models[1]["spec"]["scaling"]["replicas"] = 0
    cycle(3)
    pod = kube.objects[("Pod", "ns", "chat-coder-0")]
    assert "model.kubeplex.io/coder" not in pod["metadata"]["labels"]
    assert pod["metadata"]["labels"]["model.kubeplex.io/chat"] == "true"
    group = kube.objects[("ServingGroup", "ns", "chat-coder-0")]
    assert [e["modelService"] for e in group["spec"]["models"]] == ["chat"]
    for t in (4, 5):
        cycle(t)
    before = len(kube.writes)
    cycle(6)
    assert kube.writes[before:] == []
    assert len(kube.of("Pod")) == 1

    # coder back to one: loaded into the running pod beside chat (no new pod).
    models[1]["spec"]["scaling"]["replicas"] = 1
    cycle(7)
    cycle(8)
    assert len(kube.of("Pod")) == 1
    pod = kube.objects[("Pod", "ns", "chat-coder-0")]
    assert pod["metadata"]["labels"]["model.kubeplex.io/coder"] == "true"
    assert ("CoLocated" in {r for r, _m in kube.events})

    # coder deleted: unloaded, the pod stays for chat; chat deleted: everything goes.
    models = models[:1]
    cycle(9)
    assert [e["modelService"] for e in kube.objects[("ServingGroup", "ns", "chat-coder-0")][
        "spec"]["models"]] == ["chat"]
    models = []
    cycle(10)
    cycle(11)
    assert kube.of("ServingGroup") == [] and kube.of("Pod") == []


def test_an_unload_interrupted_after_the_label_converges() -> None:
    kube, models, ctx = _pair()
    ns = nodes(1, gpus=2)
    for t in range(3):
        run_cycle(ctx, snapshot(kube, pool(), models, ns), NOW + t)
    # The operator died right after taking coder's label off the pod (first write of an
    # unload): the group still lists coder. A new operator finishes the unload.
    kube.objects[("Pod", "ns", "chat-coder-0")]["metadata"]["labels"].pop(
        "model.kubeplex.io/coder")
    models[1]["spec"]["scaling"]["replicas"] = 0
    for t in range(3, 7):
        run_cycle(ctx, snapshot(kube, pool(), models, ns), NOW + t)
    group = kube.objects[("ServingGroup", "ns", "chat-coder-0")]
    assert [e["modelService"] for e in group["spec"]["models"]] == ["chat"]
    assert len(kube.of("Pod")) == 1 and len(kube.of("ServingGroup")) == 1
    before = len(kube.writes)
    run_cycle(ctx, snapshot(kube, pool(), models, ns), NOW + 7)
    assert kube.writes[before:] == []


def test_a_standby_preloaded_with_a_deleted_model_is_stopped() -> None:
    kube = FakeKube()
    models = [msvc("a", 1)]
    register(kube, *models)
    ctx, warm_pool = context(kube), pool(warm=1)
    for t in range(2):
        run_cycle(ctx, snapshot(kube, warm_pool, models, nodes(1)), NOW + t)
    warm = [g for g in kube.of("ServingGroup") if g["spec"]["warm"]]
    assert [m["modelService"] for m in warm[0]["spec"]["models"]] == ["a"]  # preloaded
    pod = kube.objects[("Pod", "ns", warm[0]["metadata"]["name"])]
    config = json.loads(pod["spec"]["containers"][0]["env"][0]["value"])
    assert [m["name"] for m in config["models"]] == ["a"]
    assert "model.kubeplex.io/a" not in pod["metadata"]["labels"]  # not routed
    for t in range(2, 4):
        run_cycle(ctx, snapshot(kube, warm_pool, [], nodes(1)), NOW + t)
    assert kube.of("ServingGroup") == [] and kube.of("Pod") == []


def test_a_scale_decision_is_recorded_once_even_from_a_stale_snapshot() -> None:
    kube = FakeKube()
    models = [msvc("a", 0)]
    register(kube, *models)
    ctx = context(kube)
    run_cycle(ctx, snapshot(kube, pool(), models, nodes(1)), NOW)
    assert kube.objects[("ModelService", "ns", "a")]["status"]["desiredReplicas"] == 0
    models[0]["spec"]["scaling"]["replicas"] = 1
    models[0]["metadata"]["generation"] += 1
    snap = snapshot(kube, pool(), models, nodes(1))
    stale = copy.deepcopy(snap.msvcs)  # kopf's index before the status patch arrives
    run_cycle(ctx, snap, NOW + 1)
    recorded = copy.deepcopy(kube.objects[("ModelService", "ns", "a")]["status"]["lastScale"])
    assert (recorded["from"], recorded["to"]) == (0, 1)
    scaled = [m for r, m in kube.events if r == "Scaled"]
    assert len(scaled) == 1
    # The next cycle still sees desiredReplicas 0 in its snapshot: nothing new to record.
    fresh = snapshot(kube, pool(), models, nodes(1))
    run_cycle(ctx, Snapshot(fresh.pool, stale, fresh.groups, fresh.nodes, fresh.pods_by_node,
                            fresh.pods_by_group, fresh.names_taken), NOW + 2)
    assert kube.objects[("ModelService", "ns", "a")]["status"]["lastScale"] == recorded
    assert len([m for r, m in kube.events if r == "Scaled"]) == 1
    # A later cycle that changes nothing leaves lastScale alone too.
    run_cycle(ctx, snapshot(kube, pool(), models, nodes(1)), NOW + 3)
    assert kube.objects[("ModelService", "ns", "a")]["status"]["lastScale"] == recorded
    assert len([m for r, m in kube.events if r == "Scaled"]) == 1


def test_a_refused_modelservice_gets_no_service_until_it_is_served() -> None:
    """Served ModelServices get their Service from the cycle; a refused one (a duplicate
    servedName, a Degraded spec) has none: the one the operator made for it before
    is deleted (a user's Service of that name is not), and it comes back once served."""
    from kubeplex.operator._builders import service_manifest

    kube = FakeKube()
    a, dup = msvc("a", 1, servedName="m"), msvc("b", 1, servedName="m")
    bad = msvc("bad", 1)
    bad["spec"]["scaling"].update(minReplicas=5, maxReplicas=1)  # Degraded: cannot serve
    register(kube, a, dup, bad)
    kube.create(service_manifest("ns", "b", "uid-b", 8000))  # made before b was refused
    kube.create({**service_manifest("ns", "bad", "someone-else", 8000)})  # not ours
    ctx = context(kube)
    refused = {"ns/b": ("DuplicateServedName", "servedName m is served by ModelService a")}

    def cycle(models: list[dict[str, Any]], now: float, refusals: dict[str, Any]) -> None:
        snap = snapshot(kube, pool(), copy.deepcopy(models), nodes(1))
        run_cycle(ctx, Snapshot(**{**snap.__dict__, "refused": refusals}), now)

    cycle([a, dup, bad], NOW, refused)
    services = {s["metadata"]["name"]: s for s in kube.of("Service")}
    assert sorted(services) == ["a", "bad"]
    assert services["a"]["spec"]["selector"] == {"model.kubeplex.io/a": "true"}
    assert services["a"]["metadata"]["ownerReferences"][0]["uid"] == "uid-a"
    assert services["bad"]["metadata"]["ownerReferences"][0]["uid"] == "someone-else"
    conds = {c["type"]: c for c in kube.objects[("ModelService", "ns", "bad")]["status"][
        "conditions"]}
    assert conds["Degraded"]["status"] == "True", conds
    # nothing changed: no Service write again
    before = len(kube.writes)
    cycle([a, dup, bad], NOW + 1, refused)
    assert [w for w in kube.writes[before:] if w[1] == "Service"] == []
    # a is deleted, b is served now: its Service comes back
    cycle([dup, bad], NOW + 2, {})
    assert sorted(s["metadata"]["name"] for s in kube.of("Service")) == ["a", "b", "bad"]
    assert kube.objects[("Service", "ns", "b")]["spec"]["selector"] == {
        "model.kubeplex.io/b": "true"}


def test_a_consolidation_copy_that_never_gets_ready_is_given_up_with_an_event() -> None:
    """chat runs alone (started before placement paired it with coder); consolidation loads
    it beside coder (``kubeplex.io/added-at``); its engine never gets ready there: after
    ``CONSOLIDATION_TIMEOUT_S`` the cycle unloads it from coder's pod, chat's own group keeps
    serving, an Event says why, and chat is not moved again meanwhile."""
    from kubeplex.control import CONSOLIDATION_TIMEOUT_S
    from kubeplex.operator._executor import ADDED_AT

    kube, (chat, coder), ctx = _pair()
    ns = nodes(1, gpus=2)

    def cycle(models: list[dict[str, Any]], t: float) -> None:
        run_cycle(ctx, snapshot(kube, pool(), models, ns), NOW + t)

    def hosted(group: str) -> list[str]:
        return [e["modelService"] for e in kube.objects[("ServingGroup", "ns", group)][
            "spec"]["models"]]

    for t in range(2):
        cycle([chat], t)  # alone: the whole 0.9
    for t in range(2, 8):
        cycle([chat, coder], t)
        if "chat" in hosted("coder-0"):
            break
    assert hosted("chat-0") == ["chat"] and hosted("coder-0") == ["coder", "chat"]
    added = float(kube.objects[("ServingGroup", "ns", "coder-0")]["metadata"]["annotations"][
        ADDED_AT])
    assert added == NOW + t
    # the runtime never reports chat ready in coder-0: its label never comes
    labels = kube.objects[("Pod", "ns", "coder-0")]["metadata"]["labels"]
    labels.pop("model.kubeplex.io/chat", None)
    cycle([chat, coder], t + CONSOLIDATION_TIMEOUT_S + 1)
    assert hosted("coder-0") == ["coder"] and hosted("chat-0") == ["chat"]
    assert kube.objects[("ServingGroup", "ns", "chat-0")].get("status", {}).get(
        "phase") != "Draining"
    given_up = [m for r, m in kube.events if r == "ConsolidationGivenUp"]
    assert len(given_up) == 1 and "consolidation of ns/chat given up" in given_up[0]
    assert ctx.memory["p"].gave_up == {"ns/chat": NOW + t + CONSOLIDATION_TIMEOUT_S + 1}
    for dt in range(2, 6):  # no retry meanwhile
        cycle([chat, coder], t + CONSOLIDATION_TIMEOUT_S + dt)
    assert hosted("coder-0") == ["coder"] and hosted("chat-0") == ["chat"]


def test_a_model_placement_cannot_fit_beside_the_others_is_degraded() -> None:
    """Placement gives every model one replica before any gets two; a model still left
    without one (the pool is too small for all) is Degraded, naming the pool and the fix."""
    kube = FakeKube()
    models = [msvc(f"m{i}", None, profile="llama-3.1-70b") for i in range(3)]
    for m in models:
        m["spec"]["scaling"]["minReplicas"] = 1
        m["spec"]["parallelism"] = {"tensor": "auto", "pipeline": "auto"}
    register(kube, *models)
    settings = Settings(scrape="off")
    ctx = Context(settings, kube, RuntimeClient(settings), OperatorMetrics(),
                  templates=Templates(background=False, inline=True))
    report = run_cycle(ctx, snapshot(kube, pool(max_gpus=4), models, nodes(1, gpus=4)), NOW)
    degraded = {k: v for k, v in report.degraded.items() if "single replica" in v}
    assert degraded, report.degraded
    for key in degraded:
        status = kube.objects[("ModelService", "ns", key.split("/")[1])]["status"]
        cond = {c["type"]: c for c in status["conditions"]}["Degraded"]
        assert cond["reason"] == "DoesNotFit" and "maxGPUs" in cond["message"]


def test_a_first_status_left_to_the_next_cycle_survives_another_pools_cycle() -> None:
    """A new ModelService's first status waits for the cycle after the one that started its
    group, which writes the start as its lastScale (from 0). The pools' cycles share the
    operator's context: another pool's cycle in between must not drop that record."""
    kube = FakeKube()
    a, b = msvc("a", 1), msvc("b", 1)
    b["spec"]["pool"] = "q"
    register(kube, a, b)
    ctx = context(kube)
    q = copy.deepcopy(pool())
    q["metadata"].update(name="q", uid="pool-q")

    def cycle(pool_obj: dict[str, Any], model: dict[str, Any], t: float) -> None:
        snap = snapshot(kube, pool_obj, [copy.deepcopy(model)], nodes(1))
        mine = [g for g in snap.groups
                if g["metadata"]["labels"].get(POOL_LABEL) == pool_obj["metadata"]["name"]]
        run_cycle(ctx, dataclasses.replace(snap, groups=mine), NOW + t)

    cycle(pool(), a, 0)  # starts a's group; a's first status waits
    cycle(q, b, 0.5)  # another pool starts b's
    assert not kube.objects[("ModelService", "ns", "a")].get("status")
    cycle(pool(), a, 1)
    status = kube.objects[("ModelService", "ns", "a")]["status"]
    assert (status["lastScale"]["from"], status["lastScale"]["to"]) == (0, 1)
    assert [w for w in kube.writes if w[1] == "ModelService" and w[2] == "a"] == [
        ("patch-status", "ModelService", "a")]
