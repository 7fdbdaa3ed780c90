"""Calibrated latency profiles: measured prefill and decode times, fitted (pure: no I/O).

``kubeplex calibrate`` measures a running engine (see :mod:`kubeplex.cli._calibrate`) and hands
the points to :func:`fit_calibration`, which fits two small physical models by least squares
on *relative* error (a 5 ms step and a 5 s prefill weigh the same):

* **a prefill step** of ``k`` prompts of ``n_i`` tokens takes
  ``fixed_s + per_token_s * sum(n_i) + per_token2_s * sum(n_i ** 2)``: a fixed part (one read
  of the weights, the scheduler, the HTTP round trip of the measurement), the linear FLOPs of
  the weights, and the attention score/value products, which are quadratic *per prompt*
  (prompts in one batch do not attend to each other);
* **a decode step** with ``batch`` running sequences at a mean context of ``context`` tokens
  takes ``fixed_s + per_seq_s * batch + per_context_s * batch * context``: the weights read
  once, per-sequence compute, and every sequence's KV cache read.

Coefficients are non-negative (a negative time per token is noise, not physics); the fit
keeps the best non-negative subset (exact for three coefficients). The fit error (median and
largest relative error over the points) travels with the profile, so a user sees how far to
trust it.

A :class:`Calibration` also names the catalogue model shape and GPU it was measured on, its
``tp x pp`` shape, the engine, the memory share and the KV capacity the engine reported. The
latency model (:class:`~kubeplex.placement.llm.LLMProfile`) uses it through the model shape:
exact at the measured shape, scaled by the analytic model's ratio elsewhere.

The file format (JSON, what ``kubeplex calibrate`` writes) is :func:`calibration_to_dict` /
:func:`calibration_from_dict`; a bad file gets a :class:`CalibrationError` naming the field.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubeplex.placement.errors import PlacementError

__all__ = [
    "PROFILE_KIND",
    "PROFILE_VERSION",
    "Calibration",
    "CalibrationError",
    "DecodeFit",
    "DecodePoint",
    "FitError",
    "PrefillFit",
    "PrefillPoint",
    "attention_tokens2",
    "calibration_from_dict",
    "calibration_to_dict",
    "fit_calibration",
    "fit_decode",
    "fit_prefill",
    "points_from_dict",
    "prefill_prompts",
]

#: The ``kind`` and ``version`` every profile file carries.
PROFILE_KIND = "kubeplex.io/latency-profile"
PROFILE_VERSION = 1
#: Fewest points a fit of three coefficients accepts (more than the unknowns, so the fit
#: error means something).
MIN_POINTS = 4


class CalibrationError(PlacementError):
    """Calibration points or a profile file that cannot make a latency profile."""


@dataclass(frozen=True)
class PrefillPoint:
    """``batch`` prompts of ``prompt_tokens`` each, all prefilled in ``seconds``."""

    prompt_tokens: int
    batch: int
    seconds: float


@dataclass(frozen=True)
class DecodePoint:
    """One decode step with ``batch`` sequences at ``context_tokens`` took ``seconds``."""

    batch: int
    context_tokens: int
    seconds: float


@dataclass(frozen=True)
class FitError:
    """Relative error of a fit over its points: median, largest, and how many points."""

    median: float
    max: float
    points: int


@dataclass(frozen=True)
class PrefillFit:
    fixed_s: float
    per_token_s: float
    per_token2_s: float

    def seconds(self, prompts: Iterable[tuple[int, int]]) -> float:
        """One prefill step of these prompts: (tokens to compute, cached tokens before them)."""
        batch = prefill_prompts(prompts)
        linear = float(sum(n for n, _ in batch))
        return (self.fixed_s + self.per_token_s * linear
                + self.per_token2_s * float(attention_tokens2(batch)))


def prefill_prompts(prompts: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """A prefill step's prompts as (tokens to compute >= 1, cached tokens >= 0); an empty
    step counts as one token (its fixed cost)."""
    return tuple((max(1, n), max(0, c)) for n, c in prompts) or ((1, 0),)


def attention_tokens2(prompts: tuple[tuple[int, int], ...]) -> int:
    """The attention products of a prefill step, in token pairs: each prompt's ``n`` new
    tokens attend causally to themselves (``n^2``, the constant halves folded into the
    coefficient) and fully to its ``c`` cached ones (``2 n c`` on the same scale)."""
    return sum(n * (n + 2 * c) for n, c in prompts)


@dataclass(frozen=True)
class DecodeFit:
    fixed_s: float
    per_seq_s: float
    per_context_s: float

    def seconds(self, batch: int, context_tokens: int) -> float:
        b, c = max(1, batch), max(1, context_tokens)
        return self.fixed_s + self.per_seq_s * b + self.per_context_s * b * c


@dataclass(frozen=True)
class Calibration:
    """A measured latency profile of ``model`` on ``tp x pp`` ``gpu`` under ``engine``.

    ``memory_fraction`` is the engine's ``--gpu-memory-utilization`` when measured and
    ``kv_capacity_tokens`` the KV cache it reported then. ``source`` says how it was measured
    (free text for people: machine, versions, command).
    """

    name: str
    model: str
    gpu: str
    engine: str
    prefill: PrefillFit
    decode: DecodeFit
    kv_capacity_tokens: int
    memory_fraction: float
    prefill_error: FitError
    decode_error: FitError
    tp: int = 1
    pp: int = 1
    source: str = ""

    def __post_init__(self) -> None:
        if self.kv_capacity_tokens < 1:
            raise CalibrationError(f"profile {self.name!r}: kv_capacity_tokens must be >= 1, "
                                   f"got {self.kv_capacity_tokens}")
        if not 0 < self.memory_fraction <= 1:
            raise CalibrationError(f"profile {self.name!r}: memory_fraction must be in (0, 1], "
                                   f"got {self.memory_fraction}")
        if self.tp < 1 or self.pp < 1:
            raise CalibrationError(f"profile {self.name!r}: tp and pp must be >= 1")


# ---- fitting -------------------------------------------------------------------------------

def _nonnegative_lstsq(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: the best over the subsets of free
    coefficients whose unconstrained solution is non-negative (exact for a few columns)."""
    columns = design.shape[1]
    best, best_cost = np.zeros(columns), float(np.sum(target**2))
    for size in range(1, columns + 1):
        for subset in itertools.combinations(range(columns), size):
            solution, *_ = np.linalg.lstsq(design[:, subset], target, rcond=None)
            if np.any(solution < 0):
                continue
            cost = float(np.sum((design[:, subset] @ solution - target) ** 2))
            if cost < best_cost:
                best_cost = cost
                best = np.zeros(columns)
                best[list(subset)] = solution
    return best


