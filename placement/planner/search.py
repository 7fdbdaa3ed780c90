"""LLM-mode placement: AlpaServe's search carried over to LLM serving on Kubernetes nodes.

What changes from the AlpaServe reproduction (:mod:`kubeplex.placement.alpaserve`):

* profiles are analytic (:class:`~kubeplex.placement.llm.LLMProfile`), not measured;
* a group is ``tp x pp`` GPUs **on one node** (one pod per group), never spanning nodes;
* memory is judged per hosted model: its memory share of each GPU must hold its weight shard,
  the engine reserve and KV cache for :data:`~.demand.MIN_CONCURRENT_SEQUENCES` requests (or
  one ``max_model_len`` sequence, whichever is more); shares of one group sum to at most
  :data:`~.demand.MEMORY_LIMIT`, and what is left is handed out in proportion to KV demand;
* the simulator is :func:`~kubeplex.placement.planner.simulator.simulate_llm` (continuous
  batching, KV-bounded admission, each request with its own lengths) and a request is good when
  TTFT and TPOT meet the model's SLO;
* by default the greedy stops once every model meets its attainment target and minimum
  replica count, leaving the other GPUs free (``fill=True`` uses every GPU, as AlpaServe);
* every model with demand gets its first replica before any model gets a second, and when
  memory runs out a model with several replicas gives one up to make room (others are degraded
  before one is dropped); a model left with no replica is an :class:`UnplacedModelsError`
  unless the caller allows it;
* a replica also costs its neighbours KV memory and GPU time, so a placement that makes the
  simulated outcome worse is undone (AlpaServe never needs to: its weights are all it costs);
* incremental re-planning starts from the current groups, drops models no longer demanded
  (and replicas above ``max_replicas``), removes replicas the demand no longer needs (down to
  zero for idle models with ``min_replicas`` 0), then adds replicas; at most ``max_moves``
  groups change in all (the forced drops count, and are made even past the budget).

**Honest prediction.** The search optimises on one sample of requests (seed
:data:`PLANNING_SEED`); the attainment a placement reports is the median over
:data:`HOLDOUT_SAMPLES` other samples it never saw, with their range. When a model misses its
target there, the worst held-out sample joins the search's sample and the greedy goes on, up to
:data:`VALIDATION_ROUNDS` times, each round judged on fresh samples again.

**Speed.** Groups only interact through the models they share, so a placement is simulated one
connected component at a time and each component's outcome is cached by its content (shape
and models of each group): a greedy step re-simulates only the component it changed, and
layouts reuse each other's components. Without ``fill``, a layout whose greedy already uses
more GPUs than the best complete placement found so far is abandoned (it can only score less).

Known simplifications: engines of one group time-share it round by round; a pipeline-parallel
engine runs one micro-batch at a time (conservative: vLLM keeps ``pp`` in flight), so the
planner picks ``pp > 1`` mainly for memory. Layouts: :mod:`~.layouts`. The best score wins:
more models placed, then more models meeting their target, then fewer GPUs (unless ``fill``),
then higher attainment, then lower mean TTFT.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kubeplex.placement.errors import DoesNotFitError, PlacementError, UnplacedModelsError
from kubeplex.placement.groups import connected_components, group_shapes
from kubeplex.placement.llm import LLMProfile
from kubeplex.placement.planner.costs import CostTables
from kubeplex.placement.planner.demand import (
    MEMORY_LIMIT,
    GroupPlacement,
    HostedModel,
    ModelDemand,
    ModelOutcome,
    Placement,
    PoolSpec,
    Prediction,
)
from kubeplex.placement.planner.layouts import Layout, cut, layouts
from kubeplex.placement.planner.simulator import (
    Core,
    EngineSpec,
    LLMGroupSpec,
    LLMSimResult,
    simulate_llm,
)
from kubeplex.placement.planner.workload import LLMWorkload, draw_workload

__all__ = [
    "HOLDOUT_SAMPLES",
    "PLANNING_REQUESTS",
    "PLANNING_SEED",
    "VALIDATION_ROUNDS",
    "evaluate",
    "plan",
    "planning_workload",
    "replication_plan",
]

#: The planning workload: about this many requests in all, and at least this many of the
#: least requested model (a rare, bursty model is judged on more than one or two bursts),
#: between these horizons (seconds).
PLANNING_REQUESTS = 2000
PLANNING_MODEL_REQUESTS = 200
PLANNING_MIN_HORIZON_S = 30.0
PLANNING_MAX_HORIZON_S = 600.0
#: ... but never more than this many in all: each greedy step simulates them (about 50 ns a
#: request in the compiled core), so this bounds a fleet-scale search; a pool with many rare
#: models then judges each on fewer requests (its held-out range says how much that costs).
PLANNING_MAX_REQUESTS = 20_000
PLANNING_SEED = 0
#: Held-out samples a prediction is the median of: with 5, their range covers the true median
#: with probability 1 - 2 / 2^5 = 94% (the sign test's interval).
HOLDOUT_SAMPLES = 5
#: Times the search may go on after its plan missed a target on held-out samples.
VALIDATION_ROUNDS = 2
#: Layouts that get the greedy on the whole sample; the others are screened out by their
#: greedy on the first quarter of it (a layout search at 512 GPUs has dozens of layouts, and
#: the screen keeps the search's cost near that of a handful).
SCREEN_KEEP = 4
SCREEN_FRACTION = 0.25
#: Slack when summing memory shares (float rounding of shares that add up to the limit).
_SHARE_EPSILON = 1e-12
#: Digits a memory share is rounded to (what ``--gpu-memory-utilization`` is given).
_SHARE_DIGITS = 4
#: The TTFT quantile reported per model.
_REPORTED_TTFT_QUANTILE = 0.95


def planning_workload(demands: Sequence[ModelDemand], seed: int = PLANNING_SEED) -> LLMWorkload:
    """Gamma arrivals per model over a horizon that holds about :data:`PLANNING_REQUESTS`
    (and :data:`PLANNING_MODEL_REQUESTS` of the least requested model), each request with
    lengths drawn from its model's :attr:`ModelDemand.lengths`."""
    rates = [d.arrival_rate for d in demands if d.arrival_rate > 0]
    horizon = PLANNING_MAX_HORIZON_S if not rates else min(
        PLANNING_MAX_HORIZON_S, PLANNING_MAX_REQUESTS / sum(rates), max(
            PLANNING_MIN_HORIZON_S, PLANNING_REQUESTS / sum(rates),
            PLANNING_MODEL_REQUESTS / min(rates)))
    return draw_workload([d.arrival_rate for d in demands], [d.cv for d in demands],
                         [d.ttft_slo_s for d in demands], [d.lengths for d in demands],
                         horizon, seed)


