"""A continuous-batching serving simulator for LLM groups (what AlpaServe's simulator lacks).

Each group hosts one engine per resident model (vLLM: one engine per model, each with its own
share of GPU memory). The engines of a group time-share its GPUs: the group runs *rounds* in
which every engine with work does one step, so a round lasts the sum of their step times.

An engine step (vLLM V1 style) prefills the requests admitted at the start of the step and
decodes one token for every running request; its time comes from the analytic
:class:`~kubeplex.placement.llm.LLMProfile` (``prefill_seconds`` of the new prompt tokens plus
``decode_step_seconds`` of the running batch). A pipeline-parallel engine is costed as one
micro-batch at a time (vLLM keeps ``pp`` in flight): conservative for ``pp > 1``, which
within one node rarely beats tensor parallelism or separate replicas anyway.

A request is admitted only when its KV cache (prompt + output tokens) fits in what the
engine's KV capacity has left, and at most :data:`MAX_NUM_SEQS` run at once. Its first token
comes at the end of its prefill step (TTFT counts queueing, like
``vllm:time_to_first_token_seconds``); TPOT is the mean time between the following tokens.
Requests go to the replica with the fewest queued + running requests.

Between events (arrivals, completions) nothing changes but the context length, so rounds of
pure decoding are taken in one jump, and a decode step's time is recomputed only when the
batch changes (the context growth in between is ignored); the cost is O(events), not
O(tokens).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kubeplex.placement.errors import PlacementError
from kubeplex.placement.llm import LLMProfile
from kubeplex.placement.workload import Workload

__all__ = [
    "MAX_NUM_SEQS",
    "EngineSpec",
    "LLMGroupSpec",
    "LLMSimResult",
    "RequestShape",
    "simulate_llm",
]

#: vLLM's default ``--max-num-seqs``: the most sequences one engine runs in a batch.
MAX_NUM_SEQS = 256


@dataclass(frozen=True)
class RequestShape:
    """What one model's requests look like and the SLO each is judged by."""

    prompt_tokens: int
    output_tokens: int
    ttft_slo_s: float
    tpot_slo_s: float | None = None

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise PlacementError("prompt and output lengths must be >= 1 token")
        if self.ttft_slo_s <= 0 or (self.tpot_slo_s is not None and self.tpot_slo_s <= 0):
            raise PlacementError("TTFT and TPOT SLOs must be > 0 seconds")

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


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

    def ttft_quantile(self, model: int, model_ids: npt.NDArray[np.int64], q: float) -> float:
        """Nearest-rank quantile of the model's TTFTs (inf when that many were never served)."""
        values = np.sort(self.ttft[model_ids == model])
        if not len(values):
            return 0.0
        return float(values[max(0, math.ceil(q * len(values)) - 1)])


class _Engine:
    """One engine's queue and batch. Every request of a model has the same shape, so requests
    finish in admission order: the batch is a FIFO of (request, finish step), and the context
    length sum is kept from the admission steps, making a round O(1) per engine."""

    __slots__ = ("capacity", "decode_s", "kv_used", "model", "profile", "running", "shape",
                 "steps", "sum_admitted", "waiting")

    def __init__(self, spec: EngineSpec, shape: RequestShape) -> None:
        self.model = spec.model
        self.profile = spec.profile
        self.capacity = spec.kv_capacity_tokens
        self.shape = shape
        self.kv_used = 0
        self.steps = 0  # decode steps this engine has run
        self.sum_admitted = 0  # sum of the admission steps of the running requests
        self.decode_s = 0.0  # decode step time, recomputed when the batch changes (0: stale)
        self.waiting: deque[int] = deque()
        self.running: deque[tuple[int, int, int]] = deque()  # request, admitted, finish step

    @property
    def load(self) -> int:
        return len(self.waiting) + len(self.running)

    def mean_context(self) -> int:
        n = len(self.running)
        return self.shape.prompt_tokens + 1 + self.steps - self.sum_admitted // n


class _Group:
    __slots__ = ("clock", "engines")

    def __init__(self, spec: LLMGroupSpec, shapes: Sequence[RequestShape]) -> None:
        self.engines = [_Engine(e, shapes[e.model]) for e in spec.engines]
        self.clock = 0.0


