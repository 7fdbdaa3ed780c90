"""Keeping running pods' LoRA adapters in step with ``spec.adapters``.

A pod's runtime starts with the adapters its config names (:func:`~._builders.runtime_model`),
and its ServingGroup records their fingerprint (``kubeplex.io/adapters``). When a ModelService's
``spec.adapters`` changes, every Ready group hosting it:

1. :func:`change_patch` sees the fingerprint differ: the executor writes the new one and marks
   the group changed in place (``kubeplex.io/changed-in-place``), which makes it re-sync the
   runtime with the group every cycle (it does so for models added in place too, so a container
   restart that brings the pod's original config back is repaired as well);
2. :func:`resync` (from the executor's re-sync, with the runtime's status in hand) asks the
   runtime to serve exactly the wanted adapters of each engine whose adapters differ
   (``PUT /kubeplex/v1/models/{name}/adapters``: it loads and unloads through vLLM's adapter
   endpoints). A runtime that cannot (its engine started without LoRA, or with a smaller
   ``--max-lora-rank``: only a new replica can) is named in ``kubeplex.io/adapters-error`` on the
   group, with one Warning Event on the ModelService per distinct message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kubeplex.operator._builders import ADAPTERS, adapters_fingerprint, runtime_model

if TYPE_CHECKING:
    from kubeplex.operator._executor import Executor, GroupObj, Hosted

__all__ = ["ADAPTERS_ERROR", "change_patch", "resync"]

log = logging.getLogger("kubeplex.operator")

#: On a ServingGroup: why its runtime could not take the wanted adapters (absent: it did).
ADAPTERS_ERROR = "kubeplex.io/adapters-error"
#: Event reason when a running replica cannot change its adapters.
NOT_APPLIED = "AdaptersNotApplied"


def change_patch(view: GroupObj, hosted: Sequence[Hosted]) -> dict[str, str | None] | None:
    """The annotations to write when the hosted models' adapters differ from what the group
    recorded (None: they do not, or a model of the group is not served now: no judgement)."""
    if len(hosted) != len(view.models):
        return None
    want = adapters_fingerprint([h.model for h in hosted])
    if view.annotations.get(ADAPTERS, "") == want:
        return None
    return {ADAPTERS: want or None}


def resync(ex: Executor, view: GroupObj, hosted: Sequence[Hosted],
           status: Mapping[str, Any]) -> None:
    """Ask the runtime to serve each hosted model's wanted adapters where it serves others."""
    control = view.endpoints.control
    if not control:
        return
    engines = {str(e.get("name")): e for e in status.get("models", ())}
    problems = []
    for h in hosted:
        engine = engines.get(h.model.served_name)
        if engine is None or engine.get("state") != "ready":
            continue  # loading or lost: loaded with the current adapters, or next cycle
        want = runtime_model(h.model, view.tp, view.pp)["adapters"]
        if (engine.get("config") or {}).get("adapters", []) == want:
            continue
        code, answer = ex.runtime.set_adapters(control, h.model.served_name, want)
        if code == 200:
            log.info("group %s/%s: %s now serves adapters %s", view.namespace, view.name,
                     h.model.served_name, [a["name"] for a in want])
        elif code == 409:
            problems.append((h, answer))
    message = "; ".join(f"{h.model.name}: {answer}" for h, answer in problems) or None
    if message == view.annotations.get(ADAPTERS_ERROR):
        return
    ex.kube.patch("ServingGroup", view.namespace, view.name,
                  {"metadata": {"annotations": {ADAPTERS_ERROR: message}}})
    for h, answer in problems:
        ex.kube.event("ModelService", view.namespace, h.model.name, h.uid, NOT_APPLIED,
                      f"replica {view.name} keeps its adapters: {answer}", warning=True)
