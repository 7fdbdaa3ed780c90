"""The control law: ``decide(observed, config, state, now) -> Decision``.

Stages, in order (each a function below, tested alone):

1. **signals** (:func:`~kubeplex.autoscaler.signals.extract`) over the stable window and the
   short panic window; no data holds the current scale.
2. **capacity** (:func:`estimate_capacity`): a replica's prefill time and GPU work per request
   from the latency model at the measured token sizes, corrected by the service rate measured
   whenever the fleet ran saturated.
3. **slo** (:func:`slo_replicas`): the queueing model's fewest replicas for the TTFT percentile
   at the larger of the measured rate and the forecast one start-up ahead; plus a guard when
   the measured TTFT percentile exceeds the SLO although the model says it should not.
4. **queue** (:func:`queue_replicas`): waiting requests over ``target_queue_per_replica``
   (vLLM queues only when an engine is full, so this fires on saturation).
5. **credit** (:func:`warmup_credit`): when the queue rule asks for more, the replicas needed
   to drain the backlog projected to when a new replica would be ready, with the replicas
   already starting counted as capacity arriving at their expected ready time.
6. **panic** (:func:`panic`): the short window's demand at ``panic_threshold`` times the
   credited capacity enters panic; in panic the target never goes down; it ends one stable
   window after the last burst.
7. **stabilize** (:func:`stabilize`): scale-up at once, scale-down to the highest target of the
   last ``scale_down_delay_s`` (HPA-style).
8. **rate limit** (:func:`rate_limit`), **scale to zero** (:func:`scale_to_zero`), **bounds**,
   **budget** (:func:`budget_clamp`: never more replicas than the pool's free GPUs and warm
   standbys can place; the reason says so).
9. **warm standbys** (:func:`warm_standbys`): a Holt forecast's upper bound one cold start
   ahead, minus the replicas asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from kubeplex.autoscaler.alerts import REQUESTS_HELD_ALERT
from kubeplex.autoscaler.errors import AutoscalerConfigError
from kubeplex.autoscaler.forecast import HoltConfig, HoltState, holt_update
from kubeplex.autoscaler.queueing import ReplicaCapacity, replicas_for_slo
from kubeplex.autoscaler.signals import NoData, Scrape, Signals, extract
from kubeplex.placement.llm import LLMProfile

__all__ = [
    "AutoscalerConfig",
    "AutoscalerState",
    "Decision",
    "Observed",
    "Stage",
    "Starting",
    "budget_clamp",
    "decide",
    "estimate_capacity",
    "panic",
    "profile_capacity",
    "queue_replicas",
    "rate_limit",
    "scale_to_zero",
    "slo_replicas",
    "slo_status",
    "stabilize",
    "warm_standbys",
    "warmup_credit",
]

#: vLLM's default ``--max-num-seqs`` (concurrent sequences per engine) in V1.
VLLM_MAX_NUM_SEQS = 256
#: Weight of a new saturated measurement in the capacity correction (EWMA).
CORRECTION_WEIGHT = 0.5
#: The capacity correction stays within this factor of the latency model.
CORRECTION_LIMIT = 2.0
#: First-token observations needed before the measured TTFT percentile is trusted.
MIN_TTFT_OBSERVATIONS = 20
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
    #: (1.5: chosen on the benchmark traces, docs/benchmarks.md; 0 sizes for the forecast).
    headroom_z: float = 1.5

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
    #: Last time requests arrived or were in the system (scale to zero counts from here).
    last_busy: float | None = None
    forecast: HoltState = field(default_factory=HoltState)
    #: Measured / modelled saturation throughput (1.0 until the fleet has run saturated).
    capacity_correction: float = 1.0
    #: The ready count and since when it has not changed (measurements need a steady fleet).
    ready: int = 0
    ready_since: float | None = None


@dataclass(frozen=True)
class Stage:
    """One stage's output: the replica target after it and a note (empty: no change)."""

    name: str
    replicas: int
    note: str = ""


@dataclass(frozen=True)
class Decision:
    """The answer: replicas and warm standbys to have, why (one line), and the next state."""

    desired_replicas: int
    desired_warm: int
    reason: str
    state: AutoscalerState
    stages: tuple[Stage, ...] = ()
    signals: Signals | NoData | None = None
    in_panic: bool = False


