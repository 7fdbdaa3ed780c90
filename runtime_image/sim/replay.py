"""Replay a request trace through N simulated replicas behind the real routing code (pure).

``kubeplex simulate routing`` runs this. Each replica is the sim engine's own scheduler
(:class:`~kubeplex.runtime.sim.scheduler.Scheduler`: continuous batching, KV capacity of the
replica's memory share, vLLM's prefix cache), driven in simulated time by a discrete-event
loop instead of the sim server's real-time one; the router in front is
:class:`kubeplex.runtime.routing.Router`, the gateway's. By default the router is also fed
each replica's KV events and queue (:mod:`kubeplex.runtime.kv_events`), as an engine would
publish them; with ``kv_events=False`` it sees only what the gateway sees (requests in flight,
what it sent where, when first tokens came back).

Time to first token is counted from arrival, as vLLM's histogram does (queueing included).
:func:`shared_cache_hit_rate` is the reference: the hit rate of one LRU prefix cache as large
as all replicas' KV caches together, fed every request in arrival order, with no space taken
by running requests: what perfect routing to a perfectly shared cache would reach.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kubeplex.runtime.prefix import PromptBlocks
from kubeplex.runtime.routing import Policy, Request, Router, Ticket
from kubeplex.runtime.sim.prefix_cache import KVCache
from kubeplex.runtime.sim.scheduler import LatencyModel, Scheduler, SimRequest, StepResult

__all__ = ["FIRST_OUTPUT_SPACING_S", "ReplayResult", "TraceRequest", "replay",
           "shared_cache_hit_rate"]

#: The first outputs of one engine step reach the router this far apart, one after another,
#: as a gateway reads them off its connections (tens of microseconds apart on one event loop),
#: not at one instant: a router that divides by the time between them must survive that.
FIRST_OUTPUT_SPACING_S = 1e-5


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: arrival (s from the start), token counts, prompt blocks
    (``blocks.hashes`` may include the prompt's last, partly filled block: it is never
    cached)."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    blocks: PromptBlocks

    @property
    def prompt_blocks(self) -> int:
        """Blocks the prompt spans, the last one possibly partial (the hit rate's unit)."""
        return math.ceil(self.prompt_tokens / self.blocks.block_size)


@dataclass(frozen=True)
class ReplayResult:
    """What one replay measured. ``ttft_s[k]`` and ``replica[k]`` belong to the k-th served
    request (arrival order); ``timeline`` samples the requests in flight per replica."""

    policy: str
    replicas: int
    arrival_s: tuple[float, ...]
    ttft_s: tuple[float, ...]
    replica: tuple[int, ...]
    prompt_blocks: int
    hit_blocks: int
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int
    duration_s: float
    rejected: int
    causes: dict[str, int]
    timeline: tuple[tuple[float, tuple[int, ...]], ...] = field(repr=False)

    @property
    def requests_per_replica(self) -> list[int]:
        counts = Counter(self.replica)
        return [counts.get(i, 0) for i in range(self.replicas)]

    @property
    def prefix_hit_rate(self) -> float:
        """Fraction of prompt blocks served from a replica's cache."""
        return self.hit_blocks / self.prompt_blocks if self.prompt_blocks else 0.0

    def ttft_percentile(self, q: float) -> float:
        """TTFT at percentile ``q`` (0-100) over served requests (nearest rank)."""
        if not self.ttft_s:
            return math.nan
        ordered = sorted(self.ttft_s)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]

    @property
    def throughput_tokens_s(self) -> float:
        """Generated tokens per second from the first arrival to the last answer."""
        return self.generated_tokens / self.duration_s if self.duration_s > 0 else 0.0


class _Fleet:
    """The replicas' schedulers and their busy lanes, stepped in simulated time; with
    ``router`` set, every replica reports its KV events and queue to it after every change
    (an engine's event stream, with no delay)."""

    def __init__(self, make: Callable[[], Scheduler], replicas: int,
                 router: Router | None) -> None:
        self.schedulers = [make() for _ in range(replicas)]
        self.busy = [set[int]() for _ in range(replicas)]
        self.events: list[tuple[float, int, int, StepResult]] = []
        self.router = router
        self._seq = 0

    def start_free_lanes(self, replica: int, now: float) -> None:
        scheduler = self.schedulers[replica]
        for lane in range(len(scheduler.lanes)):
            if lane in self.busy[replica]:
                continue
            result = scheduler.step(lane, now)
            if result is not None:
                self.busy[replica].add(lane)
                self._seq += 1
                heapq.heappush(self.events, (result.ends_at, self._seq, replica, result))
        if self.router is not None:
            self.router.observe(replica, scheduler.kv.take_events(), scheduler.load(now))


