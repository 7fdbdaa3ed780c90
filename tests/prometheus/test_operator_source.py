"""The operator's Prometheus signal source against a real Prometheus: it scrapes two real
``kubeplex-runtime`` processes (``sim`` engine) and a text exporter standing in for the cluster
gateway; the operator's own code path for ``KUBEPLEX_SCRAPE=prometheus``
(:meth:`RuntimeClient.prometheus` per model, :meth:`RuntimeClient.held_requests` once per cycle)
must give the same :class:`~kubeplex.autoscaler.signals.Signals` as scraping the same processes
directly (``KUBEPLEX_SCRAPE=pods``), within what Prometheus' sampling explains.

**Why the tolerances.** The Prometheus source asks instant queries for the raw series, and
the same pure code as direct scraping turns them into rates and quantiles. An instant query
returns each series' newest sample, scraped up to one scrape interval (1 s here) before the
query; a direct read at the same moment is fresh. So each end of a rate window is shifted by a
lag in [0, 1 s] (plus scrape duration), and the two lags differ by at most ~1 s: the increase
counted over the window differs by at most the arrivals of ~1 s (one interval at each end in
the worst case) plus one request per end for counting whole requests, i.e. a relative error
of at most ``(2 x interval) / window + 2 / (rate x window)``. PromQL's own ``rate()`` (checked
too) extrapolates to the range's ends from the samples inside it, so it errs by about one
sample interval over the range as well. The TTFT percentile interpolates linearly inside a
histogram bucket: shifted windows move the rank by a few requests, so the two estimates may
differ by up to the width of the bucket holding them. Gauges (waiting, running, held) are
equal once Prometheus has scraped the state (waited for, bounded by a few intervals).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from promstack import PromStack, ScrapeTarget, TextExporter

from kubeplex.autoscaler.metrics import TTFT_BUCKETS, Scrape
from kubeplex.autoscaler.signals import Signals, extract
from kubeplex.autoscaler.sources import merge, parse_held_text, parse_metrics_text
from kubeplex.operator._runtime_client import HeldRequests, RuntimeClient
from kubeplex.operator._settings import Settings
from kubeplex.runtime.harness import RuntimeProcess, model_entry

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

NAMESPACE = "team-a"
MODELSERVICE = "chat"
MODEL = "org/llama-8b"
RUNTIMES = 2
#: Concurrent sequences per sim engine: the long-request phase fills them, the rest waits.
MAX_NUM_SEQS = 2
#: Steady load: requests per second over both runtimes, short outputs (no queueing).
RATE = 6.0
SHORT_TOKENS = 4
#: The rate window (the autoscaler's stable window in tests) and how long the load runs.
WINDOW_S = 10.0
LOAD_S = WINDOW_S + 4.0
#: Prometheus' scrape interval (tests/promstack.py INTERVAL).
SCRAPE_S = 1.0
#: Long requests per runtime in the queueing phase: ~10 s each on the sim's H100 8B profile
#: (~6.7 ms a token at batch 2, measured), so the queue holds for many scrape intervals, and
#: the two rounds end soon after the test (the runtimes drain them at teardown).
LONG_PER_RUNTIME = 4
LONG_TOKENS = 1500
PERCENTILE = 95.0


@pytest.fixture
def runtimes(tmp_path: Path) -> Iterator[list[RuntimeProcess]]:
    config = {"models": [model_entry(MODEL, "sim", sim_args=(
        "--max-num-seqs", str(MAX_NUM_SEQS)))]}
    with ExitStack() as stack:
        yield [stack.enter_context(RuntimeProcess(config, tmp_path / f"rt{i}"))
               for i in range(RUNTIMES)]


HELD = {(NAMESPACE, MODELSERVICE, MODEL): 3, (NAMESPACE, "other", "other"): 1,
        ("team-b", MODELSERVICE, MODEL): 2}


@pytest.fixture
def gateway() -> Iterator[tuple[str, CollectorRegistry]]:
    """The gateway's held-requests gauge (its contract), served in the text format."""
    registry = CollectorRegistry()
    gauge = Gauge("kubeplex_gateway_held_requests", "held", ["namespace", "modelservice",
                                                             "model"], registry=registry)
    for labels, n in HELD.items():
        gauge.labels(*labels).set(n)
    with TextExporter(registry) as exporter:
        yield exporter.address, registry


