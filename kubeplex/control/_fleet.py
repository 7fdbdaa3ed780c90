"""The fleet plan: what runs -> what should run, as side-effect-free actions with reasons.

:func:`fleet_plan` takes what runs (:class:`GroupView` per group, warm standbys included), what
each model should have (:class:`ModelTarget`, e.g. from the per-model scaling step), the replica
templates and each pool's :class:`PoolBudget` (and, where the backend models them, the free
GPUs per node), and returns a :class:`FleetPlan`: actions (start / claim / start-warm / add /
unload / drain / stop) with their node and new group id bound, and typed shortfalls for what
could not be planned. Rules, in order, per pool:

0. Groups of models that are gone (a ModelService deleted, or moved to another pool) are
   drained, or the gone models unloaded where others stay; standbys preloaded with one stop.
1. Scale-down (every model first, so it can make room): replicas still starting are removed
   first, then groups where the model runs alone (draining frees GPUs), then the least loaded
   ready ones; a model that shares its group with others is *unloaded* from it (the group and
   its pod stay), a group left with no model is *drained* (no request is cut; the executor
   stops it once empty).
2. Scale-up: claim warm standbys preloaded with the model, then *add* it to a serving group
   with room (co-location: same namespace and ``tp x pp`` shape, every hosted model one of its
   placement ``partners``, memory shares within ``MEMORY_LIMIT``; existing groups first, then
   the groups this plan starts, so two partners scaling from zero start as one group), then
   claim empty standbys with the same GPU count, then cold-start new groups while the pool's
   GPU budget and a node's free GPUs last (draining groups still hold theirs); if GPUs are
   short, standbys the model cannot use are stopped to make room; what still cannot be placed
   becomes a :class:`Shortfall`, never a group that cannot run. Models go in priority order
   (then name).
3. Consolidation (:mod:`kubeplex.control._consolidation`), only while the pool is stable.
4. Warm pool (:mod:`kubeplex.control._warm`), within the GPUs the replicas left.

``max_moves`` bounds how many running groups of a pool one plan changes in place (bounded
disruption). No action removes a ready replica to replace it. A group's namespace is its first
model's; models join and claim groups of their own namespace only (a pod serves the Services of
its namespace). The backend applies the actions in order and reports back through the next
call's views; running the plan on its own result yields no actions.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from kubeplex.control._consolidation import (
    CONSOLIDATION_RETRY_S,
    CONSOLIDATION_TIMEOUT_S,
    consolidate,
    give_up,
    moving_in,
    started_at,
)
from kubeplex.control._placing import ReplicaTemplate
from kubeplex.control._pool import Hosting, PoolBook, free_nodes
from kubeplex.control._types import (
    Action,
    ActionCause,
    ActionKind,
    FleetPlan,
    GroupIndex,
    GroupPhase,
    GroupView,
    ModelKey,
    ModelTarget,
    PoolBudget,
    Shortfall,
    ShortfallCause,
    group_name,
    name_of,
    namespace_of,
)
from kubeplex.control._warm import keep_warm_pool

__all__ = ["MAX_MOVES", "fleet_plan"]

#: Running groups one plan changes in place (models added or unloaded): bounded disruption,
#: as AlpaServe's incremental re-placement bounds the groups it touches. Four lets a pool of a
#: few dozen groups converge within a few cycles without moving most of it at once.
MAX_MOVES = 4


def _remove_gone(pool: PoolBook, members: Sequence[GroupView],
                 present: Collection[ModelKey]) -> set[str]:
    """Rule 0: the groups of models that are no longer declared. Returns the groups removed
    (drained or stopped); a shared group only unloads the gone models and stays."""
    removed: set[str] = set()
    for g in members:
        if g.standby and any(m not in present for m in g.preloaded):
            pool.warm.remove(g)
            removed.add(g.id)
            pool.actions.append(Action(ActionKind.STOP, pool.name, f"{', '.join(g.preloaded)} "
                                       "deleted", g.id, None, g.gpus,
                                       cause=ActionCause.MODEL_GONE))
            continue
        hosting = pool.hosting.get(g.id)
        gone = [m for m in g.models if m not in present]
        if hosting is None or not gone:
            continue
        if len(gone) == len(g.models):
            removed.add(g.id)
            del pool.hosting[g.id]
            pool.actions.append(Action(ActionKind.DRAIN, pool.name, f"{', '.join(gone)} "
                                       "deleted", g.id, gone[0], g.gpus,
                                       cause=ActionCause.MODEL_GONE))
            continue
        for model in gone:
            hosting.remove(model)
            pool.actions.append(Action(ActionKind.UNLOAD, pool.name, f"{model} deleted; "
                                       f"{', '.join(hosting.models)} stay", g.id, model,
                                       cause=ActionCause.MODEL_GONE))
    return removed


def _scale_down(pool: PoolBook, model: ModelKey, serving: list[GroupView], want: int,
                why: str) -> None:
    """Remove ``len(serving) - want`` replicas: starting ones first, then groups where the
    model runs alone (draining them frees GPUs), then the least loaded. A group that keeps
    other models only unloads it (within the move budget); one left empty is drained."""
    serving = [g for g in serving if g.id in pool.hosting]
    order = sorted(serving, key=lambda g: (g.phase is GroupPhase.READY,
                                           len(pool.hosting[g.id].models) > 1, g.load,
                                           -g.since, g.id))
    removed = 0
    for g in order:
        if removed == len(serving) - want:
            return
        hosting = pool.hosting[g.id]
        shared = len(hosting.models) > 1
        if shared and not pool.may_change(g.id):
            continue
        what = "starting" if g.phase is GroupPhase.STARTING else f"load {g.load:g}"
        reason = f"scale {model} down {len(serving)} -> {want} ({what}){why}"
        if shared:
            hosting.remove(model)
            pool.moved.add(g.id)
            pool.actions.append(Action(ActionKind.UNLOAD, pool.name,
                                       f"{reason}; {', '.join(hosting.models)} stay",
                                       g.id, model, cause=ActionCause.SCALE_DOWN))
        else:
            del pool.hosting[g.id]
            pool.actions.append(Action(ActionKind.DRAIN, pool.name, reason, g.id, model,
                                       g.gpus, cause=ActionCause.SCALE_DOWN))
        removed += 1
    if removed < len(serving) - want:
        pool.shortfalls.append(Shortfall(
            pool.name, ShortfallCause.MOVE_BUDGET,
            f"GPUPool {pool.name}: model {model} scale-down to {want} waits: its other "
            f"replicas share groups that the move budget ({pool.max_moves}) leaves alone now",
            model))


def _claimable(pool: PoolBook, template: ReplicaTemplate, preloaded: bool) -> list[GroupView]:
    """Warm standbys of its namespace ``template.model`` can take: preloaded with it (ready
    ones first), or empty ones of the same GPU count."""
    namespace = namespace_of(template.model)
    mine = [g for g in pool.warm if g.namespace == namespace]
    if preloaded:
        fitting = [g for g in mine if template.model in g.preloaded]
    else:
        fitting = [g for g in mine if not g.preloaded and g.gpus == template.gpus]
    return sorted(fitting, key=lambda g: (g.phase is not GroupPhase.WARM, g.id))


def _claim(pool: PoolBook, g: GroupView, template: ReplicaTemplate, have: int, want: int,
           why: str) -> None:
    model = template.model
    pool.warm.remove(g)
    pool.hosting[g.id] = Hosting(g.namespace, template.shape, [model], [template.memory_share])
    pool.actions.append(Action(
        ActionKind.CLAIM, pool.name, f"scale {model} up {have} -> {want}: claim warm "
        f"standby {g.id} ({'preloaded' if model in g.preloaded else 'load on claim'}){why}",
        g.id, model, g.gpus, template.tp, template.pp, node=g.node))


def _add(pool: PoolBook, template: ReplicaTemplate, have: int, want: int, why: str) -> bool:
    """Add the model to a group with room (running groups first, fullest first; then groups
    this plan starts). False when none has room."""
    model = template.model
    running = sorted((gid for gid, h in pool.hosting.items()
                      if h.room_for(template) and pool.may_change(gid)),
                     key=lambda gid: (-sum(pool.hosting[gid].shares), gid))
    if running:
        gid = running[0]
        hosting = pool.hosting[gid]
        others = ", ".join(hosting.models)
        hosting.add(model, template.memory_share)
        pool.moved.add(gid)
        pool.actions.append(Action(
            ActionKind.ADD, pool.name, f"scale {model} up {have} -> {want}: load it "
            f"into {gid} beside {others} (co-located by placement, memory share "
            f"{template.memory_share:g}){why}", gid, model, 0, template.tp, template.pp))
        return True
    new = next((h for h in pool.new if h.room_for(template)), None)
    if new is None or new.action is None:
        return False
    new.add(model, template.memory_share)
    new.action = replace(new.action, with_models=(*new.action.with_models, model),
                         reason=f"{new.action.reason}; co-locating {model} ({have} -> {want}"
                                f"{why})")
    return True


def _make_room(pool: PoolBook, model: ModelKey, gpus: int,
               targets: Mapping[ModelKey, ModelTarget]) -> bool:
    """Stop one standby no one is about to claim (else any the model cannot use), preferring
    one whose node then fits ``gpus``, to make room for a replica of ``model``."""
    spare = [g for g in pool.warm if model not in g.preloaded
             and not any(targets.get(p, ModelTarget(p, 0)).warm for p in g.preloaded)]
    spare = spare or [g for g in pool.warm if model not in g.preloaded]
    if not spare:
        return False
    nodes = pool.nodes
    helpful = [g for g in spare if nodes is None or g.node is None
               or nodes.get(g.node, 0) + g.gpus >= gpus]
    victim = (helpful or spare)[-1]
    pool.warm.remove(victim)
    pool.give_back(victim)
    pool.actions.append(Action(ActionKind.STOP, pool.name, f"free {victim.gpus} GPUs of warm "
                               f"standby {victim.id} for a replica of {model}", victim.id, None,
                               victim.gpus, cause=ActionCause.MAKE_ROOM))
    return True


def _scale_up(pool: PoolBook, template: ReplicaTemplate, have: int, want: int,
              targets: Mapping[ModelKey, ModelTarget], why: str) -> None:
    """Add ``want - have`` replicas: preloaded warm standbys, then room in groups of its
    placement partners, then empty standbys, then cold starts within the GPU budget."""
    need = want - have
    model = template.model
    for g in _claimable(pool, template, preloaded=True)[:need]:
        _claim(pool, g, template, have, want, why)
        need -= 1
    while need > 0 and _add(pool, template, have, want, why):
        need -= 1
    for g in _claimable(pool, template, preloaded=False)[:need]:
        _claim(pool, g, template, have, want, why)
        need -= 1
    while need > 0:
        if not pool.fits(template.gpus):
            if _make_room(pool, model, template.gpus, targets):
                continue
            break
        node = pool.take(template.gpus)
        start = Action(ActionKind.START, pool.name, f"scale {model} up {have} -> {want}: cold "
                       f"start ({template.tp}x{template.pp} GPUs){why}", None, model,
                       template.gpus, template.tp, template.pp, node=node)
        pool.new.append(Hosting(namespace_of(model), template.shape, [model],
                                [template.memory_share], start))
        need -= 1
    if need <= 0:
        return
    placed = want - need
    if pool.within_budget(template.gpus):
        block = pool.largest_block()
        pool.shortfalls.append(Shortfall(
            pool.name, ShortfallCause.NO_NODE,
            f"GPUPool {pool.name}: model {model} needs a node with {template.gpus} free GPUs "
            f"for {need} more replica(s) ({placed} of {want} placed); the largest free block "
            f"is {block}; add nodes to the pool or free GPUs on one node", model))
        return
    pool.shortfalls.append(Shortfall(
        pool.name, ShortfallCause.GPU_BUDGET,
        f"GPUPool {pool.name}: model {model} wants {want} replicas but only {placed} fit: "
        f"{need} more need {need * template.gpus} GPUs, {pool.free} of {pool.budget.max_gpus} "
        f"are free; raise spec.maxGPUs of GPUPool {pool.name} or lower maxReplicas", model))


def _bind_names(actions: Iterable[Action], taken: dict[str, set[str]]) -> list[Action]:
    """Give every new group (START, START_WARM) its id: ``namespace/<models>-<n>`` or
    ``namespace/warm-<pool>-<n>`` with the lowest free ``n`` in its namespace."""
    bound = []
    for a in actions:
        if a.kind in (ActionKind.START, ActionKind.START_WARM) and a.group is None and a.model:
            namespace = namespace_of(a.model)
            base = (f"warm-{a.pool}" if a.kind is ActionKind.START_WARM
                    else "-".join(name_of(m) for m in a.models))
            name = group_name(base, taken.setdefault(namespace, set()))
            a = replace(a, group=f"{namespace}/{name}")
        bound.append(a)
    return bound


def fleet_plan(groups: Sequence[GroupView], targets: Mapping[ModelKey, ModelTarget],
               templates: Mapping[ModelKey, ReplicaTemplate],
               budgets: Iterable[PoolBudget], max_moves: int | None = None,
               now: float | None = None, gave_up: Mapping[ModelKey, float] | None = None, *,
               nodes: Mapping[str, Mapping[str, int]] | None = None,
               present: Collection[ModelKey] | None = None,
               taken: Mapping[str, Collection[str]] | None = None) -> FleetPlan:
    """The actions that take ``groups`` to ``targets`` within the budgets (module docstring).

    Models without a target keep their current replicas; groups of pools without a budget are
    left alone. ``max_moves`` bounds how many running groups of a pool one plan changes in
    place (ADD, UNLOAD); new groups, claims and drains of single-model groups do not count.
    ``now`` (the clock of the views' ``since``): consolidation copies not ready after
    ``CONSOLIDATION_TIMEOUT_S`` are given up (None: never). ``gave_up``: model -> when its
    consolidation was given up (from earlier plans' :attr:`FleetPlan.gave_up`); such a model
    is not consolidated again for ``CONSOLIDATION_RETRY_S``. ``nodes``: pool -> node -> free
    GPUs (groups already placed subtracted); new groups are bound to the best-fitting node
    (None: nodes not modelled). ``present``: every declared model (None: all); the groups of
    others are removed (rule 0). ``taken``: namespace -> group names in use besides ``groups``.
    """
    actions: list[Action] = []
    shortfalls: list[Shortfall] = []
    given_up: dict[ModelKey, str] = {}
    names: dict[str, set[str]] = {ns: set(n) for ns, n in (taken or {}).items()}
    for g in groups:
        names.setdefault(g.namespace, set()).add(name_of(g.id))
    paused = {m for m, t in (gave_up or {}).items()
              if now is None or now - t < CONSOLIDATION_RETRY_S}
    for budget in sorted(budgets, key=lambda b: b.name):
        members = [g for g in groups if g.pool == budget.name]
        pool = PoolBook(budget, used=sum(g.gpus for g in members),
                        nodes=free_nodes((nodes or {}).get(budget.name)) if nodes else None,
                        max_moves=max_moves, warm=[g for g in members if g.standby],
                        hosting={g.id: Hosting(g.namespace, g.shape, list(g.models),
                                               list(g.shares))
                                 for g in members if g.serving})
        removed = _remove_gone(pool, members, present) if present is not None else set()
        live = [g for g in members if g.id not in removed]
        mine = sorted((t for t in templates.values() if t.pool == budget.name),
                      key=lambda t: (-t.priority, t.model))
        ups = []
        hosting = GroupIndex.of(live).serving
        for template in mine:  # scale-downs first: they may make room for scale-ups
            target = targets.get(template.model)
            if target is None:
                continue
            serving = list(hosting.get(template.model, ()))
            why = f": {target.reason}" if target.reason else ""
            moving = (moving_in(template, serving) if target.replicas == len(serving) - 1
                      else [])
            stuck = [g for g in moving if now is not None
                     and now - started_at(g, template.model) > CONSOLIDATION_TIMEOUT_S]
            if stuck:
                give_up(pool, template.model, stuck, now or 0.0)
            elif moving:
                pool.moving = True  # consolidating: drain the old copy once the new is ready
            elif target.replicas < len(serving):
                _scale_down(pool, template.model, serving, max(0, target.replicas), why)
            elif target.replicas > len(serving):
                ups.append((template, len(serving), target.replicas, why))
        for template, have, want, why in ups:
            _scale_up(pool, template, have, want, targets, why)
        pool.actions += [h.action for h in pool.new if h.action is not None]
        settled = all(g.phase is not GroupPhase.STARTING and not g.loading
                      for g in live if g.serving)
        if not (pool.actions or pool.shortfalls or pool.moving) and settled:
            consolidate(pool, live, [t for t in mine if t.model in targets
                                     and t.model not in paused])
        keep_warm_pool(pool, mine, targets)
        drained = {a.group for a in pool.actions if a.kind is ActionKind.DRAIN}
        actions += [a for a in pool.actions
                    if not (a.kind is ActionKind.UNLOAD and a.group in drained)]
        shortfalls += pool.shortfalls
        given_up.update(sorted(pool.gave_up.items()))
    return FleetPlan(tuple(_bind_names(actions, names)), tuple(shortfalls), given_up)
