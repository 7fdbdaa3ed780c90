"""GPU group sizes and parallel shapes, shared by both placement searches and the control layer.

A group is ``tp x pp`` GPUs; both degrees are powers of two (vLLM shards attention heads and
layers evenly, and AlpaServe's artifact enumerates the same sizes).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["connected_components", "group_shapes", "powers_of_two_upto", "split_powers_of_two"]


def powers_of_two_upto(n: int) -> list[int]:
    """``1, 2, 4, ...`` up to ``n`` inclusive, smallest first (``6 -> [1, 2, 4]``)."""
    return [1 << k for k in range(max(n, 0).bit_length()) if 1 << k <= n]


def split_powers_of_two(n: int) -> list[int]:
    """``n`` as a sum of distinct powers of two, largest first (``6 -> [4, 2]``)."""
    return [1 << k for k in reversed(range(max(n, 0).bit_length())) if n >> k & 1]


def group_shapes(max_gpus: int) -> list[tuple[int, int]]:
    """Every ``(tp, pp)`` of at most ``max_gpus`` GPUs: smallest group first, and within one
    size tensor before pipeline parallelism (``4 -> (1,1) (2,1) (1,2) (4,1) (2,2) (1,4)``)."""
    return [(size // pp, pp) for size in powers_of_two_upto(max_gpus)
            for pp in powers_of_two_upto(size)]


def connected_components(hosted: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices of the non-empty groups, split into connected components: two groups are
    connected when they host a model in common (``hosted[g]``: the models group ``g`` hosts).

    A request only ever reaches groups hosting its model, so each component can be simulated
    on its own, and a search step that changes one group re-simulates only its component.
    Groups keep their order inside a component, components the order of their first group.
    """
    parent = list(range(len(hosted)))

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    first_host: dict[int, int] = {}
    for g, models in enumerate(hosted):
        for m in models:
            if m in first_host:
                parent[root(g)] = root(first_host[m])
            else:
                first_host[m] = g
    components: dict[int, list[int]] = {}
    for g, models in enumerate(hosted):
        if models:
            components.setdefault(root(g), []).append(g)
    return list(components.values())