def holdout_seeds(round_: int) -> list[int]:
    """Seeds of the held-out samples of validation round ``round_`` (never the search's)."""
    first = PLANNING_SEED + 1 + round_ * HOLDOUT_SAMPLES
    return list(range(first, first + HOLDOUT_SAMPLES))


# ---- simulation, one connected component at a time --------------------------------------------

@dataclass
class _Slot:
    id: str
    node: int
    gpu_indices: tuple[int, ...]
    tp: int
    pp: int
    models: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Part:
    """One component's simulated outcome (its models, their good requests, its groups'
    request counts, and the sum and count of finite TTFTs)."""

    models: tuple[int, ...]
    good: tuple[int, ...]
    group_requests: tuple[int, ...]
    ttft_sum: float
    ttft_count: int


class _Outcome:
    """A whole placement's outcome, assembled from its components' parts."""

    __slots__ = ("group_requests", "model_good", "model_requests", "ttft_count", "ttft_sum")

    def __init__(self, model_requests: list[int], groups: int) -> None:
        self.model_requests = model_requests
        self.model_good = [0] * len(model_requests)
        self.group_requests = [0] * groups
        self.ttft_sum = 0.0
        self.ttft_count = 0

    @property
    def attainment(self) -> float:
        total = sum(self.model_requests)
        return sum(self.model_good) / total if total else 1.0

    def model_attainment(self, m: int) -> float:
        n = self.model_requests[m]
        return self.model_good[m] / n if n else 1.0

    def unserved(self, m: int) -> int:
        return self.model_requests[m] - self.model_good[m]

    @property
    def mean_ttft(self) -> float:
        return self.ttft_sum / self.ttft_count if self.ttft_count else math.inf

    def placed(self, m: int, group: int, requests: int) -> _Outcome:
        """This outcome with model ``m``'s first replica on ``group`` taken as serving all of
        its ``requests`` (an estimate, until the next simulation)."""
        out = _Outcome(self.model_requests, len(self.group_requests))
        out.model_good = list(self.model_good)
        out.model_good[m] = requests
        out.group_requests = list(self.group_requests)
        if group == len(out.group_requests):  # a slot spawned just now
            out.group_requests.append(0)
        out.group_requests[group] += requests
        out.ttft_sum, out.ttft_count = self.ttft_sum, self.ttft_count
        return out


