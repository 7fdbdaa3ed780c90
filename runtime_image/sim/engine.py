"""Drives the pure :class:`Scheduler` in real time (scaled by ``time_scale``) on asyncio.

Simulated time is ``(loop.time() - start) / time_scale``. A lane's step is started at
simulated time *t* and its effects (tokens, finished requests) are released when the clock
reaches ``t + step_seconds``. When the process is CPU-starved and falls behind, a busy lane's
next step still starts where the previous one ended (the simulated timeline does not stretch);
the late tokens reach the stream together and go out in one chunk, like vLLM's stream
interval. Metrics are observed in wall-clock seconds (simulated seconds x ``time_scale``), the
same clock as the router's and Prometheus', and when vLLM observes them: token counters, time
to first token and inter-token latency as each step's output is released (a long request's
prompt tokens show at its prefill, not at its end), the per-request histograms when it
finishes.

With ``device`` (a :class:`~kubeplex.runtime.sim.device.SharedDevice`, the group's simulated
GPU shared with co-located sim engines), each step books the device first and starts when it
is free: a partner's steps stretch this engine's timeline (see :mod:`.device`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from kubeplex.runtime.kv_events import EngineLoad
from kubeplex.runtime.prefix import NO_BLOCKS, PromptBlocks
from kubeplex.runtime.sim.device import SharedDevice
from kubeplex.runtime.sim.metrics import VllmMetrics
from kubeplex.runtime.sim.scheduler import LatencyModel, Scheduler, SimRequest, StepResult

__all__ = ["EngineAsleepError", "SimEngine"]


class EngineAsleepError(Exception):
    """A request reached an engine that is asleep (the server answers 503)."""


@dataclass
class _Stream:
    tokens: int = 0
    done: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)


class SimEngine:
    """One simulated vLLM engine core: submit requests, iterate their tokens."""

    def __init__(self, latency: LatencyModel, *, kv_capacity_tokens: int, max_num_seqs: int,
                 lanes: int, metrics: VllmMetrics, time_scale: float = 1.0,
                 device: SharedDevice | None = None, prefix_caching: bool = True,
                 max_batched_tokens: int | None = None) -> None:
        self.scheduler = Scheduler(latency, kv_capacity_tokens, max_num_seqs, lanes,
                                   prefix_caching, max_batched_tokens=max_batched_tokens)
        self.metrics = metrics
        self.time_scale = time_scale
        self.device = device
        self.sleep_level = 0
        self._streams: dict[SimRequest, _Stream] = {}
        self._pending: list[tuple[float, int, StepResult]] = []
        self._busy: set[int] = set()
        self._resume: dict[int, float] = {}
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._load_changed = asyncio.Event()  # replaced at every change (a broadcast)
        self._t0 = asyncio.get_running_loop().time()
        metrics.bind_scheduler(lambda: self.scheduler.num_running,
                               lambda: self.scheduler.num_waiting,
                               lambda: self.scheduler.kv_usage)

    def now(self) -> float:
        """Simulated seconds since the engine started."""
        return (asyncio.get_running_loop().time() - self._t0) / self.time_scale

    def load(self) -> EngineLoad:
        """The queue a request arriving now finds, on the event loop's clock (wall seconds):
        the uncached prompt tokens waiting, and when the running step ends."""
        now = self.now()
        load = self.scheduler.load(now)
        wall = asyncio.get_running_loop().time()
        return EngineLoad(wall, load.prefill_tokens,
                          wall + max(0.0, load.step_ends_at - now) * self.time_scale,
                          load.waiting)

    async def load_change(self) -> None:
        """Return once the queue changes (a request arrives, a step starts or ends)."""
        await self._load_changed.wait()

    def _changed(self) -> None:
        self._load_changed.set()
        self._load_changed = asyncio.Event()

    async def generate(self, request_id: str, prompt_tokens: int, max_tokens: int,
                       blocks: PromptBlocks = NO_BLOCKS) -> AsyncGenerator[int, None]:
        """Yield how many new tokens each time some arrive, until ``max_tokens`` are out.
        ``blocks``: the prompt's block hashes (its prefix-cache keys)."""
        if self.sleep_level:
            raise EngineAsleepError("the engine is sleeping; wake it up first")
        req = SimRequest(request_id, prompt_tokens, max_tokens, arrival=self.now(),
                         blocks=blocks)
        stream = _Stream()
        self._streams[req] = stream
        self.scheduler.add(req)
        self._wake.set()
        self._changed()
        try:
            while True:
                await stream.event.wait()
                stream.event.clear()
                if stream.tokens:
                    n, stream.tokens = stream.tokens, 0
                    yield n
                if stream.done:
                    return
        finally:
            self._streams.pop(req, None)
            if not stream.done:  # the client went away: free the slot like vLLM's abort
                self.scheduler.abort(req)
                self.metrics.observe_finished(req, self.time_scale, reason="abort")
                self._wake.set()

    def _release_due(self, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            _, _, result = heapq.heappop(self._pending)
            # Requests aborted while the step ran (no stream any more) get no output.
            tokens = [(req, n) for req, n in result.tokens if req in self._streams]
            for req, n in tokens:
                live = self._streams[req]
                live.tokens += n
                live.event.set()
            self.metrics.observe_step([r for r in result.prefilled if r in self._streams],
                                      tokens, result.ends_at, self.time_scale)
            for req in result.finished:
                stream = self._streams.get(req)
                if stream is not None:  # else aborted meanwhile: recorded as an abort
                    stream.done = True
                    stream.event.set()
                    self.metrics.observe_finished(req, self.time_scale)
            self.scheduler.complete(result)
            self._busy.discard(result.lane)
            self._resume[result.lane] = result.ends_at

    def _start_free_lanes(self, now: float) -> None:
        lanes = self.scheduler.lanes
        for i in sorted(set(range(len(lanes))) - self._busy, key=lambda i: len(lanes[i].running)):
            resume = self._resume.pop(i, now)
            start = resume if lanes[i].running else now
            result = self._step(i, start)
            if result is not None:
                self._busy.add(i)
                heapq.heappush(self._pending, (result.ends_at, next(self._seq), result))

    def _step(self, lane: int, start: float) -> StepResult | None:
        """One scheduler step of ``lane`` at ``start`` or, on a shared device, once it is
        free (simulated seconds <-> the device's clock: ``t0 + seconds * time_scale``)."""
        scheduler = self.scheduler
        if self.device is None or not (scheduler.lanes[lane].running or scheduler.waiting):
            return scheduler.step(lane, start)  # no partner, or nothing to run: no booking
        result: StepResult | None = None
        scale, t0 = self.time_scale, self._t0
        wanted = t0 + start * scale

        def run(at: float) -> float | None:
            nonlocal result
            result = scheduler.step(lane, start if at <= wanted else (at - t0) / scale)
            return None if result is None else t0 + result.ends_at * scale

        self.device.book(lane, wanted, run)
        return result

    async def run(self) -> None:
        """The engine loop (a task for the server's lifetime)."""
        while True:
            now = self.now()
            self._release_due(now)
            self._start_free_lanes(now)
            self._changed()
            self._wake.clear()
            if self._pending:
                delay = max(0.0, (self._pending[0][0] - self.now()) * self.time_scale)
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                else:
                    await asyncio.sleep(0)  # let streams write before the next batch
            else:
                await self._wake.wait()
