"""Token-aware capacity of one replica, from the latency model and the observed prompt mix.

A replica's capacity is not a number of requests per second: a 12,000-token prompt costs ~50
times the prefill of a 500-token one, and decode slots run out when contexts are long. This
module turns the latency model (:class:`~kubeplex.placement.llm.LLMProfile`) and what the
metrics say about the requests into a :class:`~kubeplex.autoscaler.queueing.ReplicaCapacity`:

1. **prompt mix** (:func:`prompt_mix`): the window's prompt-length histogram
   (``vllm:request_prompt_tokens``, 1-2-5 buckets) as weighted atoms, a few per bucket spread
   geometrically and weighted by a density that is log-linear across buckets, rescaled so
   their mean is the exact mean prompt (from the token counter); one atom at the mean when
   the histogram is missing or holds too few requests;
2. **capacity** (:func:`token_capacity`): each atom's prefill seconds at the replica's
   *effective speed* (the model's, times the measured correction); their mean and squared CV
   (the queue's service time: a heavy-tailed mix, a few prompts whose prefill takes seconds,
   has a large CV, and the queueing model's head-of-line wait, a short prompt behind such a
   prefill on its replica, grows with it), the atoms whose prefill alone fits in the SLO
   (what the SLO counts) and the share that does not (**infeasible**: no replica count serves
   them in time; they still cost prefill work); decode slots (``max_num_seqs``, or what the
   KV cache holds at the mean context), the decode step as a line in the batch size
   (:func:`decode_step_line`, for the queueing model's decode bound) and each request's share
   of the batched decode steps. The speed is what a replica measurably does: the SLO
   feedback's margin adds replicas in the control law, never changes which requests are
   infeasible;
3. **measured speed** (:func:`measured_speed`): while the fleet is saturated (prefill work
   queued on every replica, or requests refused admission), every replica is busy, so the
   model-seconds of work it completes per second *is* its speed relative to the model
   (the first tokens times the model's mean prefill, plus the finished requests times their
   modelled decode share). Partly idle replicas make it a lower bound: the law errs toward
   more capacity.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from kubeplex.autoscaler.metrics import Buckets
from kubeplex.autoscaler.queueing import ReplicaCapacity
from kubeplex.autoscaler.signals import Signals
from kubeplex.placement.llm import LLMProfile

__all__ = [
    "ATOMS_PER_BUCKET",
    "MIN_MIX_REQUESTS",
    "MIN_TIMED_PREFILLS",
    "SPEED_NOISE",
    "CapacityEstimate",
    "PromptMix",
    "decode_step_line",
    "measured_speed",
    "prompt_mix",
    "squared_cv",
    "token_capacity",
]

#: Prefill phases a window must time before their mean measures the engine's speed.
MIN_TIMED_PREFILLS = 20
#: Relative noise of the speed estimate: the standard error of a mean of MIN_TIMED_PREFILLS
#: prefill-time ratios whose coefficient of variation is ~1 (mixed prompt lengths), 1/sqrt(20).
#: The burst memory's levels are not rescaled up by less: a ceiling taken on that noise added a
#: replica to every held level (2 replicas recorded at 1.004x, recalled at 0.99x, became 3).
SPEED_NOISE = 1 / math.sqrt(MIN_TIMED_PREFILLS)
#: Atoms per histogram bucket, spread geometrically inside it (1-2-5 buckets are wide).
ATOMS_PER_BUCKET = 5
#: Lower bound taken for the first bucket (0, 1].
FIRST_BUCKET_LOWER = 0.5
#: Count given to an empty bucket when interpolating densities (keeps the logarithm finite).
DENSITY_FLOOR = 0.1
#: Fewer prompts than this in the window's histogram: use one atom at the mean instead.
MIN_MIX_REQUESTS = 20
#: The open top bucket (above the largest bound) is taken to end at this multiple of its lower
#: bound (one more step of the 1-2-5 series).
TOP_BUCKET_FACTOR = 2.0


def squared_cv(atoms: Sequence[tuple[float, float]]) -> float:
    """The squared coefficient of variation of ``(value, weight)`` atoms whose weights sum to
    1 (0 for a mean of 0)."""
    mean = math.fsum(v * w for v, w in atoms)
    if mean <= 0:
        return 0.0
    return max(0.0, math.fsum(v * v * w for v, w in atoms) / (mean * mean) - 1.0)


@dataclass(frozen=True)
class PromptMix:
    """Prompt lengths as ``(tokens, weight)`` atoms; the weights sum to 1."""

    atoms: tuple[tuple[float, float], ...]

    @property
    def mean(self) -> float:
        return math.fsum(n * w for n, w in self.atoms)

    @property
    def cv2(self) -> float:
        """The prompt lengths' squared coefficient of variation."""
        return squared_cv(self.atoms)


@dataclass(frozen=True)
class CapacityEstimate:
    """One replica's capacity, a mean request's latency (s) and the infeasible share."""

    capacity: ReplicaCapacity
    latency_s: float
    infeasible: float
    #: Longest prompt (tokens) whose prefill still fits in the SLO, among the atoms seen.
    longest_feasible: float | None = None


