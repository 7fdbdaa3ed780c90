"""AlpaServe's fast serving simulator (requests at batch size 1 through pipelined groups).

Requests are taken in arrival order. Each goes to the group, among those hosting its model,
whose *last* stage frees earliest; it enters stage ``k`` once that stage is free and the
request has left stage ``k - 1``; each stage takes the profiled stage latency times
``1 + 0.009 * pp``, and the reply costs a fixed 0.011 s more. A request that would finish later
than ``arrival + SLO`` is dropped at once and takes no capacity (AlpaServe's admission control).

Two cores run that loop: a compiled one (:mod:`._compiled`, numba; the default) and the
pure-Python reference (plain lists, about a microsecond a request) that tests hold the compiled
one to, result for result. Time is simulated, never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from kubeplex.placement.alpaserve import _compiled
from kubeplex.placement.alpaserve.profiles import ModelProfile, ParallelConfig
from kubeplex.placement.errors import PlacementError
from kubeplex.placement.workload import Workload

__all__ = [
    "FIXED_OVERHEAD_S",
    "PIPELINE_PENALTY_PER_STAGE",
    "WARMUP_S",
    "Core",
    "GroupSpec",
    "SimResult",
    "simulate",
    "stage_latencies",
]

#: Per-request overhead the artifact's fast simulator adds (alpa_serve/simulator/controller.py).
FIXED_OVERHEAD_S = 0.011
#: Stage latency inflation per pipeline stage (cross-stage communication), from the artifact.
PIPELINE_PENALTY_PER_STAGE = 0.009
#: The artifact's final evaluation skips the first and last 10 s worth of requests.
WARMUP_S = 10.0

_INF = float("inf")

#: Which core runs: the compiled one, or the pure-Python reference (identical results).
Core = Literal["compiled", "reference"]


@dataclass(frozen=True)
class GroupSpec:
    """One GPU group: its parallel config and the models (indices) resident in it."""

    config: ParallelConfig
    models: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class SimResult:
    """Per-request outcome and per-model / per-group counters of one simulation."""

    good: npt.NDArray[np.bool_]
    latency: npt.NDArray[np.float64]  # end-to-end seconds of served requests (0 if dropped)
    model_requests: npt.NDArray[np.int64]
    model_good: npt.NDArray[np.int64]
    group_requests: npt.NDArray[np.int64]  # requests dispatched to each group (incl. dropped)

    @property
    def attainment(self) -> float:
        """Fraction of all requests served within their SLO (1.0 for an empty workload)."""
        return float(self.good.mean()) if len(self.good) else 1.0

    @property
    def model_attainment(self) -> npt.NDArray[np.float64]:
        return np.where(self.model_requests > 0,
                        self.model_good / np.maximum(self.model_requests, 1), 1.0)

    @property
    def unserved(self) -> npt.NDArray[np.float64]:
        """n_requests * (1 - attainment) per model: what the greedy placement chases."""
        return (self.model_requests - self.model_good).astype(np.float64)

    @property
    def mean_latency(self) -> float:
        served = self.latency[self.good]
        return float(served.mean()) if len(served) else 0.0

    def attainment_after_warmup(self, workload: Workload, warmup: float = WARMUP_S) -> float:
        """Attainment without the first and last ``warmup`` seconds' worth of requests (counted
        as the artifact does: ``int(warmup / span * n)`` requests from each end)."""
        n = len(self.good)
        if n < 2:
            return self.attainment
        span = float(workload.arrivals[-1] - workload.arrivals[0])
        skip = int(warmup / span * n) if span > 0 else 0
        if skip <= 0 or 2 * skip >= n:
            return self.attainment
        return float(self.good[skip:n - skip].mean())


def stage_latencies(profile: ModelProfile, config: ParallelConfig) -> tuple[float, ...] | None:
    """Simulated per-stage latency of ``profile`` in a group of ``config`` (None: no profile)."""
    return profile.simulated_stages(config, 1.0 + PIPELINE_PENALTY_PER_STAGE * config.pp)


def simulate(groups: Sequence[GroupSpec], profiles: Sequence[ModelProfile],
             workload: Workload, core: Core = "compiled") -> SimResult:
    """Run ``workload`` through ``groups``; ``profiles[i]`` is model ``i``'s profile."""
    num_models = workload.num_models
    if len(profiles) != num_models:
        raise PlacementError(
            f"the workload has {num_models} models but {len(profiles)} profiles were given")
    # Per model: (group, stage latencies) of each host, in group order; a 1-stage host keeps
    # its clock in last_free alone.
    routes: list[list[tuple[int, tuple[float, ...]]]] = [[] for _ in range(num_models)]
    for g, group in enumerate(groups):
        for m in group.models:
            if not 0 <= m < num_models:
                raise PlacementError(f"group {g} hosts model {m}, which is not in the workload")
            stages = stage_latencies(profiles[m], group.config)
            if stages is None:
                raise PlacementError(
                    f"group {g} ({group.config}) hosts {profiles[m].name!r}, "
                    f"which has no profile for that config")
            routes[m].append((g, stages))
    if core == "compiled":
        good_arr, latency_arr, requests_arr = _compiled.run(
            workload.arrivals, workload.model_ids, workload.slos, routes,
            [g.config.pp for g in groups], FIXED_OVERHEAD_S)
    else:
        good_list, latency_list, requests_list = _reference(groups, routes, workload)
        good_arr = np.array(good_list, dtype=np.bool_)
        latency_arr = np.array(latency_list, dtype=np.float64)
        requests_arr = np.array(requests_list, dtype=np.int64)
    model_requests = workload.model_counts()
    model_good = np.bincount(workload.model_ids[good_arr], minlength=num_models).astype(np.int64)
    return SimResult(good_arr, latency_arr, model_requests, model_good, requests_arr)


def _reference(groups: Sequence[GroupSpec], routes: list[list[tuple[int, tuple[float, ...]]]],
               workload: Workload) -> tuple[list[bool], list[float], list[int]]:
    """The pure-Python core (see the module docstring)."""
    num_groups = len(groups)
    n = len(workload)
    good = [False] * n
    latency = [0.0] * n
    group_requests = [0] * num_groups
    stage_free = [[0.0] * group.config.pp for group in groups]
    spare = [[0.0] * group.config.pp for group in groups]  # scratch, swapped on success
    last_free = [0.0] * num_groups  # when each group's last stage frees
    overhead = FIXED_OVERHEAD_S
    arrivals = workload.arrivals.tolist()
    model_ids = workload.model_ids.tolist()
    slos = workload.slos.tolist()
    for i in range(n):
        choices = routes[model_ids[i]]
        if not choices:
            continue
        g, stages = choices[0]
        if len(choices) > 1:
            best = last_free[g]
            for h, h_stages in choices:
                if last_free[h] < best:
                    best, g, stages = last_free[h], h, h_stages
        group_requests[g] += 1
        arrival = arrivals[i]
        if len(stages) == 1:
            ready = last_free[g]
            t = (ready if ready > arrival else arrival) + stages[0] + overhead
            if t - arrival <= slos[i]:
                last_free[g] = t - overhead
                good[i] = True
                latency[i] = t - arrival
            continue
        free, leave = stage_free[g], spare[g]
        t = arrival
        for k, duration in enumerate(stages):
            ready = free[k]
            t = (ready if ready > t else t) + duration
            leave[k] = t
        if t + overhead - arrival <= slos[i]:
            stage_free[g], spare[g] = leave, free
            last_free[g] = t
            good[i] = True
            latency[i] = t + overhead - arrival

    return good, latency, group_requests
