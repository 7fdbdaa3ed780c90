"""The LLM simulator's compiled core: the reference loop of
:mod:`kubeplex.placement.planner.simulator` in arrays, compiled by numba (cached on disk after
the first run).

It performs the same floating-point operations in the same order as the reference, reading
step costs from the same :class:`~kubeplex.placement.planner.costs.CostTables`, so its results
are identical (``tests/unit/placement/test_compiled_cores.py`` holds it to that). Queues are
linked lists through one ``link`` array (a request is waiting or prefilling, never both); each
engine's running batch is a binary heap of (finish step, request).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
import numpy.typing as npt
from numba.experimental.jitclass.decorators import jitclass

if TYPE_CHECKING:
    from kubeplex.placement.planner.costs import CostTable, CostTables
    from kubeplex.placement.planner.simulator import LLMGroupSpec
    from kubeplex.placement.planner.workload import LLMWorkload

__all__ = ["run"]

_NONE = -1


def run(groups: Sequence[LLMGroupSpec], costs: Sequence[Sequence[CostTable]],
        tables: CostTables, num_models: int, workload: LLMWorkload, max_seqs: int,
        max_tokens: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                                  npt.NDArray[np.int64]]:
    """TTFT, TPOT and per-group request counts, as the reference computes them."""
    packed = tables.packed()
    engine_model, engine_group, capacity, prefill_at, decode_at = [], [], [], [], []
    group_start = [0]
    for g, (group, tabs) in enumerate(zip(groups, costs, strict=True)):
        for spec, table in zip(group.engines, tabs, strict=True):
            engine_model.append(spec.model)
            engine_group.append(g)
            capacity.append(spec.kv_capacity_tokens)
            p, d = packed.offsets[id(table)]
            prefill_at.append(p)
            decode_at.append(d)
        group_start.append(len(engine_model))
    hosts: list[list[int]] = [[] for _ in range(num_models)]
    for e, m in enumerate(engine_model):
        hosts[m].append(e)
    host_start = np.cumsum([0] + [len(h) for h in hosts]).astype(np.int64)
    host_list = np.array([e for h in hosts for e in h], dtype=np.int64)

    def ints(values: Sequence[int]) -> npt.NDArray[np.int64]:
        return np.array(values, dtype=np.int64)

    result: tuple[Any, Any, Any] = _simulate(
        workload.requests.arrivals, workload.model_ids, workload.prompt_tokens,
        workload.output_tokens, ints(engine_model), ints(engine_group), ints(capacity),
        ints(prefill_at), ints(decode_at), ints(group_start), host_start, host_list,
        packed.prefill, packed.decode, packed.grid, max_seqs, max_tokens)
    return result


@numba.njit(cache=True)
def _decode(decode: Any, grid: Any, at: int, batch: int, context: int) -> float:
    j = np.searchsorted(grid, context, side="right") - 1
    x0, x1 = grid[j], grid[j + 1]
    y0, y1 = decode[batch, at + j], decode[batch, at + j + 1]
    return y0 + (y1 - y0) * (context - x0) / (x1 - x0)  # type: ignore[no-any-return]


@numba.njit(cache=True)
def _push(heap_f: Any, heap_r: Any, size: Any, e: int, finish: int, request: int) -> None:
    i = size[e]
    size[e] += 1
    while i > 0:
        parent = (i - 1) // 2
        pf, pr = heap_f[e, parent], heap_r[e, parent]
        if pf < finish or (pf == finish and pr < request):
            break
        heap_f[e, i], heap_r[e, i] = pf, pr
        i = parent
    heap_f[e, i], heap_r[e, i] = finish, request


@numba.njit(cache=True)
def _pop(heap_f: Any, heap_r: Any, size: Any, e: int) -> None:
    size[e] -= 1
    n = size[e]
    last_f, last_r = heap_f[e, n], heap_r[e, n]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        right = child + 1
        if right < n and (heap_f[e, right] < heap_f[e, child] or (
                heap_f[e, right] == heap_f[e, child] and heap_r[e, right] < heap_r[e, child])):
            child = right
        cf, cr = heap_f[e, child], heap_r[e, child]
        if last_f < cf or (last_f == cf and last_r < cr):
            break
        heap_f[e, i], heap_r[e, i] = cf, cr
        i = child
    if n > 0:
        heap_f[e, i], heap_r[e, i] = last_f, last_r


@numba.njit(cache=True)
def _simulate(arrivals: Any, model_ids: Any, prompts: Any, outputs: Any, engine_model: Any,
              engine_group: Any, capacity: Any, prefill_at: Any, decode_at: Any,
              group_start: Any, host_start: Any, host_list: Any, prefill: Any, decode: Any,
              grid: Any, max_seqs: int, max_tokens: int) -> Any:
    n = len(arrivals)
    num_engines = len(engine_model)
    num_groups = len(group_start) - 1
    s = _State(n, num_engines, num_groups, max_seqs)
    kv_need = prompts + outputs
    for i in range(n):
        m = model_ids[i]
        first, last = host_start[m], host_start[m + 1]
        if first == last:
            continue
        for h in range(first, last):
            _advance(s, engine_group[host_list[h]], arrivals[i], arrivals, prompts, outputs,
                     kv_need, capacity, prefill_at, decode_at, group_start, prefill, decode,
                     grid, max_seqs, max_tokens)
        e = host_list[first]
        best = s.wait_count[e] + s.pre_count[e] + s.running[e]
        for h in range(first + 1, last):
            other = host_list[h]
            load = s.wait_count[other] + s.pre_count[other] + s.running[other]
            if load < best:
                best, e = load, other
        if kv_need[i] > capacity[e]:
            continue  # can never be admitted: counts as not served
        s.group_requests[engine_group[e]] += 1
        if s.wait_count[e] == 0:
            s.wait_head[e] = i
        else:
            s.link[s.wait_tail[e]] = i
        s.wait_tail[e] = i
        s.wait_count[e] += 1
    for g in range(num_groups):
        _advance(s, g, np.inf, arrivals, prompts, outputs, kv_need, capacity, prefill_at,
                 decode_at, group_start, prefill, decode, grid, max_seqs, max_tokens)
    return s.ttft, s.tpot, s.group_requests


_STATE_SPEC = [
    ("ttft", numba.float64[:]), ("tpot", numba.float64[:]), ("first_token", numba.float64[:]),
    ("link", numba.int64[:]), ("done", numba.int64[:]),
    ("wait_head", numba.int64[:]), ("wait_tail", numba.int64[:]),
    ("wait_count", numba.int64[:]), ("pre_head", numba.int64[:]),
    ("pre_tail", numba.int64[:]), ("pre_count", numba.int64[:]),
    ("heap_f", numba.int64[:, :]), ("heap_r", numba.int64[:, :]),
    ("running", numba.int64[:]), ("kv_used", numba.int64[:]), ("steps", numba.int64[:]),
    ("context_base", numba.int64[:]), ("decode_s", numba.float64[:]),
    ("new_begin", numba.int64[:]), ("new_end", numba.int64[:]), ("new_list", numba.int64[:]),
    ("clocks", numba.float64[:]), ("group_requests", numba.int64[:]),
]


@jitclass(_STATE_SPEC)
class _State:
    """Every request's, engine's and group's state (see the module docstring)."""

    def __init__(self, n: int, num_engines: int, num_groups: int, max_seqs: int) -> None:
        self.ttft = np.full(n, np.inf)
        self.tpot = np.zeros(n)
        self.first_token = np.zeros(n)
        self.link = np.full(n, _NONE, dtype=np.int64)
        self.done = np.zeros(n, dtype=np.int64)
        self.wait_head = np.full(num_engines, _NONE, dtype=np.int64)
        self.wait_tail = np.full(num_engines, _NONE, dtype=np.int64)
        self.wait_count = np.zeros(num_engines, dtype=np.int64)
        self.pre_head = np.full(num_engines, _NONE, dtype=np.int64)
        self.pre_tail = np.full(num_engines, _NONE, dtype=np.int64)
        self.pre_count = np.zeros(num_engines, dtype=np.int64)
        self.heap_f = np.zeros((num_engines, max_seqs), dtype=np.int64)
        self.heap_r = np.zeros((num_engines, max_seqs), dtype=np.int64)
        self.running = np.zeros(num_engines, dtype=np.int64)
        self.kv_used = np.zeros(num_engines, dtype=np.int64)
        self.steps = np.zeros(num_engines, dtype=np.int64)
        self.context_base = np.zeros(num_engines, dtype=np.int64)
        self.decode_s = np.zeros(num_engines)
        self.new_begin = np.zeros(num_engines, dtype=np.int64)
        self.new_end = np.zeros(num_engines, dtype=np.int64)
        self.new_list = np.zeros(num_engines * max_seqs, dtype=np.int64)
        self.clocks = np.zeros(num_groups)
        self.group_requests = np.zeros(num_groups, dtype=np.int64)