class _Problem:
    """Demands, pool and workload, with cached memory needs, profiles and component outcomes."""

    def __init__(self, pool: PoolSpec, demands: Sequence[ModelDemand], workload: LLMWorkload,
                 exclusive: bool = False, core: Core = "compiled",
                 tables: CostTables | None = None):
        self.pool, self.demands, self.workload = pool, list(demands), workload
        self.exclusive = exclusive  # one model per group (the replication baseline)
        self.core = core
        self.tables = tables or CostTables()
        self.slos = [d.slo for d in demands]
        self.requests = workload.requests.model_counts().tolist()
        self.kv_weight = [d.arrival_rate * (d.prompt_tokens + d.output_tokens) for d in demands]
        self._min: dict[tuple[int, int, int], float | None] = {}
        self._profiles: dict[tuple[int, int, int], LLMProfile] = {}
        self._parts: dict[tuple[tuple[int, int, tuple[int, ...]], ...], _Part] = {}
        self._subsets: dict[tuple[int, ...], LLMWorkload] = {}
        self.simulations = 0  # component simulations run (cache misses), for benchmarks

    def min_share(self, m: int, tp: int, pp: int) -> float | None:
        key = (m, tp, pp)
        if key not in self._min:
            self._min[key] = self.demands[m].min_share(self.pool.gpu, tp, pp)
        return self._min[key]

    def profile(self, m: int, tp: int, pp: int) -> LLMProfile:
        key = (m, tp, pp)
        if key not in self._profiles:
            self._profiles[key] = LLMProfile(self.demands[m].model, self.pool.gpu, tp, pp)
        return self._profiles[key]

    def shares(self, tp: int, pp: int, models: Sequence[int]) -> list[float]:
        """Memory shares of a group's models: each its minimum plus a slice of what is left
        in proportion to its KV demand (rate x tokens per request)."""
        mins = [self.min_share(m, tp, pp) or 0.0 for m in models]
        weights = [self.kv_weight[m] for m in models]
        left = max(0.0, MEMORY_LIMIT - sum(mins))
        total = sum(weights)
        return [round(lo + left * (w / total if total else 1 / len(mins)), _SHARE_DIGITS)
                for lo, w in zip(mins, weights, strict=True)]

    def free_share(self, slot: _Slot) -> float:
        """What is left of :data:`MEMORY_LIMIT` in ``slot`` after its models' minimum shares."""
        return MEMORY_LIMIT + _SHARE_EPSILON - sum(
            self.min_share(x, slot.tp, slot.pp) or 0.0 for x in slot.models)

    def fits(self, slot: _Slot, m: int) -> bool:
        share = self.min_share(m, slot.tp, slot.pp)
        if share is None or m in slot.models or (self.exclusive and slot.models):
            return False
        key = self.demands[m].colocation_key
        if any(self.demands[x].colocation_key != key for x in slot.models):
            return False
        return share <= self.free_share(slot)

    def engines(self, tp: int, pp: int, models: Sequence[int], local: dict[int, int]
                ) -> LLMGroupSpec:
        return LLMGroupSpec(tuple(
            EngineSpec(local[m], prof, prof.kv_capacity_tokens(share))
            for m, share in zip(models, self.shares(tp, pp, models), strict=True)
            for prof in (self.profile(m, tp, pp),)))

    def simulate(self, slots: Sequence[_Slot]) -> _Outcome:
        out = _Outcome(self.requests, len(slots))
        for component in connected_components([s.models for s in slots]):
            key = tuple((slots[g].tp, slots[g].pp, tuple(slots[g].models)) for g in component)
            part = self._parts.get(key)
            if part is None:
                part = self._parts[key] = self._simulate_part(key)
            for m, good in zip(part.models, part.good, strict=True):
                out.model_good[m] = good
            for g, count in zip(component, part.group_requests, strict=True):
                out.group_requests[g] = count
            out.ttft_sum += part.ttft_sum
            out.ttft_count += part.ttft_count
        return out

    def _simulate_part(self, key: tuple[tuple[int, int, tuple[int, ...]], ...]) -> _Part:
        self.simulations += 1
        models = tuple(sorted({m for _, _, ms in key for m in ms}))
        local = {m: i for i, m in enumerate(models)}
        if models not in self._subsets:
            self._subsets[models] = self.workload.subset(models)
        groups = [self.engines(tp, pp, ms, local) for tp, pp, ms in key]
        result = simulate_llm(groups, [self.slos[m] for m in models], self._subsets[models],
                              self.tables, self.core)
        served = result.ttft[np.isfinite(result.ttft)]
        return _Part(models, tuple(result.model_good.tolist()),
                     tuple(result.group_requests.tolist()), float(served.sum()), len(served))

    def satisfied(self, m: int, replicas: int, outcome: _Outcome) -> bool:
        d = self.demands[m]
        if replicas < d.min_replicas:
            return False
        if d.arrival_rate == 0:
            return True
        return replicas > 0 and outcome.model_attainment(m) >= d.target_attainment

    def wants_first_replica(self, m: int, replicas: int) -> bool:
        d = self.demands[m]
        return replicas == 0 and d.needed and d.max_replicas != 0


def _replica_counts(slots: Sequence[_Slot], n: int) -> list[int]:
    counts = [0] * n
    for slot in slots:
        for m in slot.models:
            counts[m] += 1
    return counts


def _gpus_used(slots: Sequence[_Slot]) -> int:
    return sum(s.tp * s.pp for s in slots if s.models)


def _score(problem: _Problem, slots: Sequence[_Slot], outcome: _Outcome, fill: bool
           ) -> tuple[float, ...]:
    """More models placed first, then more meeting their target; then, unless ``fill`` and
    once every target is met, fewer GPUs before higher attainment (the extra GPUs stay free for
    the autoscaler and the warm pool), else higher attainment before fewer GPUs; then lower
    mean TTFT. The greedy's yardstick is the first three fields (placed, met, attainment)."""
    n = len(problem.demands)
    replicas = _replica_counts(slots, n)
    placed = sum(not problem.wants_first_replica(m, replicas[m]) for m in range(n))
    met = sum(problem.satisfied(m, replicas[m], outcome) for m in range(n))
    used = _gpus_used(slots)
    if fill or met < n:
        return (placed, met, outcome.attainment, -used, -outcome.mean_ttft)
    return (placed, met, -used, outcome.attainment, -outcome.mean_ttft)


