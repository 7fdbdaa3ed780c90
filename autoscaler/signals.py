"""Signals the control law needs, extracted from a window of vLLM metric scrapes.

A :class:`Scrape` is what one read of the metrics returned for ONE model: the raw sample values
per *instance* (one engine of one pod: the label set without ``le``), at the time it was read.
Sources (:mod:`kubeplex.autoscaler.sources`) build scrapes; the caller keeps the recent ones
(at least the stable window) and passes them in. :func:`extract` turns them into
:class:`Signals`, or :class:`NoData` saying why it cannot (no scrape, stale scrape, a metric
missing). "No data" is never a zero: the control law holds the current scale on it. The
metric names and :class:`Scrape` live in :mod:`~kubeplex.autoscaler.metrics` (the simulated
fleet writes them too); this module is the law's reading of them.

Rates follow PromQL's ``increase``: per instance, over consecutive scrapes, a counter that went
down was reset (the engine restarted) and counts from zero; a series seen only once contributes
nothing (two samples make a rate). The TTFT percentile is PromQL's ``histogram_quantile`` over
the bucket increases summed across instances (linear interpolation inside the bucket, the
lowest bucket starting at 0, a rank in the ``+Inf`` bucket answering the highest finite bound).

vLLM has no arrivals counter, but requests are conserved: arrivals in a window are the
completions plus the growth of the requests in the system, each engine's (waiting + running)
counted on its own between two scrapes (one that left took no new request), and the
gateway's held ones (no replica to take them yet: a scale from zero) as one more instance
when the caller stamps them into its scrapes (:func:`~kubeplex.autoscaler.metrics.with_held`).
Counted at the engines alone, a gateway handing the requests it held through a cold start to
the replica that became ready read as that many arrivals in one interval: a rise far beyond
the rate, which the backlog stage answered with a replica for every few requests of it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kubeplex.autoscaler.metrics import (
    COMPLETIONS,
    GENERATION_TOKENS,
    HELD,
    KV_USAGE,
    PREFILL_TIME_COUNT,
    PREFILL_TIME_SUM,
    PROMPT_HISTOGRAM,
    PROMPT_TOKENS,
    RUNNING,
    TTFT,
    WAITING,
    Buckets,
    Scrape,
)

__all__ = [
    "ARRIVAL_CONSERVED",
    "SATURATED_PENDING",
    "TEST_Z",
    "NoData",
    "Signals",
    "bucket_increase",
    "counter_increase",
    "extract",
    "histogram_fraction_at",
    "histogram_quantile",
]

#: The one-sided level, in standard deviations, of the law's statistical tests on these
#: signals (a rise of the arrival rate, an attainment gain, a burst period): about 2% of
#: noise-only trials pass.
TEST_Z = 2.0
#: How arrivals are derived (documentation marker): completions + growth of what the engines
#: and the gateway hold.
ARRIVAL_CONSERVED = "completions + delta(waiting + running + held at the gateway)"


@dataclass(frozen=True)
class NoData:
    """Why signals could not be computed (missing scrape, stale scrape, metric absent)."""

    reason: str


@dataclass(frozen=True)
class Signals:
    """What the metrics say about one model over a window ending at ``time``.

    Gauges are the latest scrape's, summed over instances (``kv_usage`` is the mean).
    Rates are per second over ``window_s`` (the span the scrapes actually cover).
    ``ttft_quantile`` is None when no request got its first token in the window (PromQL
    answers NaN there): the percentile of nothing is unknown, not zero.
    ``arrival_cv2`` is the index of dispersion of per-interval arrival counts (about the
    squared coefficient of variation of inter-arrival times for a renewal process), None with
    fewer than three intervals or no arrivals; ``arrival_batch`` the part of it that comes
    from requests arriving together (:func:`_batch_index`).
    ``saturated`` says every scrape in the window had requests waiting (the fleet ran flat
    out, so the completion rate is its capacity).
    ``awaiting_first_token`` (latest scrape) counts the requests in the engines that have no
    first token yet: waiting + running minus those decoding (first tokens counted minus
    requests finished, per engine since its start); None without the TTFT histogram or the
    completions counter. vLLM counts a request queued for its prefill as *running*, so this is
    how prefill backlog shows. ``min_pending`` is the least ``awaiting_first_token`` over the
    window's scrapes (a backlog that never drained). ``ttft_buckets`` and
    ``prompt_buckets`` are the window's increases of the TTFT and prompt-length histograms
    (empty when not exposed). ``engines_saturated``: in every scrape of the window every engine
    had requests refused admission (waiting) or at least :data:`SATURATED_PENDING` without a
    first token: every engine was busy throughout, so what they completed is their capacity.
    """

    time: float
    window_s: float
    instances: int
    waiting: float
    running: float
    kv_usage: float | None
    arrival_rate: float
    completion_rate: float
    prompt_token_rate: float | None
    generation_token_rate: float | None
    ttft_quantile: float | None
    ttft_count: float
    arrival_cv2: float | None
    saturated: bool
    awaiting_first_token: float | None = None
    min_pending: float | None = None
    ttft_buckets: Buckets = ()
    prompt_buckets: Buckets = ()
    engines_saturated: bool = False
    #: Mean prefill-phase time of the requests that finished in the window (s) and how many.
    prefill_time_s: float | None = None
    prefills_timed: float = 0.0
    #: The index of dispersion of simultaneous arrivals (requests sent together), None with
    #: too few intervals: ``E[X^2] / E[X]`` for batches of ``X``, 1 for arrivals one at a time.
    arrival_batch: float | None = None
    #: The variance over the mean of the prompt tokens prefilled per interval (tokens; None
    #: without the counter or with too few intervals): :attr:`work_dispersion`.
    prompt_token_dispersion: float | None = None

    @property
    def in_system(self) -> float:
        return self.waiting + self.running

    @property
    def mean_prompt_tokens(self) -> float | None:
        """Prompt tokens per prefilled request (prompt tokens count at the first token)."""
        if self.prompt_token_rate is None or self.ttft_count <= 0 or self.window_s <= 0:
            return None
        return self.prompt_token_rate * self.window_s / self.ttft_count

    @property
    def work_dispersion(self) -> float | None:
        """The index of dispersion of the prefill work, in prompts: ``ca^2 + cs^2`` of the work
        as it comes (tokens stand for prefill time). Above the prompts' own ``cs^2`` by more
        than the count's ``arrival_cv2`` when the long prompts come in bursts and the short
        ones do not: a retrieval tenant's 8k-token prompts at cv 2 beside a chat tenant's
        Poisson stream, whose count reads cv^2 1.4."""
        mean = self.mean_prompt_tokens
        if self.prompt_token_dispersion is None or not mean:
            return None
        return self.prompt_token_dispersion / mean

    @property
    def mean_output_tokens(self) -> float | None:
        """Generated tokens per finished request, once the window holds at least as many
        finished requests as are running (None before: the declared size stands). vLLM counts
        tokens as they are made, so a window shorter than the requests' own duration counts
        the tokens of those still decoding over the few that finished: at a ramp-in of
        1,000-token answers it read 2,800 tokens and asked for 14 replicas where 1 served."""
        if self.generation_token_rate is None or self.completion_rate <= 0:
            return None
        if self.completion_rate * self.window_s < self.running:
            return None
        return self.generation_token_rate / self.completion_rate


def counter_increase(samples: Sequence[Mapping[str, float]]) -> float:
    """A counter's increase over consecutive samples ``{instance: value}``, resets handled.

    Per instance and per consecutive pair: ``cur - prev``, or ``cur`` when the counter went
    down (a reset restarts it from zero), like PromQL's ``increase`` without extrapolation.
    """
    total = 0.0
    for prev, cur in itertools.pairwise(samples):
        for instance, value in cur.items():
            before = prev.get(instance)
            if before is None:
                continue
            total += value - before if value >= before else value
    return total


def bucket_increase(samples: Sequence[Mapping[str, Buckets]]) -> Buckets:
    """The summed increase of cumulative histogram buckets over consecutive samples.

    An instance whose total count (the ``+Inf`` bucket) went down was reset: its whole
    current histogram is the increase. Bounds missing from some instance are ignored for it.
    """
    sums: dict[float, float] = {}
    for prev, cur in itertools.pairwise(samples):
        for instance, buckets in cur.items():
            before = prev.get(instance)
            if before is None:
                continue
            old = dict(before)
            reset = bool(buckets) and bool(before) and buckets[-1][1] < before[-1][1]
            for bound, count in buckets:
                delta = count if reset else count - old.get(bound, 0.0)
                sums[bound] = sums.get(bound, 0.0) + max(0.0, delta)
    return tuple(sorted(sums.items()))


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """PromQL's ``histogram_quantile(q, ...)`` over cumulative ``(upper bound, count)`` pairs.

    Returns None where PromQL returns NaN (no observations, no ``+Inf`` bucket, fewer than
    two buckets). Counts that decrease with the bound are made monotonic first, as PromQL does.
    """
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    bounds = [b for b, _ in ordered]
    counts: list[float] = []
    for _, c in ordered:
        counts.append(max(c, counts[-1]) if counts else c)
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = q * observations
    index = next(i for i, c in enumerate(counts) if c >= rank)
    if index == len(counts) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0 if index == 0 else bounds[index - 1]
    below = 0.0 if index == 0 else counts[index - 1]
    in_bucket = counts[index] - below
    if in_bucket <= 0:
        return bounds[index]
    return start + (bounds[index] - start) * (rank - below) / in_bucket


def histogram_fraction_at(bound: float, buckets: Buckets) -> float | None:
    """The fraction of observations at or below ``bound`` (linear inside the bucket, the lowest
    bucket starting at 0); None with no observations. The inverse of :func:`histogram_quantile`.
    """
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]) or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    below, start = 0.0, 0.0
    for upper, count in ordered:
        if bound < upper:
            if math.isinf(upper):
                return below / total
            inside = max(0.0, count - below) * (bound - start) / (upper - start)
            return min(1.0, (below + inside) / total)
        below, start = max(below, count), upper
    return 1.0


def _window(scrapes: Iterable[Scrape], now: float, window_s: float) -> list[Scrape]:
    return [s for s in scrapes if now - window_s - 1e-9 <= s.time <= now + 1e-9]


def _rate(increase: float, seconds: float) -> float:
    return increase / seconds if seconds > 0 else 0.0


def _in_system(scrape: Scrape) -> float | None:
    waiting, running = scrape.total(WAITING), scrape.total(RUNNING)
    if waiting is None or running is None:
        return None
    return waiting + running


def _awaiting(scrape: Scrape) -> float | None:
    """Requests in the engines with no first token yet (see :class:`Signals`)."""
    in_system = _in_system(scrape)
    first_tokens = scrape.histograms.get(TTFT)
    finished = scrape.total(COMPLETIONS)
    if in_system is None or not first_tokens or finished is None:
        return None
    started = math.fsum(buckets[-1][1] for buckets in first_tokens.values() if buckets)
    decoding = max(0.0, started - finished)
    return min(in_system, max(0.0, in_system - decoding))


def _engine_busy(scrape: Scrape) -> bool:
    """Every engine of ``scrape`` has a request waiting, or SATURATED_PENDING requests with no
    first token (its own counters: waiting + running - (first tokens - finished))."""
    waiting, running = scrape.series(WAITING), scrape.series(RUNNING)
    first_tokens = scrape.histograms.get(TTFT, {})
    finished = scrape.series(COMPLETIONS)
    if not running:
        return False
    for engine, busy in running.items():
        queued = waiting.get(engine, 0.0)
        buckets = first_tokens.get(engine)
        started = buckets[-1][1] if buckets else None
        done = finished.get(engine)
        if queued > 0:
            continue
        if started is None or done is None:
            return False
        if queued + busy - max(0.0, started - done) < SATURATED_PENDING:
            return False
    return True


def _held(scrape: Scrape) -> dict[str, float]:
    """Requests in each instance's engine (waiting + running), and at the gateway
    (:data:`~kubeplex.autoscaler.metrics.HELD`, its own instance)."""
    waiting, running = scrape.series(WAITING), scrape.series(RUNNING)
    held = {i: waiting.get(i, 0.0) + running.get(i, 0.0) for i in {*waiting, *running}}
    return {**held, **scrape.series(HELD)}


def _arrivals(prev: Scrape, cur: Scrape, before: Mapping[str, float],
              after: Mapping[str, float]) -> float:
    """Arrivals between two scrapes by conservation, per instance: its completions plus the
    growth of what its engine holds (``before``/``after``: :func:`_held` of each scrape),
    over the instances ``cur`` shows (a new one from zero).

    An instance ``cur`` no longer shows (scaled down: the operator scrapes Ready groups only,
    so a draining one leaves at once; a failed scrape) took no new request: those it held
    at ``prev`` arrived before and finish unseen. Counted as a fall of what the engines
    hold, they made every scale-down a dip in the arrivals as deep as the batch the replica
    was serving, which the dispersion reads as burstiness and the SLO stage answers with
    the replica just released. Not clamped: a window sums them."""
    done = counter_increase([prev.series(COMPLETIONS), cur.series(COMPLETIONS)])
    return done + math.fsum(n - before.get(i, 0.0) for i, n in after.items())


#: An engine with this many requests without a first token is busy: one in its prefill and
#: one queued behind it.
SATURATED_PENDING = 2.0
#: Aggregation levels (in scrape intervals) of the dispersion estimate: the index of
#: dispersion of a bursty renewal process grows with the counting interval toward its cv^2.
DISPERSION_SCALES = (1, 2, 4)
#: A difference of successive counts this many times the others' root mean square is a level
#: change (traffic switching between rates), left out of the dispersion: were the differences
#: normal, one this large would come by chance in 0.3% of them (3 sigma).
LEVEL_CHANGE_Z = 3.0
#: A level change makes one such difference, or two when it falls inside a counting interval.
LEVEL_CHANGE_DIFFERENCES = 2
#: Counts on each side of a level change, at least (three make two differences: an Allan
#: variance and a mean shift measured against it).
MIN_SEGMENT_COUNTS = 3


def _allan(counts: Sequence[float]) -> float | None:
    if len(counts) < 3:
        return None
    mean = math.fsum(counts) / len(counts)
    if mean <= 0:
        return None
    squares = sorted((b - a) ** 2 for a, b in itertools.pairwise(counts))
    # A level change, not variability: the largest differences (two when the change falls
    # inside a counting interval), each beyond LEVEL_CHANGE_Z of the others, these two left
    # out of the others (tested one at a time, each level-change difference hid the other).
    for changes in range(LEVEL_CHANGE_DIFFERENCES, 0, -1):
        rest = squares[:-changes]
        if (len(rest) >= 2
                and squares[-changes] > LEVEL_CHANGE_Z ** 2 * math.fsum(rest) / len(rest)):
            squares = rest
            break
    return math.fsum(squares) / (2 * len(squares)) / mean


def _level_change(counts: Sequence[float]) -> int | None:
    """Where the counts switch between two rates: the split ``k`` (counts[:k] | counts[k:])
    whose difference of means is the most standard errors from zero, each side's error from
    its own Allan variance, when that is beyond :data:`LEVEL_CHANGE_Z` (None: no split is).

    A mean shift is measured on every count of both sides, where one count difference at a
    coarse interval (a few to the window) cannot tell a switch from noise."""
    best, split = LEVEL_CHANGE_Z, None
    for k in range(MIN_SEGMENT_COUNTS, len(counts) - MIN_SEGMENT_COUNTS + 1):
        left, right = counts[:k], counts[k:]
        error = math.fsum(_allan_variance(side) / len(side) for side in (left, right))
        shift = abs(math.fsum(right) / len(right) - math.fsum(left) / len(left))
        if error > 0 and shift / math.sqrt(error) > best:
            best, split = shift / math.sqrt(error), k
    return split


def _allan_variance(counts: Sequence[float]) -> float:
    return math.fsum((b - a) ** 2 for a, b in itertools.pairwise(counts)) / (
        2 * max(1, len(counts) - 1))


def _dispersion(counts: Sequence[float]) -> dict[int, float]:
    """Allan-style index of dispersion of arrival counts at each of a few interval sizes
    (:data:`DISPERSION_SCALES`, in counts; the law reads the largest as ``arrival_cv2``).

    Half the mean squared difference of successive counts over their mean: for a renewal
    process it estimates Var(N)/E[N] (about the squared CV of inter-arrival times when the
    intervals are long enough), while a slow change of the rate, which would inflate a plain
    variance, adds only one difference. A level change (traffic switching from 3 to 30
    req/s) adds one or two very large ones, which made a window over the switch look like
    cv^2 ~60 and asked for replicas the new level did not need: differences beyond
    :data:`LEVEL_CHANGE_Z` times the others' root mean square (at most
    :data:`LEVEL_CHANGE_DIFFERENCES`) are left out; bursts, which make many, still count (one
    short burst alone in the window, a rise and a fall, reads as a level change: the short
    window and the burst memory size it). A switch is also looked for as a shift of the
    mean (:func:`_level_change`): at the coarser intervals a window holds a handful of
    differences, too few for the 3-sigma test to see the switch's two among them (an on-off
    switch read cv^2 10-16 there), so each side of a switch found is measured on its own
    (pooled by their differences) and the counts at the switch are left out.

    A coarser interval groups the counts from every starting count in turn (pooled by their
    differences), not from the window's first alone: which count began the groups decided
    what a window read, so a window one scrape older or newer read cv^2 3 or 7 by turns on
    one steady stream (cv 1.5), and each reading of 7 asked for a replica the hold then kept.
    """
    split = _level_change(counts)
    # Each side of a switch is counted at its own rate; the counts at the switch, one of
    # which it may fall inside, are left out.
    segments = [counts] if split is None else [counts[:split - 1], counts[split + 1:]]
    estimates: dict[int, float] = {}
    for scale in DISPERSION_SCALES:
        pooled, weight = 0.0, 0
        for segment in segments:
            for offset in range(scale):
                grouped = [math.fsum(segment[i:i + scale])
                           for i in range(offset, len(segment) - scale + 1, scale)]
                value = _allan(grouped)
                if value is not None:
                    pooled += value * (len(grouped) - 1)
                    weight += len(grouped) - 1
        if weight > 0:
            estimates[scale] = pooled / weight
    return estimates


def _batch_index(dispersion: Mapping[int, float]) -> float | None:
    """The index of dispersion of *simultaneous* arrivals: the dispersion extrapolated to a
    counting interval of zero, linearly through the two finest intervals, at least 1.

    Requests arriving together (several sent at one instant) make every
    interval's dispersion ``E[X^2] / E[X]`` for batches of ``X`` at Poisson times, whatever
    its length; a rate that varies over seconds (bursts) adds dispersion that grows with the
    interval from 1 at zero, where two arrivals never coincide. Only the former makes a
    request wait behind others that arrived with it at light load (the queueing model's
    batch term); the latter is the rise and panic stages' and the tail's (``arrival_cv2``).
    Never above the finest interval's (a dispersion that falls with the interval, batches
    coming more regularly than Poisson, is taken at what is measured)."""
    finest, coarser = (dispersion.get(scale) for scale in DISPERSION_SCALES[:2])
    if finest is None or coarser is None:
        return None
    return max(1.0, min(finest, 2.0 * finest - coarser))


def _counts(window: Sequence[Scrape]) -> list[float]:
    """Arrivals between consecutive scrapes (conservation, :func:`_arrivals`), unclamped;
    each scrape's holdings read once, though it bounds two intervals."""
    held = [_held(s) for s in window]
    return [_arrivals(prev, cur, before, after) for (prev, cur), (before, after)
            in zip(itertools.pairwise(window), itertools.pairwise(held), strict=True)]