@numba.njit(cache=True)
def _advance(s: Any, g: int, until: float, arrivals: Any, prompts: Any, outputs: Any,
             kv_need: Any, capacity: Any, prefill_at: Any, decode_at: Any, group_start: Any,
             prefill: Any, decode: Any, grid: Any, max_seqs: int, max_tokens: int) -> None:
    """Run group ``g`` up to ``until`` (the reference's ``advance``)."""
    lo, hi = group_start[g], group_start[g + 1]
    clock = s.clocks[g]
    while clock < until:
        step = 0.0
        prefilling = False
        cursor = 0
        for e in range(lo, hi):
            budget = max_tokens - s.running[e]
            room = max_seqs - s.running[e] - s.pre_count[e]
            while s.wait_count[e] > 0 and room > 0 and budget > s.pre_count[e] and \
                    s.kv_used[e] + kv_need[s.wait_head[e]] <= capacity[e]:
                r = s.wait_head[e]
                s.wait_head[e] = s.link[r]
                s.wait_count[e] -= 1
                s.link[r] = _NONE
                if s.pre_count[e] == 0:
                    s.pre_head[e] = r
                else:
                    s.link[s.pre_tail[e]] = r
                s.pre_tail[e] = r
                s.pre_count[e] += 1
                s.done[r] = 0
                s.kv_used[e] += kv_need[r]
                room -= 1
            at = prefill_at[e]
            r = s.pre_head[e] if s.pre_count[e] > 0 else _NONE
            while r != _NONE and budget > 0:
                d = s.done[r]
                size = min(prompts[r] - d, budget)
                step += prefill[at + d + size] - (prefill[at + d] if d else 0.0)
                s.done[r] = d + size
                budget -= size
                prefilling = True
                r = s.link[r]
            s.new_begin[e] = cursor
            while s.pre_count[e] > 0 and s.done[s.pre_head[e]] == prompts[s.pre_head[e]]:
                r = s.pre_head[e]
                s.pre_head[e] = s.link[r]
                s.pre_count[e] -= 1
                s.link[r] = _NONE
                s.new_list[cursor] = r
                cursor += 1
            s.new_end[e] = cursor
            if s.running[e] > 0:
                if not s.decode_s[e]:
                    count = s.running[e]
                    context = (s.context_base[e] + count * s.steps[e]) // count
                    s.decode_s[e] = _decode(decode, grid, decode_at[e], count, context)
                step += s.decode_s[e]
        if step == 0.0:
            clock = until
            break
        rounds = 1
        if not prefilling:
            rounds = -1
            for e in range(lo, hi):
                if s.running[e] > 0:
                    left = s.heap_f[e, 0] - s.steps[e]
                    if rounds < 0 or left < rounds:
                        rounds = left
            if until != np.inf:
                rounds = max(1, min(rounds, math.ceil((until - clock) / step)))
        clock += rounds * step
        for e in range(lo, hi):
            if s.running[e] > 0:
                s.steps[e] += rounds
                while s.running[e] > 0 and s.heap_f[e, 0] <= s.steps[e]:
                    s.decode_s[e] = 0.0
                    finish, r = s.heap_f[e, 0], s.heap_r[e, 0]
                    _pop(s.heap_f, s.heap_r, s.running, e)
                    s.kv_used[e] -= kv_need[r]
                    s.context_base[e] -= kv_need[r] - finish
                    s.tpot[r] = (clock - s.first_token[r]) / (outputs[r] - 1)
            for k in range(s.new_begin[e], s.new_end[e]):
                r = s.new_list[k]
                s.decode_s[e] = 0.0
                s.ttft[r] = clock - arrivals[r]
                if outputs[r] == 1:
                    s.kv_used[e] -= kv_need[r]
                    continue
                s.first_token[r] = clock
                _push(s.heap_f, s.heap_r, s.running, e, s.steps[e] + outputs[r] - 1, r)
                s.context_base[e] += prompts[r] + 1 - s.steps[e]
    s.clocks[g] = clock