def prompt_mix(buckets: Buckets, mean_tokens: float) -> PromptMix:
    """The prompt mix of a histogram increase (see the module docstring).

    Inside a bucket the density is log-linear, following the neighbouring buckets (a
    power-law tail puts more of a wide bucket's prompts near its lower bound than near its
    upper one); the open top bucket ends :data:`TOP_BUCKET_FACTOR` times above its bound.
    """
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered and math.isinf(ordered[-1][0]) else 0.0
    if total < MIN_MIX_REQUESTS or mean_tokens <= 0:
        return PromptMix(((max(1.0, mean_tokens), 1.0),))
    spans: list[tuple[float, float, float]] = []  # (log lower, log upper, count)
    below, lower = 0.0, FIRST_BUCKET_LOWER
    for upper, cumulative in ordered:
        top = lower * TOP_BUCKET_FACTOR if math.isinf(upper) else upper
        spans.append((math.log(lower), math.log(top), max(0.0, cumulative - below)))
        below, lower = max(below, cumulative), top
    centres = [(a + b) / 2 for a, b, _ in spans]
    # log density per unit of log(tokens); empty buckets get a floor so the log exists
    density = [math.log(max(c, DENSITY_FLOOR) / max(b - a, 1e-9)) for a, b, c in spans]
    atoms: list[tuple[float, float]] = []
    for _k, (a, b, count) in enumerate(spans):
        if count <= 0:
            continue
        points = [a + (j + 0.5) / ATOMS_PER_BUCKET * (b - a) for j in range(ATOMS_PER_BUCKET)]
        shape = [math.exp(_interpolate(x, centres, density)) for x in points]
        norm = math.fsum(shape)
        atoms += [(math.exp(x), count * w / norm / total) for x, w in zip(points, shape,
                                                                            strict=True)]
    raw = math.fsum(n * w for n, w in atoms)
    scale = mean_tokens / raw if raw > 0 else 1.0
    return PromptMix(tuple((max(1.0, n * scale), w) for n, w in atoms))


def _interpolate(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear interpolation, flat beyond the ends."""
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in itertools.pairwise(zip(xs, ys, strict=True)):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return ys[-1]


def token_capacity(profile: LLMProfile, mix: PromptMix, output_tokens: float, slo_s: float,
                   max_num_seqs: int, speed: float = 1.0, source: str = "profile"
                   ) -> CapacityEstimate:
    """One replica's capacity for this mix at ``speed`` times the model (see the module doc)."""
    output = max(1.0, output_tokens)
    prompt = max(1.0, mix.mean)
    cache: dict[int, float] = {}
    seconds = []
    for tokens, _ in mix.atoms:
        n = max(1, round(tokens))
        if n not in cache:
            cache[n] = profile.prefill_seconds(n) / speed
        seconds.append(cache[n])
    weights = [w for _, w in mix.atoms]
    mean = math.fsum(p * w for p, w in zip(seconds, weights, strict=True))
    cv2 = squared_cv(list(zip(seconds, weights, strict=True)))
    counted = tuple((p, w) for p, w in zip(seconds, weights, strict=True) if p <= slo_s)
    infeasible = math.fsum(w for p, w in zip(seconds, weights, strict=True) if p > slo_s)
    fits = [n for (n, _), p in zip(mix.atoms, seconds, strict=True) if p <= slo_s]
    context = prompt + output
    slots = max(1, min(max_num_seqs, profile.kv_capacity_tokens() // max(1, round(context))))
    base, per_seq = decode_step_line(profile, slots, round(prompt + output / 2), speed)
    step = base + per_seq * slots
    share = (output - 1) * step / slots
    latency = mean + (output - 1) * step * profile.pipeline_depth
    capacity = ReplicaCapacity(prefill_s=mean, work_s=mean + share, source=source,
                               prefill_cv2=cv2 if len(mix.atoms) > 1 else 1.0, mix=counted,
                               slots=float(slots), decode_tokens=output - 1,
                               step_base_s=base, step_per_seq_s=per_seq)
    return CapacityEstimate(capacity, latency, infeasible, max(fits) if fits else None)


def decode_step_line(profile: LLMProfile, slots: int, context: int,
                     speed: float) -> tuple[float, float]:
    """One decode step's seconds as ``(base, per sequence)``, the line through the model's
    step at batch 1 and at ``slots`` (memory-bound decoding: the weights are read once per
    step, each sequence adds its KV cache), at ``speed`` times the model. ``pipeline_depth``
    micro-batches decode at once, so per token of throughput a step costs 1/depth of it."""
    one = profile.decode_step_seconds(1, context)
    full = profile.decode_step_seconds(slots, context)
    per_seq = (full - one) / (slots - 1) if slots > 1 else 0.0
    depth = speed * profile.pipeline_depth
    return (one - per_seq) / depth, per_seq / depth


def measured_speed(signals: Signals, ready: int, model: ReplicaCapacity) -> float | None:
    """Model-seconds of work one replica completed per second over the window (see the module
    docstring); None without first tokens or replicas. ``model`` is at speed 1."""
    if ready <= 0 or signals.window_s <= 0 or signals.ttft_count <= 0:
        return None
    first_tokens = signals.ttft_count / signals.window_s
    done = first_tokens * model.prefill_s + signals.completion_rate * (model.work_s
                                                                       - model.prefill_s)
    return done / ready
