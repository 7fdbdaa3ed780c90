"""Signal extraction: PromQL-compatible quantiles and rates, and "no data" as its own answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kubeplex.autoscaler import NoData, Scrape, Signals, extract
from kubeplex.autoscaler.metrics import (
    COMPLETIONS,
    GENERATION_TOKENS,
    KV_USAGE,
    PROMPT_TOKENS,
    RUNNING,
    TTFT,
    WAITING,
    with_held,
)
from kubeplex.autoscaler.signals import bucket_increase, counter_increase, histogram_quantile
from kubeplex.autoscaler.sources import parse_metrics_text

INF = math.inf
# The example histogram of Prometheus' own tests (promql/testdata/histograms.test):
# buckets 0.1: 50, 0.2: 70, 0.4: 90, 1: 100, +Inf: 100 (cumulative).
BUCKETS = ((0.1, 50.0), (0.2, 70.0), (0.4, 90.0), (1.0, 100.0), (INF, 100.0))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.1),            # rank 50: the top of the first bucket
        (0.6, 0.15),           # rank 60: halfway through (0.1, 0.2]
        (0.8, 0.3),            # rank 80: halfway through (0.2, 0.4]
        (0.95, 0.7),           # rank 95: halfway through (0.4, 1]
        (0.25, 0.05),          # the first bucket starts at 0
        (1.0, 1.0),
    ],
)
def test_histogram_quantile_matches_promql(q: float, expected: float) -> None:
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected)


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.5, ((1.0, 0.0), (INF, 0.0))) is None  # no observations: NaN
    assert histogram_quantile(0.5, ((1.0, 3.0),)) is None  # no +Inf bucket
    assert histogram_quantile(0.99, ((1.0, 1.0), (2.5, 1.0), (INF, 10.0))) == 2.5  # in +Inf
    assert histogram_quantile(-0.1, BUCKETS) == -INF
    assert histogram_quantile(1.1, BUCKETS) == INF
    # non-monotonic counts (scrape races) are made monotonic, as PromQL does
    assert histogram_quantile(0.5, ((0.1, 5.0), (0.2, 4.0), (INF, 10.0))) == pytest.approx(
        0.1 + 0.1 * (5 - 5) / 5)


def test_counter_increase_handles_resets_and_new_instances() -> None:
    samples = [{"a": 10.0}, {"a": 15.0, "b": 100.0}, {"a": 3.0, "b": 110.0}]
    # a: +5, then reset -> +3; b: first seen in sample 2 (no rate yet), then +10
    assert counter_increase(samples) == 18.0


def test_bucket_increase_sums_instances_and_resets() -> None:
    before = {"a": ((1.0, 10.0), (INF, 12.0)), "b": ((1.0, 1.0), (INF, 1.0))}
    after = {"a": ((1.0, 2.0), (INF, 3.0)), "b": ((1.0, 5.0), (INF, 7.0))}
    # a was reset (its +Inf count fell): its whole histogram counts; b: +4 and +6
    assert bucket_increase([before, after]) == ((1.0, 6.0), (INF, 9.0))


def _scrape(t: float, done: float, waiting: float, running: float, ttft: tuple[
        tuple[float, float], ...], prompt_tokens: float | None = None) -> Scrape:
    """``prompt_tokens``: the counter's value (100 a finished request unless given)."""
    prompt = done * 100 if prompt_tokens is None else prompt_tokens
    values = {COMPLETIONS: {"e": done}, WAITING: {"e": waiting}, RUNNING: {"e": running},
              KV_USAGE: {"e": 0.5}, PROMPT_TOKENS: {"e": prompt},
              GENERATION_TOKENS: {"e": done * 20}}
    return Scrape(t, values, {TTFT: {"e": ttft}})