def _fit(rows: list[tuple[float, float, float]], seconds: list[float],
         what: str) -> tuple[tuple[float, float, float], FitError]:
    if len(rows) < MIN_POINTS:
        raise CalibrationError(f"{what}: need at least {MIN_POINTS} points, got {len(rows)}")
    times = np.array(seconds, dtype=np.float64)
    if not np.all(np.isfinite(times)) or np.any(times <= 0):
        raise CalibrationError(f"{what}: every measured time must be a positive number")
    design = np.array(rows, dtype=np.float64) / times[:, None]  # relative error
    coef = _nonnegative_lstsq(design, np.ones_like(times))
    predicted = np.array(rows, dtype=np.float64) @ coef
    rel = np.abs(predicted - times) / times
    error = FitError(float(np.median(rel)), float(rel.max()), len(rows))
    return (float(coef[0]), float(coef[1]), float(coef[2])), error


def fit_prefill(points: Sequence[PrefillPoint]) -> tuple[PrefillFit, FitError]:
    """Fit the prefill model to measured batched prefills (see the module docstring)."""
    for p in points:
        if p.prompt_tokens < 1 or p.batch < 1:
            raise CalibrationError(f"prefill point {p}: prompt_tokens and batch must be >= 1")
    rows = [(1.0, float(p.batch * p.prompt_tokens), float(p.batch * p.prompt_tokens**2))
            for p in points]
    coef, error = _fit(rows, [p.seconds for p in points], "prefill")
    return PrefillFit(*coef), error


def fit_decode(points: Sequence[DecodePoint]) -> tuple[DecodeFit, FitError]:
    """Fit the decode-step model to measured steps (see the module docstring)."""
    for p in points:
        if p.batch < 1 or p.context_tokens < 1:
            raise CalibrationError(f"decode point {p}: batch and context_tokens must be >= 1")
    rows = [(1.0, float(p.batch), float(p.batch * p.context_tokens)) for p in points]
    coef, error = _fit(rows, [p.seconds for p in points], "decode")
    return DecodeFit(*coef), error


def fit_calibration(name: str, model: str, gpu: str, engine: str,
                    prefill: Sequence[PrefillPoint], decode: Sequence[DecodePoint],
                    kv_capacity_tokens: int, memory_fraction: float, tp: int = 1, pp: int = 1,
                    source: str = "") -> Calibration:
    """A :class:`Calibration` from measured points (both fits, with their errors)."""
    prefill_fit, prefill_error = fit_prefill(prefill)
    decode_fit, decode_error = fit_decode(decode)
    return Calibration(name, model, gpu, engine, prefill_fit, decode_fit, kv_capacity_tokens,
                       memory_fraction, prefill_error, decode_error, tp, pp, source)


# ---- the file format -------------------------------------------------------------------------

