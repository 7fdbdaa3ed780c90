"""The control law: ``decide(observed, config, state, now) -> Decision``.

Stages, in order (each a function, tested alone with a fake clock):

1. **signals** (:func:`~kubeplex.autoscaler.signals.extract`) over the stable window and the
   short panic window; no data holds the current scale.
2. **capacity** (:mod:`~kubeplex.autoscaler.capacity`): token-aware: each request's prefill
   from its own prompt length (the window's prompt histogram), decode slots and the decode
   share from the KV cache and ``max_num_seqs``; requests whose prefill alone exceeds the SLO
   are **infeasible**: reported, left out of the SLO's count, never a reason to add replicas.
   The model's speed is corrected by measurement (:func:`correct_speed`: the work a saturated
   fleet completes per second); which requests are infeasible is judged at that speed alone.
3. **slo** (:func:`~kubeplex.autoscaler.queueing.replicas_for_mix`): the queueing model's
   fewest replicas for the percentile at the larger of the measured rate and the (damped)
   forecast one start-up ahead: the larger of the TTFT bound (the prefill queue, its arrivals'
   variability the larger of the count's and the prefill work's, :func:`work_cv2`, with the
   wait behind requests sent together, ``Signals.arrival_batch``) and the decode bound (the
   steady decode batch within the slots), not a bound on their sum. The batch term is this
   stage's alone: the burst memory records levels at Poisson variability and the rise and
   panic stages size a rate change (a batch reading from one window's noise, held through
   every gap, cost the bursty traces GPU-hours and bought nothing). **After a fall**
   (:func:`after_a_fall`): while the short window's rate is beyond noise below the stable
   one (:func:`falling`, the rise test mirrored), the stable window still holds demand that
   is over, and this stage starts no replica the short window's rate does not need.
4. **queue** (:func:`backlog_trigger`): prefill work queued (requests waiting *or* admitted
   without a first token, which vLLM counts as running) beyond one in progress per replica,
   when it would hold a new request longer than a share of the SLO, or waiting requests over
   ``target_queue_per_replica``: the fleet is saturated now.
5. **credit** (:func:`warmup_credit`): how many replicas drain that backlog, projected to when
   new ones would be ready, with the replicas already starting counted at their ready time
   (at the throughput the busy engines measurably reach, :func:`draining_capacity`); none
   for a burst that will be over before a cold start (:func:`futile`).
6. **rise** (:func:`rising`): a short-window rate beyond Poisson noise above the stable one is
   sized at once by the queueing model (the stable window would see it a minute later); the
   test's false-alarm rate is kept per stable window, not per evaluation (:func:`rise_z`).
   **claim** (:func:`claim_standbys`): when a burst begins (a rise or a backlog), every warm
   standby the burst memory kept for it is claimed at once (it costs its GPU either way).
   **panic** (:func:`panic`): the short window's unrounded demand (:func:`short_load`) at
   ``panic_threshold`` times the credited capacity enters panic; in panic the target never
   goes down; it ends one stable window after the last burst.
7. **hold** (:func:`stabilize` and :mod:`~kubeplex.autoscaler.memory`): scale-up at once;
   scale-down to the highest target of the last ``scale_down_delay_s``, and never below a
   level the demand reached in two separate bursts within the burst memory
   (``burst_memory_s``) when their requests are more than the SLO's miss budget can lose: a
   release would make the next such burst wait a cold start (the level moves down with the
   demand the bursts rode on, :func:`~kubeplex.autoscaler.memory.held_level`). **Recurrence**
   (:mod:`~kubeplex.autoscaler.recurrence`): bursts that start at a steady period get their
   level a cold start before the next is due (a warm start when the standbys could hold it
   all), and between them the memory does not hold it, keeps no standbys for it, nor the
   hold the targets the last one set. **Release** (:mod:`~kubeplex.autoscaler.
   release`): a burst that lasted a cold start is over once the counts since its end tell it
   apart from the burst's rate at the rise test's level; the SLO stage then plans for the
   rate since (and starts nothing while the stable window still holds the burst), the
   forecast restarts from it, panic ends and the hold forgets the burst's targets (instead
   of a stable window and the scale-down delay after it). Before the
   hold, **SLO feedback** (:mod:`~kubeplex.autoscaler.feedback`) divides the replicas by its
   margin factor (at least one more per step, so a step changes the fleet it is judged on): the
   counted requests' measured attainment below target while the model says the fleet
   suffices takes one step; a step that does not help is undone and blocked; met periods
   relax it: bounded, never a ratchet, and never a change in what one replica can serve.
8. **rate limit** (:func:`rate_limit`), **scale to zero** (:func:`scale_to_zero`: idle
   counted from the last request or the law's first look, never from "forever"), **bounds**,
   **budget** (:func:`budget_clamp`: never more replicas than the pool's free GPUs and warm
   standbys can place; the reason says so).
9. **warm standbys** (:func:`~kubeplex.autoscaler.memory.burst_standbys`): a burst seen once
   is covered by warm standbys until it recurs, when the requests a cold start for its next
   occurrence would miss exceed the budget: all of a burst shorter than a cold start, a
   longer one's first cold start (a fixed pool when configured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist

from kubeplex.autoscaler.alerts import REQUESTS_HELD_ALERT
from kubeplex.autoscaler.capacity import (
    MIN_TIMED_PREFILLS,
    CapacityEstimate,
    measured_speed,
    prompt_mix,
    token_capacity,
)
from kubeplex.autoscaler.errors import AutoscalerConfigError
from kubeplex.autoscaler.feedback import FeedbackState, observe, step
from kubeplex.autoscaler.forecast import HoltConfig, HoltState, holt_update
from kubeplex.autoscaler.memory import (
    BUCKET_S,
    Peaks,
    burst_standbys,
    current_burst,
    held_level,
    record,
    replicas_at,
    typical_burst_s,
)
from kubeplex.autoscaler.metrics import Scrape
from kubeplex.autoscaler.queueing import ReplicaCapacity, replicas_for_mix, replicas_for_slo
from kubeplex.autoscaler.recurrence import Phase, Schedule, schedule, without_bursts
from kubeplex.autoscaler.release import Release, burst_over, finished_burst
from kubeplex.autoscaler.signals import TEST_Z, NoData, Signals, extract
from kubeplex.placement.llm import LLMProfile

__all__ = [
    "AutoscalerConfig",
    "AutoscalerState",
    "Decision",
    "Observed",
    "Stage",
    "Starting",
    "after_a_fall",
    "backlog_trigger",
    "budget_clamp",
    "burst_replicas",
    "claim_standbys",
    "correct_speed",
    "decide",
    "draining_capacity",
    "falling",
    "feedback_margin",
    "futile",
    "panic",
    "profile_capacity",
    "queue_replicas",
    "rate_limit",
    "replica_capacity",
    "replicas_at",
    "rise_z",
    "rising",
    "scale_to_zero",
    "short_load",
    "short_window",
    "slo_replicas",
    "slo_status",
    "stabilize",
    "target_per_replica",
    "warm_standbys",
    "warmup_credit",
    "window_demand",
    "work_cv2",
]

#: vLLM's default ``--max-num-seqs`` (concurrent sequences per engine) in V1.
VLLM_MAX_NUM_SEQS = 256
#: Weight of a new saturated measurement in the speed correction (EWMA).
CORRECTION_WEIGHT = 0.5
#: The speed correction keeps the model's speed within this factor, and the SLO feedback's
#: margin at most multiplies the replicas by it.
CORRECTION_LIMIT = 2.0
#: A speed measurement needs a window this many mean prefills long (1/20: at most ~5% of
#: the work in progress at the window's edges goes uncounted).
MIN_PREFILLS_PER_WINDOW = 20.0
#: A short-window rate this many Poisson standard deviations above the stable rate is a rise
#: (about 2% of noise-only windows pass, one-sided) when the test is made once per stable
#: window; :func:`rising` keeps that false-alarm rate per stable window (:func:`rise_z`).
RISE_Z = TEST_Z
#: The short window is widened until it counts this many arrivals (Poisson noise ~14%).
MIN_SHORT_WINDOW_ARRIVALS = 50
#: First-token observations needed before the measured attainment is trusted.
MIN_TTFT_OBSERVATIONS = 20
#: Queued prefill work that would hold a new request for more than this share of the SLO
#: means the replicas are behind now (the queueing model keeps the wait well under it).
BACKLOG_SLO_FRACTION = 0.5
#: A backlog should clear within this many SLOs (or warm starts): long enough not to buy a
#: replica per queued request, short enough that new arrivals soon meet the SLO again.
BACKLOG_DRAIN_FACTOR = 10.0
#: Knative's defaults: max scale-up rate 1000x, max scale-down rate 2x per evaluation.
KNATIVE_MAX_SCALE_UP_RATE = 1000.0
KNATIVE_MAX_SCALE_DOWN_RATE = 2.0


@dataclass(frozen=True)
class Starting:
    """A replica on its way: created (or claimed from the warm pool) at ``since``."""

    since: float
    warm: bool = False


@dataclass(frozen=True)
class Observed:
    """What the caller saw for one ModelService just before ``decide``.

    ``scrapes``: recent metric scrapes, oldest first, covering at least the stable window.
    ``ready``/``starting``: replicas serving / on their way (together: the current scale).
    ``warm_available``: warm standbys a scale-up can claim. ``free_gpus``: GPUs the pool can
    still allocate (None: unknown, no clamp). ``held_requests``: requests the gateway holds
    while the model has no ready replica. ``trigger``: the alert that asked for this evaluation.
    """

    scrapes: tuple[Scrape, ...]
    ready: int
    starting: tuple[Starting, ...] = ()
    warm_available: int = 0
    free_gpus: int | None = None
    held_requests: int = 0
    trigger: str | None = None

    @property
    def current(self) -> int:
        return self.ready + len(self.starting)


@dataclass(frozen=True)
class AutoscalerConfig:
    """One ModelService's scaling settings (from ``spec.slo`` and ``spec.scaling``).

    Defaults cite their source; ``profile`` is the latency model of the model on its GPU group
    (None: ``prefill_s_hint``/``work_s_hint`` must be given, or measurements take over).
    """

    slo_ttft_s: float
    percentile: float = 95.0
    min_replicas: int = 1
    max_replicas: int = 64
    gpus_per_replica: int = 1
    profile: LLMProfile | None = None
    prefill_s_hint: float | None = None
    work_s_hint: float | None = None
    mean_prompt_tokens: float = 512.0
    mean_output_tokens: float = 128.0
    max_num_seqs: int = VLLM_MAX_NUM_SEQS
    #: Waiting requests per replica above which the queue rule asks for more replicas
    #: (``spec.scaling.targetQueuePerReplica``, CRD default 8). vLLM queues a request only
    #: when its engine is full, so waiting requests mean saturated replicas.
    target_queue_per_replica: float = 8.0
    #: Highest planned GPU utilization (queueing theory: waits explode near 1).
    max_utilization: float = 0.85
    #: Squared CV of inter-arrival times; None measures it (index of dispersion, at least 1).
    arrival_cv2: float | None = None
    service_cv2: float = 1.0
    #: Knative KPA: 60 s stable window, 6 s panic window, panic at 2x.
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    #: Scale-down stabilization (HPA uses 300 s; kubeplex credits starting replicas and keeps
    #: a warm pool, so it can release capacity sooner).
    scale_down_delay_s: float = 120.0
    max_scale_up_rate: float = KNATIVE_MAX_SCALE_UP_RATE
    max_scale_down_rate: float = KNATIVE_MAX_SCALE_DOWN_RATE
    scale_to_zero_after_s: float = 300.0
    cold_start_s: float = 60.0
    warm_start_s: float = 2.0
    #: Metrics older than this are stale (a few missed 5 s scrapes).
    stale_after_s: float = 30.0
    forecast: HoltConfig = field(default_factory=HoltConfig)
    #: Fixed warm standby count; None sizes it from the forecast.
    warm_pool: int | None = None
    #: Warm standbys to keep at least (``spec.scaling.prewarm``).
    prewarm: int = 0
    #: Replicas are sized for the forecast plus this many standard deviations of its error
    #: (0: for the forecast; bursts are the burst memory's job, which sizes them from what
    #: they needed instead of from the forecast's noise).
    headroom_z: float = 0.0
    #: How far back the burst memory reaches (s): bursts that recurred within it are held
    #: (:mod:`~kubeplex.autoscaler.memory`); half an hour sees a pattern of bursts a few
    #: minutes apart come back several times. 0: plain stabilization.
    burst_memory_s: float = 1800.0

    def __post_init__(self) -> None:
        positive = {"slo_ttft_s": self.slo_ttft_s, "stable_window_s": self.stable_window_s,
                    "panic_window_s": self.panic_window_s, "max_utilization": self.max_utilization,
                    "panic_threshold": self.panic_threshold, "stale_after_s": self.stale_after_s,
                    "max_scale_up_rate": self.max_scale_up_rate,
                    "max_scale_down_rate": self.max_scale_down_rate}
        for name, value in positive.items():
            if not value > 0:
                raise AutoscalerConfigError(f"{name} must be > 0, got {value}")
        if not 0 < self.percentile < 100:
            raise AutoscalerConfigError(f"percentile must be in (0, 100), got {self.percentile}")
        if self.max_utilization >= 1:
            raise AutoscalerConfigError(
                f"max_utilization must be < 1, got {self.max_utilization}")
        for name, value in (("cold_start_s", self.cold_start_s),
                            ("warm_start_s", self.warm_start_s),
                            ("scale_down_delay_s", self.scale_down_delay_s),
                            ("scale_to_zero_after_s", self.scale_to_zero_after_s)):
            if value < 0:
                raise AutoscalerConfigError(f"{name} must be >= 0, got {value}")
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise AutoscalerConfigError(
                f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                f"got min {self.min_replicas}, max {self.max_replicas}")
        if self.gpus_per_replica < 1:
            raise AutoscalerConfigError(
                f"gpus_per_replica must be >= 1, got {self.gpus_per_replica}")
        if self.warm_pool is not None and self.warm_pool < 0:
            raise AutoscalerConfigError(f"warm_pool must be >= 0, got {self.warm_pool}")
        if self.burst_memory_s < 0:
            raise AutoscalerConfigError(
                f"burst_memory_s must be >= 0, got {self.burst_memory_s}")
        if self.prewarm < 0 or not self.target_queue_per_replica > 0:
            raise AutoscalerConfigError(
                f"prewarm must be >= 0 and target_queue_per_replica > 0, got "
                f"{self.prewarm} and {self.target_queue_per_replica}")
        if self.profile is None and (self.prefill_s_hint is None or self.work_s_hint is None):
            raise AutoscalerConfigError(
                "give a latency profile or both prefill_s_hint and work_s_hint")

    @property
    def quantile(self) -> float:
        return self.percentile / 100.0



@dataclass(frozen=True)
class AutoscalerState:
    """What the law remembers between evaluations (start from ``AutoscalerState()``)."""

    #: (time, target) of recent evaluations, for scale-down stabilization.
    recommendations: tuple[tuple[float, int], ...] = ()
    #: Panic lasts until this time; the target may not drop below ``panic_floor`` meanwhile.
    panic_until: float | None = None
    panic_floor: int = 0
    #: Last time requests arrived or were in the system, or the first evaluation with replicas
    #: running (scale to zero counts from here).
    last_busy: float | None = None
    forecast: HoltState = field(default_factory=HoltState)
    #: Measured / modelled speed of a saturated replica (1.0 until the fleet ran saturated).
    capacity_correction: float = 1.0
    #: The ready count and since when it has not changed (measurements need a steady fleet).
    ready: int = 0
    ready_since: float | None = None
    #: The SLO feedback on the model's speed (:mod:`~kubeplex.autoscaler.feedback`).
    slo_feedback: FeedbackState = field(default_factory=FeedbackState)
    #: Burst memory (:mod:`~kubeplex.autoscaler.memory`).
    peaks: Peaks = ()
    #: The burst last judged over (:mod:`~kubeplex.autoscaler.release`), while it is.
    released: Release | None = None


@dataclass(frozen=True)
class Stage:
    """One stage's output: the replica target after it and a note (empty: no change)."""

    name: str
    replicas: int
    note: str = ""


