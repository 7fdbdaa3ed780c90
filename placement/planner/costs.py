"""Step costs of one engine as tables, filled from the latency model's own functions.

Both simulators (the pure-Python reference and the compiled core) read their step times from
these tables, so they agree to the last bit, and whatever
:class:`~kubeplex.placement.llm.LLMProfile` computes (calibrated or analytic) flows in:

* ``prefill[k]`` is ``profile.prefill_seconds(k)`` for every prompt length ``k`` a sample
  needs (exact);
* a decode step of ``b`` sequences at mean context ``c`` is ``profile.decode_step_seconds``
  interpolated linearly in ``c`` between grid points :data:`DECODE_GRID_RATIO` apart (exact
  wherever the model is linear in the context, as a memory-bound step is; the grid keeps a
  table to a few thousand entries per batch size instead of one per token).

Tables only grow (a longer prompt or context appends entries), so a value never changes once
read.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import numpy.typing as npt

from kubeplex.placement.llm import LLMProfile

__all__ = ["DECODE_GRID_RATIO", "MAX_NUM_SEQS", "CostTable", "CostTables"]

#: vLLM's default ``--max-num-seqs``: the most sequences one engine runs in a batch.
MAX_NUM_SEQS = 256
#: Spacing of the decode table's context grid: each point 2^(1/2) (41%) above the last.
DECODE_GRID_RATIO = 2 ** 0.5

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _grid_upto(limit: int) -> list[int]:
    """Context lengths ``1, 2, 3, ...`` growing by :data:`DECODE_GRID_RATIO`, past ``limit``."""
    points = [1]
    while points[-1] <= limit:
        points.append(max(points[-1] + 1, math.ceil(points[-1] * DECODE_GRID_RATIO)))
    return points


class CostTable:
    """One profile's prefill and decode tables (grown on demand by :meth:`ensure`)."""

    def __init__(self, profile: LLMProfile) -> None:
        self.profile = profile
        self.prefill: FloatArray = np.zeros(1)  # index 0 unused: a chunk never ends there
        self.grid: IntArray = np.zeros(0, dtype=np.int64)
        self.decode: FloatArray = np.zeros((MAX_NUM_SEQS + 1, 0))  # [batch size, grid point]
        self._grid: list[int] = []

    def ensure(self, max_prompt: int, max_context: int) -> None:
        """Make room for prompts up to ``max_prompt`` and contexts up to ``max_context``."""
        have = len(self.prefill) - 1
        if max_prompt > have:
            more = [self.profile.prefill_seconds(k) for k in range(have + 1, max_prompt + 1)]
            self.prefill = np.concatenate([self.prefill, np.array(more, dtype=np.float64)])
        if not self._grid or self._grid[-1] <= max_context:
            grid = _grid_upto(max_context)
            new = grid[len(self._grid):]
            columns = np.array([[self.profile.decode_step_seconds(b, c) for c in new]
                                for b in range(MAX_NUM_SEQS + 1)], dtype=np.float64)
            self.decode = np.concatenate([self.decode, columns], axis=1)
            self._grid = grid
            self.grid = np.array(grid, dtype=np.int64)

    def decode_seconds(self, batch: int, context: int) -> float:
        """A decode step of ``batch`` sequences at mean context ``context`` (interpolated; the
        compiled core does the same arithmetic)."""
        grid = self._grid
        j = bisect.bisect_right(grid, context) - 1
        x0, x1 = grid[j], grid[j + 1]
        y0, y1 = float(self.decode[batch, j]), float(self.decode[batch, j + 1])
        return y0 + (y1 - y0) * (context - x0) / (x1 - x0)


class CostTables:
    """One :class:`CostTable` per profile, shared by every simulation of a search, and the
    tables packed into flat arrays for the compiled core (rebuilt only when one grows)."""

    def __init__(self) -> None:
        self._tables: dict[LLMProfile, CostTable] = {}
        self._packed: Packed | None = None

    def get(self, profile: LLMProfile, max_prompt: int, max_context: int) -> CostTable:
        table = self._tables.get(profile)
        if table is None:
            table = self._tables[profile] = CostTable(profile)
            self._packed = None
        before = (len(table.prefill), len(table.grid))
        table.ensure(max_prompt, max_context)
        if (len(table.prefill), len(table.grid)) != before:
            self._packed = None
        return table

    def packed(self) -> Packed:
        """Every table in flat arrays: ``prefill`` (1-D) and ``decode`` (batch x columns) with
        each table's offset into them, and the longest context grid (all grids are prefixes
        of it)."""
        if self._packed is None:
            tables = list(self._tables.values())
            longest = max(tables, key=lambda t: len(t.grid))
            prefill_offsets = np.cumsum([0] + [len(t.prefill) for t in tables[:-1]])
            decode_offsets = np.cumsum([0] + [t.decode.shape[1] for t in tables[:-1]])
            self._packed = Packed(
                np.concatenate([t.prefill for t in tables]),
                np.concatenate([t.decode for t in tables], axis=1),
                longest.grid,
                {id(t): (int(p), int(d)) for t, p, d in zip(tables, prefill_offsets,
                                                            decode_offsets, strict=True)})
        return self._packed


class Packed:
    """:meth:`CostTables.packed`'s arrays; ``offsets[id(table)]`` = (prefill, decode)."""

    __slots__ = ("decode", "grid", "offsets", "prefill")

    def __init__(self, prefill: FloatArray, decode: FloatArray, grid: IntArray,
                 offsets: dict[int, tuple[int, int]]) -> None:
        self.prefill, self.decode, self.grid, self.offsets = prefill, decode, grid, offsets