# ---- the greedy -------------------------------------------------------------------------------

def _greedy(problem: _Problem, slots: list[_Slot], fill: bool,
            touched: set[str] | None = None, max_moves: int | None = None,
            spawn: Callable[[int], _Slot | None] | None = None,
            gpu_bound: int | None = None) -> _Outcome | None:
    """AlpaServe's simulator-guided greedy on LLM slots (mutates ``slots``).

    Models without a replica come first, then models below ``min_replicas``, then the most
    unserved. Unless ``fill``, it stops once every model is satisfied and tries groups that
    already host something before empty ones (co-location first, free GPUs stay free). Unlike
    AlpaServe's weights, an LLM replica also takes KV memory and GPU time from its neighbours,
    so a placement that leaves fewer models satisfied or a lower attainment is undone and that
    (group, model) pair is not tried again (a model's first replica and replicas below its
    minimum are always kept). With ``touched`` and ``max_moves``, a slot not yet touched may
    change only while the budget lasts; ``spawn(m)`` carves a new slot for model ``m`` from
    free GPUs when no slot takes it. Returns None as soon as more than ``gpu_bound`` GPUs are
    in use (the caller already has a complete placement that uses fewer).
    """
    n = len(problem.demands)
    tried: set[tuple[str, int]] = set()
    last: tuple[_Slot, int, bool, _Outcome] | None = None  # slot, model, newly touched, before
    estimate: _Outcome | None = None
    while True:
        outcome = estimate or problem.simulate(slots)
        estimate = None
        if last is not None:
            slot, m, newly, before = last
            # (placed, met, attainment): any drop undoes the step
            if _score(problem, slots, outcome, fill=True)[:3] < \
                    _score(problem, slots, before, fill=True)[:3]:
                slot.models.remove(m)
                if newly and touched is not None:
                    touched.discard(slot.id)
                outcome = before
        if gpu_bound is not None and _gpus_used(slots) > gpu_bound:
            return None
        replicas = _replica_counts(slots, n)
        unmet = [not problem.satisfied(m, replicas[m], outcome) for m in range(n)]
        if not fill and not any(unmet):
            return outcome
        first = [problem.wants_first_replica(m, replicas[m]) for m in range(n)]
        below_min = [replicas[m] < problem.demands[m].min_replicas for m in range(n)]
        caps = [problem.demands[m].max_replicas for m in range(n)]
        model_order = [m for m in sorted(
            (m for m in range(n) if (fill and problem.demands[m].needed) or unmet[m]),
            key=lambda m: (not first[m], not below_min[m], -outcome.unserved(m), replicas[m],
                           -problem.requests[m], m))
            if (cap := caps[m]) is None or replicas[m] < cap]
        load = outcome.group_requests
        group_order = sorted(range(len(slots)),
                             key=lambda g: (not fill and not slots[g].models, load[g], g))
        budget_left = touched is None or max_moves is None or len(touched) < max_moves
        choice = _first_fit(problem, [slots[g] for g in group_order
                                      if budget_left or slots[g].id in (touched or ())],
                            model_order, tried)
        spawned = False
        if choice is None and spawn is not None and budget_left:
            for m in model_order:
                new = spawn(m)
                if new is not None:
                    slots.append(new)
                    choice, spawned = (new, m), True
                    break
        if choice is None:
            return outcome
        slot, m = choice
        tried.add((slot.id, m))
        slot.models.append(m)
        newly = touched is not None and slot.id not in touched
        if touched is not None:
            touched.add(slot.id)
        # A replica that must exist (first, min replicas) or that opened new GPUs stays.
        last = None if spawned or first[m] or below_min[m] else (slot, m, newly, outcome)
        if first[m] and sum(first) > 1:
            # More first replicas to place, none of them ever undone: skip the simulation
            # in between and take this model's requests as served by its group.
            estimate = outcome.placed(m, slots.index(slot), problem.requests[m])


def _first_fit(problem: _Problem, slots: Sequence[_Slot], model_order: Sequence[int],
               tried: set[tuple[str, int]]) -> tuple[_Slot, int] | None:
    """The first (slot, model) pair, slots and models in the given orders, not tried yet
    whose model fits the slot (:meth:`_Problem.fits`, with each slot's free memory summed
    once)."""
    smallest: dict[tuple[int, int], float] = {}
    for slot in slots:
        if problem.exclusive and slot.models:
            continue
        shape = (slot.tp, slot.pp)
        if shape not in smallest:
            smallest[shape] = min((share for m in model_order
                                   if (share := problem.min_share(m, *shape)) is not None),
                                  default=math.inf)
        free = problem.free_share(slot)
        if free < smallest[shape]:
            continue  # full for every candidate
        key = problem.demands[slot.models[0]].colocation_key if slot.models else None
        for m in model_order:
            share = problem.min_share(m, slot.tp, slot.pp)
            if share is None or share > free or m in slot.models or (slot.id, m) in tried:
                continue
            if key is None or problem.demands[m].colocation_key == key:
                return slot, m
    return None