@dataclass(frozen=True)
class Decision:
    """The answer: replicas and warm standbys to have, why (one line), and the next state.

    ``infeasible_fraction``: share of the window's requests whose prompt alone takes longer
    than the SLO to prefill on a replica (no replica count serves them in time; they are left
    out of the SLO's count and reported here). ``capacity``: the per-replica capacity the
    decision used.
    """

    desired_replicas: int
    desired_warm: int
    reason: str
    state: AutoscalerState
    stages: tuple[Stage, ...] = ()
    signals: Signals | NoData | None = None
    in_panic: bool = False
    infeasible_fraction: float = 0.0
    capacity: ReplicaCapacity | None = None

    def changes(self) -> tuple[tuple[str, int], ...]:
        """What each stage did to the target it was handed, in order; they add up to
        ``desired_replicas``. The first stage's is its whole target. ``queue`` stages report
        a count and set nothing; ``credit`` sets its count only when above the target."""
        changes: list[tuple[str, int]] = []
        target = 0
        for stage in self.stages:
            if stage.name == "queue":
                continue
            after = max(target, stage.replicas) if stage.name == "credit" else stage.replicas
            changes.append((stage.name, after - target))
            target = after
        return tuple(changes)


# ---- stage 2: capacity ---------------------------------------------------------------------
def profile_capacity(profile: LLMProfile, prompt_tokens: float, output_tokens: float,
                     max_num_seqs: int = VLLM_MAX_NUM_SEQS) -> tuple[ReplicaCapacity, float]:
    """Capacity of one replica for requests of one mean shape; also its mean latency (s).

    The operating batch is as many sequences as the KV cache holds at the mean context, at
    most ``max_num_seqs``; a request's work is its prefill plus its share of the batched
    decode steps. (:func:`replica_capacity` does the same for the observed prompt mix.)
    """
    prompt, output = max(1, round(prompt_tokens)), max(1, round(output_tokens))
    context = prompt + output
    batch = max(1, min(max_num_seqs, profile.kv_capacity_tokens() // context))
    step = profile.decode_step_seconds(batch, prompt + output // 2)
    prefill = profile.prefill_seconds(prompt)
    work = prefill + (output - 1) * step / batch / profile.pipeline_depth
    latency = prefill + (output - 1) * step
    return ReplicaCapacity(prefill_s=prefill, work_s=work, source="profile"), latency


def replica_capacity(signals: Signals | None, config: AutoscalerConfig, speed: float = 1.0,
                     shape: Signals | None = None) -> CapacityEstimate:
    """One replica's token-aware capacity at ``speed`` times the model, for the window's
    prompt mix and output length (the declared sizes before any were measured). ``shape``:
    take the mix's shape from this (longer) window's histogram, at ``signals``' mean."""
    if config.profile is None:
        if config.prefill_s_hint is None or config.work_s_hint is None:
            raise AutoscalerConfigError("give a latency profile or both capacity hints")
        hint = ReplicaCapacity(config.prefill_s_hint / speed, config.work_s_hint / speed,
                               "hint" if speed == 1.0 else "measured")
        return CapacityEstimate(hint, hint.work_s * config.max_num_seqs, 0.0)
    prompt = (signals.mean_prompt_tokens if signals else None) or config.mean_prompt_tokens
    output = (signals.mean_output_tokens if signals else None) or config.mean_output_tokens
    source = shape or signals
    mix = prompt_mix(source.prompt_buckets if source else (), prompt)
    return token_capacity(config.profile, mix, output, config.slo_ttft_s, config.max_num_seqs,
                          speed, "profile" if speed == 1.0 else "measured")


def correct_speed(signals: Signals, config: AutoscalerConfig, ready: int, correction: float,
                  steady: bool, shape: Signals | None = None) -> float:
    """The speed correction after this window (EWMA toward the measurement, within
    :data:`CORRECTION_LIMIT`; unchanged when there is nothing to measure).

    * **prefill times**: with at least :data:`MIN_TIMED_PREFILLS` prefill phases timed in the
      window (``vllm:request_prefill_time_seconds``), the model's mean prefill for the window's
      prompt mix over the measured mean. vLLM's phase includes the decode steps batched with
      a chunked prefill, so under load this errs toward a slower engine (more capacity).
    * **saturated work**, where the engine does not time prefills: when every engine was busy
      in every scrape (:attr:`~kubeplex.autoscaler.signals.Signals.engines_saturated`), the
      ready count held steady and the window spans :data:`MIN_PREFILLS_PER_WINDOW` mean
      prefills (work is counted when a prefill ends), the model-seconds of work done per
      second (:func:`~kubeplex.autoscaler.capacity.measured_speed`).

    ``shape``: the window whose prompt mix to use (a longer one when this one is short).
    """
    model = replica_capacity(signals, config, shape=shape).capacity
    measured: float | None = None
    if signals.prefill_time_s and signals.prefills_timed >= MIN_TIMED_PREFILLS:
        measured = model.prefill_s / signals.prefill_time_s
    elif (signals.engines_saturated and steady and ready > 0
          and signals.window_s >= MIN_PREFILLS_PER_WINDOW * model.prefill_s):
        measured = measured_speed(signals, ready, model)
    if measured is None:
        return correction
    clamped = min(CORRECTION_LIMIT, max(1 / CORRECTION_LIMIT, measured))
    return (1 - CORRECTION_WEIGHT) * correction + CORRECTION_WEIGHT * clamped


# ---- stage 3: SLO (queueing model) ---------------------------------------------------------
def work_cv2(signals: Signals, config: AutoscalerConfig) -> float | None:
    """The arrivals' variability as the prefill work sees it: the work's index of dispersion
    (:attr:`~kubeplex.autoscaler.signals.Signals.work_dispersion`) less the prompts' own
    ``cs^2`` (the window's prompt mix, in tokens). The count's ``arrival_cv2`` weighs a chat
    prompt as much as an 8k-token one: long prompts sent in bursts beside Poisson chat read
    cv^2 1.4 by count and ~10 by work, and one replica the count found enough missed 2%."""
    dispersion = signals.work_dispersion
    if dispersion is None:
        return None
    mix = prompt_mix(signals.prompt_buckets,
                     signals.mean_prompt_tokens or config.mean_prompt_tokens)
    return dispersion - mix.cv2


def slo_replicas(arrival_rate: float, capacity: ReplicaCapacity, config: AutoscalerConfig,
                 arrival_cv2: float) -> int:
    """Fewest replicas meeting the TTFT percentile for requests of the mean shape (the
    baselines' tuning; the law itself uses the mix, :func:`~kubeplex.autoscaler.queueing.
    replicas_for_mix`). When the prefill alone misses the SLO, the throughput bound."""
    found = replicas_for_slo(arrival_rate, capacity, config.slo_ttft_s, config.quantile,
                             config.max_utilization, arrival_cv2, config.service_cv2)
    if found is None:  # the prefill alone misses the SLO: more replicas only keep queues short
        return max(1, math.ceil(arrival_rate * capacity.work_s / config.max_utilization))
    return found


def _mix_replicas(rate: float, capacity: ReplicaCapacity, config: AutoscalerConfig,
                  cv2: float, batch: float = 1.0) -> int:
    if not capacity.mix and capacity.source == "hint":
        return slo_replicas(rate, capacity, config, cv2)
    return replicas_for_mix(rate, capacity, config.slo_ttft_s, config.quantile,
                            config.max_utilization, cv2, batch)


def futile(peaks: Peaks, now: float, config: AutoscalerConfig, warm_available: int) -> str:
    """Why a reactive scale-up would come too late ("" when it would not): every burst in the
    memory ended before a cold start (and no warm standby is free), and the one going on now
    is not older than the longest of them. The held level serves such bursts; a replica
    started for one would arrive after it. A burst outlasting them all is reacted to; the
    memory knows when a burst began to a bucket (``BUCKET_S``), so one outlasts them once it
    is a bucket older than the longest (a 4 s burst straddling two buckets looked 12 s old
    against 10 s bursts and got cold starts)."""
    typical = typical_burst_s(peaks)
    started = current_burst(peaks)
    if warm_available > 0 or typical is None or typical >= config.cold_start_s:
        return ""
    if started is not None and now - started - BUCKET_S > typical:
        return ""
    return (f"bursts here end within {typical:.0f} s, before a {config.cold_start_s:.0f} s "
            f"cold start: no replica started for this one (the burst memory holds for them)")


def rise_z(short_window_s: float, stable_window_s: float) -> float:
    """The rise test's threshold in standard deviations: :data:`RISE_Z`'s one-sided level
    shared (Bonferroni) among the disjoint short windows of a stable window. The test is
    repeated at every evaluation on each new short window, so at 2 standard deviations a
    steady rate made a false rise in about one stable window in five (ten 6 s windows per
    60 s, ~2% each), each buying a replica for the hold; this keeps it to ~2% of stable
    windows (2.84 standard deviations for ten)."""
    windows = max(1.0, stable_window_s / short_window_s)
    level = NormalDist().cdf(-RISE_Z) / windows
    return -NormalDist().inv_cdf(level)


def rising(short_rate: float, stable_rate: float, short_window_s: float,
           stable_window_s: float) -> bool:
    """Whether the short window's rate is above the stable one by more than Poisson noise
    (:func:`rise_z` standard deviations of a count over the short window at the stable rate):
    a real rise, sized at once, not a minute later."""
    if short_window_s <= 0:
        return False
    return short_rate > stable_rate + _beyond_noise(stable_rate, short_window_s,
                                                    stable_window_s, 1.0)


def falling(short_rate: float, stable_rate: float, short_window_s: float,
            stable_window_s: float, dispersion: float) -> bool:
    """Whether the short window's rate is below the stable one by more than noise: the rise
    test mirrored, with the counts' variance ``dispersion`` times their mean (bursty or
    batched arrivals dip by chance more than Poisson ones). The stable window then still
    holds a burst that is over."""
    if short_window_s <= 0:
        return False
    return short_rate < stable_rate - _beyond_noise(stable_rate, short_window_s,
                                                    stable_window_s, dispersion)


def _beyond_noise(stable_rate: float, short_window_s: float, stable_window_s: float,
                  dispersion: float) -> float:
    """How far (req/s) a short window's rate strays from the stable one by noise alone at the
    rise test's level: :func:`rise_z` standard deviations of a count over the short window
    at the stable rate, its variance ``dispersion`` times its mean (1: Poisson)."""
    noise = math.sqrt(dispersion * max(stable_rate, 1.0 / short_window_s) / short_window_s)
    return rise_z(short_window_s, stable_window_s) * noise


def after_a_fall(target: int, current: int, burst: Signals | NoData, stable: Signals,
                 capacity: ReplicaCapacity, config: AutoscalerConfig, cv2: float,
                 batch: float) -> tuple[int, str]:
    """The SLO stage's ``target`` when the short window's rate fell beyond noise below the
    stable window's (:func:`falling`, at the counts' dispersion ``max(cv2, batch)``): the
    stable window still holds demand that is over, and a replica started for it now would
    come after it. No more than the ``current`` replicas or what the short window's rate
    needs, whichever is more; a scale-down still waits as usual. With why ("" when the
    target stands)."""
    if target <= current or not isinstance(burst, Signals) or not falling(
            burst.arrival_rate, stable.arrival_rate, burst.window_s, stable.window_s,
            max(cv2, batch)):
        return target, ""
    now_needs = _mix_replicas(burst.arrival_rate, capacity, config, cv2, batch)
    if now_needs >= target:
        return target, ""
    kept = max(current, now_needs)
    return kept, (f"; but {burst.arrival_rate:.2f} req/s over the last {burst.window_s:.0f} s "
                  f"fell beyond noise: {kept} while the stable window still holds it")


def burst_replicas(burst: Signals, capacity: ReplicaCapacity, config: AutoscalerConfig,
                   cv2: float) -> float:
    """Replicas the short window's arrivals needed, as the burst memory records them: the
    queueing model at their rate, but no more than clears their prefill work within the
    window plus one SLO (a burst shorter than the window is absorbed by a queue that drains
    in time; the steady-state model would size it as if it lasted, and the memory would hold
    that through every gap). The panic stage reacts with the queueing model alone.

    Not rounded: the memory keeps the fraction and the hold rounds once, at recall
    (:func:`replicas_at`); rounded here, every level between two counts was remembered as the
    higher one (a burst clearing on 3.1 replicas held 4 through every gap)."""
    if burst.arrival_rate <= 0:
        return 0.0
    steady = _mix_replicas(burst.arrival_rate, capacity, config, cv2)
    work = burst.arrival_rate * burst.window_s * capacity.prefill_s
    fluid = work / ((burst.window_s + config.slo_ttft_s) * config.max_utilization)
    return min(float(steady), max(1.0, fluid))


def window_demand(slo_target: int, rate: float, capacity: ReplicaCapacity,
                  config: AutoscalerConfig, cv2: float) -> int:
    """What the stable window needed, as the burst memory records it: the SLO stage's replicas
    for its rate at Poisson variability. The bursts inside the window are measured by the
    short windows (:func:`burst_replicas`), so the window's dispersion, which those bursts
    make, is not counted twice (it made a minute with a 10 s burst "need" a replica more,
    held through every gap after)."""
    if cv2 <= 1.0:
        return slo_target
    return min(slo_target, _mix_replicas(rate, capacity, config, 1.0))


# ---- stage 4: queue ------------------------------------------------------------------------
def target_per_replica(config: AutoscalerConfig, capacity: ReplicaCapacity,
                       latency_s: float) -> float:
    """Requests in the system per replica at the planned utilization (Little's law).

    The concurrency target a KPA/HPA-style scaler would use; the baselines take it.
    """
    return max(1.0, config.max_utilization * latency_s / capacity.work_s)


def queue_replicas(waiting: float, target: float) -> int:
    """Replicas so that each has at most ``target`` requests waiting."""
    return math.ceil(waiting / target) if waiting > 0 else 0


def backlog_trigger(waiting: float, pending: float, ready: int, current: int,
                    capacity: ReplicaCapacity, config: AutoscalerConfig) -> tuple[int, float]:
    """The queue stage: (replicas it asks for, the prefill backlog in requests).

    ``pending``: requests with no first token (waiting or admitted), the gateway's held ones
    included. Beyond one in progress per ready replica, that backlog holds a new request for
    ``backlog * prefill_s / ready`` seconds; past :data:`BACKLOG_SLO_FRACTION` of the SLO the
    stage asks for one more than the current replicas (the credit stage says how many), and
    waiting requests over ``target_queue_per_replica`` ask for their own count, as before.
    """
    backlog = max(0.0, pending - ready)
    queue = queue_replicas(waiting, config.target_queue_per_replica)
    delay = backlog * capacity.prefill_s / max(1, ready)
    if backlog > 0 and delay > BACKLOG_SLO_FRACTION * config.slo_ttft_s:
        queue = max(queue, current + 1)
    return queue, backlog


# ---- stage 5: warm-up credit ---------------------------------------------------------------
def _ready_at(start: Starting, config: AutoscalerConfig) -> float:
    return start.since + (config.warm_start_s if start.warm else config.cold_start_s)


def warmup_credit(queue_target: int, observed: Observed, backlog: float, arrival_rate: float,
                  capacity: ReplicaCapacity, config: AutoscalerConfig, now: float) -> int:
    """How many replicas the queue rule's scale-up really needs, crediting starting replicas.

    The queue rule (requests per replica) says *whether* the backlog calls for more replicas;
    this stage says *how many*. A replica asked for now is ready at ``now + start`` (warm if
    a standby is free, else cold). Replicas already starting add their capacity when they
    become ready (their expected ready time); the backlog is projected to ``now + start`` with
    a fluid model (it grows by the arrivals the ready replicas cannot serve). The answer is
    the replicas that serve the arrivals and drain what is left within
    ``BACKLOG_DRAIN_FACTOR`` SLOs, never fewer than the current ones. Because the projection
    already counts what is on its way, the next evaluations during the same burst arrive at
    the same number: a burst does not trigger a second scale-up.
    """
    if queue_target <= observed.current:
        return queue_target
    start = config.warm_start_s if observed.warm_available > 0 else config.cold_start_s
    horizon = now + start
    mu = capacity.service_rate
    events = sorted(min(horizon, max(now, _ready_at(s, config))) for s in observed.starting)
    serving, t, left = observed.ready, now, backlog
    for ready_time in events:
        left = max(0.0, left + (arrival_rate - serving * mu) * (ready_time - t))
        t, serving = ready_time, serving + 1
    left = max(0.0, left + (arrival_rate - serving * mu) * (horizon - t))
    drain_s = max(config.warm_start_s, config.slo_ttft_s) * BACKLOG_DRAIN_FACTOR
    needed = math.ceil((arrival_rate + left / drain_s) / (mu * config.max_utilization))
    return max(needed, observed.current)


# ---- stage 6: panic ------------------------------------------------------------------------
def panic(burst_target: int, burst_load: float, credited: int, target: int,
          state: AutoscalerState, config: AutoscalerConfig,
          now: float) -> tuple[int, AutoscalerState, bool]:
    """Knative-style panic on the short window's demand, against credited capacity.

    Enter (or extend) when ``burst_load``, the short window's unrounded demand in replicas
    (:func:`short_load`), reaches ``panic_threshold * max(1, credited)``, as Knative compares
    its unrounded desired pod count with the ready pods: whole replicas made 1.2 replicas'
    worth of demand on one replica a panic (2 >= 2 x 1). While in panic the target is at
    least ``burst_target`` (the queueing model's replicas for the short window; even below
    the threshold) and never below the highest target since panic began.
    """
    bursting = (burst_load >= config.panic_threshold * max(1, credited)
                and burst_target > 0)
    in_panic = state.panic_until is not None and now < state.panic_until
    if bursting:
        until = now + config.stable_window_s
        floor = max(state.panic_floor if in_panic else 0, burst_target, target)
        return floor, replace(state, panic_until=until, panic_floor=floor), True
    if in_panic:
        floor = max(state.panic_floor, target, burst_target)
        return floor, replace(state, panic_floor=floor), True
    return target, replace(state, panic_until=None, panic_floor=0), False


def short_load(burst: Signals, capacity: ReplicaCapacity, config: AutoscalerConfig) -> float:
    """The short window's demand in replicas, unrounded: its arrivals' work at the planned
    utilization (Knative's observed concurrency over the per-pod target, by Little's law:
    ``rate * latency / (max_utilization * latency / work_s)``)."""
    return burst.arrival_rate * capacity.work_s / config.max_utilization


# ---- stage 7: stabilization and rate limits ------------------------------------------------
def stabilize(recommendations: tuple[tuple[float, int], ...], target: int, now: float,
              delay_s: float) -> tuple[int, tuple[tuple[float, int], ...]]:
    """Scale up at once; scale down only to the highest target of the last ``delay_s``."""
    kept = tuple((t, r) for t, r in recommendations if now - t < delay_s)
    if not recommendations:  # the first evaluation: the current scale opens the window
        return target, ((now, target),)
    stable = max([target, *(r for _, r in kept)])
    return stable, (*kept, (now, target))


def rate_limit(current: int, target: int, config: AutoscalerConfig) -> int:
    """At most ``max_scale_up_rate`` times up and ``max_scale_down_rate`` times down."""
    if current <= 0:
        return target
    up = math.ceil(current * config.max_scale_up_rate)
    down = math.floor(current / config.max_scale_down_rate)
    return max(down, min(up, target))


# ---- stage 8: scale to zero, budget --------------------------------------------------------
def scale_to_zero(target: int, busy: bool, last_busy: float | None, config: AutoscalerConfig,
                  now: float) -> tuple[int, str]:
    """Zero only after ``scale_to_zero_after_s`` idle (and min_replicas 0); else at least one."""
    if config.min_replicas > 0:
        return target, ""
    if busy:
        return max(1, target), ""
    idle = math.inf if last_busy is None else now - last_busy
    if idle >= config.scale_to_zero_after_s:
        return 0, f"idle {idle:.0f} s >= {config.scale_to_zero_after_s:.0f} s"
    return max(1, target), ""


def budget_clamp(target: int, current: int, warm_available: int, free_gpus: int | None,
                 gpus_per_replica: int) -> tuple[int, str]:
    """Never more new replicas than warm standbys plus free GPUs can place."""
    if free_gpus is None or target <= current:
        return target, ""
    placeable = current + warm_available + free_gpus // gpus_per_replica
    if target <= placeable:
        return target, ""
    return placeable, (f"GPU budget: wanted {target}, the pool places {placeable} "
                       f"({free_gpus} free GPUs, {gpus_per_replica} per replica, "
                       f"{warm_available} warm)")


# ---- status ----------------------------------------------------------------------------------
#: Above this fraction of the SLO the measured percentile counts as at risk.
AT_RISK_FRACTION = 0.8


def slo_status(signals: Signals | NoData | None, config: AutoscalerConfig) -> str:
    """``status.sloStatus`` of a ModelService: Met, AtRisk, Violated, Idle or Unknown."""
    if not isinstance(signals, Signals):
        return "Unknown"
    if signals.arrival_rate <= 0 and signals.in_system <= 0:
        return "Idle"
    measured = signals.ttft_quantile
    if measured is None:
        return "Unknown"
    if measured > config.slo_ttft_s:
        return "Violated"
    return "AtRisk" if measured > AT_RISK_FRACTION * config.slo_ttft_s else "Met"


# ---- the entry point -----------------------------------------------------------------------
def _hold(observed: Observed, config: AutoscalerConfig, state: AutoscalerState, now: float,
          why: NoData) -> Decision:
    current = observed.current
    target = current
    note = f"no data ({why.reason}): hold at {current}"
    if current == 0 and observed.held_requests > 0 and config.max_replicas > 0:
        target = max(1, config.min_replicas)
        note = f"scale from zero: {observed.held_requests} requests held, no metrics yet"
        state = replace(state, last_busy=now)
    elif current < config.min_replicas:
        target = config.min_replicas
        note = f"no data ({why.reason}): raise to min {config.min_replicas}"
    warm = config.warm_pool if config.warm_pool is not None else int(config.prewarm)
    reason = note if observed.trigger is None else f"{note} (alert {observed.trigger})"
    return Decision(target, warm, reason, state, (Stage("no data", target, note),), why)


def short_window(scrapes: tuple[Scrape, ...], now: float,
                 config: AutoscalerConfig) -> Signals | NoData:
    """The short (panic) window's signals, widened (doubling, at most to the stable window)
    until it holds :data:`MIN_SHORT_WINDOW_ARRIVALS` arrivals: a rate counted from a handful
    of requests is noise, and sparse traffic would panic on it."""
    window = config.panic_window_s
    while True:
        signals = extract(scrapes, now, window, config.percentile, config.stale_after_s)
        if (not isinstance(signals, Signals) or window >= config.stable_window_s
                or signals.arrival_rate * signals.window_s >= MIN_SHORT_WINDOW_ARRIVALS):
            return signals
        window = min(config.stable_window_s, 2 * window)


def _arrived(scrapes: tuple[Scrape, ...], now: float, config: AutoscalerConfig) -> bool:
    """Whether requests arrived within the (unwidened) panic window."""
    recent = extract(scrapes, now, config.panic_window_s, config.percentile,
                     config.stale_after_s)
    return isinstance(recent, Signals) and recent.arrival_rate > 0


def _pending(signals: Signals, held: int) -> float:
    """Requests with no first token: in the engines (waiting ones included) and held."""
    awaiting = signals.awaiting_first_token
    return held + (awaiting if awaiting is not None else signals.waiting)


def draining_capacity(signals: Signals, capacity: ReplicaCapacity,
                      ready: int) -> ReplicaCapacity:
    """The capacity a backlog drains at: while every engine is busy, what they completed per
    replica is measured throughput and wins over a faster model (measured, not bounded by
    the speed correction's limit)."""
    if not (signals.engines_saturated and ready > 0 and signals.completion_rate > 0):
        return capacity
    measured = ready / signals.completion_rate
    return capacity if measured <= capacity.work_s else replace(capacity, work_s=measured,
                                                                source="measured")


def decide(observed: Observed, config: AutoscalerConfig, state: AutoscalerState,
           now: float) -> Decision:
    """One evaluation for one ModelService (see the module docstring for the stages)."""
    if observed.trigger == REQUESTS_HELD_ALERT and observed.held_requests == 0:
        # The gateway's alert is its report that requests wait: at least one, when the caller
        # has no fresher count of them.
        observed = replace(observed, held_requests=1)
    stable = extract(observed.scrapes, now, config.stable_window_s, config.percentile,
                     config.stale_after_s)
    if isinstance(stable, NoData):
        return _hold(observed, config, state, now, stable)
    burst = short_window(observed.scrapes, now, config)
    burst_rate = burst.arrival_rate if isinstance(burst, Signals) else stable.arrival_rate
    stages: list[Stage] = []
    current = observed.current
    held = observed.held_requests

    if observed.ready != state.ready or state.ready_since is None:
        state = replace(state, ready=observed.ready, ready_since=now)
    steady = now - (state.ready_since or now) >= config.stable_window_s
    correction = correct_speed(stable, config, observed.ready, state.capacity_correction, steady)
    if (correction == state.capacity_correction and isinstance(burst, Signals)
            and stable.prefill_time_s is None):
        # A burst that saturates the fleet for the short window measures its speed too.
        short_steady = now - (state.ready_since or now) >= config.panic_window_s
        correction = correct_speed(burst, config, observed.ready, correction, short_steady,
                                   shape=stable)
    state = replace(state, capacity_correction=correction)
    fb = state.slo_feedback
    speed = correction
    estimate = replica_capacity(stable, config, speed)
    capacity = estimate.capacity
    start_s = config.warm_start_s if observed.warm_available > 0 else config.cold_start_s
    # Scheduled bursts (one evaluation's memory ago) and bursts that are over (release).
    timed = scheduled_burst(state.peaks, now, observed.warm_available, speed, config)
    scheduled = timed.phase is Phase.BETWEEN
    ended = timed.last if scheduled else finished_burst(state.peaks, config.cold_start_s)
    cv2 = config.arrival_cv2 if config.arrival_cv2 is not None else max(
        1.0, stable.arrival_cv2 or 1.0, work_cv2(stable, config) or 1.0)
    batch = max(1.0, stable.arrival_batch or 1.0)  # requests sent together (signals)
    released = None if ended is None else burst_over(
        state.peaks, ended, now, config.panic_window_s, config.stable_window_s,
        rise_z(config.panic_window_s, config.stable_window_s), state.released,
        without_bursts(state.peaks, config.stable_window_s) if scheduled else None,
        max(cv2, batch))
    forecast = holt_update(state.forecast, stable.arrival_rate, now, config.forecast)
    if released is not None:
        # The stable window, the forecast fed from it, panic and the hold still carry a burst
        # that is over: the rate since it stands for them, the forecast restarts from it.
        forecast = replace(forecast, level=released.rate, trend=0.0)
        state = replace(state, panic_until=None, panic_floor=0)
    rate = max(stable.arrival_rate, forecast.upper(start_s, config.headroom_z))
    if released is not None:
        rate = min(rate, released.rate)
    target = _mix_replicas(rate, capacity, config, cv2, batch)
    adjusted = "" if speed == 1.0 else f" at {speed:.2f}x the model's speed"
    note = (f"SLO p{config.percentile:g} TTFT {config.slo_ttft_s:g} s at {rate:.2f} req/s "
            f"needs {target} ({capacity.service_rate:.2f} req/s/replica, {capacity.source}"
            f"{adjusted})")
    target, fell = after_a_fall(target, current, burst, stable, capacity, config, cv2, batch)
    note += fell
    if released is not None and target > current and now < released.end + config.stable_window_s:
        # The stable window still holds the burst that is over (its dispersion above all):
        # it justifies no start. New load shows as a rise or a backlog.
        target = current
        note += "; the stable window still holds the burst that is over: no start from it"
    stages.append(Stage("slo", target, note))
    deciding = note
    quiet = not observed.starting and steady and target <= observed.ready
    fb = observe(fb, observed.scrapes, config.slo_ttft_s, estimate.infeasible, now)
    # The margin's floor keeps correction x factor >= 1 / CORRECTION_LIMIT, as when the factor
    # scaled the model's speed (a floor of 1 / CORRECTION_LIMIT alone: docs/benchmarks.md).
    fb = step(fb, config.quantile, quiet, 1 / CORRECTION_LIMIT / max(correction, 1e-9),
              config.stable_window_s, now)
    state = replace(state, slo_feedback=fb)

    per_replica = config.target_queue_per_replica
    queue, backlog = backlog_trigger(stable.waiting + held, _pending(stable, held),
                                     observed.ready, current, capacity, config)
    # Arrivals to come: the planned rate, or the short window's during a real rise.
    rise = isinstance(burst, Signals) and rising(burst.arrival_rate, stable.arrival_rate,
                                                 burst.window_s, stable.window_s)
    coming = max(rate, burst_rate) if rise else rate
    credited = warmup_credit(queue, observed, backlog, coming,
                             draining_capacity(stable, capacity, observed.ready), config, now)
    short = futile(state.peaks, now, config, observed.warm_available)
    if short and credited > target:
        stages.append(Stage("queue", queue, short))
        credited = target
    stages.append(Stage("queue", queue, f"{backlog:.0f} requests of prefill backlog, "
                                        f"{stable.waiting + held:.0f} waiting / {per_replica:g}"))
    credit_note = ("" if queue <= current else
                   f"{credited} drain the backlog, {len(observed.starting)} starting credited")
    stages.append(Stage("credit", credited, credit_note))
    # The credit stage keeps what is running and starting while they drain a backlog: those
    # replicas had the SLO feedback's margin when they were asked; another on top of them
    # at every evaluation of the backlog ratcheted 1 -> 128 in a minute.
    kept = current if queue > current and credited == current else None
    if credited > target:
        target = credited
        deciding = f"prefill backlog of {backlog:.0f} requests: {credit_note}"

    demand: float = window_demand(stages[0].replicas, rate, capacity, config, cv2)
    short_demand = 0.0
    burst_target = target
    if isinstance(burst, Signals):
        short_demand = burst_replicas(burst, capacity, config, cv2)
        demand = max(demand, short_demand)
        burst_target = _mix_replicas(burst.arrival_rate, capacity, config, cv2)
        if rise and burst_target > target and not short:
            target = burst_target
            deciding = (f"rise: {burst.arrival_rate:.2f} req/s over the last "
                        f"{burst.window_s:.0f} s (beyond noise around {stable.arrival_rate:.2f})"
                        f" needs {burst_target}")
        stages.append(Stage("rise", target, ""))
    claimed = claim_standbys(state.peaks, current, speed, observed.warm_available,
                             rise or queue > current, config)
    if claimed > target:
        target = claimed
        deciding = (f"burst: the {claimed - current} warm standbys kept for it claimed at once "
                    f"(they cost the same GPUs claimed or not)")
    stages.append(Stage("claim", target, ""))
    before = target
    if short:  # no cold start for a burst that ends before it: the panic stage stands down
        burst_target = min(burst_target, target)
    load = short_load(burst, capacity, config) if isinstance(burst, Signals) else 0.0
    target, state, in_panic = panic(burst_target, load, current, target, state, config, now)
    stages.append(Stage("panic", target, "in panic" if in_panic else ""))
    if in_panic and target > before:
        deciding = f"panic: burst {burst_rate:.2f} req/s needs {burst_target}"

    # The memory keeps replicas at the model's speed: a later correction rescales it.
    # Requests since the previous evaluation, at the short window's rate.
    last = state.recommendations[-1][0] if state.recommendations else None
    arrivals = burst_rate * min(now - last, config.panic_window_s) if last is not None else 0.0
    peaks = record(state.peaks, demand * speed, short_demand * speed, max(0.0, arrivals), now,
                   config.burst_memory_s)
    held_peaks = peaks
    if timed.phase is Phase.BETWEEN:
        held_peaks = without_bursts(peaks, config.stable_window_s)
    recurring = replicas_at(held_level(held_peaks, config.quantile, config.stable_window_s),
                            speed) if held_peaks else 0
    if recurring > target:
        target = recurring
        deciding = (f"burst memory: holds {recurring} replicas for bursts that recurred in the "
                    f"last {config.burst_memory_s:.0f} s with more requests than the SLO may "
                    f"miss (their level, moved with the demand under them), through the gap")
    ahead = replicas_at(timed.level, speed)
    if ahead > target:
        target = ahead
        deciding = timed.reason
    stages.append(Stage("recurrence", target, timed.reason))
    margined = feedback_margin(target, fb.factor) if target != kept else target
    if margined > target:
        deciding = (f"{deciding}; SLO feedback: a {1 / fb.factor - 1:.0%} margin for the "
                    f"attainment measured below the model's ({target} -> {margined})")
        target = margined
    stages.append(Stage("feedback", target, ""))
    # Stabilization comes last: a held level that wavers with the speed estimate does not
    # turn into a scale-down and back.
    before = target
    history = state.recommendations or ((now, current),)
    if released is not None:
        # The hold forgets the targets the burst set (not noise): those until it was judged
        # over, or, between scheduled bursts, all since it began (the memory held its level
        # until its demand fell).
        until = now if scheduled else released.judged_at
        history = tuple((t, r) for t, r in state.recommendations
                        if not released.start <= t < until)
    target, recommendations = stabilize(history, target, now, config.scale_down_delay_s)
    if target > before:
        deciding = (f"scale-down to {before} held for {config.scale_down_delay_s:.0f} s "
                    f"(highest recent target {target})")
    elif released is not None and target < current:
        deciding = f"{deciding}; {released.reason}"
    stages.append(Stage("hold", target, released.reason if released else ""))

    limited = rate_limit(current, target, config)
    if limited != target:
        deciding = f"rate limit {current} -> {limited} (wanted {target})"
    target = limited
    stages.append(Stage("rate_limit", target, ""))

    busy = stable.in_system > 0 or held > 0 or _arrived(observed.scrapes, now, config)
    last_busy = now if busy else state.last_busy
    if last_busy is None and observed.current > 0:
        # A law that has just started (the operator restarted, a replay's first tick) has
        # seen no idle time yet: the clock starts now, not at "idle forever".
        last_busy = now
    target, zero_note = scale_to_zero(target, busy, last_busy, config, now)
    stages.append(Stage("scale_to_zero", target, zero_note))
    if zero_note:
        deciding = zero_note

    bounded = min(config.max_replicas, max(config.min_replicas, target))
    if bounded != target:
        deciding = f"bounds [{config.min_replicas}, {config.max_replicas}] (wanted {target})"
    target = bounded
    stages.append(Stage("bounds", target, ""))

    target, budget_note = budget_clamp(target, current, observed.warm_available,
                                       observed.free_gpus, config.gpus_per_replica)
    stages.append(Stage("budget", target, budget_note))
    if budget_note:
        deciding = budget_note

    # Between scheduled bursts the next is provisioned ahead: no standbys kept for them.
    warm = warm_standbys(held_peaks, target, speed, observed, config)

    verb = "scale up" if target > current else "scale down" if target < current else "hold"
    reason = f"{verb} {current} -> {target}: {deciding}; warm {warm}"
    if fb.note:
        reason += f"; {fb.note}"
    if estimate.infeasible > 0:
        longest = estimate.longest_feasible
        beyond = f" (prompts over ~{longest:.0f} tokens)" if longest else ""
        reason += (f"; {estimate.infeasible:.1%} of requests{beyond} cannot meet the SLO on "
                   f"any replica: reported, not scaled for")
    if observed.trigger is not None:
        reason += f" (alert {observed.trigger})"
    state = replace(state, recommendations=recommendations, last_busy=last_busy,
                    forecast=forecast, peaks=peaks, released=released)
    return Decision(target, warm, reason, state, tuple(stages), stable, in_panic,
                    estimate.infeasible, capacity)


def scheduled_burst(peaks: Peaks, now: float, warm_available: int, speed: float,
                    config: AutoscalerConfig) -> Schedule:
    """The recurrence's phase. Its lead is a warm start only when the standbys could hold the
    bursts' whole level (one replica short, the rest would be claimed for a burst that its
    cold start comes after), else a cold start. Not what the level adds to the replicas now:
    those started for the burst would turn the lead warm and the burst unscheduled."""
    timed = schedule(peaks, now, config.cold_start_s, config.stable_window_s)
    if (timed.recurrence is not None and warm_available > 0
            and warm_available >= replicas_at(timed.recurrence.level, speed)):
        timed = schedule(peaks, now, config.warm_start_s, config.stable_window_s)
    return timed


def feedback_margin(target: int, factor: float) -> int:
    """``target`` replicas divided by the SLO feedback's ``factor`` (at most multiplied by
    :data:`CORRECTION_LIMIT`), rounded up: a step below 1 adds at least one replica, so it
    changes the fleet whose attainment judges it (a margin on the model's speed changed only
    the SLO stage's count, which the burst memory's held level often exceeded)."""
    if factor >= 1.0 or target <= 0:
        return target
    return math.ceil(target / max(factor, 1 / CORRECTION_LIMIT) - 1e-9)


# ---- stage 9: warm standbys ----------------------------------------------------------------
def claim_standbys(peaks: Peaks, current: int, speed: float, warm_available: int,
                   bursting: bool, config: AutoscalerConfig) -> int:
    """The replicas to have when a burst begins (``bursting``: a rise or a backlog) and the
    burst memory kept warm standbys for it: the current ones plus every such standby that is
    free (0: no claim). A standby costs its GPU whether claimed or not, while claiming only
    what the first few seconds of the burst show (the backlog rule's projection) took the
    rest a decision later, another warm start of the burst's requests late."""
    if not bursting or warm_available <= 0 or config.warm_pool is not None:
        return 0
    kept = _memory_standbys(peaks, current, speed, config)
    return current + min(warm_available, kept) if kept > 0 else 0


def _memory_standbys(peaks: Peaks, desired: int, speed: float,
                     config: AutoscalerConfig) -> int:
    """Standbys the burst memory keeps beyond ``desired`` replicas: a short burst seen once,
    its level rounded as a held level is (:func:`replicas_at`), less the replicas held (a
    fraction of a replica beyond them that the hold would not add is no standby)."""
    held = desired * speed
    beyond = burst_standbys(peaks, held, config.quantile, config.cold_start_s,
                            config.burst_memory_s)
    return max(0, replicas_at(held + beyond, speed) - desired) if beyond > 0 else 0


def warm_standbys(peaks: Peaks, desired: int, speed: float, observed: Observed,
                  config: AutoscalerConfig) -> int:
    """Standbys: a fixed pool when configured, else the level of a burst shorter than a cold
    start seen once (:func:`~kubeplex.autoscaler.memory.burst_standbys`; at least
    ``prewarm``); within ``max_replicas`` and the GPUs left once the scale-up is placed."""
    if config.warm_pool is not None:
        wanted = config.warm_pool
    else:
        wanted = max(int(config.prewarm), _memory_standbys(peaks, desired, speed, config))
    wanted = min(wanted, max(0, config.max_replicas - desired))
    if observed.free_gpus is not None:  # GPUs for standbys once the scale-up is placed
        current = observed.current
        claimed = min(observed.warm_available, max(0, desired - current))
        cold = max(0, desired - current - claimed)
        kept = observed.warm_available - claimed
        spare = observed.free_gpus + (kept - cold) * config.gpus_per_replica
        wanted = min(wanted, max(0, spare // config.gpus_per_replica))
    return wanted