def direct(client: RuntimeClient, urls: list[str], now: float) -> Scrape:
    """What KUBEPLEX_SCRAPE=pods records for the model: every runtime's /metrics, merged."""
    scrapes = []
    for url in urls:
        text = client.metrics(url)
        assert text is not None, f"cannot scrape {url}"
        scrapes.append(parse_metrics_text(text, MODEL, now, target=url))
    return merge(scrapes, now)


def post(url: str, tokens: int, i: int) -> int:
    rsp = httpx.post(f"{url}/v1/completions", timeout=300, json={
        "model": MODEL, "prompt": f"request {i}", "max_tokens": tokens})
    return rsp.status_code


def steady_load(urls: list[str], stop: threading.Event) -> list[int]:
    """RATE requests/s, alternating runtimes, for LOAD_S seconds (bounded)."""
    with ThreadPoolExecutor(32) as pool:
        futures = []
        start = time.monotonic()
        for i in range(int(RATE * LOAD_S)):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if stop.is_set():
                break
            futures.append(pool.submit(post, urls[i % len(urls)], SHORT_TOKENS, i))
        return [f.result() for f in futures]


def bucket_width(value: float) -> float:
    """Width of the TTFT bucket holding ``value`` (vLLM's bounds)."""
    lower = 0.0
    for bound in TTFT_BUCKETS:
        if value <= bound:
            return bound - lower
        lower = bound
    return float("inf")


def test_prometheus_source_matches_direct_scrapes(
        promstack: Callable[..., PromStack], runtimes: list[RuntimeProcess],
        gateway: tuple[str, CollectorRegistry]) -> None:
    urls = [rt.url for rt in runtimes]
    stack = promstack(
        targets=[*(ScrapeTarget(f"kubeplex-runtime-{i}", url.removeprefix("http://"),
                                labels={"namespace": NAMESPACE}) for i, url in enumerate(urls)),
                 ScrapeTarget("kubeplex-gateway", gateway[0], honor_labels=True)],
        rules="groups: []\n", webhook_url="http://127.0.0.1:9/alerts")
    settings = Settings(scrape="prometheus", prometheus_url=stack.prometheus_url,
                        scrape_timeout_s=5.0)
    client = RuntimeClient(settings)
    try:
        _check_held(stack, client, gateway[1])
        _check_rates(stack, client, urls)
        _check_queue(stack, client, urls)
    finally:
        client.close()


def _check_held(stack: PromStack, client: RuntimeClient, registry: CollectorRegistry) -> None:
    direct_held = parse_held_text(generate_latest(registry).decode())
    expected = {f"{ns}/{m}": n for (ns, m), n in direct_held.items()}
    assert expected == {"team-a/chat": 3, "team-a/other": 1, "team-b/chat": 2}
    # the gateway target is up (start() waited), so its samples are in Prometheus already
    assert client.held_requests() == HeldRequests(expected)


def _sample(client: RuntimeClient, urls: list[str], stack: PromStack,
            direct_scrapes: list[Scrape], prom_scrapes: list[Scrape]) -> None:
    now = time.time()
    direct_scrapes.append(direct(client, urls, now))
    scrape = client.prometheus(stack.prometheus_url, MODEL, NAMESPACE, now)
    assert scrape is not None, "the operator's Prometheus query failed"
    prom_scrapes.append(scrape)


