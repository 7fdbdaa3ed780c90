"""The AlpaServe simulator's compiled core: the reference loop of
:func:`kubeplex.placement.alpaserve.simulator.simulate` in arrays, compiled by numba (cached on
disk after the first run). Same operations in the same order, so the results are identical
(``tests/unit/placement/test_compiled_cores.py`` holds it to that).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["run"]


def run(arrivals: npt.NDArray[np.float64], model_ids: npt.NDArray[np.int64],
        slos: npt.NDArray[np.float64], routes: list[list[tuple[int, tuple[float, ...]]]],
        group_stages: list[int], overhead: float
        ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """``routes[m]``: (group, stage latencies) of each host of model ``m``, in order."""
    host_start = np.cumsum([0] + [len(r) for r in routes]).astype(np.int64)
    host_group = np.array([g for r in routes for g, _ in r], dtype=np.int64)
    latency_start = np.cumsum([0] + [len(s) for r in routes for _, s in r]).astype(np.int64)
    latencies = np.array([x for r in routes for _, s in r for x in s], dtype=np.float64)
    result: Any = _simulate(arrivals, model_ids, slos, host_start, host_group, latency_start,
                            latencies, np.array(group_stages, dtype=np.int64), overhead)
    return result  # type: ignore[no-any-return]


@numba.njit(cache=True)
def _simulate(arrivals: Any, model_ids: Any, slos: Any, host_start: Any, host_group: Any,
              latency_start: Any, latencies: Any, group_stages: Any, overhead: float) -> Any:
    n = len(arrivals)
    num_groups = len(group_stages)
    good = np.zeros(n, dtype=np.bool_)
    latency = np.zeros(n)
    group_requests = np.zeros(num_groups, dtype=np.int64)
    depth = max(1, group_stages.max()) if num_groups else 1
    stage_free = np.zeros((num_groups, depth))
    leave = np.zeros(depth)
    last_free = np.zeros(num_groups)
    for i in range(n):
        m = model_ids[i]
        first, last = host_start[m], host_start[m + 1]
        if first == last:
            continue
        h = first
        g = host_group[h]
        if last - first > 1:
            best = last_free[g]
            for k in range(first, last):
                if last_free[host_group[k]] < best:
                    best, h, g = last_free[host_group[k]], k, host_group[k]
        group_requests[g] += 1
        arrival = arrivals[i]
        lo, hi = latency_start[h], latency_start[h + 1]
        if hi - lo == 1:
            ready = last_free[g]
            t = (ready if ready > arrival else arrival) + latencies[lo] + overhead
            if t - arrival <= slos[i]:
                last_free[g] = t - overhead
                good[i] = True
                latency[i] = t - arrival
            continue
        t = arrival
        for k in range(hi - lo):
            ready = stage_free[g, k]
            t = (ready if ready > t else t) + latencies[lo + k]
            leave[k] = t
        if t + overhead - arrival <= slos[i]:
            for k in range(hi - lo):
                stage_free[g, k] = leave[k]
            last_free[g] = t
            good[i] = True
            latency[i] = t + overhead - arrival
    return good, latency, group_requests
