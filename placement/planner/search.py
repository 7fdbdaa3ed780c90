"""LLM-mode placement: AlpaServe's search carried over to LLM serving on Kubernetes nodes.

What changes from the AlpaServe reproduction (:mod:`kubeplex.placement.alpaserve`):

* profiles are analytic (:class:`~kubeplex.placement.llm.LLMProfile`), not measured;
* a group is ``tp x pp`` GPUs **on one node** (one pod per group), never spanning nodes;
* memory is judged per hosted model: its memory share of each GPU must hold its weight shard,
  the engine reserve and KV cache for :data:`MIN_CONCURRENT_SEQUENCES` requests (or one
  ``max_model_len`` sequence, whichever is more); shares of one group sum to at most
  :data:`MEMORY_LIMIT`, and what is left is handed out in proportion to KV demand;
* the simulator is :func:`~kubeplex.placement.planner.simulator.simulate_llm` (continuous batching,
  KV-bounded admission) and a request is good when TTFT and TPOT meet the model's SLO;
* by default the greedy stops once every model meets its attainment target and minimum
  replica count, leaving the other GPUs free (``fill=True`` uses every GPU, as AlpaServe);
* a replica also costs its neighbours KV memory and GPU time, so a placement that makes the
  simulated outcome worse is undone (AlpaServe never needs to: its weights are all it costs);
* incremental re-planning starts from the current groups, drops models no longer demanded
  (and replicas above ``max_replicas``), removes replicas the demand no longer needs (down to
  zero for idle models with ``min_replicas`` 0), then adds replicas; at most ``max_moves``
  groups change in all (the forced drops count, and are made even past the budget).

Known simplifications: every request of a model has its demand's mean prompt and output
length; engines of one group time-share it round by round; a pipeline-parallel engine runs
one micro-batch at a time (conservative: vLLM keeps ``pp`` in flight), so the planner picks
``pp > 1`` mainly for memory.

The layouts tried: every node cut into equal groups of each size ``1, 2, 4, ... <= gpus per
node`` and each ``tp x pp`` factorization (the remainder as smaller pure-tensor groups), plus
mixed layouts of ``n`` big groups and the rest small (the AlpaServe bucket idea for models of
different sizes). Each layout gets the greedy; the best score wins: more models meeting their
target, then fewer GPUs (unless ``fill``), then higher attainment, then lower mean TTFT.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kubeplex.placement.errors import DoesNotFitError, PlacementError
from kubeplex.placement.groups import group_shapes, powers_of_two_upto
from kubeplex.placement.hardware import GPUSpec
from kubeplex.placement.llm import DEFAULT_MEMORY_FRACTION, RESERVE_BYTES, LLMProfile, ModelShape
from kubeplex.placement.planner.simulator import (
    EngineSpec,
    LLMGroupSpec,
    LLMSimResult,
    RequestShape,
    simulate_llm,
)
from kubeplex.placement.workload import Workload, synthetic_workload

__all__ = [
    "MEMORY_LIMIT",
    "MIN_CONCURRENT_SEQUENCES",
    "GroupPlacement",
    "HostedModel",
    "ModelDemand",
    "ModelOutcome",
    "Placement",
    "PoolSpec",
    "evaluate",
    "plan",
    "planning_workload",
    "replication_plan",
]

#: The shares of one GPU's memory that a group's engines may claim together (vLLM's default
#: --gpu-memory-utilization, split among co-located engines).
MEMORY_LIMIT = DEFAULT_MEMORY_FRACTION
#: Least KV room a replica gets: this many concurrent requests of its typical shape.
MIN_CONCURRENT_SEQUENCES = 8
#: The planning workload: about this many requests, between these horizons (seconds).
PLANNING_REQUESTS = 2000
PLANNING_MIN_HORIZON_S = 30.0
PLANNING_MAX_HORIZON_S = 600.0
PLANNING_SEED = 0
#: Slack when summing memory shares (float rounding of shares that add up to the limit).
_SHARE_EPSILON = 1e-12


@dataclass(frozen=True)
class ModelDemand:
    """One model the pool must serve: its shape, its load and its SLO."""

    name: str
    model: ModelShape
    arrival_rate: float
    cv: float = 1.0
    prompt_tokens: int = 512
    output_tokens: int = 128
    ttft_slo_s: float = 1.0
    tpot_slo_s: float | None = None
    target_attainment: float = 0.99
    min_replicas: int = 0
    max_replicas: int | None = None
    tp: int | None = None  # None: the planner chooses
    pp: int | None = None
    max_model_len: int | None = None  # KV for one such sequence must fit (vLLM refuses less)
    #: Models with different keys never share a group (e.g. the Kubernetes namespace: a pod
    #: joins the Services of its own namespace only). Equal keys (the default) may share.
    colocation_key: str = ""

    def __post_init__(self) -> None:
        if self.arrival_rate < 0:
            raise PlacementError(f"model {self.name!r}: arrival rate must be >= 0 req/s, "
                                 f"got {self.arrival_rate}")
        if self.cv <= 0:
            raise PlacementError(f"model {self.name!r}: burstiness (cv) must be > 0")
        if not 0 < self.target_attainment <= 1:
            raise PlacementError(f"model {self.name!r}: target attainment must be in (0, 1]")
        if self.min_replicas < 0 or (self.max_replicas is not None
                                     and self.max_replicas < self.min_replicas):
            raise PlacementError(f"model {self.name!r}: need 0 <= min_replicas <= max_replicas")
        self.request_shape()  # validates token counts and SLOs

    def request_shape(self) -> RequestShape:
        return RequestShape(self.prompt_tokens, self.output_tokens, self.ttft_slo_s,
                            self.tpot_slo_s)

    @property
    def needed(self) -> bool:
        return self.arrival_rate > 0 or self.min_replicas > 0

    def allows(self, tp: int, pp: int) -> bool:
        return (self.tp is None or self.tp == tp) and (self.pp is None or self.pp == pp)

    def min_share(self, gpu: GPUSpec, tp: int, pp: int) -> float | None:
        """Least memory share of each GPU this model needs in a ``tp x pp`` group (None:
        that shape is invalid for the model or it cannot fit even alone)."""
        if not self.allows(tp, pp):
            return None
        try:
            prof = LLMProfile(self.model, gpu, tp, pp)
        except PlacementError:
            return None
        kv_tokens = max(MIN_CONCURRENT_SEQUENCES * self.request_shape().kv_tokens,
                        self.max_model_len or 0)
        kv_bytes = kv_tokens * prof.kv_bytes_per_token_per_gpu
        share = (prof.weight_bytes_per_gpu + RESERVE_BYTES + kv_bytes) / gpu.memory_bytes
        return share if share <= MEMORY_LIMIT else None


@dataclass(frozen=True)
class PoolSpec:
    """``nodes`` x ``gpus_per_node`` GPUs of one kind, at most ``max_gpus`` of them used."""

    gpu: GPUSpec
    nodes: int
    gpus_per_node: int
    max_gpus: int | None = None
    name: str = "pool"

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise PlacementError(f"pool {self.name!r}: needs >= 1 node and >= 1 GPU per node")
        if self.max_gpus is not None and self.max_gpus < 0:
            raise PlacementError(f"pool {self.name!r}: max GPUs must be >= 0")
        if self.usable_gpus == 0:
            raise PlacementError(f"pool {self.name!r} has zero usable GPUs")

    @property
    def usable_gpus(self) -> int:
        total = self.nodes * self.gpus_per_node
        return total if self.max_gpus is None else min(total, self.max_gpus)

    def node_capacity(self) -> list[int]:
        """GPUs usable on each node (nodes filled in order up to ``max_gpus``)."""
        left, caps = self.usable_gpus, []
        for _ in range(self.nodes):
            caps.append(min(left, self.gpus_per_node))
            left -= caps[-1]
        return caps


@dataclass(frozen=True)
class HostedModel:
    name: str
    memory_share: float  # fraction of each GPU's memory (vLLM --gpu-memory-utilization)
    kv_capacity_tokens: int


@dataclass(frozen=True)
class GroupPlacement:
    """One group: a pod requesting ``tp * pp`` GPUs on one node, hosting one engine per model."""

    id: str
    node: int
    gpu_indices: tuple[int, ...]
    tp: int
    pp: int
    models: tuple[HostedModel, ...]

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def memory_used(self) -> float:
        return sum(m.memory_share for m in self.models)


@dataclass(frozen=True)
class ModelOutcome:
    """Predicted service of one model under the placement."""

    name: str
    replicas: int
    attainment: float
    target: float
    p95_ttft_s: float

    @property
    def met(self) -> bool:
        return self.attainment >= self.target


@dataclass(frozen=True)
class Placement:
    pool: str
    groups: tuple[GroupPlacement, ...]
    models: tuple[ModelOutcome, ...]
    attainment: float
    explanation: str
    #: Incremental plans: groups created or changed (ids), and groups removed.
    moved: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    free_gpus: int = 0

    def replicas(self, name: str) -> int:
        return sum(1 for g in self.groups for m in g.models if m.name == name)

    def outcome(self, name: str) -> ModelOutcome:
        for o in self.models:
            if o.name == name:
                return o
        raise PlacementError(f"model {name!r} is not in this placement")


# ---- internal state ---------------------------------------------------------------------------

@dataclass
class _Slot:
    id: str
    node: int
    gpu_indices: tuple[int, ...]
    tp: int
    pp: int
    models: list[int] = field(default_factory=list)


def planning_workload(demands: Sequence[ModelDemand], seed: int = PLANNING_SEED) -> Workload:
    """Gamma arrivals per model over a horizon that holds about :data:`PLANNING_REQUESTS`."""
    total = sum(d.arrival_rate for d in demands)
    horizon = PLANNING_MAX_HORIZON_S if total == 0 else min(
        PLANNING_MAX_HORIZON_S, max(PLANNING_MIN_HORIZON_S, PLANNING_REQUESTS / total))
    return synthetic_workload([d.arrival_rate for d in demands], [d.cv for d in demands],
                              [d.ttft_slo_s for d in demands], horizon, seed)


class _Problem:
    """Demands, pool and workload, with cached per-shape memory needs."""

    def __init__(self, pool: PoolSpec, demands: Sequence[ModelDemand], workload: Workload,
                 exclusive: bool = False):
        self.pool, self.demands, self.workload = pool, list(demands), workload
        self.exclusive = exclusive  # one model per group (the replication baseline)
        self.shapes = [d.request_shape() for d in demands]
        self._min: dict[tuple[int, int, int], float | None] = {}

    def min_share(self, m: int, tp: int, pp: int) -> float | None:
        key = (m, tp, pp)
        if key not in self._min:
            self._min[key] = self.demands[m].min_share(self.pool.gpu, tp, pp)
        return self._min[key]

    def shares(self, slot: _Slot) -> list[float]:
        """Memory shares of the slot's models: each its minimum plus a slice of what is left
        in proportion to its KV demand (rate x tokens per request)."""
        mins = [self.min_share(m, slot.tp, slot.pp) or 0.0 for m in slot.models]
        weights = [self.demands[m].arrival_rate * self.shapes[m].kv_tokens for m in slot.models]
        left = max(0.0, MEMORY_LIMIT - sum(mins))
        total = sum(weights)
        return [lo + left * (w / total if total else 1 / len(mins))
                for lo, w in zip(mins, weights, strict=True)]

    def fits(self, slot: _Slot, m: int) -> bool:
        share = self.min_share(m, slot.tp, slot.pp)
        if share is None or m in slot.models or (self.exclusive and slot.models):
            return False
        key = self.demands[m].colocation_key
        if any(self.demands[x].colocation_key != key for x in slot.models):
            return False
        used = sum(self.min_share(x, slot.tp, slot.pp) or 0.0 for x in slot.models)
        return used + share <= MEMORY_LIMIT + _SHARE_EPSILON

    def simulate(self, slots: Sequence[_Slot]) -> LLMSimResult:
        groups = []
        for slot in slots:
            engines = []
            for m, share in zip(slot.models, self.shares(slot), strict=True):
                prof = LLMProfile(self.demands[m].model, self.pool.gpu, slot.tp, slot.pp)
                engines.append(EngineSpec(m, prof, prof.kv_capacity_tokens(share)))
            groups.append(LLMGroupSpec(tuple(engines)))
        return simulate_llm(groups, self.shapes, self.workload)

    def satisfied(self, m: int, replicas: int, result: LLMSimResult) -> bool:
        d = self.demands[m]
        if replicas < d.min_replicas:
            return False
        if d.arrival_rate == 0:
            return True
        return replicas > 0 and float(result.model_attainment[m]) >= d.target_attainment


def _replica_counts(slots: Sequence[_Slot], n: int) -> list[int]:
    counts = [0] * n
    for slot in slots:
        for m in slot.models:
            counts[m] += 1
    return counts


def _quality(problem: _Problem, slots: Sequence[_Slot], result: LLMSimResult
             ) -> tuple[int, float]:
    replicas = _replica_counts(slots, len(problem.demands))
    met = sum(problem.satisfied(m, replicas[m], result) for m in range(len(problem.demands)))
    return met, result.attainment


def _greedy(problem: _Problem, slots: list[_Slot], fill: bool,
            touched: set[str] | None = None, max_moves: int | None = None,
            spawn: Callable[[int], _Slot | None] | None = None) -> LLMSimResult:
    """AlpaServe's simulator-guided greedy on LLM slots (mutates ``slots``).

    Unless ``fill``, it stops once every model is satisfied and tries groups that already host
    something before empty ones (co-location first, free GPUs stay free). Unlike AlpaServe's
    weights, an LLM replica also takes KV memory and GPU time from its neighbours, so a
    placement that leaves fewer models satisfied or a lower attainment is undone and that
    (group, model) pair is not tried again. With ``touched`` and ``max_moves``, a slot not yet
    touched may change only while the budget lasts; ``spawn(m)`` carves a new slot for model
    ``m`` from free GPUs when no slot takes it.
    """
    n = len(problem.demands)
    tried: set[tuple[str, int]] = set()
    last: tuple[_Slot, int, bool, LLMSimResult] | None = None  # slot, model, newly touched
    while True:
        result = problem.simulate(slots)
        if last is not None:
            slot, m, newly, before = last
            if _quality(problem, slots, result) < _quality(problem, slots, before) or (
                    _quality(problem, slots, result) == _quality(problem, slots, before)
                    and fill and result.attainment < before.attainment):
                slot.models.remove(m)
                if newly and touched is not None:
                    touched.discard(slot.id)
                result = before
        replicas = _replica_counts(slots, n)
        unmet = [not problem.satisfied(m, replicas[m], result) for m in range(n)]
        if not fill and not any(unmet):
            return result
        unserved, requests = result.unserved.tolist(), result.model_requests.tolist()
        below_min = [replicas[m] < problem.demands[m].min_replicas for m in range(n)]
        caps = [problem.demands[m].max_replicas for m in range(n)]
        model_order = [m for m in sorted(
            (m for m in range(n) if (fill and problem.demands[m].needed) or unmet[m]),
            key=lambda m: (not below_min[m], -unserved[m], replicas[m], -requests[m], m))
            if (cap := caps[m]) is None or replicas[m] < cap]
        load = result.group_requests.tolist()
        group_order = sorted(range(len(slots)),
                             key=lambda g: (not fill and not slots[g].models, load[g], g))
        budget_left = touched is None or max_moves is None or len(touched) < max_moves
        choice = next(((slots[g], m) for g in group_order
                       if budget_left or slots[g].id in (touched or ())
                       for m in model_order
                       if (slots[g].id, m) not in tried and problem.fits(slots[g], m)), None)
        spawned = False
        if choice is None and spawn is not None and budget_left:
            for m in model_order:
                new = spawn(m)
                if new is not None:
                    slots.append(new)
                    choice, spawned = (new, m), True
                    break
        if choice is None:
            return result
        slot, m = choice
        tried.add((slot.id, m))
        slot.models.append(m)
        newly = touched is not None and slot.id not in touched
        if touched is not None:
            touched.add(slot.id)
        # A replica that must exist (min replicas) or that opened new GPUs is kept as is.
        last = None if spawned or replicas[m] < problem.demands[m].min_replicas else (
            slot, m, newly, result)


# ---- layouts ----------------------------------------------------------------------------------

_Cut = tuple[tuple[int, ...], int, int]  # GPU indices, tp, pp


def _cut(free: list[int], sizes: Sequence[tuple[int, int]]) -> list[_Cut]:
    """Take groups of the given (tp, pp) shapes from a node's free GPU indices, in order; the
    remainder becomes the largest pure-tensor groups that fit."""
    out, i = [], 0
    for tp, pp in sizes:
        if i + tp * pp > len(free):
            break
        out.append((tuple(free[i:i + tp * pp]), tp, pp))
        i += tp * pp
    while i < len(free):
        size = powers_of_two_upto(len(free) - i)[-1]
        out.append((tuple(free[i:i + size]), size, 1))
        i += size
    return out


def _layouts(pool: PoolSpec) -> list[list[tuple[int, tuple[int, ...], int, int]]]:
    """Candidate layouts: lists of (node, gpu indices, tp, pp)."""
    caps = pool.node_capacity()
    sizes = powers_of_two_upto(pool.gpus_per_node)
    layouts = []
    for size in sizes:
        for pp in powers_of_two_upto(size):
            tp = size // pp
            layout = []
            for node, cap in enumerate(caps):
                cuts = _cut(list(range(cap)), [(tp, pp)] * (cap // size))
                layout += [(node, *cut) for cut in cuts]
            layouts.append(layout)
    for small in sizes:
        for big in (s for s in sizes if s > small):
            per_node = [cap // big for cap in caps]
            for n_big in range(1, sum(per_node)):
                layout, left = [], n_big
                for node, cap in enumerate(caps):
                    k = min(left, per_node[node])
                    left -= k
                    plan_ = [(big, 1)] * k + [(small, 1)] * ((cap - k * big) // small)
                    layout += [(node, *cut) for cut in _cut(list(range(cap)), plan_)]
                layouts.append(layout)
    unique, seen = [], set()
    for layout in layouts:
        key = tuple(sorted((g[0], len(g[1]), g[2], g[3]) for g in layout))
        if key not in seen:
            seen.add(key)
            unique.append(layout)
    return unique


def _score(problem: _Problem, slots: Sequence[_Slot], result: LLMSimResult, fill: bool
           ) -> tuple[float, ...]:
    """More models meeting their target first; then, unless ``fill``, fewer GPUs before higher
    attainment (the extra GPUs stay free for the autoscaler and the warm pool); then lower
    mean TTFT."""
    replicas = _replica_counts(slots, len(problem.demands))
    met = sum(problem.satisfied(m, replicas[m], result) for m in range(len(problem.demands)))
    used = sum(s.tp * s.pp for s in slots if s.models)
    served = result.ttft[np.isfinite(result.ttft)]
    mean_ttft = float(served.mean()) if len(served) else math.inf
    if fill:
        return (met, result.attainment, -used, -mean_ttft)
    return (met, -used, result.attainment, -mean_ttft)


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


def plan(pool: PoolSpec, demands: Sequence[ModelDemand], current: Placement | None = None,
         max_moves: int | None = None, fill: bool = False,
         workload: Workload | None = None) -> Placement:
    """Place ``demands`` on ``pool``.

    Without ``current``: search every layout (see the module docstring). With ``current``:
    keep its groups, drop models no longer demanded, and add replicas (to existing groups or
    new groups carved from free GPUs) changing at most ``max_moves`` groups; the result's
    ``moved`` and ``removed`` name the groups that change. ``workload`` overrides the planning
    workload (default: :func:`planning_workload` of the demands).
    """
    names = [d.name for d in demands]
    if len(set(names)) != len(names):
        raise PlacementError(f"model names must be unique, got {names}")
    if max_moves is not None and max_moves < 0:
        raise PlacementError(f"max_moves must be >= 0, got {max_moves}")
    problem = _Problem(pool, demands, workload or planning_workload(demands))
    _check_feasible(problem)
    if current is not None:
        return _incremental(problem, current, max_moves, fill)
    best: tuple[tuple[float, ...], list[_Slot], LLMSimResult] | None = None
    layouts = _layouts(pool)
    for layout in layouts:
        slots = [_Slot(f"g{i}", node, gpus, tp, pp) for i, (node, gpus, tp, pp)
                 in enumerate(layout)]
        result = _greedy(problem, slots, fill)
        s = _score(problem, slots, result, fill)
        if best is None or s > best[0]:
            best = (s, slots, result)
    if best is None:  # unreachable: a pool always has at least one layout
        raise DoesNotFitError(f"pool {pool.name!r} has no layout")
    _, slots, result = best
    return _placement(problem, slots, result, f"best of {len(layouts)} layouts")


def _incremental(problem: _Problem, current: Placement, max_moves: int | None,
                 fill: bool) -> Placement:
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
        extra = sum(m in s.models for s in slots) - (d.max_replicas if d.max_replicas
                                                     is not None else 10**9)
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
        shapes = own + group_shapes(problem.pool.gpus_per_node)
        for tp, pp in shapes:
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
    result = _greedy(problem, slots, fill, touched, max_moves, spawn)
    before = {g.id for g in current.groups}
    removed = tuple(sorted(s.id for s in slots if s.id in before and not s.models))
    moved = tuple(sorted(s.id for s in slots if s.id in touched and s.models))
    budget = "unbounded" if max_moves is None else f"at most {max_moves}"
    how = (f"incremental from {len(current.groups)} groups, {budget} moves: "
           f"changed {list(moved) or 'none'}, removed {list(removed) or 'none'}")
    return _placement(problem, slots, result, how, moved, removed)


def _shrink(problem: _Problem, slots: list[_Slot], touched: set[str],
            max_moves: int | None) -> None:
    """Remove replicas the demand no longer needs (scale-down, scale-to-zero), least loaded
    groups first, keeping every model that is satisfied satisfied and min replicas in place,
    within the move budget. Each (group, model) pair is tried once."""
    n = len(problem.demands)
    tried: set[tuple[str, int]] = set()
    result = problem.simulate(slots)
    while True:
        replicas = _replica_counts(slots, n)
        ok = [problem.satisfied(m, replicas[m], result) for m in range(n)]
        load = result.group_requests.tolist()
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
            result = trial
        else:
            slot.models.append(m)


def _placement(problem: _Problem, slots: Sequence[_Slot], result: LLMSimResult, how: str,
               moved: tuple[str, ...] = (), removed: tuple[str, ...] = ()) -> Placement:
    groups = []
    for slot in slots:
        if not slot.models:
            continue
        hosted = []
        for m, share in zip(slot.models, problem.shares(slot), strict=True):
            prof = LLMProfile(problem.demands[m].model, problem.pool.gpu, slot.tp, slot.pp)
            hosted.append(HostedModel(problem.demands[m].name, round(share, 4),
                                      prof.kv_capacity_tokens(round(share, 4))))
        groups.append(GroupPlacement(slot.id, slot.node, slot.gpu_indices, slot.tp, slot.pp,
                                     tuple(hosted)))
    replicas = _replica_counts(slots, len(problem.demands))
    outcomes = tuple(
        ModelOutcome(d.name, replicas[m], float(result.model_attainment[m]),
                     d.target_attainment,
                     result.ttft_quantile(m, problem.workload.model_ids, 0.95))
        for m, d in enumerate(problem.demands))
    used = sum(g.gpus for g in groups)
    free = problem.pool.usable_gpus - used
    lines = [f"{len(groups)} groups on {used} of {problem.pool.usable_gpus} "
             f"{problem.pool.gpu.name} GPUs ({how}); predicted attainment "
             f"{result.attainment:.1%} of {len(problem.workload)} simulated requests"]
    for o, d in zip(outcomes, problem.demands, strict=True):
        slo = f"TTFT <= {d.ttft_slo_s:g} s" + (f", TPOT <= {d.tpot_slo_s:g} s"
                                               if d.tpot_slo_s else "")
        verdict = "meets" if problem.satisfied(problem.demands.index(d), o.replicas, result) \
            else "MISSES"
        lines.append(f"{d.name}: {o.replicas} replicas, {o.attainment:.1%} within {slo} "
                     f"({verdict} target {d.target_attainment:.0%}), p95 TTFT "
                     f"{o.p95_ttft_s:.3f} s")
    return Placement(problem.pool.name, tuple(groups), outcomes, result.attainment,
                     "\n".join(lines), moved, removed, free)


def evaluate(pool: PoolSpec, demands: Sequence[ModelDemand], placement: Placement,
             workload: Workload) -> LLMSimResult:
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
    return simulate_llm(groups, [d.request_shape() for d in demands], workload)


def replication_plan(pool: PoolSpec, demands: Sequence[ModelDemand], fill: bool = True,
                     workload: Workload | None = None) -> Placement:
    """Baseline: one model per group (no co-location), each model on its smallest group
    shape, replicas added by the same simulator-guided greedy."""
    problem = _Problem(pool, demands, workload or planning_workload(demands), exclusive=True)
    _check_feasible(problem)
    sizes = powers_of_two_upto(pool.gpus_per_node)
    smallest = min(
        (next(s for s in sizes if problem.min_share(m, s, 1) is not None)
         for m, d in enumerate(demands) if d.needed), default=1)
    slots = [_Slot(f"g{i}", node, gpus, tp, pp) for i, (node, gpus, tp, pp) in enumerate(
        (node, *cut) for node, cap in enumerate(pool.node_capacity())
        for cut in _cut(list(range(cap)), [(smallest, 1)] * (cap // smallest)))]
    result = _greedy(problem, slots, fill)
    return _placement(problem, slots, result, "one model per group (replication)")