def calibration_to_dict(cal: Calibration, prefill: Sequence[PrefillPoint] = (),
                        decode: Sequence[DecodePoint] = ()) -> dict[str, Any]:
    """The JSON object ``kubeplex calibrate`` writes (the measured points ride along)."""
    def error(e: FitError) -> dict[str, Any]:
        return {"median": round(e.median, 5), "max": round(e.max, 5), "points": e.points}

    return {
        "kind": PROFILE_KIND, "version": PROFILE_VERSION, "name": cal.name,
        "model": cal.model, "gpu": cal.gpu, "tp": cal.tp, "pp": cal.pp, "engine": cal.engine,
        "source": cal.source, "memoryFraction": cal.memory_fraction,
        "kvCapacityTokens": cal.kv_capacity_tokens,
        "prefill": {"fixedSeconds": cal.prefill.fixed_s,
                    "perTokenSeconds": cal.prefill.per_token_s,
                    "perTokenSquaredSeconds": cal.prefill.per_token2_s,
                    "fitError": error(cal.prefill_error)},
        "decode": {"fixedSeconds": cal.decode.fixed_s, "perSequenceSeconds": cal.decode.per_seq_s,
                   "perContextTokenSeconds": cal.decode.per_context_s,
                   "fitError": error(cal.decode_error)},
        "points": {"prefill": [[p.prompt_tokens, p.batch, p.seconds] for p in prefill],
                   "decode": [[p.batch, p.context_tokens, p.seconds] for p in decode]},
    }


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise CalibrationError(f"{where}: missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise CalibrationError(f"{where}: field {key!r} has the wrong type ({value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalibrationError(f"{where}: field {key!r} must be finite")
    return value


def _number(data: Mapping[str, Any], key: str, where: str, minimum: float = 0.0) -> float:
    value = float(_get(data, key, (int, float), where))
    if value < minimum:
        raise CalibrationError(f"{where}: field {key!r} must be >= {minimum:g}, got {value}")
    return value


def _section(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    section: Mapping[str, Any] = _get(data, key, dict, where)
    return section


def _fit_error(data: Mapping[str, Any], where: str) -> FitError:
    error = _section(data, "fitError", where)
    inner = f"{where}.fitError"
    return FitError(_number(error, "median", inner), _number(error, "max", inner),
                    int(_number(error, "points", inner)))


def calibration_from_dict(data: Any, where: str = "profile") -> Calibration:
    """A :class:`Calibration` from a profile file's JSON object; errors name the field."""
    if not isinstance(data, dict):
        raise CalibrationError(f"{where}: a latency profile is a JSON object")
    if data.get("kind") != PROFILE_KIND or data.get("version") != PROFILE_VERSION:
        raise CalibrationError(f"{where}: not a kubeplex latency profile (kind must be "
                               f"{PROFILE_KIND!r}, version {PROFILE_VERSION})")
    prefill = _section(data, "prefill", where)
    decode = _section(data, "decode", where)
    pw, dw = f"{where}.prefill", f"{where}.decode"
    return Calibration(
        name=_get(data, "name", str, where), model=_get(data, "model", str, where),
        gpu=_get(data, "gpu", str, where), engine=_get(data, "engine", str, where),
        prefill=PrefillFit(_number(prefill, "fixedSeconds", pw),
                           _number(prefill, "perTokenSeconds", pw),
                           _number(prefill, "perTokenSquaredSeconds", pw)),
        decode=DecodeFit(_number(decode, "fixedSeconds", dw),
                         _number(decode, "perSequenceSeconds", dw),
                         _number(decode, "perContextTokenSeconds", dw)),
        kv_capacity_tokens=int(_number(data, "kvCapacityTokens", where, 1)),
        memory_fraction=_number(data, "memoryFraction", where),
        prefill_error=_fit_error(prefill, pw), decode_error=_fit_error(decode, dw),
        tp=int(_number(data, "tp", where, 1)), pp=int(_number(data, "pp", where, 1)),
        source=str(data.get("source", "")))


def points_from_dict(data: Any, where: str = "points"
                     ) -> tuple[list[PrefillPoint], list[DecodePoint]]:
    """The measured points of a profile file (``points.prefill`` rows ``[prompt_tokens,
    batch, seconds]``, ``points.decode`` rows ``[batch, context_tokens, seconds]``), to fit
    again offline (e.g. numbers measured on a machine without kubeplex)."""
    if not isinstance(data, dict) or not isinstance(data.get("points"), dict):
        raise CalibrationError(f"{where}: expected an object with a 'points' object")
    points = data["points"]
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for key in ("prefill", "decode"):
        raw = points.get(key)
        if not isinstance(raw, list):
            raise CalibrationError(f"{where}.points.{key}: expected a list of [a, b, seconds]")
        parsed = []
        for i, row in enumerate(raw):
            ok = (isinstance(row, list) and len(row) == 3
                  and all(isinstance(v, int | float) and not isinstance(v, bool)
                          and math.isfinite(v) for v in row))
            if not ok:
                raise CalibrationError(f"{where}.points.{key}[{i}]: expected three numbers, "
                                       f"got {row!r}")
            parsed.append((float(row[0]), float(row[1]), float(row[2])))
        rows[key] = parsed
    return ([PrefillPoint(int(n), int(k), t) for n, k, t in rows["prefill"]],
            [DecodePoint(int(b), int(c), t) for b, c, t in rows["decode"]])