def test_extract_rates_arrivals_and_ttft() -> None:
    scrapes = [
        _scrape(0, 0, 0, 0, ((1.0, 0.0), (INF, 0.0))),
        _scrape(10, 50, 5, 10, ((1.0, 60.0), (INF, 65.0))),
        _scrape(20, 100, 10, 10, ((1.0, 120.0), (INF, 130.0))),
    ]
    signals = extract(scrapes, 20.0, 60.0, 95, 30.0)
    assert isinstance(signals, Signals)
    assert signals.completion_rate == 5.0
    # conservation: 100 completed + 20 more in the engines than at the start, over 20 s
    assert signals.arrival_rate == 6.0
    assert signals.waiting == 10 and signals.running == 10 and signals.kv_usage == 0.5
    assert signals.ttft_count == 130
    # rank 123.5 of 130 lies in (1, +Inf]: the highest finite bound
    assert signals.ttft_quantile == 1.0
    assert signals.mean_output_tokens == pytest.approx(20.0)
    assert not signals.saturated


def test_mean_output_waits_for_a_window_as_long_as_the_requests() -> None:
    """Tokens are counted as they are made: while fewer requests finished in the window than
    are running, the tokens of those still decoding would count over the few done, and the
    mean output reads long (None then: the declared size stands)."""
    def window(done: float, running: float) -> Signals:
        scrapes = [_scrape(0, 0, 0, running, ((1.0, 0.0), (INF, 0.0))),
                   _scrape(20, done, 0, running, ((1.0, done), (INF, done)))]
        signals = extract(scrapes, 20.0, 60.0, 95, 30.0)
        assert isinstance(signals, Signals)
        return signals

    assert window(done=5, running=40).mean_output_tokens is None
    assert window(done=40, running=40).mean_output_tokens == pytest.approx(20.0)


@pytest.mark.parametrize(
    ("scrapes", "now", "reason"),
    [
        ([], 0.0, "no metrics scraped yet"),
        ([Scrape(0.0, {WAITING: {"e": 0}, RUNNING: {"e": 0}})], 100.0, "100 s old"),
        ([Scrape(0.0, {WAITING: {"e": 0}, RUNNING: {"e": 0}})], 5.0, "fewer than two"),
        ([Scrape(0.0, {WAITING: {"e": 0}}), Scrape(2.0, {WAITING: {"e": 0}})], 2.0,
         "vllm:num_requests_running missing"),
    ],
)
def test_missing_or_stale_data_is_no_data(scrapes: list[Scrape], now: float,
                                          reason: str) -> None:
    result = extract(scrapes, now, 60.0, 95, 30.0)
    assert isinstance(result, NoData)
    assert reason in result.reason


def test_no_first_tokens_is_an_unknown_percentile_not_zero() -> None:
    idle = [Scrape(t, {WAITING: {"e": 0}, RUNNING: {"e": 0}, COMPLETIONS: {"e": 7}},
                   {TTFT: {"e": ((1.0, 7.0), (INF, 7.0))}}) for t in (0.0, 2.0, 4.0)]
    signals = extract(idle, 4.0, 60.0, 95, 30.0)
    assert isinstance(signals, Signals)
    assert signals.ttft_quantile is None
    assert signals.arrival_rate == 0.0


VLLM_TEXT = """\
# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 4.0
vllm:num_requests_waiting{engine="0",model_name="other"} 99.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 12.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="llama"} 30.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="llama"} 10.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="llama"} 20.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="llama"} 38.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="llama"} 40.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="llama"} 40.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="llama"} 21.0
"""


def test_parse_vllm_text_keeps_one_model() -> None:
    scrape = parse_metrics_text(VLLM_TEXT, "llama", 5.0, target="pod-a")
    assert scrape.total(WAITING) == 4.0
    assert scrape.total(COMPLETIONS) == 40.0  # both finished reasons
    assert len(scrape.series(COMPLETIONS)) == 1  # one engine: its reasons summed
    (buckets,) = scrape.histograms[TTFT].values()
    assert buckets == ((0.5, 20.0), (1.0, 38.0), (INF, 40.0))
    assert all(key.startswith("pod-a|") for key in scrape.series(RUNNING))


@pytest.mark.parametrize(("bound", "expected"),
                         [(0.1, 0.5), (0.15, 0.6), (0.3, 0.8), (1.0, 1.0), (5.0, 1.0),
                          (0.05, 0.25)])
def test_fraction_at_a_bound_inverts_the_quantile(bound: float, expected: float) -> None:
    from kubeplex.autoscaler.signals import histogram_fraction_at

    assert histogram_fraction_at(bound, BUCKETS) == pytest.approx(expected)
    assert histogram_fraction_at(1.0, ((1.0, 0.0), (INF, 0.0))) is None


