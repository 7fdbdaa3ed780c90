"""AlpaServe's placement search (OSDI'23 and its artifact) and the two baselines.

* :func:`enumerate_group_configs`: for each group size ``gs = 1, 2, 4, ... <= N`` and each
  ``gs = op * pp`` (``pp <= 8``, ``op <= 4``): ``N // gs`` groups of ``(op, pp)`` plus the
  remainder ``N % gs`` split into powers of two as pure-pipeline groups.
* :func:`greedy_placement`: simulator-guided greedy replica placement. Repeatedly simulate the
  workload on the current placement; visit groups from the least loaded (fewest requests) and
  models from the most unserved (ties: fewest replicas, then most requests); place the first
  (group, model) pair not yet placed that fits in memory (sum over resident models of their
  biggest per-GPU stage weight <= budget); stop when nothing fits.
* :func:`alpaserve_search`: the greedy on every config set (and on every device split between
  buckets of models with similar single-GPU latency), scored by SLO attainment, ties broken
  by lower mean latency, then more replicas.
* :func:`selective_replication`: the same greedy with every group a single GPU (SR).
* :func:`clockwork_plus`: SR re-solved every window (60 s) on that window's actual arrivals,
  with free swaps and queues reset at each window (Clockwork++).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kubeplex.placement.alpaserve.profiles import ModelProfile, ParallelConfig
from kubeplex.placement.alpaserve.simulator import Core, GroupSpec, SimResult, simulate
from kubeplex.placement.errors import DoesNotFitError, PlacementError
from kubeplex.placement.groups import (
    connected_components,
    powers_of_two_upto,
    split_powers_of_two,
)
from kubeplex.placement.workload import Workload

__all__ = [
    "BUCKET_PARTITION_LIMIT",
    "CLOCKWORK_WINDOW_S",
    "MAX_OP",
    "MAX_PP",
    "SAME_LATENCY_THRESHOLD",
    "AlpaPlacement",
    "Cluster",
    "Score",
    "alpaserve_search",
    "clockwork_plus",
    "enumerate_group_configs",
    "greedy_placement",
    "latency_buckets",
    "score",
    "selective_replication",
]

#: The artifact's search bounds (ModelParallelismSearch: max_pp=8, max_op=4).
MAX_PP = 8
MAX_OP = 4
#: Models whose single-GPU latencies differ by less than 38% share a bucket (artifact's
#: ``same_model_threshold``).
SAME_LATENCY_THRESHOLD = 0.38
#: The artifact keeps shrinking its tolerance until fewer than 100 device splits remain.
BUCKET_PARTITION_LIMIT = 100
#: The tolerances it tries in turn (the artifact's ``partition_devices`` list).
_BUCKET_TOLERANCES = (1.0, 0.5, 0.3, 0.2, 0.1)
#: Clockwork++ re-plans every 60 s (AlpaServe §6.2).
CLOCKWORK_WINDOW_S = 60.0


@dataclass(frozen=True)
class Cluster:
    """``num_gpus`` devices with ``memory_budget_bytes`` of weight memory each."""

    num_gpus: int
    memory_budget_bytes: float
    gpus_per_node: int = 8

    def __post_init__(self) -> None:
        if self.num_gpus < 1:
            raise PlacementError(f"the cluster needs at least one GPU, got {self.num_gpus}")
        if self.memory_budget_bytes <= 0:
            raise PlacementError(
                f"the per-GPU memory budget must be > 0 bytes, got {self.memory_budget_bytes}")
        if self.gpus_per_node < 1:
            raise PlacementError(f"gpus_per_node must be >= 1, got {self.gpus_per_node}")


@dataclass(frozen=True, order=True)
class Score:
    """Compared as a tuple: attainment, then lower mean latency, then more replicas."""

    attainment: float
    neg_mean_latency: float
    replicas: int


@dataclass(frozen=True)
class AlpaPlacement:
    """A placement with its training score and a human-readable explanation."""

    policy: str
    groups: tuple[GroupSpec, ...]
    score: Score
    explanation: str
    #: Clockwork++ only: one placement per window (``groups`` is the first).
    windows: tuple[tuple[GroupSpec, ...], ...] = ()
    #: AlpaServe only: each config set tried (e.g. "4x(1x2)") and its training attainment.
    candidates: tuple[tuple[str, float], ...] = ()

    @property
    def replicas(self) -> int:
        return sum(len(g.models) for g in self.groups)


def enumerate_group_configs(num_gpus: int, gpus_per_node: int = 8, max_op: int = MAX_OP,
                            max_pp: int = MAX_PP) -> list[tuple[ParallelConfig, ...]]:
    """Candidate group partitions of the cluster (see the module docstring)."""
    if num_gpus < 1:
        raise PlacementError(f"need at least one GPU, got {num_gpus}")
    sets: list[tuple[ParallelConfig, ...]] = []
    for size in powers_of_two_upto(num_gpus):
        if size > gpus_per_node and size % gpus_per_node:
            continue
        remainder = tuple(ParallelConfig(1, s) for s in split_powers_of_two(num_gpus % size))
        for pp in powers_of_two_upto(size):
            op = size // pp
            if pp > max_pp or op > max_op:
                continue
            sets.append((ParallelConfig(op, pp),) * (num_gpus // size) + remainder)
    return sets


def score(groups: Sequence[GroupSpec], result: SimResult) -> Score:
    return Score(result.attainment, -result.mean_latency, sum(len(g.models) for g in groups))


def _weights(profiles: Sequence[ModelProfile], config: ParallelConfig) -> list[float]:
    out = []
    for p in profiles:
        stage = p.get(config)
        out.append(float("inf") if stage is None else stage.max_stage_weight_bytes)
    return out


class _ComponentCache:
    """Per-model unserved counts and per-group request counts of a placement, simulated one
    connected component (groups linked by the models they share) at a time.

    A request only ever reaches groups hosting its model, so a component's simulation does not
    depend on the rest of the placement: the greedy adds one replica per step, which changes
    one component, and every other component's counts come from this cache. The results are
    exactly those of one simulation of the whole placement.
    """

    def __init__(self, profiles: Sequence[ModelProfile], workload: Workload,
                 core: Core = "compiled") -> None:
        self.profiles, self.workload, self.core = profiles, workload, core
        self.requests = workload.model_counts()
        self._cache: dict[tuple[tuple[int, ParallelConfig, tuple[int, ...]], ...],
                          tuple[dict[int, int], dict[int, int]]] = {}

    def counts(self, groups: Sequence[GroupSpec]) -> tuple[list[float], list[int]]:
        unserved = self.requests.astype(np.float64).tolist()
        group_requests = [0] * len(groups)
        for component in connected_components([g.models for g in groups]):
            key = tuple((g, groups[g].config, groups[g].models) for g in component)
            if key not in self._cache:
                self._cache[key] = self._simulate(groups, component)
            model_unserved, per_group = self._cache[key]
            for m, value in model_unserved.items():
                unserved[m] = value
            for g, value in per_group.items():
                group_requests[g] = value
        return unserved, group_requests

    def _simulate(self, groups: Sequence[GroupSpec], component: list[int]
                  ) -> tuple[dict[int, int], dict[int, int]]:
        models = sorted({m for g in component for m in groups[g].models})
        local = {m: i for i, m in enumerate(models)}
        sub = [GroupSpec(groups[g].config, tuple(local[m] for m in groups[g].models))
               for g in component]
        result = simulate(sub, [self.profiles[m] for m in models], self.workload.subset(models),
                          self.core)
        unserved = result.unserved.tolist()
        return ({m: int(unserved[i]) for i, m in enumerate(models)},
                {g: int(result.group_requests[j]) for j, g in enumerate(component)})


def greedy_placement(configs: Sequence[ParallelConfig], profiles: Sequence[ModelProfile],
                     cluster: Cluster, workload: Workload, core: Core = "compiled"
                     ) -> tuple[GroupSpec, ...]:
    """The artifact's ``replica_placement_fast_greedy`` on groups of the given configs (the
    simulator ``core`` changes the speed, never the result)."""
    weights = {c: _weights(profiles, c) for c in set(configs)}
    models: list[list[int]] = [[] for _ in configs]
    used = [0.0] * len(configs)
    budget = cluster.memory_budget_bytes
    stats = _ComponentCache(profiles, workload, core)
    requests = stats.requests.tolist()
    while True:
        groups = tuple(GroupSpec(c, tuple(sorted(ms))) for c, ms in zip(configs, models,
                                                                       strict=True))
        unserved, group_requests = stats.counts(groups)
        replicas = [0] * len(profiles)
        for ms in models:
            for m in ms:
                replicas[m] += 1
        # Most unserved first; ties (e.g. everything served) go to the model with the fewest
        # replicas, then the most requests (the artifact leaves ties to argsort's order).
        model_order = sorted(range(len(profiles)),
                             key=lambda m: (-unserved[m], replicas[m], -requests[m], m))
        group_order = sorted(range(len(configs)), key=lambda g: (group_requests[g], g))
        placed = False
        for g in group_order:
            w = weights[configs[g]]
            for m in model_order:
                if m not in models[g] and used[g] + w[m] <= budget:
                    models[g].append(m)
                    used[g] += w[m]
                    placed = True
                    break
            if placed:
                break
        if not placed:
            return groups


def _check_fits(profiles: Sequence[ModelProfile], cluster: Cluster) -> None:
    for p in profiles:
        best = min((s.max_stage_weight_bytes for c, s in p.configs
                    if c.gpus <= cluster.num_gpus), default=float("inf"))
        if best > cluster.memory_budget_bytes:
            raise DoesNotFitError(
                f"model {p.name!r} needs {best / 1e9:.2f} GB per GPU in its smallest profiled "
                f"split but the budget is {cluster.memory_budget_bytes / 1e9:.2f} GB per GPU; "
                f"raise the memory budget or use more GPUs per group")


def _label(configs: Sequence[ParallelConfig]) -> str:
    counts: dict[ParallelConfig, int] = {}
    for c in configs:
        counts[c] = counts.get(c, 0) + 1
    return "+".join(f"{n}x({c})" for c, n in counts.items())


def _best_config_set(profiles: Sequence[ModelProfile], cluster: Cluster, workload: Workload,
                     core: Core) -> tuple[tuple[GroupSpec, ...], Score, list[tuple[str, float]]]:
    best: tuple[tuple[GroupSpec, ...], Score] | None = None
    tried: list[tuple[str, float]] = []
    for configs in enumerate_group_configs(cluster.num_gpus, cluster.gpus_per_node):
        if not any(p.get(c) is not None for p in profiles for c in configs):
            continue  # no model has a profile for any group here: nothing could be placed
        groups = greedy_placement(configs, profiles, cluster, workload, core)
        s = score(groups, simulate(groups, profiles, workload, core))
        tried.append((_label(configs), s.attainment))
        if best is None or s > best[1]:
            best = (groups, s)
    if best is None:
        raise DoesNotFitError("no candidate group configuration has a profile for any model")
    return best[0], best[1], tried


def latency_buckets(profiles: Sequence[ModelProfile],
                    threshold: float = SAME_LATENCY_THRESHOLD) -> list[list[int]]:
    """Models grouped by similar single-GPU latency (first fit against a bucket's first)."""
    buckets: list[list[int]] = []
    anchors: list[float] = []
    for m, p in enumerate(profiles):
        latency = p.single_gpu_latency
        for bucket, anchor in zip(buckets, anchors, strict=True):
            if abs(latency - anchor) / anchor < threshold:
                bucket.append(m)
                break
        else:
            buckets.append([m])
            anchors.append(latency)
    return buckets


def _device_splits(num_gpus: int, rates: Sequence[float], latencies: Sequence[float]
                   ) -> list[tuple[int, ...]]:
    """Splits of the GPUs over buckets whose throughput shares are close to the rate shares."""
    splits = []
    for cuts in itertools.combinations(range(1, num_gpus), len(rates) - 1):
        bounds = (0, *cuts, num_gpus)
        splits.append(tuple(b - a for a, b in itertools.pairwise(bounds)))
    total = sum(rates) or 1.0
    share = np.array(rates) / total
    reduced = splits
    for tolerance in _BUCKET_TOLERANCES:
        reduced = []
        for split in splits:
            throughput = np.array([n / lat for n, lat in zip(split, latencies, strict=True)])
            if np.max(np.abs(share - throughput / throughput.sum())) < tolerance:
                reduced.append(split)
        if len(reduced) < BUCKET_PARTITION_LIMIT:
            break
    return reduced


def alpaserve_search(profiles: Sequence[ModelProfile], cluster: Cluster,
                     workload: Workload, core: Core = "compiled") -> AlpaPlacement:
    """AlpaServe: greedy placement on every config set, plus bucket separation."""
    _check_fits(profiles, cluster)
    groups, best, tried = _best_config_set(profiles, cluster, workload, core)
    how = f"best of {len(tried)} group configurations with all models mixed"
    buckets = latency_buckets(profiles)
    if len(buckets) > 1:
        counts = workload.model_counts()
        rates = [float(counts[b].sum()) for b in buckets]
        latencies = [profiles[b[0]].single_gpu_latency for b in buckets]
        for split in _device_splits(cluster.num_gpus, rates, latencies):
            combined: list[GroupSpec] = []
            try:
                for bucket, n in zip(buckets, split, strict=True):
                    sub_cluster = Cluster(n, cluster.memory_budget_bytes, cluster.gpus_per_node)
                    sub_profiles = [profiles[m] for m in bucket]
                    _check_fits(sub_profiles, sub_cluster)
                    sub, _, _ = _best_config_set(sub_profiles, sub_cluster,
                                                 workload.subset(bucket), core)
                    combined += [GroupSpec(g.config, tuple(sorted(bucket[m] for m in g.models)))
                                 for g in sub]
            except DoesNotFitError:
                continue
            s = score(combined, simulate(combined, profiles, workload, core))
            if s > best:
                groups, best = tuple(combined), s
                how = (f"{len(buckets)} latency buckets on {'+'.join(map(str, split))} GPUs "
                       f"beat mixing all models")
    return AlpaPlacement("alpaserve", groups, best, _explain(groups, profiles, best, how),
                         candidates=tuple(tried))


def selective_replication(profiles: Sequence[ModelProfile], cluster: Cluster,
                          workload: Workload) -> AlpaPlacement:
    """SR: the greedy with every group a single GPU."""
    single = ParallelConfig(1, 1)
    for p in profiles:
        stage = p.get(single)
        if stage is None or stage.max_stage_weight_bytes > cluster.memory_budget_bytes:
            raise DoesNotFitError(
                f"selective replication needs every model on one GPU; {p.name!r} does not fit "
                f"in {cluster.memory_budget_bytes / 1e9:.2f} GB")
    groups = greedy_placement((single,) * cluster.num_gpus, profiles, cluster, workload)
    s = score(groups, simulate(groups, profiles, workload))
    return AlpaPlacement("sr", groups, s, _explain(groups, profiles, s, "one GPU per group"))


def clockwork_plus(profiles: Sequence[ModelProfile], cluster: Cluster, workload: Workload,
                   window: float = CLOCKWORK_WINDOW_S) -> tuple[AlpaPlacement, SimResult]:
    """Clockwork++: SR re-solved on each window's own arrivals; returns the placement (first
    window's groups, every window's in ``windows``) and the stitched simulation result."""
    if window <= 0:
        raise PlacementError(f"the re-planning window must be > 0 s, got {window}")
    end = float(workload.arrivals[-1]) if len(workload) else 0.0
    results: list[SimResult] = []
    placements: list[tuple[GroupSpec, ...]] = []
    start = 0.0
    while start <= end:
        part = workload.window(start, start + window)
        sr = selective_replication(profiles, cluster, part)
        placements.append(sr.groups)
        results.append(simulate(sr.groups, profiles, part))
        start += window
    stitched = SimResult(
        np.concatenate([r.good for r in results]),
        np.concatenate([r.latency for r in results]),
        np.sum([r.model_requests for r in results], axis=0),
        np.sum([r.model_good for r in results], axis=0),
        np.sum([r.group_requests for r in results], axis=0))
    s = score(placements[0], stitched)
    how = f"selective replication re-solved in {len(placements)} windows of {window:g} s"
    placement = AlpaPlacement("clockwork", placements[0], s,
                              _explain(placements[0], profiles, s, how), tuple(placements))
    return placement, stitched


def _explain(groups: Sequence[GroupSpec], profiles: Sequence[ModelProfile], s: Score,
             how: str) -> str:
    shapes: dict[str, int] = {}
    for g in groups:
        shapes[str(g.config)] = shapes.get(str(g.config), 0) + 1
    shape_text = ", ".join(f"{n} x ({shape} op x pp)" for shape, n in shapes.items())
    return (f"{len(groups)} groups [{shape_text}] hosting {sum(len(g.models) for g in groups)} "
            f"replicas of {len(profiles)} models: {how}; predicted SLO attainment "
            f"{s.attainment:.1%}, mean latency {-s.neg_mean_latency * 1e3:.0f} ms")