def _make_room(problem: _Problem, slots: list[_Slot],
               may_change: Callable[[_Slot], bool] = lambda _: True) -> set[str]:
    """Give each model still without a replica one, taking replicas from models that have more
    than one (and more than their minimum): others are degraded before one is dropped. Slots
    where the fewest replicas must go are tried first, among those ``may_change`` allows.
    Returns the ids of the slots that changed."""
    n = len(problem.demands)
    changed: set[str] = set()
    for m in range(n):
        replicas = _replica_counts(slots, n)
        if not problem.wants_first_replica(m, replicas[m]):
            continue
        options = []
        for slot in slots:
            if problem.min_share(m, slot.tp, slot.pp) is None or not may_change(slot):
                continue
            spare = [x for x in slot.models
                     if replicas[x] > max(1, problem.demands[x].min_replicas)]
            keep = [x for x in slot.models if x not in spare]
            trial = _Slot(slot.id, slot.node, slot.gpu_indices, slot.tp, slot.pp, list(keep))
            if not problem.fits(trial, m):
                continue
            # Keep every spare replica that still leaves room, the least replicated first:
            # the most replicated models give theirs up.
            for x in sorted(spare, key=lambda x: (replicas[x], x)):
                more = _Slot(slot.id, slot.node, slot.gpu_indices, slot.tp, slot.pp,
                             [*trial.models, x])
                if problem.fits(more, m):
                    trial = more
            options.append((len(slot.models) - len(trial.models), slot.id, slot, trial))
        if not options:
            continue
        _, _, slot, trial = min(options, key=lambda o: (o[0], o[1]))
        slot.models[:] = [x for x in slot.models if x in trial.models] + [m]
        changed.add(slot.id)
    return changed


# ---- entry points -----------------------------------------------------------------------------

def _check_feasible(problem: _Problem) -> None:
    shapes = group_shapes(problem.pool.gpus_per_node)
    for m, d in enumerate(problem.demands):
        if not d.needed:
            continue
        if not any(problem.min_share(m, tp, pp) is not None for tp, pp in shapes):
            raise DoesNotFitError(
                f"model {d.name!r} ({d.model.name}) fits no group of at most "
                f"{problem.pool.gpus_per_node} {problem.pool.gpu.name} GPUs on one node"
                + (f" with tp={d.tp}" if d.tp else "") + (f" pp={d.pp}" if d.pp else "")
                + "; use bigger nodes or GPUs, a shorter max_model_len, or another parallelism")


def _check_inputs(demands: Sequence[ModelDemand], max_moves: int | None) -> None:
    names = [d.name for d in demands]
    if len(set(names)) != len(names):
        raise PlacementError(f"model names must be unique, got {names}")
    if max_moves is not None and max_moves < 0:
        raise PlacementError(f"max_moves must be >= 0, got {max_moves}")


def plan(pool: PoolSpec, demands: Sequence[ModelDemand], current: Placement | None = None,
         max_moves: int | None = None, fill: bool = False,
         workload: LLMWorkload | None = None, allow_unplaced: bool = False,
         core: Core = "compiled") -> Placement:
    """Place ``demands`` on ``pool``.

    Without ``current``: search every layout (see the module docstring), then check the plan
    on held-out samples (and go on searching while a target is missed there). With
    ``current``: keep its groups, drop models no longer demanded, and add replicas (to existing
    groups or new groups carved from free GPUs) changing at most ``max_moves`` groups; the
    result's ``moved`` and ``removed`` name the groups that change. ``workload`` overrides the
    search's sample (default: :func:`planning_workload` of the demands). A model with demand
    left without a replica raises :class:`UnplacedModelsError` unless ``allow_unplaced``.
    ``core="reference"`` runs the pure-Python simulator (same results, slower).
    """
    _check_inputs(demands, max_moves)
    problem = _Problem(pool, demands, workload or planning_workload(demands), core=core)
    _check_feasible(problem)
    if current is not None:
        return _incremental(problem, current, max_moves, fill, allow_unplaced)
    slots, tried, pruned = _search(problem, fill)
    how = f"best of {tried} layouts" + (f", {pruned} set aside early" if pruned else "")
    rounds = 0
    forecast = _predict(problem, slots, holdout_seeds(0))
    while rounds < VALIDATION_ROUNDS and _missed(problem, slots, forecast):
        worst = min(forecast.samples, key=lambda s: s.attainment)
        problem = _Problem(pool, demands, problem.workload.then(worst.workload), core=core,
                           tables=problem.tables)
        before = [list(s.models) for s in slots]
        _greedy(problem, slots, fill)
        rounds += 1
        if [s.models for s in slots] == before:
            break  # nothing more to add: the last held-out check stands
        forecast = _predict(problem, slots, holdout_seeds(rounds))
    if rounds:
        how += (f"; {rounds} more search round{'s' if rounds > 1 else ''} after held-out "
                "samples missed a target")
    return _placement(problem, slots, how, forecast, allow_unplaced)