def _engine_scrape(t: float, engines: dict[str, tuple[float, float, float, float]]) -> Scrape:
    """engines: name -> (waiting, running, first tokens so far, finished so far)."""
    values = {WAITING: {e: v[0] for e, v in engines.items()},
              RUNNING: {e: v[1] for e, v in engines.items()},
              COMPLETIONS: {e: v[3] for e, v in engines.items()}}
    hist = {TTFT: {e: ((1.0, v[2]), (INF, v[2])) for e, v in engines.items()}}
    return Scrape(t, values, hist)


def test_prefill_backlog_shows_in_first_token_counts() -> None:
    """vLLM counts a request queued for its prefill as running: 10 running, of which 4 have a
    first token (10 first tokens so far, 6 finished), leaves 6 awaiting their prefill."""
    first = _engine_scrape(0, {"a": (0, 10, 8, 4)})
    last = _engine_scrape(10, {"a": (0, 10, 10, 6)})
    signals = extract([first, last], 10, 60, 95, 30)
    assert isinstance(signals, Signals)
    assert signals.awaiting_first_token == 6
    assert signals.min_pending == 6


def test_every_engine_must_be_busy_for_a_saturated_window() -> None:
    busy = {"a": (0, 5, 10, 8), "b": (2, 3, 10, 10)}  # a: 3 awaiting; b: 2 refused admission
    idle_b = {"a": (0, 5, 10, 8), "b": (0, 3, 12, 10)}  # b: 1 awaiting only
    both = extract([_engine_scrape(0, busy), _engine_scrape(10, busy)], 10, 60, 95, 30)
    one = extract([_engine_scrape(0, busy), _engine_scrape(10, idle_b)], 10, 60, 95, 30)
    assert isinstance(both, Signals) and both.engines_saturated
    assert isinstance(one, Signals) and not one.engines_saturated


def test_completions_of_one_engine_are_summed_over_finished_reasons() -> None:
    text = "\n".join([
        '# TYPE vllm:request_success_total counter',
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 3',
        'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 4',
        '# TYPE vllm:request_prompt_tokens histogram',
        'vllm:request_prompt_tokens_bucket{engine="0",le="100.0",model_name="m"} 5',
        'vllm:request_prompt_tokens_bucket{engine="0",le="+Inf",model_name="m"} 7',
        'vllm:request_prompt_tokens_count{engine="0",model_name="m"} 7',
        'vllm:request_prompt_tokens_sum{engine="0",model_name="m"} 500',
    ])
    scrape = parse_metrics_text(text, "m", 1.0)
    assert scrape.series(COMPLETIONS) == {"engine=0,model_name=m": 7.0}
    from kubeplex.autoscaler.metrics import PROMPT_HISTOGRAM

    assert scrape.histograms[PROMPT_HISTOGRAM]["engine=0,model_name=m"] == ((100.0, 5.0),
                                                                            (INF, 7.0))


def _counted(counts: list[float], tokens: list[float] | None = None) -> Signals:
    """Signals over scrapes 2 s apart whose arrivals per interval are ``counts`` (every request
    completes within its interval); ``tokens``: the prompt tokens prefilled per interval (100
    a request unless given)."""
    done, total, scrapes = 0.0, 0.0, [_scrape(0, 0, 0, 0, ((INF, 0.0),))]
    for i, count in enumerate(counts):
        done += count
        total += 100 * count if tokens is None else tokens[i]
        scrapes.append(_scrape(2.0 * (i + 1), done, 0, 0, ((INF, done),), total))
    signals = extract(scrapes, 2.0 * len(counts), 2.0 * len(counts), 95, 30.0)
    assert isinstance(signals, Signals)
    return signals