# ---- stage 2: capacity ---------------------------------------------------------------------
def profile_capacity(profile: LLMProfile, prompt_tokens: float, output_tokens: float,
                     max_num_seqs: int = VLLM_MAX_NUM_SEQS) -> tuple[ReplicaCapacity, float]:
    """Capacity of one replica from the latency model; also its mean request latency (s).

    The operating batch is as many sequences as the KV cache holds at the mean context, at
    most ``max_num_seqs``; a request's work is its prefill plus its share of the batched
    decode steps.
    """
    prompt, output = max(1, round(prompt_tokens)), max(1, round(output_tokens))
    context = prompt + output
    batch = max(1, min(max_num_seqs, profile.kv_capacity_tokens() // context))
    step = profile.decode_step_seconds(batch, prompt + output // 2)
    prefill = profile.prefill_seconds(prompt)
    work = prefill + (output - 1) * step / batch / profile.pipeline_depth
    latency = prefill + (output - 1) * step
    return ReplicaCapacity(prefill_s=prefill, work_s=work, source="profile"), latency


def _modelled(config: AutoscalerConfig, signals: Signals | None) -> tuple[ReplicaCapacity, float]:
    if config.profile is None:
        if config.prefill_s_hint is None or config.work_s_hint is None:
            raise AutoscalerConfigError("give a latency profile or both capacity hints")
        hint = ReplicaCapacity(config.prefill_s_hint, config.work_s_hint, "hint")
        return hint, config.work_s_hint * config.max_num_seqs  # a full batch
    prompt = (signals.mean_prompt_tokens if signals else None) or config.mean_prompt_tokens
    output = (signals.mean_output_tokens if signals else None) or config.mean_output_tokens
    return profile_capacity(config.profile, prompt, output, config.max_num_seqs)


def estimate_capacity(signals: Signals | None, config: AutoscalerConfig, ready: int,
                      correction: float, steady: bool = True
                      ) -> tuple[ReplicaCapacity, float, float]:
    """Per-replica capacity, the mean request latency and the updated correction factor.

    When every scrape of the window had requests waiting and the ready count did not change
    (``steady``), the fleet was saturated and its completion rate per ready replica *is* the
    service rate: the ratio to the model's folds into ``correction`` (EWMA, clamped to
    1/2..2x), which scales the model's work per request.
    """
    model, latency = _modelled(config, signals)
    if (signals is not None and signals.saturated and steady and ready > 0
            and signals.completion_rate > 0):
        measured = signals.completion_rate / ready
        ratio = min(CORRECTION_LIMIT, max(1 / CORRECTION_LIMIT, measured * model.work_s))
        correction = (1 - CORRECTION_WEIGHT) * correction + CORRECTION_WEIGHT * ratio
    if correction == 1.0:
        return model, latency, correction
    source = "measured" if model.source == "profile" else model.source
    return replace(model, work_s=model.work_s / correction, source=source), latency, correction


# ---- stage 3: SLO (queueing model) ---------------------------------------------------------
def slo_replicas(arrival_rate: float, capacity: ReplicaCapacity, config: AutoscalerConfig,
                 arrival_cv2: float) -> int:
    """Fewest replicas meeting the TTFT percentile (the most that could help if none can)."""
    found = replicas_for_slo(arrival_rate, capacity, config.slo_ttft_s, config.quantile,
                             config.max_utilization, arrival_cv2, config.service_cv2)
    if found is None:  # the prefill alone misses the SLO: more replicas only keep queues short
        return max(1, math.ceil(arrival_rate * capacity.work_s / config.max_utilization))
    return found


# ---- stage 4: queue target -----------------------------------------------------------------
def target_per_replica(config: AutoscalerConfig, capacity: ReplicaCapacity,
                       latency_s: float) -> float:
    """Requests in the system per replica at the planned utilization (Little's law).

    The concurrency target a KPA/HPA-style scaler would use; the baselines take it.
    """
    return max(1.0, config.max_utilization * latency_s / capacity.work_s)


def queue_replicas(waiting: float, target: float) -> int:
    """Replicas so that each has at most ``target`` requests waiting."""
    return math.ceil(waiting / target) if waiting > 0 else 0


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
def panic(burst_target: int, credited: int, target: int, state: AutoscalerState,
          config: AutoscalerConfig, now: float) -> tuple[int, AutoscalerState, bool]:
    """Knative-style panic on the short window's target, against credited capacity.

    Enter (or extend) when ``burst_target >= panic_threshold * max(1, credited)``; while in
    panic the target is at least the burst target (even below the threshold) and never below
    the highest target since panic began.
    """
    bursting = burst_target >= config.panic_threshold * max(1, credited) and burst_target > 0
    in_panic = state.panic_until is not None and now < state.panic_until
    if bursting:
        until = now + config.stable_window_s
        floor = max(state.panic_floor if in_panic else 0, burst_target, target)
        return floor, replace(state, panic_until=until, panic_floor=floor), True
    if in_panic:
        floor = max(state.panic_floor, target, burst_target)
        return floor, replace(state, panic_floor=floor), True
    return target, replace(state, panic_until=None, panic_floor=0), False


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


# ---- stage 9: warm standbys ----------------------------------------------------------------
def warm_standbys(forecast: HoltState, desired: int, capacity: ReplicaCapacity,
                  config: AutoscalerConfig, arrival_cv2: float, spare_gpus: int | None) -> int:
    """Standbys covering the forecast's upper bound one cold start ahead, beyond ``desired``."""
    if config.warm_pool is not None:
        wanted = config.warm_pool
    else:
        peak = forecast.upper(config.cold_start_s, config.forecast)
        wanted = max(int(config.prewarm),
                     slo_replicas(peak, capacity, config, arrival_cv2) - desired)
    wanted = min(wanted, max(0, config.max_replicas - desired))
    if spare_gpus is not None:
        wanted = min(wanted, max(0, spare_gpus // config.gpus_per_replica))
    return wanted


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
    return Decision(target, warm, reason, state, (Stage("hold", target, note),), why)


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
    burst = extract(observed.scrapes, now, config.panic_window_s, config.percentile,
                    config.stale_after_s)
    burst_rate = burst.arrival_rate if isinstance(burst, Signals) else stable.arrival_rate
    stages: list[Stage] = []
    current = observed.current

    ready_since = state.ready_since
    if observed.ready != state.ready or ready_since is None:
        ready_since = now
        state = replace(state, ready=observed.ready, ready_since=now)
    steady = now - ready_since >= config.stable_window_s
    capacity, _, correction = estimate_capacity(stable, config, observed.ready,
                                                      state.capacity_correction, steady)
    forecast = holt_update(state.forecast, burst_rate, now, config.forecast)
    cv2 = config.arrival_cv2 if config.arrival_cv2 is not None else max(
        1.0, stable.arrival_cv2 or 1.0)
    start = config.warm_start_s if observed.warm_available > 0 else config.cold_start_s
    rate = max(stable.arrival_rate,
               forecast.forecast(start) + config.headroom_z * 1.25 * forecast.error)
    target = slo_replicas(rate, capacity, config, cv2)
    note = (f"SLO p{config.percentile:g} TTFT {config.slo_ttft_s:g} s at {rate:.2f} req/s "
            f"needs {target} ({capacity.service_rate:.2f} req/s/replica, {capacity.source})")
    measured = stable.ttft_quantile
    recent = burst.ttft_quantile if isinstance(burst, Signals) else None
    if (measured is not None and measured > config.slo_ttft_s
            and recent is not None and recent > config.slo_ttft_s
            and stable.ttft_count >= MIN_TTFT_OBSERVATIONS and not observed.starting
            and now - ready_since >= config.panic_window_s and target <= observed.ready):
        target = observed.ready + 1
        note = (f"measured p{config.percentile:g} TTFT {measured:.2f} s > SLO "
                f"{config.slo_ttft_s:g} s: one more than {observed.ready} ready")
    stages.append(Stage("slo", target, note))
    deciding = note

    in_system = stable.in_system + observed.held_requests
    waiting = stable.waiting + observed.held_requests
    per_replica = config.target_queue_per_replica
    queue = queue_replicas(waiting, per_replica)
    credited = warmup_credit(queue, observed, waiting, max(rate, burst_rate), capacity, config,
                             now)
    stages.append(Stage("queue", queue, f"{waiting:.0f} waiting / {per_replica:g}"))
    credit_note = ("" if queue <= current else
                   f"{credited} drain the backlog, {len(observed.starting)} starting credited")
    stages.append(Stage("credit", credited, credit_note))
    if credited > target:
        target = credited
        deciding = (f"queue {waiting:.0f} waiting over {per_replica:g} per replica: "
                    f"{credit_note}")

    burst_target = target
    if isinstance(burst, Signals):
        burst_queue = queue_replicas(burst.waiting + observed.held_requests, per_replica)
        burst_target = max(slo_replicas(burst.arrival_rate, capacity, config, cv2),
                           warmup_credit(burst_queue, observed,
                                         burst.waiting + observed.held_requests,
                                         burst.arrival_rate, capacity, config, now))
    before = target
    target, state, in_panic = panic(burst_target, current, target, state, config, now)
    stages.append(Stage("panic", target, "in panic" if in_panic else ""))
    if in_panic and target > before:
        deciding = f"panic: burst {burst_rate:.2f} req/s needs {burst_target}"

    before = target
    history = state.recommendations or ((now, current),)
    target, recommendations = stabilize(history, target, now,
                                        config.scale_down_delay_s)
    stages.append(Stage("stabilize", target, ""))
    if target > before:
        deciding = (f"scale-down to {before} held for {config.scale_down_delay_s:.0f} s "
                    f"(highest recent target {target})")

    limited = rate_limit(current, target, config)
    if limited != target:
        deciding = f"rate limit {current} -> {limited} (wanted {target})"
    target = limited
    stages.append(Stage("rate_limit", target, ""))

    busy = in_system > 0 or burst_rate > 0 or observed.held_requests > 0
    last_busy = now if busy else state.last_busy
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

    spare = None
    if observed.free_gpus is not None:  # GPUs for standbys once the scale-up is placed
        claimed = min(observed.warm_available, max(0, target - current))
        cold = max(0, target - current - claimed)
        kept = observed.warm_available - claimed
        spare = observed.free_gpus + (kept - cold) * config.gpus_per_replica
    warm = warm_standbys(forecast, target, capacity, config, cv2, spare)

    verb = "scale up" if target > current else "scale down" if target < current else "hold"
    reason = f"{verb} {current} -> {target}: {deciding}; warm {warm}"
    if observed.trigger is not None:
        reason += f" (alert {observed.trigger})"
    state = replace(state, recommendations=recommendations, last_busy=last_busy,
                    forecast=forecast, capacity_correction=correction)
    return Decision(target, warm, reason, state, tuple(stages), stable, in_panic)