def _search(problem: _Problem, fill: bool) -> tuple[list[_Slot], int, int]:
    """The best layout's slots after its greedy, how many layouts there were, and how many of
    them were set aside (dominated, screened out, or abandoned early).

    With more than :data:`SCREEN_KEEP` layouts, each is first screened by its greedy on the
    first :data:`SCREEN_FRACTION` of the sample, and only the best :data:`SCREEN_KEEP` get
    the greedy on the whole sample."""
    candidates = layouts(problem.pool)
    # A layout with no group some model fits is beaten by any layout where every model fits
    # (it places fewer models): skip those while one exists.
    hostable = [layout for layout in candidates if all(
        any(problem.min_share(m, tp, pp) is not None for _, _, tp, pp in layout)
        for m, d in enumerate(problem.demands) if d.needed)] or candidates
    finalists = hostable
    if len(hostable) > SCREEN_KEEP:
        screen = _Problem(problem.pool, problem.demands,
                          problem.workload.head(SCREEN_FRACTION), problem.exclusive,
                          problem.core, problem.tables)
        ranked = _best_layouts(screen, hostable, fill)
        finalists = [hostable[i] for i in ranked[:SCREEN_KEEP]]
    order = _best_layouts(problem, finalists, fill)
    slots = _greedy_slots(problem, finalists[order[0]], fill)[0]
    return slots, len(candidates), len(candidates) - len(order)


def _greedy_slots(problem: _Problem, layout: Layout, fill: bool, gpu_bound: int | None = None
                  ) -> tuple[list[_Slot], _Outcome | None]:
    """``layout``'s slots after the greedy (and :func:`_make_room`); the outcome is None when
    the greedy gave up past ``gpu_bound``."""
    slots = [_Slot(f"g{i}", node, gpus, tp, pp) for i, (node, gpus, tp, pp)
             in enumerate(layout)]
    outcome = _greedy(problem, slots, fill, gpu_bound=gpu_bound)
    if outcome is not None and _make_room(problem, slots):
        outcome = _greedy(problem, slots, fill) or problem.simulate(slots)
    return slots, outcome


def _best_layouts(problem: _Problem, candidates: Sequence[Layout], fill: bool) -> list[int]:
    """Indices of ``candidates`` whose greedy finished, best score first (ties: in order).
    Without ``fill``, once a layout places and meets everything, a layout whose greedy goes
    past its GPU count is abandoned: it can only score less."""
    scored: list[tuple[tuple[float, ...], int]] = []
    bound: int | None = None
    n = len(problem.demands)
    for i, layout in enumerate(candidates):
        slots, outcome = _greedy_slots(problem, layout, fill, bound)
        if outcome is None:
            continue
        s = _score(problem, slots, outcome, fill)
        scored.append((s, i))
        if not fill and s[0] == s[1] == n:  # everything placed and met: bound the rest
            used = _gpus_used(slots)
            bound = used if bound is None else min(bound, used)
    scored.sort(key=lambda x: (x[0], -x[1]), reverse=True)
    return [i for _, i in scored]


def _incremental(problem: _Problem, current: Placement, max_moves: int | None,
                 fill: bool, allow_unplaced: bool) -> Placement:
    index = {d.name: m for m, d in enumerate(problem.demands)}
    touched: set[str] = set()
    slots: list[_Slot] = []
    busy: dict[int, set[int]] = {}
    for g in current.groups:
        kept = [index[h.name] for h in g.models if h.name in index]
        if len(kept) != len(g.models):
            touched.add(g.id)
        slots.append(_Slot(g.id, g.node, g.gpu_indices, g.tp, g.pp, kept))
        busy.setdefault(g.node, set()).update(g.gpu_indices)
    # Over max_replicas now: drop the extra replicas from the last groups.
    for m, d in enumerate(problem.demands):
        if d.max_replicas is None:
            continue
        extra = sum(m in s.models for s in slots) - d.max_replicas
        for slot in reversed(slots):
            if extra > 0 and m in slot.models:
                slot.models.remove(m)
                touched.add(slot.id)
                extra -= 1
    free = {node: [i for i in range(cap) if i not in busy.get(node, set())]
            for node, cap in enumerate(problem.pool.node_capacity())}
    ids = {s.id for s in slots}

    def spawn(m: int) -> _Slot | None:
        """A new group for ``m``, on the first node with room: the shape of its existing
        replicas (what the full search chose), else its smallest fitting shape."""
        own = sorted({(s.tp, s.pp) for s in slots if m in s.models}, reverse=True)
        for tp, pp in own + group_shapes(problem.pool.gpus_per_node):
            size = tp * pp
            if problem.min_share(m, tp, pp) is None:
                continue
            for node, left in free.items():
                if len(left) >= size:
                    gpus, free[node] = tuple(left[:size]), left[size:]
                    new_id = next(f"g{k}" for k in range(len(ids) + 1) if f"g{k}" not in ids)
                    ids.add(new_id)
                    return _Slot(new_id, node, gpus, tp, pp)
        return None

    if not fill:
        _shrink(problem, slots, touched, max_moves)
    _greedy(problem, slots, fill, touched, max_moves, spawn)
    made = _make_room(problem, slots, lambda slot: max_moves is None or slot.id in touched
                      or len(touched) < max_moves)
    if made:
        touched |= made
        _greedy(problem, slots, fill, touched, max_moves, spawn)
    before = {g.id for g in current.groups}
    removed = tuple(sorted(s.id for s in slots if s.id in before and not s.models))
    moved = tuple(sorted(s.id for s in slots if s.id in touched and s.models))
    budget = "unbounded" if max_moves is None else f"at most {max_moves}"
    how = (f"incremental from {len(current.groups)} groups, {budget} moves: "
           f"changed {list(moved) or 'none'}, removed {list(removed) or 'none'}")
    return _placement(problem, slots, how, _predict(problem, slots, holdout_seeds(0)),
                      allow_unplaced, moved, removed)


