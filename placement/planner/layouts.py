"""Candidate layouts: ways to cut each node of a pool into GPU groups of ``tp x pp`` shapes.

* every node cut into equal groups of each size ``1, 2, 4, ... <= gpus per node`` and each
  ``tp x pp`` factorization (the remainder as smaller pure-tensor groups);
* mixed layouts of ``n`` big groups and the rest small (the AlpaServe bucket idea, for models
  of different sizes), for every pair of sizes and ``n = 1, 2, 4, ...`` (powers of two keep a
  pool of hundreds of GPUs to a few dozen layouts, not hundreds).

Layouts with the same multiset of (node, size, tp, pp) are tried once.
"""

from __future__ import annotations

from collections.abc import Sequence

from kubeplex.placement.groups import powers_of_two_upto
from kubeplex.placement.planner.demand import PoolSpec

__all__ = ["Cut", "Layout", "cut", "layouts"]

Cut = tuple[tuple[int, ...], int, int]  # GPU indices on a node, tp, pp
Layout = list[tuple[int, tuple[int, ...], int, int]]  # (node, GPU indices, tp, pp)


def cut(free: Sequence[int], shapes: Sequence[tuple[int, int]]) -> list[Cut]:
    """Take groups of the given ``(tp, pp)`` shapes from a node's free GPU indices, in order;
    the remainder becomes the largest pure-tensor groups that fit."""
    out: list[Cut] = []
    i = 0
    for tp, pp in shapes:
        if i + tp * pp > len(free):
            break
        out.append((tuple(free[i:i + tp * pp]), tp, pp))
        i += tp * pp
    while i < len(free):
        size = powers_of_two_upto(len(free) - i)[-1]
        out.append((tuple(free[i:i + size]), size, 1))
        i += size
    return out


def layouts(pool: PoolSpec) -> list[Layout]:
    """Every candidate layout of ``pool`` (see the module docstring), uniform ones first."""
    caps = pool.node_capacity()
    sizes = powers_of_two_upto(pool.gpus_per_node)
    found: list[Layout] = []
    for size in sizes:
        for pp in powers_of_two_upto(size):
            tp = size // pp
            layout: Layout = []
            for node, cap in enumerate(caps):
                layout += [(node, *c) for c in cut(range(cap), [(tp, pp)] * (cap // size))]
            found.append(layout)
    for small in sizes:
        for big in (s for s in sizes if s > small):
            per_node = [cap // big for cap in caps]
            for n_big in powers_of_two_upto(sum(per_node) - 1):
                layout, left = [], n_big
                for node, cap in enumerate(caps):
                    k = min(left, per_node[node])
                    left -= k
                    shapes = [(big, 1)] * k + [(small, 1)] * ((cap - k * big) // small)
                    layout += [(node, *c) for c in cut(range(cap), shapes)]
                found.append(layout)
    unique: list[Layout] = []
    seen: set[tuple[tuple[int, int, int, int], ...]] = set()
    for layout in found:
        key = tuple(sorted((g[0], len(g[1]), g[2], g[3]) for g in layout))
        if key not in seen:
            seen.add(key)
            unique.append(layout)
    return unique
