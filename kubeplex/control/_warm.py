"""Rule 4 of the fleet plan, the warm pool, and what a claim of a standby does next.

A pool keeps ``PoolBudget.warm_size`` standbys (None: the sum of its models' ``warm``
targets), preloading the pool's ``preload`` models in turn, else the likeliest next scale-ups
first (:func:`likeliest_models`), within the GPUs the replicas left. A claim then wakes the
preloaded model on GPU, or routes it where the engine cannot sleep (:func:`claim_step`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence

from kubeplex.control._placing import ReplicaTemplate
from kubeplex.control._pool import PoolBook
from kubeplex.control._types import (
    Action,
    ActionCause,
    ActionKind,
    GroupPhase,
    ModelKey,
    ModelTarget,
    Shortfall,
    ShortfallCause,
)

__all__ = ["ClaimStep", "claim_step", "keep_warm_pool", "likeliest_models"]


def likeliest_models(models: Iterable[ModelKey], targets: Mapping[ModelKey, ModelTarget]
                     ) -> list[ModelKey]:
    """``models`` in the order warm standbys preload them: the most likely next scale-up
    first (the highest arrival rate, then the most replicas wanted, then the name)."""
    def rank(m: ModelKey) -> tuple[float, int, str]:
        t = targets.get(m, ModelTarget(m, 0))
        return -t.arrival_rate, -t.replicas, m
    return sorted(models, key=rank)


def keep_warm_pool(pool: PoolBook, templates: Sequence[ReplicaTemplate],
                   targets: Mapping[ModelKey, ModelTarget]) -> None:
    """Start or stop standbys so the pool keeps the number it wants (module docstring)."""
    wanted = pool.budget.warm_size
    asking = [t.model for t in templates if targets.get(t.model, ModelTarget(t.model, 0)).warm]
    if wanted is None:
        wanted = sum(targets[m].warm for m in asking)
    by_model = {t.model: t for t in templates}
    rotation = [m for m in pool.budget.preload if m in by_model] or likeliest_models(
        asking or list(by_model), targets)
    why = f"warm pool of {pool.name} wants {wanted}"
    if len(pool.warm) > wanted:
        extra = sorted(pool.warm, key=lambda g: (any(p in rotation for p in g.preloaded),
                                                 g.phase is GroupPhase.WARM, g.id))
        for g in extra[:len(pool.warm) - wanted]:
            pool.actions.append(Action(ActionKind.STOP, pool.name, f"{why}, has "
                                       f"{len(pool.warm)}", g.id, None, g.gpus,
                                       cause=ActionCause.WARM_POOL))
        return
    if not rotation:
        return
    have = len(pool.warm)
    preloaded = [p for g in pool.warm for p in g.preloaded]
    for i in range(wanted - have):
        # The next model of the rotation that has the fewest standbys preloaded.
        model = min(rotation, key=lambda m: (preloaded.count(m), rotation.index(m)))
        template = by_model[model]
        if not pool.fits(template.gpus):
            block = pool.largest_block()
            where = "" if block is None else f", at most {block} free on one node"
            pool.shortfalls.append(Shortfall(
                pool.name, ShortfallCause.WARM_POOL,
                f"GPUPool {pool.name}: warm pool wants {wanted} standbys, has {have + i}: "
                f"{pool.free} of {pool.budget.max_gpus} GPUs free{where}, a standby of "
                f"{model} needs {template.gpus}; the replicas come first"))
            return
        preloaded.append(model)
        node = pool.take(template.gpus)
        pool.actions.append(Action(ActionKind.START_WARM, pool.name, f"{why}, has {have + i}; "
                                   f"preload {model} (the likeliest next scale-up)", None, model,
                                   template.gpus, template.tp, template.pp,
                                   cause=ActionCause.WARM_POOL, node=node))


class ClaimStep(enum.StrEnum):
    """What claiming a warm standby for a model does next (:func:`claim_step`)."""

    WAKE = "wake"    # the model is preloaded and asleep: wake it (GPU sleep mode)
    LOAD = "load"    # not preloaded (or lost): load it through the control API
    ROUTE = "route"  # loaded and awake (an engine that cannot sleep stays loaded): route it
    WAIT = "wait"    # loading or waking: ask again next time


def claim_step(engine_state: str | None) -> ClaimStep:
    """The next step of a warm claim from the runtime's state of the model's engine (None:
    the runtime does not host it). GPU engines preloaded into a standby sleep there, so a claim
    wakes them; the sim engine and vLLM on CPU cannot sleep (the runtime answers the sleep
    with 409), so they stay loaded but unrouted and a claim just routes them."""
    if engine_state is None or engine_state in ("failed", "stopped"):
        return ClaimStep.LOAD
    if engine_state == "sleeping":
        return ClaimStep.WAKE
    if engine_state == "ready":
        return ClaimStep.ROUTE
    return ClaimStep.WAIT