def _shrink(problem: _Problem, slots: list[_Slot], touched: set[str],
            max_moves: int | None) -> None:
    """Remove replicas the demand no longer needs (scale-down, scale-to-zero), least loaded
    groups first, keeping every model that is satisfied satisfied and min replicas in place,
    within the move budget. Each (group, model) pair is tried once."""
    n = len(problem.demands)
    tried: set[tuple[str, int]] = set()
    outcome = problem.simulate(slots)
    while True:
        replicas = _replica_counts(slots, n)
        ok = [problem.satisfied(m, replicas[m], outcome) for m in range(n)]
        load = outcome.group_requests
        candidates = [(slot, m) for g, slot in sorted(enumerate(slots), key=lambda x: load[x[0]])
                      for m in slot.models
                      if (slot.id, m) not in tried and ok[m]
                      and replicas[m] > problem.demands[m].min_replicas
                      and (max_moves is None or slot.id in touched or len(touched) < max_moves)]
        if not candidates:
            return
        slot, m = candidates[0]
        tried.add((slot.id, m))
        slot.models.remove(m)
        trial = problem.simulate(slots)
        after = _replica_counts(slots, n)
        if all(problem.satisfied(x, after[x], trial) for x in range(n) if ok[x]):
            touched.add(slot.id)
            outcome = trial
        else:
            slot.models.append(m)


# ---- honest prediction ------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Sample:
    workload: LLMWorkload
    result: LLMSimResult

    @property
    def attainment(self) -> float:
        return self.result.attainment


@dataclass(frozen=True, eq=False)
class _Forecast:
    """A placement simulated on held-out samples."""

    samples: tuple[_Sample, ...]

    def model_attainments(self, m: int) -> list[float]:
        return [float(s.result.model_attainment[m]) for s in self.samples]


def _groups_of(problem: _Problem, slots: Sequence[_Slot]) -> list[LLMGroupSpec]:
    identity = {m: m for m in range(len(problem.demands))}
    return [problem.engines(s.tp, s.pp, s.models, identity) for s in slots if s.models]


def _predict(problem: _Problem, slots: Sequence[_Slot], seeds: Sequence[int]) -> _Forecast:
    groups = _groups_of(problem, slots)
    samples = []
    for seed in seeds:
        workload = planning_workload(problem.demands, seed)
        samples.append(_Sample(workload, simulate_llm(groups, problem.slos, workload,
                                                      problem.tables, problem.core)))
    return _Forecast(tuple(samples))


def _missed(problem: _Problem, slots: Sequence[_Slot], forecast: _Forecast) -> bool:
    """Whether a model that met its target on the search's sample misses it (median) on the
    held-out samples, while the greedy could still add a replica somewhere."""
    replicas = _replica_counts(slots, len(problem.demands))
    for m, d in enumerate(problem.demands):
        if d.arrival_rate == 0 or replicas[m] == 0:
            continue
        if float(np.median(forecast.model_attainments(m))) < d.target_attainment:
            return True
    return False


