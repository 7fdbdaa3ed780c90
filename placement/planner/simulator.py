"""A continuous-batching serving simulator for LLM groups (what AlpaServe's simulator lacks).

Each group hosts one engine per resident model (vLLM: one engine per model, each with its own
share of GPU memory). The engines of a group time-share its GPUs: the group runs *rounds* in
which every engine with work does one step, so a round lasts the sum of their step times.

An engine step (vLLM V1 style, chunked prefill) decodes one token for every running request
and spends the rest of its :data:`MAX_NUM_BATCHED_TOKENS` budget on prompt tokens: first the
prompts already being prefilled, then newly admitted ones, a long prompt being split over
several steps. Its time comes from the model's :class:`~kubeplex.placement.llm.LLMProfile`, one
request at a time: a chunk of a prompt costs what it adds to that prompt's own
``prefill_seconds`` (``prefill_seconds(done + chunk) - prefill_seconds(done)``), so a batch of
prompts is *not* charged as one long sequence (whose attention would grow with the square of
the batch); plus ``decode_step_seconds`` of the running batch at its mean context length. A
pipeline-parallel engine is costed as one micro-batch at a time (vLLM keeps ``pp`` in flight):
conservative for ``pp > 1``.

Every request has its own prompt and output length (:class:`~.workload.LLMWorkload`). It is
admitted, first come first served, only when its KV cache (prompt + output tokens) fits in what
the engine's KV capacity has left, and at most :data:`MAX_NUM_SEQS` are admitted at once. Its
first token comes at the end of the step that finishes its prompt (TTFT counts queueing, like
``vllm:time_to_first_token_seconds``); TPOT is the mean time between the following tokens.
Requests go to the replica with the fewest queued, prefilling and running requests (the first
on a tie).

Between events (arrivals, completions) nothing changes but the context length, so rounds of
pure decoding are taken in one jump, and a decode step's time is recomputed only when the
batch changes (the context growth in between is ignored); the cost is O(events), not
O(tokens). Step costs come from :mod:`~.costs` tables filled by the profile's own functions.
Two cores run the loop: :func:`_reference` here (pure Python, the definition) and the compiled
one in :mod:`._compiled` (numba, the default), held to identical results by the tests. Time is
simulated, never read.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from kubeplex.placement.errors import PlacementError
from kubeplex.placement.llm import LLMProfile
from kubeplex.placement.planner import _compiled
from kubeplex.placement.planner.costs import MAX_NUM_SEQS, CostTable, CostTables
from kubeplex.placement.planner.workload import LLMWorkload

__all__ = [
    "MAX_NUM_BATCHED_TOKENS",
    "MAX_NUM_SEQS",
    "Core",
    "EngineSpec",
    "LLMGroupSpec",
    "LLMSimResult",
    "ModelSLO",
    "simulate_llm",
]

#: Which simulator core runs: the compiled one (numba), or the pure-Python reference that
#: tests hold it to (identical results).
Core = Literal["compiled", "reference"]

#: vLLM V1's default ``--max-num-batched-tokens`` for the OpenAI server on GPUs with 70 GiB or
#: more (chunked prefill is always on in V1): the tokens one engine step processes.
MAX_NUM_BATCHED_TOKENS = 8192


@dataclass(frozen=True)
class ModelSLO:
    """The latency targets one model's requests are judged by (a request is good when it meets
    every target)."""

    ttft_s: float
    tpot_s: float | None = None

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or (self.tpot_s is not None and self.tpot_s <= 0):
            raise PlacementError("TTFT and TPOT SLOs must be > 0 seconds")


@dataclass(frozen=True)
class EngineSpec:
    """One engine: the model it serves (index), its latency profile and its KV capacity."""

    model: int
    profile: LLMProfile
    kv_capacity_tokens: int


@dataclass(frozen=True)
class LLMGroupSpec:
    engines: tuple[EngineSpec, ...]


@dataclass(frozen=True, eq=False)
class LLMSimResult:
    ttft: npt.NDArray[np.float64]  # inf: never served
    tpot: npt.NDArray[np.float64]
    good: npt.NDArray[np.bool_]
    model_requests: npt.NDArray[np.int64]
    model_good: npt.NDArray[np.int64]
    group_requests: npt.NDArray[np.int64]

    @property
    def attainment(self) -> float:
        return float(self.good.mean()) if len(self.good) else 1.0

    @property
    def model_attainment(self) -> npt.NDArray[np.float64]:
        return np.where(self.model_requests > 0,
                        self.model_good / np.maximum(self.model_requests, 1), 1.0)

    @property
    def unserved(self) -> npt.NDArray[np.float64]:
        return (self.model_requests - self.model_good).astype(np.float64)


class _Engine:
    """One engine's queue and batch; ``running`` is a heap of (finish step, request)."""

    __slots__ = ("capacity", "context_base", "costs", "decode_s", "kv_used", "model",
                 "prefilling", "running", "steps", "waiting")

    def __init__(self, spec: EngineSpec, costs: CostTable) -> None:
        self.model = spec.model
        self.costs = costs
        self.capacity = spec.kv_capacity_tokens
        self.kv_used = 0
        self.steps = 0  # decode steps this engine has run
        #: Sum over running requests of (prompt + 1 - admission step): with ``steps`` it gives
        #: their total context length in O(1).
        self.context_base = 0
        self.decode_s = 0.0  # decode step time, recomputed when the batch changes (0: stale)
        self.waiting: deque[int] = deque()
        self.prefilling: deque[list[int]] = deque()  # [request, prompt tokens done]
        self.running: list[tuple[int, int]] = []

    @property
    def load(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.running)


