"""A simulated fleet of continuous-batching replicas, on its own virtual clock.

Each replica behaves like one vLLM engine as the latency model
(:mod:`kubeplex.placement.llm`) predicts it:

* requests routed to it wait in its queue until a slot (``max_num_seqs``) and KV cache room
  for the whole request (prompt + output tokens) are free, then join the prefill queue;
* prefills run one at a time and take priority over decoding (vLLM's scheduler order); the
  first token, hence the TTFT, comes at the end of the prefill; a request's prefill time
  (``vllm:request_prefill_time_seconds``, counted when it finishes) is its own prefill;
* decoding advances every running sequence one token per step; a step with ``b`` sequences
  takes ``decode_step_seconds(b, mean context)``; a sequence finishes after its output tokens.

The gateway routes each arrival to the ready replica with the fewest requests still waiting for
their first token (ties: the fewest outstanding), like a queue-aware gateway (llm-d's queue
scorer), and holds requests while no replica is ready. Plain least-outstanding routing would
flood a freshly ready replica (zero outstanding) with every arrival while its prefills run one
at a time. Scale-up claims a warm standby (ready after the warm
start) before creating a cold replica (ready after the cold start); scale-down cancels starting
replicas first, then drains the least loaded ready ones (no new requests; released when empty).
Every replica and standby holds ``gpus`` GPUs from creation to release: that is the GPU-hours.

Each tick every ready engine is scraped, one series set per engine as Prometheus would hold
them (its counters start when it does and vanish with it), and the policy is asked for a
target.

``FleetConfig.speed`` runs every replica at that multiple of its latency profile's speed
(0.7: every prefill and decode step takes 1 / 0.7 as long). The policy is not told: its
config keeps the profile it plans with, so a benchmark tests what a wrong model costs.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kubeplex.autoscaler.errors import AutoscalerConfigError
from kubeplex.autoscaler.metrics import (
    COMPLETIONS,
    GENERATION_TOKENS,
    KV_USAGE,
    PREFILL_TIME_COUNT,
    PREFILL_TIME_SUM,
    PROMPT_HISTOGRAM,
    PROMPT_TOKENS,
    RUNNING,
    TTFT,
    TTFT_BUCKETS,
    WAITING,
    Buckets,
    Scrape,
    prompt_token_buckets,
    with_held,
)
from kubeplex.autoscaler.policy import Observed, Starting
from kubeplex.autoscaler.trace import FloatArray, Trace
from kubeplex.placement.llm import LLMProfile

__all__ = ["FleetConfig", "Policy", "SimResult", "Timeline", "simulate"]

#: Engines are scraped as instances named this plus the replica's number.
ENGINE_PREFIX = "engine-"
#: After the last arrival, the simulation runs until every request finished, at most this long.
DRAIN_LIMIT_S = 3600.0


class Policy(Protocol):
    """A scaling policy the fleet asks every ``interval_s`` seconds."""

    name: str
    interval_s: float

    def evaluate(self, observed: Observed, now: float) -> tuple[int, int]:
        """Target (replicas, warm standbys) for what the fleet shows at ``now``."""
        ...


@dataclass(frozen=True)
class FleetConfig:
    """The simulated hardware and timings."""

    profile: LLMProfile
    cold_start_s: float = 60.0
    warm_start_s: float = 2.0
    max_num_seqs: int = 256
    scrape_interval_s: float = 2.0
    history_s: float = 120.0
    initial_replicas: int = 1
    gpus_per_replica: int = 1
    #: Multiple of the profile's speed the replicas really run at (unknown to the policy).
    speed: float = 1.0

    def __post_init__(self) -> None:
        if not self.speed > 0 or not math.isfinite(self.speed):
            raise AutoscalerConfigError(f"fleet speed must be a positive number, got "
                                        f"{self.speed}")
        if self.cold_start_s < 0 or self.warm_start_s < 0:
            raise AutoscalerConfigError("start times must be >= 0 s")
        if self.scrape_interval_s <= 0:
            raise AutoscalerConfigError("scrape interval must be > 0 s")


@dataclass
class Timeline:
    """Per-tick series for plots: time, arrival rate, replicas (ready / all), warm, TTFT pXX."""

    time: list[float] = field(default_factory=list)
    arrival_rate: list[float] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    warm: list[int] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SimResult:
    """What one replay measured."""

    policy: str
    requests: int
    attainment: float
    ttft_percentile: float
    gpu_hours: float
    scale_events: int
    max_replicas: int
    duration_s: float
    timeline: Timeline
    ttft: FloatArray


class _Replica:
    """One engine: its queue, prefill server and decode batch."""

    __slots__ = ("completions", "decode_ends", "decode_heap", "decode_outputs",
                 "decode_rate_t", "draining", "gen", "generated", "generated_seen", "ident",
                 "kv_used", "prefill_busy", "prefill_queue", "prefill_seconds",
                 "prompt_buckets", "prompt_tokens", "ready_at", "started", "ttft_buckets", "v",
                 "waiting", "warm")

    def __init__(self, ident: int, started: float, ready_at: float, warm: bool) -> None:
        self.ident = ident
        self.started = started
        self.ready_at = ready_at
        self.warm = warm
        self.draining = False
        self.waiting: deque[int] = deque()
        self.prefill_queue: deque[int] = deque()
        self.prefill_busy = False
        self.decode_heap: list[tuple[float, int]] = []
        # sums over the decoding sequences of their output lengths and their ``v`` at the end
        # (the tokens they have made so far follow: vLLM counts tokens as they are made)
        self.decode_outputs = 0.0
        self.decode_ends = 0.0
        self.v = 0.0  # tokens every decoding sequence has gained so far (virtual clock)
        self.decode_rate_t = 0.0  # time ``v`` was last advanced
        self.kv_used = 0
        self.gen = 0  # bumps whenever a scheduled decode event goes stale
        # this engine's cumulative metrics (vLLM's counters and histograms)
        self.completions = 0.0
        self.prefill_seconds = 0.0
        self.prompt_tokens = 0.0
        self.generated = 0.0  # by the requests that finished
        self.generated_seen = 0.0  # the counter's last scraped value (it never goes down)
        self.ttft_buckets = [0.0] * (len(TTFT_BUCKETS) + 1)
        self.prompt_buckets: list[float] = []

    @property
    def admitted(self) -> int:
        """Admitted requests (vLLM's running): queued for or in their prefill, or decoding
        (the one in its prefill is the head of ``prefill_queue``)."""
        return len(self.prefill_queue) + len(self.decode_heap)

    @property
    def unstarted(self) -> int:
        """Requests that have no first token yet (the queue a new request waits behind)."""
        return len(self.waiting) + len(self.prefill_queue)

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + self.admitted


class _Fleet:
    def __init__(self, trace: Trace, config: FleetConfig, quantile: float) -> None:
        self.trace, self.config, self.quantile = trace, config, quantile
        profile = config.profile
        self.kv_capacity = profile.kv_capacity_tokens()
        mean_context = int(trace.prompt_tokens.mean() + trace.output_tokens.mean() / 2)
        self.step_s = [profile.decode_step_seconds(b, mean_context) / config.speed
                       for b in range(config.max_num_seqs + 1)]
        self.prefill_cache: dict[int, float] = {}
        n = len(trace)
        self.ttft = np.full(n, math.inf)
        self.prefill_time = np.zeros(n)  # each request's own prefill duration
        self.replicas: dict[int, _Replica] = {}
        self.standbys: list[float] = []  # ready_at of each warm standby (warming or available)
        self.held: deque[int] = deque()
        self.events: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
        self.next_id = 0
        self.gpu_seconds = 0.0
        self.gpu_clock = 0.0
        self.scale_events = 0
        self.max_replicas = 0
        self.prompt_bounds = prompt_token_buckets(profile.model.max_model_len)
        self.scrapes: deque[Scrape] = deque()
        self.done = 0
        self.tick_ttfts: list[float] = []

    # ---- time and accounting ---------------------------------------------------------------
    def push(self, t: float, kind: int, rid: int = -1, gen: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, rid, gen))

    def gpus_held(self) -> int:
        return (len(self.replicas) + len(self.standbys)) * self.config.gpus_per_replica

    def account(self, now: float) -> None:
        self.gpu_seconds += self.gpus_held() * (now - self.gpu_clock)
        self.gpu_clock = now

    def prefill_s(self, prompt: int) -> float:
        cached = self.prefill_cache.get(prompt)
        if cached is None:
            cached = self.prefill_cache[prompt] = (self.config.profile.prefill_seconds(prompt)
                                                   / self.config.speed)
        return cached

    # ---- one replica -----------------------------------------------------------------------
    def v_at(self, r: _Replica, now: float) -> float:
        """``r``'s virtual clock at ``now``: the decode batch gains a token per step while no
        prefill holds the engine."""
        if not r.prefill_busy and r.decode_heap:
            return r.v + (now - r.decode_rate_t) / self.step_s[min(len(r.decode_heap),
                                                                   self.config.max_num_seqs)]
        return r.v

    def advance(self, r: _Replica, now: float) -> None:
        r.v = self.v_at(r, now)
        r.decode_rate_t = now

    def schedule_decode(self, r: _Replica) -> None:
        r.gen += 1
        if r.prefill_busy or not r.decode_heap:
            return
        step = self.step_s[min(len(r.decode_heap), self.config.max_num_seqs)]
        finish_v = r.decode_heap[0][0]
        self.push(r.decode_rate_t + max(0.0, finish_v - r.v) * step, DECODE, r.ident, r.gen)

    def admit(self, r: _Replica, now: float) -> None:
        trace = self.trace
        while r.waiting and r.admitted < self.config.max_num_seqs:
            req = r.waiting[0]
            need = int(trace.prompt_tokens[req] + trace.output_tokens[req])
            if r.kv_used + need > self.kv_capacity and r.admitted > 0:
                break
            r.waiting.popleft()
            r.kv_used += need
            r.prefill_queue.append(req)
        if not r.prefill_busy and r.prefill_queue:
            self.start_prefill(r, now)

    def start_prefill(self, r: _Replica, now: float) -> None:
        self.advance(r, now)
        r.prefill_busy = True
        req = r.prefill_queue[0]
        seconds = self.prefill_s(int(self.trace.prompt_tokens[req]))
        self.prefill_time[req] = seconds
        self.push(now + seconds, PREFILL, r.ident)
        self.schedule_decode(r)

    def end_prefill(self, r: _Replica, now: float) -> None:
        req = r.prefill_queue.popleft()
        r.prefill_busy = False
        r.decode_rate_t = now
        ttft = now - float(self.trace.arrival_s[req])
        self.ttft[req] = ttft
        self.tick_ttfts.append(ttft)
        r.ttft_buckets[bisect_left(TTFT_BUCKETS, ttft)] += 1
        r.prompt_tokens += float(self.trace.prompt_tokens[req])
        end = r.v + float(self.trace.output_tokens[req] - 1)
        heapq.heappush(r.decode_heap, (end, req))
        r.decode_outputs += float(self.trace.output_tokens[req])
        r.decode_ends += end
        if r.prefill_queue:
            self.start_prefill(r, now)
        else:
            self.schedule_decode(r)

    def end_decode(self, r: _Replica, now: float) -> None:
        self.advance(r, now)
        while r.decode_heap and r.decode_heap[0][0] <= r.v + 1e-9:
            end, req = heapq.heappop(r.decode_heap)
            r.decode_outputs -= float(self.trace.output_tokens[req])
            r.decode_ends -= end
            r.completions += 1
            r.prefill_seconds += float(self.prefill_time[req])
            self.done += 1
            r.generated += float(self.trace.output_tokens[req])
            prompt = float(self.trace.prompt_tokens[req])
            r.prompt_buckets[bisect_left(self.prompt_bounds, prompt)] += 1
            r.kv_used -= int(self.trace.prompt_tokens[req] + self.trace.output_tokens[req])
        self.admit(r, now)
        self.schedule_decode(r)
        if r.draining and r.outstanding == 0:
            self.account(now)
            del self.replicas[r.ident]

    # ---- gateway ---------------------------------------------------------------------------
    def routable(self, now: float) -> list[_Replica]:
        return [r for r in self.replicas.values() if r.ready_at <= now and not r.draining]

    def route(self, req: int, now: float) -> None:
        targets = self.routable(now)
        if not targets:
            self.held.append(req)
            return
        best = min(targets, key=lambda r: (r.unstarted, r.outstanding))
        best.waiting.append(req)
        self.admit(best, now)

    def on_ready(self, now: float) -> None:
        while self.held and self.routable(now):
            self.route(self.held.popleft(), now)

    # ---- scaling ---------------------------------------------------------------------------
    def active(self) -> list[_Replica]:
        return [r for r in self.replicas.values() if not r.draining]

    def scale(self, target: int, warm_target: int, now: float) -> None:
        self.account(now)
        active = self.active()
        if target != len(active):
            self.scale_events += 1
        for _ in range(target - len(active)):
            available = [i for i, t in enumerate(self.standbys) if t <= now]
            warm = bool(available)
            if warm:
                self.standbys.pop(available[0])
            delay = self.config.warm_start_s if warm else self.config.cold_start_s
            self.add_replica(now, now + delay, warm)
        if target < len(active):
            starting = sorted((r for r in active if r.ready_at > now), key=lambda r: -r.started)
            ready = sorted((r for r in active if r.ready_at <= now), key=lambda r: r.outstanding)
            for r in (starting + ready)[: len(active) - target]:
                if r.ready_at > now or r.outstanding == 0:
                    del self.replicas[r.ident]
                else:
                    r.draining = True
        while len(self.standbys) < warm_target:
            self.standbys.append(now + self.config.cold_start_s)
        if len(self.standbys) > warm_target:
            self.standbys.sort()  # drop the ones still warming first
            self.standbys = self.standbys[: warm_target]
        self.max_replicas = max(self.max_replicas, len(self.active()))

    def add_replica(self, now: float, ready_at: float, warm: bool) -> None:
        r = _Replica(self.next_id, now, ready_at, warm)
        r.prompt_buckets = [0.0] * (len(self.prompt_bounds) + 1)
        self.next_id += 1
        self.replicas[r.ident] = r
        self.push(ready_at, READY, r.ident)

    # ---- observation -----------------------------------------------------------------------
    def scrape(self, now: float) -> Scrape:
        engines = [r for r in self.replicas.values() if r.ready_at <= now]
        names = [f"{ENGINE_PREFIX}{r.ident}" for r in engines]
        values: dict[str, dict[str, float]] = {
            COMPLETIONS: {n: r.completions for n, r in zip(names, engines, strict=True)},
            PROMPT_TOKENS: {n: r.prompt_tokens for n, r in zip(names, engines, strict=True)},
            GENERATION_TOKENS: {n: self.generation_tokens(r, now)
                                for n, r in zip(names, engines, strict=True)},
            WAITING: {n: float(len(r.waiting)) for n, r in zip(names, engines, strict=True)},
            RUNNING: {n: float(r.admitted) for n, r in zip(names, engines, strict=True)},
            KV_USAGE: {n: r.kv_used / self.kv_capacity
                       for n, r in zip(names, engines, strict=True)},
            PREFILL_TIME_SUM: {n: r.prefill_seconds for n, r in zip(names, engines, strict=True)},
            PREFILL_TIME_COUNT: {n: r.completions for n, r in zip(names, engines, strict=True)},
        }
        ttft = {n: _cumulative(TTFT_BUCKETS, r.ttft_buckets)
                for n, r in zip(names, engines, strict=True)}
        prompts = {n: _cumulative(self.prompt_bounds, r.prompt_buckets)
                   for n, r in zip(names, engines, strict=True)}
        # the gateway's held requests, as the control layer stamps them
        return with_held(Scrape(now, values, {TTFT: ttft, PROMPT_HISTOGRAM: prompts}),
                         len(self.held))

    def generation_tokens(self, r: _Replica, now: float) -> float:
        """vLLM's generation-token counter: the finished requests' tokens and those the
        decoding ones have made so far (one at the prefill's end, one per step since)."""
        made = r.decode_outputs - r.decode_ends + len(r.decode_heap) * self.v_at(r, now)
        r.generated_seen = max(r.generated_seen, r.generated + made)
        return r.generated_seen

    def observed(self, now: float) -> Observed:
        active = self.active()
        starting = tuple(Starting(r.started, r.warm) for r in active if r.ready_at > now)
        return Observed(
            scrapes=tuple(self.scrapes),
            ready=len(active) - len(starting),
            starting=starting,
            warm_available=sum(1 for t in self.standbys if t <= now),
            held_requests=len(self.held),
        )


def _cumulative(bounds: tuple[float, ...], counts: list[float]) -> Buckets:
    out, total = [], 0.0
    for bound, count in zip((*bounds, math.inf), counts, strict=True):
        total += count
        out.append((bound, total))
    return tuple(out)


ARRIVAL, PREFILL, DECODE, READY, TICK = range(5)


def simulate(trace: Trace, policy: Policy, config: FleetConfig, slo_ttft_s: float,
             percentile: float, progress: Callable[[float], None] | None = None) -> SimResult:
    """Replay ``trace`` against ``policy``; ``progress`` gets the fraction of the trace done."""
    fleet = _Fleet(trace, config, percentile / 100.0)
    for _ in range(config.initial_replicas):
        fleet.add_replica(0.0, 0.0, warm=False)
    timeline = Timeline()
    end_of_trace = trace.duration_s
    n = len(trace)
    next_arrival = 0
    fleet.push(0.0, TICK)
    next_decision = 0.0
    tick_start_arrivals = 0
    last_progress = -1.0
    while fleet.events or next_arrival < n:
        arrival_t = float(trace.arrival_s[next_arrival]) if next_arrival < n else math.inf
        if fleet.events and fleet.events[0][0] <= arrival_t:
            now, _, kind, rid, gen = heapq.heappop(fleet.events)
        else:
            now, kind, rid, gen = arrival_t, ARRIVAL, next_arrival, 0
            next_arrival += 1
        if kind == ARRIVAL:
            fleet.route(rid, now)
        elif kind == TICK:
            done_arrivals = next_arrival - tick_start_arrivals
            tick_start_arrivals = next_arrival
            fleet.scrapes.append(fleet.scrape(now))
            while fleet.scrapes and fleet.scrapes[0].time < now - config.history_s:
                fleet.scrapes.popleft()
            if now >= next_decision:
                replicas, warm = policy.evaluate(fleet.observed(now), now)
                fleet.scale(replicas, warm, now)
                next_decision = now + policy.interval_s
            _record(timeline, fleet, now, done_arrivals, config.scrape_interval_s)
            finished = next_arrival >= n and fleet.done >= n
            if not finished and now < end_of_trace + DRAIN_LIMIT_S:
                fleet.push(now + config.scrape_interval_s, TICK)
            if progress is not None and now - last_progress >= 60:
                progress(min(1.0, now / end_of_trace) if end_of_trace > 0 else 1.0)
                last_progress = now
            if finished or now >= end_of_trace + DRAIN_LIMIT_S:
                break
        else:
            replica = fleet.replicas.get(rid)
            if replica is None:
                continue
            if kind == PREFILL:
                fleet.end_prefill(replica, now)
            elif kind == DECODE and gen == replica.gen:
                fleet.end_decode(replica, now)
            elif kind == READY:
                replica.decode_rate_t = now
                fleet.on_ready(now)
    fleet.account(fleet.gpu_clock if not timeline.time else timeline.time[-1])
    if progress is not None:
        progress(1.0)
    ttft = fleet.ttft
    finite = ttft[np.isfinite(ttft)]
    within = float(np.count_nonzero(ttft <= slo_ttft_s)) / n
    pct = float(np.percentile(ttft, percentile)) if finite.size == n else math.inf
    return SimResult(policy=policy.name, requests=n, attainment=within, ttft_percentile=pct,
                     gpu_hours=fleet.gpu_seconds / 3600.0, scale_events=fleet.scale_events,
                     max_replicas=fleet.max_replicas, duration_s=timeline.time[-1] if
                     timeline.time else 0.0, timeline=timeline, ttft=ttft)


def _record(timeline: Timeline, fleet: _Fleet, now: float, arrivals: int,
            tick_s: float) -> None:
    active = fleet.active()
    timeline.time.append(now)
    timeline.arrival_rate.append(arrivals / tick_s)
    timeline.ready.append(sum(1 for r in active if r.ready_at <= now))
    timeline.replicas.append(len(active))
    timeline.warm.append(len(fleet.standbys))
    ttfts = fleet.tick_ttfts
    timeline.ttft.append(float(np.percentile(ttfts, fleet.quantile * 100)) if ttfts
                         else math.nan)
    fleet.tick_ttfts = []