def test_a_level_change_is_not_burstiness_but_bursts_still_are() -> None:
    # Poisson-like counts at 6, then at 60 per interval: one large difference, a level change
    steady = [6.0, 4.0, 7.0, 5.0, 8.0, 6.0, 5.0, 7.0, 4.0, 6.0, 5.0, 7.0, 6.0, 5.0, 6.0]
    switched = _counted(steady + [v + 54.0 for v in steady])
    assert switched.arrival_cv2 is not None and switched.arrival_cv2 < 1.0
    # a switch inside an 8 s counting interval makes two large differences there (22 -> 125
    # -> 240), each of which hid the other from the 3-sigma test one at a time (read 15.4)
    high = [v + 54.0 for v in steady]
    split = _counted(steady[:14] + high + high[:1])
    assert split.arrival_cv2 is not None and split.arrival_cv2 < 1.0
    # a switch from ~6 to ~60 per interval (Gamma counts, cv^2 ~2) inside the 10th interval:
    # at the 8 s interval its two differences were not beyond 3 sigma of the four others
    # (read 18.6); found as a shift of the mean, each side is measured at its own rate
    gamma_switch = [9.0, 5.0, 2.0, 5.0, 5.0, 9.0, 7.0, 5.0, 10.0, 56.0, 52.0, 43.0, 58.0, 46.0,
                    60.0, 82.0, 47.0, 75.0, 52.0, 34.0, 70.0, 60.0, 66.0, 46.0, 54.0]
    after = _counted(gamma_switch[10:]).arrival_cv2
    across = _counted(gamma_switch).arrival_cv2
    assert after is not None and across is not None and across <= after
    # bursts every few intervals make many large differences: still counted
    bursty = _counted([2.0, 2.0, 40.0, 3.0, 1.0, 2.0, 35.0, 2.0, 3.0, 45.0, 1.0, 2.0, 2.0,
                       38.0, 2.0, 3.0, 1.0, 42.0, 2.0, 2.0, 3.0, 36.0, 1.0, 2.0, 44.0, 3.0])
    assert bursty.arrival_cv2 is not None and bursty.arrival_cv2 > 10.0


def test_requests_sent_together_read_as_batches_and_bursts_over_seconds_do_not() -> None:
    # Batches at Poisson times (half an interval apart on average) of geometric size, mean 5:
    # every interval's index of dispersion is E[X^2] / E[X] = 2 * 5 - 1 = 9, the batch index.
    rng = np.random.default_rng(7)
    batched = [float(rng.geometric(0.2, size=rng.poisson(0.5)).sum()) for _ in range(400)]
    grouped = _counted(batched)
    # Over seeds it reads 7.7 +- 1.2: the level-change test drops the largest differences,
    # which large batches make, so heavy-tailed batches read low.
    assert grouped.arrival_batch == pytest.approx(9.0, rel=0.4)
    # Bursts of 40 per interval lasting 3-4 intervals over 2 (Poisson counts), arrivals one at
    # a time: the dispersion grows with the interval (the largest read is far over 1) and
    # extrapolates to about 1 at a zero interval, where no two arrivals coincide.
    bursts = []
    for start in range(0, 400, 20):
        bursts += [float(rng.poisson(40.0 if 8 <= i - start < 8 + 3 + start % 2 else 2.0))
                   for i in range(start, start + 20)]
    spread = _counted(bursts)
    assert spread.arrival_cv2 is not None and spread.arrival_cv2 > 10.0
    assert spread.arrival_batch is not None and spread.arrival_batch < 2.0



def test_the_dispersion_does_not_depend_on_which_count_begins_the_groups() -> None:
    # Counts in a period of four: grouped in pairs from the first count they read a flat 10,
    # from the second 20, 0, 20, 0. A window one scrape newer read the other grouping.
    pattern = [0.0, 10.0, 10.0, 0.0] * 8
    now, newer = _counted(pattern[:28]), _counted(pattern[1:29])
    assert now.arrival_cv2 is not None and newer.arrival_cv2 is not None
    assert now.arrival_cv2 == pytest.approx(newer.arrival_cv2, rel=0.15)


def test_the_dispersion_of_a_steady_stream_is_not_read_high() -> None:
    # Gamma inter-arrivals of cv 1.5 at 7 req/s, 60 s windows of 2 s counts. The law reads
    # the largest of three interval sizes, so noise reads high; grouped from the first count
    # only, it read 2.9 on average (cv^2 2.25) and over 4.6 in one window in ten (now 2.6 and
    # 4.0: the largest of three noisy reads stays a little high).
    rng = np.random.default_rng(11)
    shape = 1 / 1.5**2
    reads = []
    for _ in range(200):
        times = np.cumsum(rng.gamma(shape, 1 / (7.0 * shape), size=800))
        counts = np.histogram(times, bins=30, range=(0.0, 60.0))[0]
        signals = _counted([float(c) for c in counts])
        assert signals.arrival_cv2 is not None
        reads.append(signals.arrival_cv2)
    assert np.mean(reads) < 2.75
    assert np.percentile(reads, 90) < 4.3