def _check_rates(stack: PromStack, client: RuntimeClient, urls: list[str]) -> None:
    stack.wait_for(lambda: len(stack.query(
        f'vllm:num_requests_running{{model_name="{MODEL}",namespace="{NAMESPACE}"}}'))
        == RUNTIMES, "both runtimes' vLLM series in Prometheus")
    direct_scrapes: list[Scrape] = []
    prom_scrapes: list[Scrape] = []
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(steady_load, urls, stop)
        try:
            # sample the way the operator does (every cycle; here every scrape interval)
            deadline = time.monotonic() + LOAD_S - 1.0
            while time.monotonic() < deadline:
                _sample(client, urls, stack, direct_scrapes, prom_scrapes)
                time.sleep(SCRAPE_S)
            promql_rate = sum(float(s["value"][1]) for s in stack.query(
                f'sum(rate(vllm:request_success_total{{model_name="{MODEL}",'
                f'namespace="{NAMESPACE}"}}[{WINDOW_S:.0f}s]))'))
            _sample(client, urls, stack, direct_scrapes, prom_scrapes)
        finally:
            stop.set()
            codes = load.result()
    assert codes and set(codes) == {200}
    now = direct_scrapes[-1].time
    got_direct = extract(direct_scrapes, now, WINDOW_S, PERCENTILE, 3 * WINDOW_S)
    got_prom = extract(prom_scrapes, now, WINDOW_S, PERCENTILE, 3 * WINDOW_S)
    assert isinstance(got_direct, Signals), got_direct
    assert isinstance(got_prom, Signals), got_prom
    print(f"\ndirect: arrivals {got_direct.arrival_rate:.2f}/s completions "
          f"{got_direct.completion_rate:.2f}/s p95 TTFT {got_direct.ttft_quantile}; "
          f"prometheus: arrivals {got_prom.arrival_rate:.2f}/s completions "
          f"{got_prom.completion_rate:.2f}/s p95 TTFT {got_prom.ttft_quantile}; "
          f"PromQL rate(): {promql_rate:.2f}/s")
    assert got_prom.instances == got_direct.instances == RUNTIMES
    # the load really ran at about RATE (the machine is shared: generous), so the bound is real
    assert 0.5 * RATE < got_direct.arrival_rate < 1.5 * RATE
    span = got_direct.window_s
    tolerance = 2 * SCRAPE_S / span + 2 / (got_direct.arrival_rate * span)
    for name in ("arrival_rate", "completion_rate"):
        d, p = getattr(got_direct, name), getattr(got_prom, name)
        assert abs(p - d) <= tolerance * d, (name, d, p, tolerance)
    assert abs(promql_rate - got_direct.completion_rate) <= tolerance * got_direct.completion_rate
    assert got_direct.ttft_quantile is not None and got_prom.ttft_quantile is not None
    assert abs(got_prom.ttft_quantile - got_direct.ttft_quantile) <= bucket_width(
        got_direct.ttft_quantile), (got_direct.ttft_quantile, got_prom.ttft_quantile)


def _check_queue(stack: PromStack, client: RuntimeClient, urls: list[str]) -> None:
    """Long requests fill every engine: MAX_NUM_SEQS run, the rest wait, for many scrapes."""
    waiting = RUNTIMES * (LONG_PER_RUNTIME - MAX_NUM_SEQS)
    running = RUNTIMES * MAX_NUM_SEQS
    pool = ThreadPoolExecutor(RUNTIMES * LONG_PER_RUNTIME)
    futures = [pool.submit(post, url, LONG_TOKENS, i) for url in urls
               for i in range(LONG_PER_RUNTIME)]
    try:
        def state(scrape: Scrape | None) -> tuple[float | None, float | None]:
            if scrape is None:
                return None, None
            return scrape.total("vllm:num_requests_waiting"), scrape.total(
                "vllm:num_requests_running")

        # direct reads see the queue at once; Prometheus after its next scrape (<= a few s)
        assert stack.wait_for(lambda: state(direct(client, urls, time.time())) == (
            waiting, running), "the queue built up in the engines", 30.0)
        stack.wait_for(lambda: state(client.prometheus(
            stack.prometheus_url, MODEL, NAMESPACE, time.time())) == (waiting, running),
            "the operator's Prometheus source sees it", 5 * SCRAPE_S)
        # and both agree at one moment (the long requests hold this state for many seconds)
        now = time.time()
        assert state(direct(client, urls, now)) == state(client.prometheus(
            stack.prometheus_url, MODEL, NAMESPACE, now)) == (waiting, running)
    finally:
        # the long requests end when the runtimes stop (fixture teardown): do not wait here
        pool.shutdown(wait=False, cancel_futures=True)
        del futures
