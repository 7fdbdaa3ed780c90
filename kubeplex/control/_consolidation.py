"""Rule 3 of the fleet plan: consolidation, bounded and given up when it does not work.

A model that started alone (from the quick template, before placement paired it) runs in a
group holding more memory than placement gives it there, so no partner can join. While the pool
is stable, such a model moves next to its placement partners, within the move budget: *added*
to a running group with room (no GPUs needed), else one new group *started* for it and its
partners that are misplaced too, when the pool's free GPUs allow it now. The old group is
drained by a later plan's scale-down once the new copy is ready; until then the plan waits
rather than scaling the model down, so no model loses its last ready replica.

A new copy not ready :data:`CONSOLIDATION_TIMEOUT_S` after it started is given up: its group
drained (a started one) or the model unloaded from it (an added one), and the model is not
consolidated again for :data:`CONSOLIDATION_RETRY_S`.
"""

from __future__ import annotations

from collections.abc import Sequence

from kubeplex.control._placing import ReplicaTemplate
from kubeplex.control._pool import SHARE_TOLERANCE, Hosting, PoolBook
from kubeplex.control._types import (
    Action,
    ActionCause,
    ActionKind,
    GroupPhase,
    GroupView,
    ModelKey,
    namespace_of,
)

__all__ = [
    "CONSOLIDATION_RETRY_S",
    "CONSOLIDATION_TIMEOUT_S",
    "consolidate",
    "give_up",
    "moving_in",
    "started_at",
]

#: A consolidation copy still not ready this long after it started is given up: ten times the
#: autoscaler's default cold start (``AutoscalerConfig.cold_start_s``, 60 s), room for a large
#: model's download and load, short enough that a copy that never comes up (an image or model
#: that cannot load, a node that went away) does not keep the model one replica over target.
CONSOLIDATION_TIMEOUT_S = 600.0
#: After a consolidation of a model was given up, it is not tried again for this long (the
#: same failure would repeat; placement or the fleet may have changed by then).
CONSOLIDATION_RETRY_S = 1800.0


def _misplaced(g: GroupView, template: ReplicaTemplate) -> bool:
    """``g`` runs ``template.model`` alone with more memory than placement gives it there
    (started from the quick "alone" template before placement paired it), so no partner can
    join it: a candidate for consolidation."""
    return (bool(template.partners) and g.models == (template.model,)
            and len(g.shares) == 1 and g.shape == template.shape
            and g.shares[0] > template.memory_share + SHARE_TOLERANCE)


def moving_in(template: ReplicaTemplate, serving: Sequence[GroupView]) -> list[GroupView]:
    """A consolidation of ``template.model`` under way: its new copies (beside a partner,
    still starting or loading) when a ready misplaced copy exists, else none (the misplaced
    one is drained only once a new one is ready: the plan waits instead of scaling down)."""
    model = template.model
    old = any(_misplaced(g, template) and g.phase is GroupPhase.READY
              and model not in g.loading for g in serving)
    new = [g for g in serving if (g.phase is GroupPhase.STARTING or model in g.loading)
           and any(p in g.models for p in template.partners)]
    return new if old else []


def started_at(g: GroupView, model: ModelKey) -> float:
    """When ``model``'s copy in ``g`` started: the group's start, or when it was added."""
    if g.phase is GroupPhase.READY and model in g.loading and g.loading_since:
        return g.loading_since
    return g.since