def extract(scrapes: Sequence[Scrape], now: float, window_s: float, percentile: float,
            stale_after_s: float) -> Signals | NoData:
    """Signals over the scrapes of the last ``window_s`` seconds before ``now``.

    ``percentile`` is in (0, 100). A newest scrape older than ``stale_after_s``, fewer than two
    scrapes in the window, or a missing waiting/running gauge give :class:`NoData`.
    """
    if not scrapes:
        return NoData("no metrics scraped yet")
    newest = max(scrapes, key=lambda s: s.time)
    age = now - newest.time
    if age > stale_after_s:
        return NoData(f"newest metrics are {age:.0f} s old (stale after {stale_after_s:.0f} s)")
    window = sorted(_window(scrapes, now, window_s), key=lambda s: s.time)
    if len(window) < 2:
        return NoData(f"fewer than two scrapes in the last {window_s:.0f} s")
    first, last = window[0], window[-1]
    for name in (WAITING, RUNNING):
        if last.total(name) is None:
            return NoData(f"metric {name} missing from the newest scrape")
    span = last.time - first.time
    completions = counter_increase([s.series(COMPLETIONS) for s in window])
    counts = _counts(window)
    arrivals = max(0.0, math.fsum(counts))
    ttft = bucket_increase([s.histograms.get(TTFT, {}) for s in window])
    ttft_count = ttft[-1][1] if ttft else 0.0
    kv = last.series(KV_USAGE)
    prompt = ([s.series(PROMPT_TOKENS) for s in window] if last.series(PROMPT_TOKENS) else None)
    generated = ([s.series(GENERATION_TOKENS) for s in window]
                 if last.series(GENERATION_TOKENS) else None)
    pending = [_awaiting(s) for s in window]
    timed = counter_increase([s.series(PREFILL_TIME_COUNT) for s in window])
    dispersion = _dispersion([max(0.0, n) for n in counts])
    work = None if prompt is None else _dispersion(
        [counter_increase(pair) for pair in itertools.pairwise(prompt)])
    return Signals(
        time=last.time,
        window_s=span,
        instances=len(last.series(RUNNING)),
        waiting=last.total(WAITING) or 0.0,
        running=last.total(RUNNING) or 0.0,
        kv_usage=math.fsum(kv.values()) / len(kv) if kv else None,
        arrival_rate=_rate(arrivals, span),
        completion_rate=_rate(completions, span),
        prompt_token_rate=None if prompt is None else _rate(counter_increase(prompt), span),
        generation_token_rate=(None if generated is None
                               else _rate(counter_increase(generated), span)),
        ttft_quantile=histogram_quantile(percentile / 100.0, ttft),
        ttft_count=ttft_count,
        arrival_cv2=max(dispersion.values()) if dispersion else None,
        arrival_batch=_batch_index(dispersion),
        prompt_token_dispersion=max(work.values()) if work else None,
        saturated=all((s.total(WAITING) or 0.0) > 0 for s in window),
        engines_saturated=all(_engine_busy(s) for s in window),
        prefill_time_s=(None if timed <= 0 else
                        counter_increase([s.series(PREFILL_TIME_SUM) for s in window]) / timed),
        prefills_timed=timed,
        awaiting_first_token=_awaiting(last),
        min_pending=None if any(p is None for p in pending) else min(
            p for p in pending if p is not None),
        ttft_buckets=ttft,
        prompt_buckets=bucket_increase([s.histograms.get(PROMPT_HISTOGRAM, {})
                                        for s in window]),
    )
