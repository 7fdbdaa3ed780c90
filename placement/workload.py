"""Synthetic request workloads as AlpaServe's artifact generates them.

Each model gets a Gamma arrival process (shape ``1/cv^2``, scale ``cv^2/rate``; ``cv = 1`` is
Poisson) seeded with ``seed + model index`` through numpy's legacy generator, which draws
``int(rate * duration * 1.2)`` gaps at a time; total rates split over models by a power law.
A :class:`Workload` is the merged, arrival-ordered request list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kubeplex.placement.errors import PlacementError

__all__ = [
    "ARTIFACT_GAP_BATCH_FACTOR",
    "POWER_LAW_EXPONENT",
    "Workload",
    "gamma_arrivals",
    "power_law_rates",
    "synthetic_workload",
]

#: The artifact's GammaProcess draws ``rate * duration * 1.2`` gaps per batch.
ARTIFACT_GAP_BATCH_FACTOR = 1.2
#: AlpaServe's synthetic experiments: rate_i proportional to (i + 1) ** -0.5.
POWER_LAW_EXPONENT = 0.5

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests in arrival order: arrival time (s), model index, SLO (s) per request."""

    arrivals: FloatArray
    model_ids: IntArray
    slos: FloatArray
    num_models: int

    def __post_init__(self) -> None:
        n = len(self.arrivals)
        if len(self.model_ids) != n or len(self.slos) != n:
            raise PlacementError("a workload needs one model id and one SLO per arrival")

    def __len__(self) -> int:
        return len(self.arrivals)

    def window(self, start: float, end: float) -> Workload:
        """The requests arriving in ``[start, end)``."""
        lo, hi = np.searchsorted(self.arrivals, [start, end], side="left")
        return Workload(self.arrivals[lo:hi], self.model_ids[lo:hi], self.slos[lo:hi],
                        self.num_models)

    def subset(self, models: Sequence[int]) -> Workload:
        """Only the requests of ``models``, renumbered ``0..len(models)-1`` in that order."""
        if len(models) == self.num_models and all(m == i for i, m in enumerate(models)):
            return self  # all of them, in order
        remap = np.full(self.num_models, -1, dtype=np.int64)
        remap[np.asarray(models, dtype=np.int64)] = np.arange(len(models), dtype=np.int64)
        keep = remap[self.model_ids] >= 0
        return Workload(self.arrivals[keep], remap[self.model_ids[keep]], self.slos[keep],
                        len(models))

    def model_counts(self) -> IntArray:
        return np.bincount(self.model_ids, minlength=self.num_models).astype(np.int64)

    @staticmethod
    def merge(per_model_arrivals: Sequence[FloatArray], slos: Sequence[float]) -> Workload:
        """Merge model ``i``'s arrival times (with SLO ``slos[i]``) into one ordered list."""
        if len(per_model_arrivals) != len(slos):
            raise PlacementError("merge needs one SLO per model")
        if not per_model_arrivals:
            empty = np.zeros(0)
            return Workload(empty, np.zeros(0, dtype=np.int64), empty, 0)
        arrivals = np.concatenate(per_model_arrivals)
        ids = np.concatenate([np.full(len(a), i, dtype=np.int64)
                              for i, a in enumerate(per_model_arrivals)])
        slo = np.concatenate([np.full(len(a), s) for a, s in zip(per_model_arrivals, slos,
                                                                 strict=True)])
        order = np.argsort(arrivals, kind="stable")
        return Workload(arrivals[order], ids[order], slo[order], len(per_model_arrivals))


def gamma_arrivals(rate: float, cv: float, duration: float, seed: int,
                   start: float = 0.0) -> FloatArray:
    """Arrival times in ``[start, start + duration)`` of a Gamma renewal process."""
    if rate < 0 or cv <= 0 or duration < 0:
        raise PlacementError(
            f"arrival rate must be >= 0, cv > 0 and duration >= 0 "
            f"(got rate={rate}, cv={cv}, duration={duration})")
    if rate == 0 or duration == 0:
        return np.zeros(0)
    shape, scale = 1.0 / (cv * cv), cv * cv / rate
    rng = np.random.RandomState(seed)
    batch = max(int(rate * duration * ARTIFACT_GAP_BATCH_FACTOR), 1)
    end = start + duration
    chunks: list[FloatArray] = []
    cur = start
    while True:
        times = cur + np.cumsum(rng.gamma(shape, scale, size=batch))
        inside = times[times < end]
        chunks.append(inside)
        if len(inside) < batch:
            break
        cur = float(times[-1])
    return np.concatenate(chunks)


def power_law_rates(total_rate: float, num_models: int,
                    exponent: float = POWER_LAW_EXPONENT) -> list[float]:
    """Split ``total_rate`` so that model ``i`` gets a share proportional to ``(i+1)^-exp``."""
    if total_rate < 0:
        raise PlacementError(f"total arrival rate must be >= 0, got {total_rate}")
    if num_models < 1:
        raise PlacementError(f"need at least one model, got {num_models}")
    weights = np.arange(1, num_models + 1, dtype=np.float64) ** -exponent
    return [float(w) for w in weights / weights.sum() * total_rate]


def synthetic_workload(rates: Sequence[float], cvs: Sequence[float], slos: Sequence[float],
                       duration: float, seed: int = 0) -> Workload:
    """One Gamma process per model (seeded ``seed + i``), merged."""
    if not len(rates) == len(cvs) == len(slos):
        raise PlacementError("need one rate, cv and SLO per model")
    for i, slo in enumerate(slos):
        if slo <= 0:
            raise PlacementError(f"model {i}: SLO must be > 0 seconds, got {slo}")
    arrivals = [gamma_arrivals(r, c, duration, seed + i)
                for i, (r, c) in enumerate(zip(rates, cvs, strict=True))]
    return Workload.merge(arrivals, slos)