def simulate_llm(groups: Sequence[LLMGroupSpec], slos: Sequence[ModelSLO],
                 workload: LLMWorkload, tables: CostTables | None = None,
                 core: Core = "compiled") -> LLMSimResult:
    """Serve ``workload`` on ``groups``; model ``i``'s requests are judged by ``slos[i]``.
    ``tables`` caches step costs across calls (one search shares one)."""
    if len(slos) != workload.num_models:
        raise PlacementError(
            f"the workload has {workload.num_models} models but {len(slos)} SLOs")
    tables = tables or CostTables()
    max_prompt = int(workload.prompt_tokens.max()) if len(workload) else 1
    max_context = max_prompt + (int(workload.output_tokens.max()) if len(workload) else 1)
    costs = [[tables.get(e.profile, max_prompt, max_context) for e in g.engines] for g in groups]
    if core == "reference":
        return _result(*_reference(groups, costs, len(slos), workload), slos, workload)
    return _result(*_compiled.run(groups, costs, tables, len(slos), workload, MAX_NUM_SEQS,
                                  MAX_NUM_BATCHED_TOKENS), slos, workload)


def _reference(groups: Sequence[LLMGroupSpec], costs: Sequence[Sequence[CostTable]],
               num_models: int, workload: LLMWorkload
               ) -> tuple[list[float], list[float], list[int]]:
    """The pure-Python core: readable, and what the compiled core is tested against."""
    n = len(workload)
    ttft = [math.inf] * n
    tpot = [0.0] * n
    first_token = [0.0] * n
    prompts = workload.prompt_tokens.tolist()
    outputs = workload.output_tokens.tolist()
    kv_need = [p + o for p, o in zip(prompts, outputs, strict=True)]
    engines_of = [[_Engine(e, c) for e, c in zip(g.engines, cs, strict=True)]
                  for g, cs in zip(groups, costs, strict=True)]
    clocks = [0.0] * len(groups)
    hosts: list[list[tuple[int, _Engine]]] = [[] for _ in range(num_models)]
    for gi, engines in enumerate(engines_of):
        for engine in engines:
            hosts[engine.model].append((gi, engine))
    group_requests = [0] * len(groups)
    arrivals = workload.requests.arrivals.tolist()
    model_ids = workload.model_ids.tolist()

    def advance(gi: int, until: float) -> None:
        engines = engines_of[gi]
        clock = clocks[gi]
        while clock < until:
            new: list[list[int]] = [[] for _ in engines]
            step = 0.0
            prefilling = False
            for e, engine in enumerate(engines):
                budget = MAX_NUM_BATCHED_TOKENS - len(engine.running)
                room = MAX_NUM_SEQS - len(engine.running) - len(engine.prefilling)
                waiting, chunks = engine.waiting, engine.prefilling
                while waiting and room > 0 and budget > len(chunks) and \
                        engine.kv_used + kv_need[waiting[0]] <= engine.capacity:
                    request = waiting.popleft()
                    chunks.append([request, 0])
                    engine.kv_used += kv_need[request]
                    room -= 1
                prefill = engine.costs.prefill
                for chunk in chunks:
                    if budget <= 0:
                        break
                    request, done = chunk
                    size = min(prompts[request] - done, budget)
                    step += float(prefill[done + size]) - (float(prefill[done]) if done else 0.0)
                    chunk[1] = done + size
                    budget -= size
                    prefilling = True
                while chunks and chunks[0][1] == prompts[chunks[0][0]]:
                    new[e].append(chunks.popleft()[0])
                if engine.running:
                    if not engine.decode_s:
                        count = len(engine.running)
                        context = (engine.context_base + count * engine.steps) // count
                        engine.decode_s = engine.costs.decode_seconds(count, context)
                    step += engine.decode_s
            if step == 0.0:
                clocks[gi] = until
                return
            rounds = 1
            if not prefilling:
                rounds = min(e.running[0][0] - e.steps for e in engines if e.running)
                if until != math.inf:
                    rounds = max(1, min(rounds, math.ceil((until - clock) / step)))
            clock += rounds * step
            for e, engine in enumerate(engines):
                running = engine.running
                if running:
                    engine.steps += rounds
                    while running and running[0][0] <= engine.steps:
                        engine.decode_s = 0.0
                        finish, request = heapq.heappop(running)
                        engine.kv_used -= kv_need[request]
                        # its admission step was finish - (output - 1)
                        engine.context_base -= kv_need[request] - finish
                        tpot[request] = (clock - first_token[request]) / (outputs[request] - 1)
                for request in new[e]:
                    engine.decode_s = 0.0
                    ttft[request] = clock - arrivals[request]
                    if outputs[request] == 1:
                        engine.kv_used -= kv_need[request]
                        continue
                    first_token[request] = clock
                    heapq.heappush(running, (engine.steps + outputs[request] - 1, request))
                    engine.context_base += prompts[request] + 1 - engine.steps
        clocks[gi] = clock

    for i in range(n):
        candidates = hosts[model_ids[i]]
        if not candidates:
            continue
        for gi, _ in candidates:
            advance(gi, arrivals[i])
        gi, engine = candidates[0]
        if len(candidates) > 1:
            best = engine.load
            for h, other in candidates:
                if other.load < best:
                    best, gi, engine = other.load, h, other
        if kv_need[i] > engine.capacity:
            continue  # can never be admitted: counts as not served
        group_requests[gi] += 1
        engine.waiting.append(i)
    for gi in range(len(groups)):
        advance(gi, math.inf)
    return ttft, tpot, group_requests


def _result(ttft: Sequence[float] | npt.NDArray[np.float64],
            tpot: Sequence[float] | npt.NDArray[np.float64],
            group_requests: Sequence[int] | npt.NDArray[np.int64], slos: Sequence[ModelSLO],
            workload: LLMWorkload) -> LLMSimResult:
    ids = workload.model_ids
    ttft_arr = np.asarray(ttft, dtype=np.float64)
    tpot_arr = np.asarray(tpot, dtype=np.float64)
    ttft_slo = np.array([s.ttft_s for s in slos])[ids]
    tpot_slo = np.array([math.inf if s.tpot_s is None else s.tpot_s for s in slos])[ids]
    good = (ttft_arr <= ttft_slo) & (tpot_arr <= tpot_slo)
    model_good = np.bincount(ids[good], minlength=len(slos)).astype(np.int64)
    return LLMSimResult(ttft_arr, tpot_arr, good, workload.requests.model_counts(), model_good,
                        np.asarray(group_requests, dtype=np.int64))