def simulate_llm(groups: Sequence[LLMGroupSpec], shapes: Sequence[RequestShape],
                 workload: Workload) -> LLMSimResult:
    """Serve ``workload`` (model ``i``'s requests shaped like ``shapes[i]``) on ``groups``."""
    if len(shapes) != workload.num_models:
        raise PlacementError(
            f"the workload has {workload.num_models} models but {len(shapes)} request shapes")
    n = len(workload)
    ttft = [math.inf] * n
    tpot = [0.0] * n
    first_token = [0.0] * n
    sim = [_Group(g, shapes) for g in groups]
    hosts: list[list[tuple[int, _Engine]]] = [[] for _ in shapes]
    for gi, group in enumerate(sim):
        for engine in group.engines:
            hosts[engine.model].append((gi, engine))
    group_requests = [0] * len(sim)
    arrivals = workload.arrivals.tolist()
    model_ids = workload.model_ids.tolist()

    def advance(group: _Group, until: float) -> None:
        engines = group.engines
        while group.clock < until:
            new: list[list[int]] = [[] for _ in engines]
            step = 0.0
            prefilling = False
            for e, engine in enumerate(engines):
                shape = engine.shape
                room = MAX_NUM_SEQS - len(engine.running)
                while engine.waiting and room > 0 and \
                        engine.kv_used + shape.kv_tokens <= engine.capacity:
                    new[e].append(engine.waiting.popleft())
                    engine.kv_used += shape.kv_tokens
                    room -= 1
                if new[e]:
                    prefilling = True
                    step += engine.profile.prefill_seconds(len(new[e]) * shape.prompt_tokens)
                if engine.running:
                    if not engine.decode_s:
                        engine.decode_s = engine.profile.decode_step_seconds(
                            len(engine.running), engine.mean_context())
                    step += engine.decode_s
            if step == 0.0:
                group.clock = until
                return
            rounds = 1
            if not prefilling:
                rounds = min(e.running[0][2] - e.steps for e in engines if e.running)
                if until != math.inf:
                    rounds = max(1, min(rounds, math.ceil((until - group.clock) / step)))
            group.clock += rounds * step
            now = group.clock
            for e, engine in enumerate(engines):
                shape = engine.shape
                if engine.running:
                    engine.steps += rounds
                    running = engine.running
                    while running and running[0][2] <= engine.steps:
                        engine.decode_s = 0.0
                        request, admitted, _ = running.popleft()
                        engine.sum_admitted -= admitted
                        engine.kv_used -= shape.kv_tokens
                        tpot[request] = (now - first_token[request]) / (shape.output_tokens - 1)
                if new[e]:
                    engine.decode_s = 0.0
                for request in new[e]:
                    ttft[request] = now - arrivals[request]
                    if shape.output_tokens == 1:
                        engine.kv_used -= shape.kv_tokens
                        continue
                    first_token[request] = now
                    engine.running.append((request, engine.steps,
                                           engine.steps + shape.output_tokens - 1))
                    engine.sum_admitted += engine.steps

    for i in range(n):
        m = model_ids[i]
        candidates = hosts[m]
        if not candidates:
            continue
        for gi, _ in candidates:
            advance(sim[gi], arrivals[i])
        gi, engine = min(candidates, key=lambda c: c[1].load)
        if shapes[m].kv_tokens > engine.capacity:
            continue  # can never be admitted: counts as not served
        group_requests[gi] += 1
        engine.waiting.append(i)
    for group in sim:
        advance(group, math.inf)

    ttft_arr = np.array(ttft, dtype=np.float64)
    tpot_arr = np.array(tpot, dtype=np.float64)
    ttft_slo = np.array([s.ttft_slo_s for s in shapes])[workload.model_ids]
    tpot_slo = np.array([s.tpot_slo_s or math.inf for s in shapes])[workload.model_ids]
    good = (ttft_arr <= ttft_slo) & (tpot_arr <= tpot_slo)
    model_requests = workload.model_counts()
    model_good = np.bincount(workload.model_ids[good], minlength=len(shapes)).astype(np.int64)
    return LLMSimResult(ttft_arr, tpot_arr, good, model_requests, model_good,
                        np.array(group_requests, dtype=np.int64))