def give_up(pool: PoolBook, model: ModelKey, stuck: Sequence[GroupView], now: float) -> None:
    """Consolidation copies of ``model`` not ready after :data:`CONSOLIDATION_TIMEOUT_S`: a
    group started for it (and its partners) is drained, a model added to a partner's group is
    unloaded from it; the old copy keeps serving. Recorded in ``pool.gave_up``."""
    for g in stuck:
        hosting = pool.hosting.get(g.id)
        if hosting is None:
            continue  # already drained by this plan (a partner's give-up)
        starting = g.phase is GroupPhase.STARTING
        who = ", ".join(hosting.models) if starting else model
        why = (f"consolidation of {who} given up: the new copy in {g.id} is not ready after "
               f"{now - started_at(g, model):.0f} s (limit {CONSOLIDATION_TIMEOUT_S:.0f} s); "
               f"the old copy keeps serving, no retry for {CONSOLIDATION_RETRY_S:.0f} s")
        if starting:
            del pool.hosting[g.id]
            pool.gave_up.update(dict.fromkeys(hosting.models, why))
            pool.actions.append(Action(ActionKind.DRAIN, pool.name, why, g.id, model,
                                       cause=ActionCause.CONSOLIDATION_GIVEN_UP))
        elif model in hosting.models and not pool.may_change(g.id):
            pool.moving = True  # out of moves this plan: keep waiting, give up next time
        elif model in hosting.models:
            hosting.remove(model)
            pool.moved.add(g.id)
            pool.gave_up[model] = why
            pool.actions.append(Action(ActionKind.UNLOAD, pool.name,
                                       f"{why}; {', '.join(hosting.models)} stay", g.id, model,
                                       cause=ActionCause.CONSOLIDATION_GIVEN_UP))


def consolidate(pool: PoolBook, groups: Sequence[GroupView],
                templates: Sequence[ReplicaTemplate]) -> None:
    """Move models that run alone in groups placement would share (see :func:`_misplaced`)
    next to their partners, within the move budget: ADD into a running group with room (no
    GPUs needed), else START one group for the model and its misplaced partners if the pool
    has the GPUs now. The old groups are drained by the scale-down of a later plan, once the
    new copies are ready (:func:`moving_in` holds the scale-down until then)."""
    by_model = {t.model: t for t in templates}
    alone: dict[ModelKey, list[GroupView]] = {}  # ready groups of one model, by model
    for g in groups:
        if g.phase is GroupPhase.READY and len(g.models) == 1:
            alone.setdefault(g.models[0], []).append(g)
    misplaced = {t.model: g for t in templates for g in alone.get(t.model, ())
                 if _misplaced(g, t)}
    done: set[ModelKey] = set()
    for template in templates:
        model = template.model
        old = misplaced.get(model)
        if old is None or model in done or not pool.moves_left():
            continue
        why = (f"consolidate: placement co-locates {model} with "
               f"{', '.join(template.partners)}; {old.id} runs it alone")
        into = sorted((g for g in groups if g.phase is GroupPhase.READY and g.id != old.id
                       and g.id in pool.hosting and not g.loading
                       and pool.hosting[g.id].room_for(template)),
                      key=lambda g: (-sum(pool.hosting[g.id].shares), g.id))
        if into:
            target = into[0]
            hosting = pool.hosting[target.id]
            others = ", ".join(hosting.models)
            hosting.add(model, template.memory_share)
            pool.moved.add(target.id)
            done.add(model)
            pool.actions.append(Action(
                ActionKind.ADD, pool.name, f"{why}: load it into {target.id} beside {others}, "
                f"then drain {old.id}", target.id, model, 0, template.tp, template.pp,
                cause=ActionCause.CONSOLIDATE))
            continue
        new = Hosting(namespace_of(model), template.shape, [model], [template.memory_share])
        for partner in template.partners:
            other = by_model.get(partner)
            if (other is not None and partner in misplaced and partner not in done
                    and new.room_for(other)):
                new.add(partner, other.memory_share)
        if len(new.models) < 2 or not pool.fits(template.gpus):
            continue  # nothing to gain alone, or the GPUs are not free now: try later
        node = pool.take(template.gpus)
        pool.moved.add(f"consolidate:{model}")  # counts against the move budget
        done.update(new.models)
        pool.actions.append(Action(
            ActionKind.START, pool.name, f"{why}: start {', '.join(new.models)} together "
            f"({template.tp}x{template.pp} GPUs, {pool.free} left free), then drain "
            f"{', '.join(misplaced[m].id for m in new.models)}", None, model, template.gpus,
            template.tp, template.pp, tuple(new.models[1:]), ActionCause.CONSOLIDATE, node))