def test_long_prompts_in_bursts_show_in_the_work_not_in_the_count() -> None:
    # Ten requests every 2 s. In one interval of five, three of them are 8,000-token prompts
    # (a retrieval tenant's burst) beside chat prompts of 500: the count never varies, the
    # prefill work does.
    counts = [10.0] * 30
    tokens = [3 * 8000.0 + 7 * 500.0 if i % 5 == 0 else 10 * 500.0 for i in range(30)]
    bursty = _counted(counts, tokens)
    assert bursty.arrival_cv2 == pytest.approx(0.0, abs=1e-9)
    assert bursty.work_dispersion is not None and bursty.work_dispersion > 10.0
    # Prompts of one length: the work is the count times the prompt, its dispersion the
    # count's (here Poisson-like counts).
    steady = [6.0, 4.0, 7.0, 5.0, 8.0, 6.0, 5.0, 7.0, 4.0, 6.0, 5.0, 7.0, 6.0, 5.0, 6.0] * 2
    even = _counted(steady, [n * 500.0 for n in steady])
    assert even.work_dispersion == pytest.approx(even.arrival_cv2)


def test_a_replica_that_leaves_or_joins_is_not_a_dip_or_jump_in_arrivals() -> None:
    """10 requests every 2 s, each engine holding 3. "b" is scaled down after 10 s (the
    requests it held finish unseen); "c" joins at 14 s with 3 of that interval's 10 (the
    other 7 go to "a"). Every interval still counts 10: a scale-down once read as a dip, and
    the dip as burstiness."""
    scrapes, done = [], {"a": 0.0, "b": 0.0, "c": 0.0}
    for i in range(13):
        t = 2.0 * i
        engines = ["a", "b"] if t <= 10 else ["a"] if t < 14 else ["a", "c"]
        if i and t == 14:
            done["a"] += 7.0  # "c" holds its 3, completing none yet
        elif i:
            for e in engines:  # steady: each completes what arrives to it
                done[e] += 10.0 / len(engines)
        scrapes.append(_engine_scrape(t, {e: (0, 3, done[e], done[e]) for e in engines}))
    signals = extract(scrapes, 24.0, 24.0, 95, 30.0)
    assert isinstance(signals, Signals)
    assert signals.arrival_rate == pytest.approx(5.0)
    assert signals.arrival_cv2 == pytest.approx(0.0, abs=1e-9)


def test_requests_held_through_a_cold_start_count_when_they_arrived() -> None:
    """5 req/s while the first replica cold-starts: the gateway holds 10 more every 2 s, then
    hands its 50 to the engine ready at 10 s. Counted where they enter (the gateway's held
    requests stamped in, ``with_held``), every interval holds 10; counted at the engine
    alone, the hand-over was 60 arrivals in one interval after none: a short window read
    it as a rise to 3x the rate (a flood of 100 req/s after a 60 s cold start, which asked
    for 35 replicas to drain a backlog one replica was draining)."""
    engine = [_engine_scrape(12.0, {"a": (55, 5, 0, 0)}),
              _engine_scrape(14.0, {"a": (55, 5, 10, 10)})]  # 10 done, 10 more came
    stamped = [*(with_held(Scrape(2.0 * i), 10 * i) for i in range(6)),
               *(with_held(s, 0) for s in engine)]
    unstamped = [*(Scrape(2.0 * i) for i in range(6)), *engine]
    for window in (6.0, 60.0):
        signals = extract(stamped, 14.0, window, 95, 30.0)
        assert isinstance(signals, Signals)
        assert signals.arrival_rate == pytest.approx(5.0)
    assert signals.arrival_cv2 == pytest.approx(0.0, abs=1e-9)
    short = extract(unstamped, 14.0, 6.0, 95, 30.0)
    assert isinstance(short, Signals) and short.arrival_rate == pytest.approx(70 / 6)
