"""The requests the planner simulates: arrivals per model, and each request's own prompt and
output length drawn from the model's declared or observed length distribution.

A model's lengths are either **declared** (a mean and a coefficient of variation: lognormal,
the usual shape of prompt and output lengths in production traces) or **observed** (pairs of
``(prompt, output)`` tokens measured on real traffic, drawn with replacement, which keeps their
correlation). Every length is clipped to ``[1, max_model_len]`` with the prompt leaving room for
at least one output token: vLLM refuses longer requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kubeplex.placement.errors import PlacementError
from kubeplex.placement.workload import Workload, synthetic_workload

__all__ = [
    "DEFAULT_LENGTH_CV",
    "LLMWorkload",
    "LengthModel",
    "draw_workload",
]

#: Spread of request lengths when only a mean is declared: the coefficient of variation of an
#: exponential distribution. As a check (not a fit): the Mooncake conversation trace in
#: ``shared/traces`` has 1.31 for prompts and 0.73 for outputs.
DEFAULT_LENGTH_CV = 1.0

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LengthModel:
    """One model's request lengths: declared (``mean_*`` and ``*_cv``) or ``observed`` pairs of
    ``(prompt, output)`` tokens, which win when given. ``max_model_len`` bounds every request."""

    mean_prompt: int
    mean_output: int
    prompt_cv: float = DEFAULT_LENGTH_CV
    output_cv: float = DEFAULT_LENGTH_CV
    observed: tuple[tuple[int, int], ...] = ()
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        if self.mean_prompt < 1 or self.mean_output < 1:
            raise PlacementError("mean prompt and output lengths must be >= 1 token")
        if self.prompt_cv < 0 or self.output_cv < 0:
            raise PlacementError("length coefficients of variation must be >= 0")
        if any(p < 1 or o < 1 for p, o in self.observed):
            raise PlacementError("observed prompt and output lengths must be >= 1 token")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise PlacementError("max_model_len must leave room for a prompt and one output token")

    def draw(self, rng: np.random.Generator, n: int) -> tuple[IntArray, IntArray]:
        """``n`` (prompt, output) lengths."""
        if self.observed:
            pairs = np.asarray(self.observed, dtype=np.int64)
            picks = pairs[rng.integers(0, len(pairs), size=n)]
            prompts, outputs = picks[:, 0], picks[:, 1]
        else:
            prompts = _lognormal(rng, self.mean_prompt, self.prompt_cv, n)
            outputs = _lognormal(rng, self.mean_output, self.output_cv, n)
        limit = self.max_model_len
        if limit is not None:
            prompts = np.minimum(prompts, limit - 1)
            outputs = np.minimum(outputs, limit - prompts)
        return prompts, outputs

    def quantile_kv_tokens(self, q: float) -> int:
        """The ``q`` quantile of prompt + output tokens (what a KV reservation must cover)."""
        prompts, outputs = self.draw(np.random.default_rng(0), _QUANTILE_DRAWS)
        return int(np.quantile(prompts + outputs, q))


#: Draws behind :meth:`LengthModel.quantile_kv_tokens` (a 0.9 quantile to within ~1%).
_QUANTILE_DRAWS = 4096


def _lognormal(rng: np.random.Generator, mean: int, cv: float, n: int) -> IntArray:
    if cv == 0:
        return np.full(n, mean, dtype=np.int64)
    sigma2 = math.log1p(cv * cv)
    values = rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), size=n)
    return np.maximum(1, np.rint(values)).astype(np.int64)


@dataclass(frozen=True, eq=False)
class LLMWorkload:
    """Requests in arrival order with their own lengths (``requests.slos`` are TTFT SLOs)."""

    requests: Workload
    prompt_tokens: IntArray
    output_tokens: IntArray

    def __post_init__(self) -> None:
        n = len(self.requests)
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n:
            raise PlacementError("an LLM workload needs one prompt and one output length "
                                 "per request")

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def num_models(self) -> int:
        return self.requests.num_models

    @property
    def model_ids(self) -> IntArray:
        return self.requests.model_ids

    def subset(self, models: Sequence[int]) -> LLMWorkload:
        """Only the requests of ``models``, renumbered ``0..len(models)-1`` in that order."""
        keep = np.isin(self.requests.model_ids, np.asarray(models, dtype=np.int64))
        return LLMWorkload(self.requests.subset(models), self.prompt_tokens[keep],
                           self.output_tokens[keep])

    def head(self, fraction: float) -> LLMWorkload:
        """The requests that arrive in the first ``fraction`` of this sample's span."""
        arrivals = self.requests.arrivals
        end = float(arrivals[-1]) * fraction if len(arrivals) else 0.0
        n = int(np.searchsorted(arrivals, end, side="right"))
        r = self.requests
        return LLMWorkload(Workload(r.arrivals[:n], r.model_ids[:n], r.slos[:n], r.num_models),
                           self.prompt_tokens[:n], self.output_tokens[:n])

    def then(self, later: LLMWorkload) -> LLMWorkload:
        """This workload followed by ``later`` (shifted to start after this one's last arrival):
        one longer sample to search on."""
        if later.num_models != self.num_models:
            raise PlacementError("workloads to join must have the same models")
        arrivals = self.requests.arrivals
        shift = float(arrivals[-1]) if len(arrivals) else 0.0
        r, s = self.requests, later.requests
        joined = Workload(np.concatenate([r.arrivals, s.arrivals + shift]),
                          np.concatenate([r.model_ids, s.model_ids]),
                          np.concatenate([r.slos, s.slos]), r.num_models)
        return LLMWorkload(joined, np.concatenate([self.prompt_tokens, later.prompt_tokens]),
                           np.concatenate([self.output_tokens, later.output_tokens]))


def draw_workload(rates: Sequence[float], cvs: Sequence[float], ttft_slos: Sequence[float],
                  lengths: Sequence[LengthModel], duration: float, seed: int) -> LLMWorkload:
    """Gamma arrivals per model (as :func:`~kubeplex.placement.workload.synthetic_workload`)
    with lengths drawn per request from ``lengths[model]`` (seeded by ``seed`` too)."""
    requests = synthetic_workload(rates, cvs, ttft_slos, duration, seed)
    rng = np.random.default_rng(seed)
    prompts = np.zeros(len(requests), dtype=np.int64)
    outputs = np.zeros(len(requests), dtype=np.int64)
    for m, length in enumerate(lengths):
        mine = requests.model_ids == m
        prompts[mine], outputs[mine] = length.draw(rng, int(mine.sum()))
    return LLMWorkload(requests, prompts, outputs)