def _placement(problem: _Problem, slots: Sequence[_Slot], how: str, forecast: _Forecast,
               allow_unplaced: bool, moved: tuple[str, ...] = (),
               removed: tuple[str, ...] = ()) -> Placement:
    n = len(problem.demands)
    replicas = _replica_counts(slots, n)
    unplaced = tuple(d.name for m, d in enumerate(problem.demands)
                     if problem.wants_first_replica(m, replicas[m]))
    if unplaced and not allow_unplaced:
        raise UnplacedModelsError(
            f"pool {problem.pool.name!r}: no room for {', '.join(unplaced)} even with every "
            f"other model held to one replica ({problem.pool.usable_gpus} usable "
            f"{problem.pool.gpu.name} GPUs for {n} models); raise the pool's maxGPUs, move "
            "models to another pool, or allow unplaced models", unplaced, problem.pool.name)
    groups = []
    for slot in slots:
        if not slot.models:
            continue
        hosted = []
        for m, share in zip(slot.models, problem.shares(slot.tp, slot.pp, slot.models),
                            strict=True):
            prof = problem.profile(m, slot.tp, slot.pp)
            hosted.append(HostedModel(problem.demands[m].name, share,
                                      prof.kv_capacity_tokens(share)))
        groups.append(GroupPlacement(slot.id, slot.node, slot.gpu_indices, slot.tp, slot.pp,
                                     tuple(hosted)))
    trained = problem.simulate(slots)
    ids = np.concatenate([s.workload.model_ids for s in forecast.samples])
    ttfts = np.concatenate([s.result.ttft for s in forecast.samples])
    outcomes = []
    for m, d in enumerate(problem.demands):
        values = forecast.model_attainments(m)
        outcomes.append(ModelOutcome(
            d.name, replicas[m], float(np.median(values)), d.target_attainment,
            _quantile(ttfts[ids == m], _REPORTED_TTFT_QUANTILE), min(values), max(values),
            trained.model_attainment(m)))
    totals = [s.attainment for s in forecast.samples]
    prediction = Prediction(float(np.median(totals)), min(totals), max(totals), len(totals),
                            int(np.median([len(s.workload) for s in forecast.samples])))
    used = sum(g.gpus for g in groups)
    lines = [f"{len(groups)} groups on {used} of {problem.pool.usable_gpus} "
             f"{problem.pool.gpu.name} GPUs ({how}); predicted attainment {prediction} of "
             f"~{prediction.requests} requests each ({trained.attainment:.1%} on the sample "
             "searched)"]
    for o, d in zip(outcomes, problem.demands, strict=True):
        slo = f"TTFT <= {d.ttft_slo_s:g} s" + (f", TPOT <= {d.tpot_slo_s:g} s"
                                               if d.tpot_slo_s else "")
        verdict = "meets" if o.met and o.replicas >= d.min_replicas else "MISSES"
        lines.append(f"{d.name}: {o.replicas} replicas, {o.attainment:.1%} "
                     f"({o.low:.1%}-{o.high:.1%}) within {slo} ({verdict} target "
                     f"{d.target_attainment:.1%}), p95 TTFT {o.p95_ttft_s:.3f} s")
    if unplaced:
        lines.append(f"left without a replica (allowed): {', '.join(unplaced)}")
    return Placement(problem.pool.name, tuple(groups), tuple(outcomes), prediction.median,
                     "\n".join(lines), moved, removed, problem.pool.usable_gpus - used,
                     prediction, unplaced)


def _quantile(values: np.ndarray, q: float) -> float:
    """Nearest-rank quantile (inf when that many were never served; 0 with no requests)."""
    if not len(values):
        return 0.0
    ordered = np.sort(values)
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def evaluate(pool: PoolSpec, demands: Sequence[ModelDemand], placement: Placement,
             workload: LLMWorkload) -> LLMSimResult:
    """Simulate ``placement`` (with its memory shares) on another ``workload``, e.g. a held-out
    seed, to check a plan beyond the arrivals it was optimized on."""
    index = {d.name: m for m, d in enumerate(demands)}
    groups = []
    for g in placement.groups:
        engines = []
        for hosted in g.models:
            if hosted.name not in index:
                raise PlacementError(f"group {g.id} hosts {hosted.name!r}, not in the demands")
            prof = LLMProfile(demands[index[hosted.name]].model, pool.gpu, g.tp, g.pp)
            engines.append(EngineSpec(index[hosted.name], prof, hosted.kv_capacity_tokens))
        groups.append(LLMGroupSpec(tuple(engines)))
    return simulate_llm(groups, [d.slo for d in demands], workload)


def replication_plan(pool: PoolSpec, demands: Sequence[ModelDemand], fill: bool = True,
                     workload: LLMWorkload | None = None,
                     allow_unplaced: bool = False) -> Placement:
    """Baseline: one model per group (no co-location), each model on its smallest group
    shape, replicas added by the same simulator-guided greedy."""
    _check_inputs(demands, None)
    problem = _Problem(pool, demands, workload or planning_workload(demands), exclusive=True)
    _check_feasible(problem)
    smallest = min(
        (next(tp for tp, pp in group_shapes(pool.gpus_per_node)
              if pp == 1 and problem.min_share(m, tp, 1) is not None)
         for m, d in enumerate(demands) if d.needed), default=1)
    slots = [_Slot(f"g{i}", node, gpus, tp, pp) for i, (node, gpus, tp, pp) in enumerate(
        (node, *c) for node, cap in enumerate(pool.node_capacity())
        for c in cut(range(cap), [(smallest, 1)] * (cap // smallest)))]
    _greedy(problem, slots, fill)
    return _placement(problem, slots, "one model per group (replication)",
                      _predict(problem, slots, holdout_seeds(0)), allow_unplaced)
