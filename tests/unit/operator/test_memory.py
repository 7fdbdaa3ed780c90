"""What the operator keeps per object, and the allocator knobs (glibc on these machines)."""

from __future__ import annotations

import platform

import kopf
import pytest

from kubeplex.operator._memory import limit_arenas, trim
from kubeplex.operator.handlers import (
    DIFFBASE_ANNOTATION,
    NoDiffBase,
    _plain,
    _pod_info,
)


def test_index_copies_drop_managed_fields_and_kopfs_diffbase() -> None:
    body = {"metadata": {
        "name": "a", "namespace": "ns", "uid": "u", "generation": 3, "resourceVersion": "9",
        "creationTimestamp": "2027-01-01T00:00:00Z", "labels": {"x": "y"},
        "annotations": {DIFFBASE_ANNOTATION: '{"spec": "' + "x" * 4000 + '"}',
                        "kubeplex.io/claimed-at": "1.0"},
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}] * 5,
        "finalizers": ["kubeplex.io/finalizer"]},
        "spec": {"pool": "p"}, "status": {"ready": "1/1"}}
    plain = _plain(body)
    assert plain["metadata"] == {
        "name": "a", "namespace": "ns", "uid": "u", "generation": 3,
        "creationTimestamp": "2027-01-01T00:00:00Z", "labels": {"x": "y"},
        "annotations": {"kubeplex.io/claimed-at": "1.0"}}
    assert plain["spec"] == {"pool": "p"} and plain["status"] == {"ready": "1/1"}
    plain["spec"]["pool"] = "q"  # a copy: the cycle may not change kopf's body
    assert body["spec"]["pool"] == "p"


def test_pod_index_keeps_only_kubeplex_annotations() -> None:
    info = _pod_info("p", "ns", {"annotations": {"kubeplex.io/router-url": "http://r",
                                                 "other.io/big": "x" * 1000}},
                     {"nodeName": "n"}, {})
    assert info["annotations"] == {"kubeplex.io/router-url": "http://r"}


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="the allocator knobs are glibc's; elsewhere they are no-ops")
def test_allocator_knobs_work_on_glibc() -> None:
    assert limit_arenas() is True
    junk = [bytearray(4096) for _ in range(20_000)]  # ~80 MiB freed below: something to trim
    del junk
    assert isinstance(trim(), bool)



def test_kopf_runs_no_change_handler_so_writes_no_finalizer() -> None:
    """NoDiffBase makes kopf blind to creations and updates (it writes no diff base): an
    on.create, on.update, on.resume or on.field handler added later would never run. Changes
    and deletions reach the operator through on.event handlers keyed on the generation, so
    kopf needs no finalizer on a ModelService (and drops the one older operators left)."""
    changing = kopf.get_default_registry()._changing.get_all_handlers()
    assert not changing, [(h.id, h.reason) for h in changing]


def test_no_diff_base_builds_no_essence_and_stores_none() -> None:
    storage, patch = NoDiffBase(), kopf.Patch()
    body = kopf.Body({"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"pool": "p"}})
    assert storage.fetch(body=body) == storage.build(body=body) == {}  # no copy per event
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert not patch  # nothing written back to the object