def replay(requests: Sequence[TraceRequest], latency: LatencyModel, *, replicas: int,
           policy: Policy | str, kv_capacity_tokens: int, max_model_len: int,
           max_num_seqs: int = 256, lanes: int = 1, sample_s: float = 1.0,
           kv_events: bool = True, max_batched_tokens: int | None = None,
           progress: Callable[[float], None] | None = None) -> ReplayResult:
    """Replay ``requests`` (arrivals ascending) through ``replicas`` sim replicas behind the
    ``policy`` router. A request longer than ``max_model_len`` or the KV capacity is refused
    (counted in ``rejected``), as vLLM refuses it. With ``kv_events`` the router is fed the
    replicas' KV events and queues (:mod:`kubeplex.runtime.kv_events`); without, it knows only
    what it sent and when first tokens came back (the gateway's view today).
    ``max_batched_tokens``: each replica's per-step token budget (chunked prefill, see
    :mod:`kubeplex.runtime.sim.scheduler`; None: every prompt prefilled whole)."""
    router = Router(policy)
    for i in range(replicas):
        router.add(i, kv_capacity_tokens)
    fleet = _Fleet(lambda: Scheduler(latency, kv_capacity_tokens, max_num_seqs, lanes,
                                     publish_events=kv_events,
                                     max_batched_tokens=max_batched_tokens),
                   replicas, router if kv_events else None)
    served: dict[SimRequest, tuple[int, Ticket]] = {}  # -> (served index, router ticket)
    arrival: list[float] = []
    ttft: list[float] = []
    where: list[int] = []
    causes: Counter[str] = Counter()
    timeline: list[tuple[float, tuple[int, ...]]] = []
    totals = Counter[str]()
    rejected = 0
    next_sample = requests[0].arrival_s if requests else 0.0
    last_event = 0.0
    pending = 0
    report_every = max(1, len(requests) // 200)
    while pending < len(requests) or fleet.events:
        next_arrival = requests[pending].arrival_s if pending < len(requests) else math.inf
        if fleet.events and fleet.events[0][0] <= next_arrival:
            now, _, i, result = heapq.heappop(fleet.events)
            last_event = now
            scheduler = fleet.schedulers[i]
            scheduler.complete(result)
            fleet.busy[i].discard(result.lane)
            for n, r in enumerate(result.prefilled):
                k, ticket = served[r]
                router.started(ticket, now + n * FIRST_OUTPUT_SPACING_S)
                ttft[k] = now - r.arrival
                totals["hit_blocks"] += r.cached_tokens // r.blocks.block_size
                totals["cached_tokens"] += r.cached_tokens
            for r in result.finished:
                router.done(served[r][1], now)
                totals["generated"] += r.generated
                del served[r]
            fleet.start_free_lanes(i, now)
            continue
        req = requests[pending]
        pending += 1
        now = req.arrival_s
        while next_sample <= now:
            timeline.append((next_sample, tuple(router.in_flight(i) for i in range(replicas))))
            next_sample += sample_s
        shape = Request(req.blocks, req.prompt_tokens, req.output_tokens)
        if shape.kv_tokens > min(max_model_len, kv_capacity_tokens):
            rejected += 1
            continue
        choice = router.choose(range(replicas), shape, now)
        causes[choice.cause.value] += 1
        i = choice.index
        ticket = router.sent(i, shape, now)
        sim = SimRequest(str(pending), req.prompt_tokens, req.output_tokens, arrival=now,
                         blocks=req.blocks)
        served[sim] = (len(ttft), ticket)
        arrival.append(now)
        ttft.append(math.nan)
        where.append(i)
        totals["prompt_blocks"] += req.prompt_blocks
        totals["prompt_tokens"] += req.prompt_tokens
        fleet.schedulers[i].add(sim)
        fleet.start_free_lanes(i, now)
        if progress is not None and pending % report_every == 0:
            progress(pending / len(requests))
    if progress is not None:
        progress(1.0)
    start = requests[0].arrival_s if requests else 0.0
    return ReplayResult(Policy(policy).value, replicas, tuple(arrival), tuple(ttft),
                        tuple(where), totals["prompt_blocks"], totals["hit_blocks"],
                        totals["prompt_tokens"], totals["cached_tokens"], totals["generated"],
                        max(0.0, last_event - start), rejected, dict(causes), tuple(timeline))


def shared_cache_hit_rate(requests: Sequence[TraceRequest], capacity_tokens: int) -> float:
    """Fraction of prompt blocks one LRU prefix cache of ``capacity_tokens`` serves, fed the
    requests in arrival order with nothing else in it (see the module doc)."""
    cache = KVCache(capacity_tokens)
    hits = blocks = 0
    for req in requests:
        blocks += req.prompt_blocks
        if req.prompt_tokens > capacity_tokens:
            continue
        allocation = cache.allocate(req.blocks, req.prompt_tokens, req.prompt_tokens)
        if allocation is None:
            continue
        hits += allocation.cached_tokens // req.blocks.block_size
        cache.free(allocation)
    return hits / blocks if blocks else 0.0
