"""The sim engine's continuous-batching scheduler: pure, with simulated time passed in.

It follows vLLM V1's scheduler in the ways that shape latency and the metrics:

* **FCFS waiting queue.** Requests are admitted in arrival order; the head of the queue
  blocks the rest (no skipping ahead), as vLLM's default ``fcfs`` policy does.
* **Admission** needs a free sequence slot (``max_num_seqs`` running at most) and KV cache
  for the whole request (prompt + max_tokens), reserved at admission. vLLM allocates blocks
  as tokens are generated and preempts when it runs out; reserving up front gives the same
  concurrency limit without modelling preemption (``vllm:num_preemptions`` stays 0).
* **Prefix caching** (on by default, as in vLLM V1): the KV cache is a
  :class:`~kubeplex.runtime.sim.prefix_cache.KVCache`; a request's cached leading blocks are
  reused at admission and only its uncached suffix is prefilled.
* **Steps with chunked prefill** (vLLM V1's default). Each step has a budget of
  ``max_batched_tokens`` (vLLM's ``--max-num-batched-tokens``; its default for the GPU is
  :func:`vllm_batched_tokens`). The running requests come first, in the order they were
  admitted: one token for each decoding sequence, the rest of its prompt (up to what the
  budget has left) for each one still prefilling; then waiting requests are admitted in
  order while budget is left, each with as much of its uncached prompt as fits. A long prompt
  is thus prefilled over several steps, and a request's first token comes out of the step
  that computes its prompt's last chunk. The step takes ``batch_prefill_seconds`` (each
  chunk, attending to the prompt computed or cached before it) ``+ decode_step_seconds(batch,
  mean context)`` from the placement latency model. ``max_batched_tokens=None`` prefills
  every admitted prompt whole in its first step (vLLM with chunked prefill off and a budget
  large enough). A request finishes after ``max_tokens`` output tokens.
* **Pipeline parallelism.** vLLM keeps ``pipeline_depth`` micro-batches in flight: the
  scheduler runs that many independent lanes (each with its own step clock), sharing the KV
  cache and ``max_num_seqs``; throughput grows with ``pp`` at the same per-token latency.

:class:`Scheduler` never reads a clock: :meth:`Scheduler.step` takes ``now`` and returns what
happened (tokens emitted, requests finished) and when the lane's next step ends.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kubeplex.runtime.kv_events import EngineLoad
from kubeplex.runtime.prefix import NO_BLOCKS, PromptBlocks
from kubeplex.runtime.sim.prefix_cache import Allocation, KVCache

__all__ = ["Device", "LatencyModel", "Scheduler", "SimRequest", "StepResult", "vllm_batched_tokens"]

#: vLLM's default per-step token budget of its OpenAI server, by the device's memory (GiB)
#: (``vllm/engine/arg_utils.py``, 0.32): at least 160 GiB (B200), at least 70 GiB (H100, H200;
#: the A100 excepted, where a large budget lowered throughput), else (A100, L4, CPU).
LARGE_GPU_GIB, BIG_GPU_GIB = 160.0, 70.0
LARGE_GPU_BATCHED_TOKENS, BIG_GPU_BATCHED_TOKENS, DEFAULT_BATCHED_TOKENS = 16_384, 8_192, 2_048


class Device(Protocol):
    """What :func:`vllm_batched_tokens` reads of a GPU (a
    :class:`~kubeplex.placement.hardware.GPUSpec`)."""

    @property
    def name(self) -> str: ...

    @property
    def memory_gib(self) -> float: ...


def vllm_batched_tokens(gpu: Device) -> int:
    """vLLM's default ``--max-num-batched-tokens`` for its OpenAI server on ``gpu`` (see
    :data:`LARGE_GPU_GIB`)."""
    if gpu.memory_gib >= LARGE_GPU_GIB:
        return LARGE_GPU_BATCHED_TOKENS
    if gpu.memory_gib >= BIG_GPU_GIB and "a100" not in gpu.name.lower():
        return BIG_GPU_BATCHED_TOKENS
    return DEFAULT_BATCHED_TOKENS


class LatencyModel(Protocol):
    """What the scheduler needs from :class:`kubeplex.placement.llm.LLMProfile`."""

    def batch_prefill_seconds(self, prompts: Sequence[tuple[int, int]]) -> float: ...

    def decode_step_seconds(self, batch_size: int, mean_context_tokens: int) -> float: ...


@dataclass(eq=False)
class SimRequest:
    """One request's progress (mutable: the scheduler owns it while it runs; compared by
    identity)."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    arrival: float
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None
    generated: int = 0
    token_times: list[float] = field(default_factory=list)
    #: The prompt's chained block hashes (none: nothing to cache or reuse).
    blocks: PromptBlocks = NO_BLOCKS
    #: The KV cache it holds while admitted.
    allocation: Allocation | None = None
    #: Prompt tokens whose KV is computed (its cached prefix included); its prefill is over
    #: when this reaches ``prompt_tokens``.
    computed: int = 0

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens found in the prefix cache at admission (0 before)."""
        return self.allocation.cached_tokens if self.allocation is not None else 0


@dataclass(frozen=True)
class StepResult:
    """What one lane step produced: (request, new tokens) pairs, the requests whose prefill
    it finished (their first token is among ``tokens``) and the finished requests.
    ``batch_tokens``: prompt tokens prefilled plus tokens generated, vLLM's per-iteration
    count (``vllm:iteration_tokens_total``)."""

    lane: int
    ends_at: float
    tokens: tuple[tuple[SimRequest, int], ...]
    finished: tuple[SimRequest, ...]
    batch_tokens: int
    prefilled: tuple[SimRequest, ...] = ()


@dataclass
class _Lane:
    running: list[SimRequest] = field(default_factory=list)
    busy_until: float | None = None


class Scheduler:
    """FCFS continuous batching over ``lanes`` pipeline micro-batches (see the module doc)."""

    def __init__(self, latency: LatencyModel, kv_capacity_tokens: int, max_num_seqs: int,
                 lanes: int = 1, prefix_caching: bool = True,
                 publish_events: bool = False, max_batched_tokens: int | None = None) -> None:
        if max_batched_tokens is not None and max_batched_tokens < 1:
            raise ValueError(f"max_batched_tokens must be >= 1, not {max_batched_tokens}")
        self.latency = latency
        self.kv_capacity = kv_capacity_tokens
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.waiting: deque[SimRequest] = deque()
        self.lanes = [_Lane() for _ in range(max(1, lanes))]
        self.kv = KVCache(kv_capacity_tokens, prefix_caching, publish_events)

    # ---- observation --------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return sum(len(lane.running) for lane in self.lanes)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_used(self) -> int:
        return self.kv.used

    @property
    def kv_usage(self) -> float:
        return self.kv.usage

    def load(self, now: float) -> EngineLoad:
        """The queue a request arriving at ``now`` finds (:class:`EngineLoad`): the uncached
        prompt tokens waiting or still being prefilled, and when a lane is next free to admit
        it."""
        prefill = sum(r.prompt_tokens - self.kv.lookup(r.blocks, r.prompt_tokens)
                      for r in self.waiting)
        prefill += sum(r.prompt_tokens - r.computed for lane in self.lanes for r in lane.running)
        ends = min((now if lane.busy_until is None else max(now, lane.busy_until))
                   for lane in self.lanes)
        return EngineLoad(now, prefill, ends, len(self.waiting))

    def idle(self) -> bool:
        return not self.waiting and self.num_running == 0

    # ---- input --------------------------------------------------------------------------
    def fits(self, request: SimRequest) -> bool:
        """Whether the request could ever run (its KV need is within the whole cache)."""
        return request.kv_tokens <= self.kv_capacity

    def add(self, request: SimRequest) -> None:
        self.waiting.append(request)

    def abort(self, request: SimRequest) -> None:
        """Drop a request (client went away): frees its slot and KV reservation."""
        if request in self.waiting:
            self.waiting.remove(request)
            return
        for lane in self.lanes:
            if request in lane.running:
                lane.running.remove(request)
                self._release(request)

    def _release(self, request: SimRequest) -> None:
        if request.allocation is not None:
            self.kv.free(request.allocation)

    # ---- stepping -----------------------------------------------------------------------
    def next_lane(self, now: float) -> int | None:
        """The free lane that should step now (the least loaded), None when all are busy."""
        free = [i for i, lane in enumerate(self.lanes)
                if lane.busy_until is None or lane.busy_until <= now]
        if not free:
            return None
        return min(free, key=lambda i: len(self.lanes[i].running))

    def _admit(self, lane: _Lane, now: float, budget: float) -> list[SimRequest]:
        """Admit waiting requests in order while a slot, KV cache and ``budget`` (prompt
        tokens this step may still compute) are left."""
        admitted = []
        per_lane_seqs = max(1, self.max_num_seqs // len(self.lanes))
        while self.waiting and len(lane.running) < per_lane_seqs and budget > 0:
            head = self.waiting[0]
            allocation = self.kv.allocate(head.blocks, head.prompt_tokens, head.kv_tokens)
            if allocation is None:
                break  # FCFS: the head waits for KV, and so does everyone behind it
            self.waiting.popleft()
            head.admitted = max(now, head.arrival)
            head.allocation = allocation
            head.computed = allocation.cached_tokens
            budget -= head.prompt_tokens - head.computed
            lane.running.append(head)
            admitted.append(head)
        return admitted

    def step(self, lane_index: int, now: float) -> StepResult | None:
        """Start one step of a free lane at ``now``; None when it has nothing to do.

        The step's effects (tokens, finished requests) are returned at once and belong to
        ``ends_at``: the caller releases them when simulated time reaches it, then calls
        :meth:`complete` before the lane steps again.
        """
        lane = self.lanes[lane_index]
        budget: float = math.inf if self.max_batched_tokens is None else self.max_batched_tokens
        work: list[tuple[SimRequest, int]] = []  # (request, tokens it computes this step)
        for r in lane.running:  # the running first, in admission order (see the module doc)
            if budget <= 0:
                break
            work.append((r, int(min(max(1, r.prompt_tokens - r.computed), budget))))
            budget -= work[-1][1]
        for r in self._admit(lane, now, budget):
            work.append((r, int(min(r.prompt_tokens - r.computed, budget))))
            budget -= work[-1][1]
        if not lane.running:
            lane.busy_until = None
            return None
        chunks = [(r, n) for r, n in work if r.computed < r.prompt_tokens]
        decoding = [r for r, _ in work if r.computed >= r.prompt_tokens]
        seconds = 0.0
        if chunks:
            seconds += self.latency.batch_prefill_seconds([(n, r.computed) for r, n in chunks])
        if decoding:
            context = sum(r.prompt_tokens + r.generated for r in decoding) // len(decoding)
            seconds += self.latency.decode_step_seconds(len(decoding), context)
        ends = now + seconds
        lane.busy_until = ends
        for r, n in chunks:
            r.computed += n
        prefilled = [r for r, _ in chunks if r.computed >= r.prompt_tokens]
        tokens: list[tuple[SimRequest, int]] = []
        finished: list[SimRequest] = []
        for r, _ in work:  # in admission order, as the running list
            if r.computed < r.prompt_tokens:
                continue  # a chunk of a longer prompt: no token yet
            r.generated += 1
            r.token_times.append(ends)
            if r.first_token is None:
                r.first_token = ends
            tokens.append((r, 1))
            if r.generated >= r.max_tokens:
                r.finished = ends
                finished.append(r)
        batch_tokens = sum(n for _, n in chunks) + len(tokens)
        return StepResult(lane_index, ends, tuple(tokens), tuple(finished), batch_tokens,
                          tuple(prefilled))

    def complete(self, result: StepResult) -> None:
        """Apply the end of a step (at ``result.ends_at``): finished requests free their KV."""
        lane = self.lanes[result.lane]
        for r in result.finished:
            if r in lane.running:
                lane.running.remove(r)
                self._release(r)
