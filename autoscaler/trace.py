"""Request traces: the CSV format, generators for tests and benchmarks, an Azure reader.

A trace is the CSV ``arrival_s,prompt_tokens,output_tokens`` (a header, then one request per
line, arrivals ascending). Generators draw arrivals from a *renewal process with Gamma
inter-arrival times* (shape ``1/cv^2``: cv 1 is Poisson, cv 4 is very bursty, as in AlpaServe's
evaluation) run in "operational time": unit-rate arrivals are mapped through the inverse of the
cumulative rate ``Lambda(t)``, so one mechanism gives a constant rate, a diurnal ramp and a step
spike. Token counts are log-normal around their means (long right tail, like chat traffic).

The Azure Functions 2019 trace (``invocations_per_function_md.anon.d*.csv``) lists per-minute
invocation counts in columns ``1`` .. ``1440`` after ``HashOwner,HashApp,HashFunction,Trigger``;
:func:`from_minute_counts` spreads each minute's count uniformly at random within the minute.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from kubeplex.autoscaler.errors import TraceError

__all__ = [
    "MAX_TRACE_REQUESTS",
    "MAX_TRACE_SECONDS",
    "TRACE_HEADER",
    "Trace",
    "diurnal_rate",
    "from_minute_counts",
    "generate",
    "read_minute_counts",
    "read_trace",
    "spike_rate",
    "write_trace",
]

TRACE_HEADER = ("arrival_s", "prompt_tokens", "output_tokens")
#: Log-normal sigma of token counts (ShareGPT-like spread: a long right tail).
TOKEN_SIGMA = 0.6
#: Resolution of the rate grid the operational-time mapping interpolates on.
RATE_GRID_S = 1.0
#: Longest trace kubeplex replays or generates (seconds): a week. The fleet simulator steps
#: every scrape interval (2 s) however sparse the arrivals, so a week is about 300,000 steps
#: (a minute or so with a progress bar); an arrival_s of 1e12 would never finish.
MAX_TRACE_SECONDS = 7 * 86_400.0
#: Most requests in one trace: ten million rows (a few hundred MB of arrays).
MAX_TRACE_REQUESTS = 10_000_000
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
RateFn = Callable[[FloatArray], FloatArray]


@dataclass(frozen=True, eq=False)
class Trace:
    """Arrival times (s, ascending) and token counts, one entry per request."""

    arrival_s: FloatArray
    prompt_tokens: IntArray
    output_tokens: IntArray

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def interarrival_cv(self) -> float:
        gaps = np.diff(self.arrival_s)
        mean = float(gaps.mean()) if gaps.size else 0.0
        return float(gaps.std() / mean) if mean > 0 else 0.0

    def peak_rate(self, window_s: float) -> float:
        """The highest arrival rate over any aligned window of ``window_s`` seconds."""
        if not len(self):
            return 0.0
        counts = np.bincount((self.arrival_s // window_s).astype(np.int64))
        return float(counts.max()) / window_s


def _validate(arrival: FloatArray, prompt: IntArray, output: IntArray, where: str) -> Trace:
    if arrival.size == 0:
        raise TraceError(f"{where}: the trace has no requests")
    if not np.all(np.isfinite(arrival)) or arrival[0] < 0:
        raise TraceError(f"{where}: arrival_s must be finite and >= 0")
    if arrival.size > MAX_TRACE_REQUESTS:
        raise TraceError(f"{where}: {arrival.size} requests is more than the "
                         f"{MAX_TRACE_REQUESTS} kubeplex replays at once; split the trace")
    if arrival[-1] > MAX_TRACE_SECONDS:
        raise TraceError(f"{where}: arrival_s {arrival[-1]:g} is past the longest trace kubeplex "
                         f"replays ({MAX_TRACE_SECONDS:g} s, a week); split the trace")
    unsorted = np.nonzero(np.diff(arrival) < 0)[0]
    if unsorted.size:
        i = int(unsorted[0]) + 1
        raise TraceError(f"{where}: arrival_s must be ascending; request {i + 1} arrives at "
                         f"{arrival[i]} s, before {arrival[i - 1]} s (sort the file)")
    if np.any(prompt < 1) or np.any(output < 1):
        raise TraceError(f"{where}: prompt_tokens and output_tokens must be >= 1")
    return Trace(arrival, prompt, output)


def read_trace(source: Path | TextIO) -> Trace:
    """Read a trace CSV (path or open text stream); bad content -> :class:`TraceError`."""
    where = str(source) if isinstance(source, Path) else "trace"
    try:
        text = source.read_text(encoding="utf-8") if isinstance(source, Path) \
            else source.read()
    except OSError as err:
        raise TraceError(f"cannot read trace {where}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise TraceError(f"{where}: not UTF-8 text (a binary file?); a trace is a CSV with "
                         f"the header {','.join(TRACE_HEADER)}") from err
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise TraceError(f"{where}: empty file; expected the header {','.join(TRACE_HEADER)}")
    header = tuple(cell.strip() for cell in rows[0])
    if header != TRACE_HEADER:
        raise TraceError(f"{where}: header is {','.join(header)!r}, "
                         f"expected {','.join(TRACE_HEADER)!r}")
    body = [row for row in rows[1:] if row and any(cell.strip() for cell in row)]
    try:
        arrival = np.array([float(r[0]) for r in body], dtype=np.float64)
        prompt = np.array([int(r[1]) for r in body], dtype=np.int64)
        output = np.array([int(r[2]) for r in body], dtype=np.int64)
    except (ValueError, IndexError, OverflowError) as err:
        raise TraceError(f"{where}: every row needs a number arrival_s and integer "
                         f"prompt_tokens, output_tokens ({err})") from err
    return _validate(arrival, prompt, output, where)


def write_trace(trace: Trace, stream: TextIO) -> None:
    """Write ``trace`` as CSV with the standard header."""
    stream.write(",".join(TRACE_HEADER) + "\n")
    for t, p, o in zip(trace.arrival_s, trace.prompt_tokens, trace.output_tokens, strict=True):
        stream.write(f"{t:.4f},{int(p)},{int(o)}\n")


def _tokens(rng: np.random.Generator, mean: float, n: int) -> IntArray:
    if mean < 1:
        raise TraceError(f"mean token count must be >= 1, got {mean}")
    mu = math.log(mean) - TOKEN_SIGMA**2 / 2
    return np.maximum(1, np.rint(rng.lognormal(mu, TOKEN_SIGMA, n))).astype(np.int64)


def spike_rate(rate: float, factor: float, at_s: float, for_s: float, ramp_s: float) -> RateFn:
    """``rate``, rising linearly over ``ramp_s`` to ``factor * rate`` at ``at_s``, for ``for_s``."""
    def fn(t: FloatArray) -> FloatArray:
        up = np.clip((t - (at_s - ramp_s)) / ramp_s, 0, 1) if ramp_s > 0 else (t >= at_s) * 1.0
        end = at_s + for_s
        down = np.clip((end + ramp_s - t) / ramp_s, 0, 1) if ramp_s > 0 else (t < end) * 1.0
        return np.asarray(rate * (1 + (factor - 1) * np.minimum(up, down)), dtype=np.float64)
    return fn


def diurnal_rate(low: float, high: float, period_s: float) -> RateFn:
    """A day compressed into ``period_s``: ``low`` at t=0, ``high`` at mid-period."""
    def fn(t: FloatArray) -> FloatArray:
        return np.asarray(low + (high - low) * (1 - np.cos(2 * math.pi * t / period_s)) / 2,
                          dtype=np.float64)
    return fn


def generate(rate: RateFn, duration_s: float, cv: float, seed: int,
             prompt_tokens: float = 512.0, output_tokens: float = 128.0) -> Trace:
    """A Gamma renewal process (inter-arrival cv ``cv``) with time-varying rate ``rate(t)``."""
    if not 0 < duration_s <= MAX_TRACE_SECONDS:
        raise TraceError(f"duration must be > 0 s and at most {MAX_TRACE_SECONDS:g} s (a "
                         f"week), got {duration_s}")
    if not 0 < cv < math.inf:
        raise TraceError(f"cv must be a finite number > 0, got {cv}")
    if not 1 <= prompt_tokens < math.inf or not 1 <= output_tokens < math.inf:
        raise TraceError(f"mean token counts must be finite numbers >= 1, got "
                         f"{prompt_tokens} and {output_tokens}")
    grid = np.arange(0.0, duration_s + RATE_GRID_S, RATE_GRID_S)
    rates = rate(grid)
    if np.any(rates < 0) or not np.all(np.isfinite(rates)):
        raise TraceError("arrival rates must be finite and >= 0")
    cumulative = np.concatenate(([0.0], np.cumsum((rates[1:] + rates[:-1]) / 2 * RATE_GRID_S)))
    total = float(cumulative[-1])
    if total <= 0:
        raise TraceError("the rate is zero everywhere: no requests to generate")
    if total > MAX_TRACE_REQUESTS:
        raise TraceError(f"about {total:.3g} requests is more than the {MAX_TRACE_REQUESTS} "
                         "kubeplex generates at once; lower the rate or the duration")
    rng = np.random.default_rng(seed)
    shape = 1.0 / cv**2
    expected = int(total * 1.2 + 10 * math.sqrt(total) + 100)
    points = np.cumsum(rng.gamma(shape, 1.0 / shape, expected))
    while points[-1] < total:
        more = np.cumsum(rng.gamma(shape, 1.0 / shape, expected)) + points[-1]
        points = np.concatenate((points, more))
    points = points[points < total]
    arrival = np.interp(points, cumulative, grid)
    n = arrival.size
    return _validate(arrival.astype(np.float64), _tokens(rng, prompt_tokens, n),
                     _tokens(rng, output_tokens, n), "generated trace")


def read_minute_counts(path: Path, function: str | None = None) -> list[int]:
    """Per-minute counts from an Azure Functions invocation CSV (summed over rows, or one
    function's row when ``function`` names its HashFunction)."""
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except OSError as err:
        raise TraceError(f"cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise TraceError(f"{path}: not UTF-8 text (a binary file?)") from err
    if not rows:
        raise TraceError(f"{path}: no rows")
    minutes = sorted((k for k in rows[0] if k and k.strip().isdigit()), key=int)
    if not minutes:
        raise TraceError(f"{path}: no per-minute columns 1..1440 (Azure Functions format)")
    if function is not None:
        rows = [r for r in rows if r.get("HashFunction") == function]
        if not rows:
            raise TraceError(f"{path}: no row with HashFunction {function!r}")
    try:
        return [sum(int(float(r[m] or 0)) for r in rows) for m in minutes]
    except (ValueError, OverflowError) as err:
        raise TraceError(f"{path}: per-minute counts must be numbers ({err})") from err


def from_minute_counts(counts: Sequence[int], seed: int, prompt_tokens: float = 512.0,
                       output_tokens: float = 128.0, minute_s: float = 60.0) -> Trace:
    """Arrivals spread uniformly within each minute's count."""
    if any(c < 0 for c in counts):
        raise TraceError("per-minute counts must be >= 0")
    if sum(counts) > MAX_TRACE_REQUESTS or len(counts) * minute_s > MAX_TRACE_SECONDS:
        raise TraceError(f"{sum(counts)} requests over {len(counts)} minutes is more than "
                         f"kubeplex replays at once ({MAX_TRACE_REQUESTS} requests, "
                         f"{MAX_TRACE_SECONDS:g} s)")
    rng = np.random.default_rng(seed)
    parts = [np.sort(rng.uniform(i * minute_s, (i + 1) * minute_s, c))
             for i, c in enumerate(counts) if c]
    if not parts:
        raise TraceError("the per-minute counts are all zero: no requests")
    arrival = np.concatenate(parts).astype(np.float64)
    n = arrival.size
    return _validate(arrival, _tokens(rng, prompt_tokens, n), _tokens(rng, output_tokens, n),
                     "minute-count trace")
