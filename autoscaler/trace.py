"""Request traces: the CSV and Mooncake formats, generators for tests and benchmarks, an Azure
reader.

A trace is the CSV ``arrival_s,prompt_tokens,output_tokens`` (a header, then one request per
line, arrivals ascending), or JSON lines in the Mooncake trace format (one object a line with
``timestamp`` in milliseconds from the start, ``input_length`` and ``output_length`` in tokens;
other keys such as ``hash_ids`` are ignored): :func:`read_trace` tells them apart by the first
character. Generators draw arrivals from a *renewal process with Gamma
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
import json
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
    "MOONCAKE_KEYS",
    "TRACE_HEADER",
    "Trace",
    "burst_train_rate",
    "diurnal_rate",
    "from_minute_counts",
    "generate",
    "read_minute_counts",
    "read_trace",
    "spike_rate",
    "square_rate",
    "with_bursts",
    "write_trace",
]

TRACE_HEADER = ("arrival_s", "prompt_tokens", "output_tokens")
#: The keys a Mooncake JSONL line needs (kvcache-ai/Mooncake FAST'25 trace release):
#: arrival in milliseconds, prompt and output length in tokens.
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
#: Milliseconds per second (Mooncake timestamps are in ms).
MS_PER_S = 1000.0
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
    """Read a trace (path or open text stream): CSV, or Mooncake JSONL when the first
    non-blank character is ``{``. Bad content -> :class:`TraceError` naming the line."""
    where = str(source) if isinstance(source, Path) else "trace"
    try:
        text = source.read_text(encoding="utf-8") if isinstance(source, Path) \
            else source.read()
    except OSError as err:
        raise TraceError(f"cannot read trace {where}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise TraceError(f"{where}: not UTF-8 text (a binary file?); a trace is a CSV with "
                         f"the header {','.join(TRACE_HEADER)} or Mooncake JSON lines") from err
    if text.lstrip().startswith("{"):
        return _read_jsonl(text, where)
    return _read_csv(text, where)


def _read_csv(text: str, where: str) -> Trace:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise TraceError(f"{where}: empty file; expected the header {','.join(TRACE_HEADER)} "
                         f"(CSV) or Mooncake JSON lines")
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


def _read_jsonl(text: str, where: str) -> Trace:
    arrival: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise TraceError(f"{where} line {number}: not JSON ({err})") from err
        if not isinstance(row, dict) or any(key not in row for key in MOONCAKE_KEYS):
            raise TraceError(f"{where} line {number}: a Mooncake trace line needs the keys "
                             f"{', '.join(MOONCAKE_KEYS)}")
        values = [row[key] for key in MOONCAKE_KEYS]
        if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
               for v in values):
            raise TraceError(f"{where} line {number}: {', '.join(MOONCAKE_KEYS)} must be "
                             f"finite numbers, got {values}")
        if any(v != int(v) for v in values[1:]):
            raise TraceError(f"{where} line {number}: token counts must be integers")
        arrival.append(float(values[0]) / MS_PER_S)
        prompt.append(int(values[1]))
        output.append(int(values[2]))
    return _validate(np.array(arrival, dtype=np.float64), np.array(prompt, dtype=np.int64),
                     np.array(output, dtype=np.int64), where)


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


def square_rate(low: float, high: float, period_s: float, high_s: float) -> RateFn:
    """On-off traffic: ``high`` for the first ``high_s`` of every ``period_s``, else ``low``."""
    if period_s <= 0 or not 0 <= high_s <= period_s:
        raise TraceError("need period_s > 0 and 0 <= high_s <= period_s")

    def fn(t: FloatArray) -> FloatArray:
        return np.asarray(np.where(np.mod(t, period_s) < high_s, high, low), dtype=np.float64)
    return fn


def with_bursts(rate: RateFn, bursts: Sequence[tuple[float, float, float]]) -> RateFn:
    """``rate`` multiplied by ``factor`` during each ``(at_s, for_s, factor)`` burst."""
    def fn(t: FloatArray) -> FloatArray:
        out = np.array(rate(t), dtype=np.float64)
        for at, length, factor in bursts:
            out = np.where((t >= at) & (t < at + length), out * factor, out)
        return out
    return fn


def burst_train_rate(base: float, low: float, high: float, burst_s: tuple[float, float],
                     gap_s: float, duration_s: float, seed: int) -> RateFn:
    """A background of ``base`` req/s with bursts: each burst lasts a uniform draw from
    ``burst_s`` (s) at a rate drawn uniformly from ``[low, high]`` req/s; the idle gaps between
    bursts are exponential with mean ``gap_s`` (a Poisson process of bursts)."""
    if not 0 < burst_s[0] <= burst_s[1] or gap_s <= 0 or not 0 <= low <= high:
        raise TraceError("need 0 < burst_s min <= max, gap_s > 0 and 0 <= low <= high")
    rng = np.random.default_rng(seed)
    bursts: list[tuple[float, float, float]] = []
    t = float(rng.exponential(gap_s))
    while t < duration_s:
        length = float(rng.uniform(*burst_s))
        bursts.append((t, length, float(rng.uniform(low, high))))
        t += length + float(rng.exponential(gap_s))

    def fn(t: FloatArray) -> FloatArray:
        out = np.full(np.shape(t), base, dtype=np.float64)
        for at, length, level in bursts:
            out = np.where((t >= at) & (t < at + length), np.maximum(out, level), out)
        return out
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
