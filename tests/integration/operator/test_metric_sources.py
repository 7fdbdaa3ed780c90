"""The operator's metric reads against real HTTP: a vLLM-style /metrics endpoint on loopback,
scraped directly (``RuntimeClient.metrics``) and through a real Prometheus
(``RuntimeClient.prometheus``); both parse into the same signals."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from kubeplex.autoscaler import Signals, extract
from kubeplex.autoscaler.metrics import COMPLETIONS, RUNNING, TTFT, WAITING, Scrape
from kubeplex.autoscaler.sources import parse_metrics_text
from kubeplex.operator._runtime_client import RuntimeClient
from kubeplex.operator._settings import Settings
from kubeplex.runtime.supervisor import free_port


@pytest.fixture(scope="module")
def client() -> Iterator[RuntimeClient]:
    """One client for the module, closed after it (its pooled connections with it)."""
    runtime = RuntimeClient(Settings(scrape_timeout_s=5.0))
    yield runtime
    runtime.close()


def scrape(client: RuntimeClient, address: str, now: float) -> Scrape:
    text = client.metrics(f"http://{address}")
    assert text is not None, f"no /metrics from {address}"
    return parse_metrics_text(text, "llama", now, target=address)

TEMPLATE = """\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="llama"}} {waiting}
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="llama"}} {running}
# TYPE vllm:request_success_total counter
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="llama"}} {done}
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="other"}} 5
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.5",model_name="llama"}} {fast}
vllm:time_to_first_token_seconds_bucket{{engine="0",le="1.0",model_name="llama"}} {done}
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="llama"}} {done}
vllm:time_to_first_token_seconds_count{{engine="0",model_name="llama"}} {done}
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="llama"}} 1.0
"""


class Engine:
    """A fake engine's metric state, served as Prometheus text."""

    def __init__(self) -> None:
        self.waiting, self.running, self.done, self.fast = 2, 8, 100, 90

    def text(self) -> str:
        return TEMPLATE.format(waiting=self.waiting, running=self.running, done=self.done,
                               fast=self.fast)


@pytest.fixture
def engine() -> Iterator[tuple[Engine, str]]:
    state = Engine()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = state.text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_direct_scrape_over_http(engine: tuple[Engine, str], client: RuntimeClient) -> None:
    state, address = engine
    first = scrape(client, address, 0.0)
    state.done, state.fast, state.waiting = 120, 100, 4
    second = scrape(client, address, 10.0)
    assert first.total(WAITING) == 2 and first.total(RUNNING) == 8
    assert second.total(COMPLETIONS) == 120  # the other model's 5 are not counted
    signals = extract([first, second], 10.0, 60.0, 95, 30.0)
    assert isinstance(signals, Signals)
    assert signals.completion_rate == 2.0
    assert signals.arrival_rate == pytest.approx(2.2)  # 20 done + 2 more waiting, over 10 s
    # 20 first tokens: 10 under 0.5 s, 10 in (0.5, 1]; rank 19 -> 0.5 + 0.5 * 9/10
    assert signals.ttft_quantile == pytest.approx(0.95)


def test_an_unreachable_runtime_gives_no_scrape(client: RuntimeClient) -> None:
    assert client.metrics("http://127.0.0.1:9") is None


PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def prometheus(engine: tuple[Engine, str], tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the engine every second; yields its base URL."""
    if PROMETHEUS is None:
        pytest.skip("the prometheus binary is not installed (Debian package prometheus; the "
                    "Helm area's setup script installs it)")
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                      "scrape_configs:\n  - job_name: vllm\n    static_configs:\n"
                      f"      - targets: ['{engine[1]}']\n")
    port = free_port()
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.prometheus
async def test_prometheus_source_matches_the_direct_scrape(engine: tuple[Engine, str],
                                                           prometheus: str,
                                                           client: RuntimeClient) -> None:
    state, address = engine
    base = prometheus
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + 60
        while True:  # wait for the first scrape: up == 1, never a guessed sleep
            try:
                up = (await http.get(f"{base}/api/v1/query", params={"query": "up"})).json()
                if any(r["value"][1] == "1" for r in up["data"]["result"]):
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("Prometheus never scraped the engine within 60 s")
            await asyncio.sleep(0.2)
    through = client.prometheus(base, "llama", None, 1.0)
    direct = scrape(client, address, 1.0)
    assert client.prometheus("http://127.0.0.1:9", "llama", None, 1.0) is None
    assert through is not None
    for name in (WAITING, RUNNING, COMPLETIONS):
        assert through.total(name) == direct.total(name), name
    (buckets,) = through.histograms[TTFT].values()
    (expected,) = direct.histograms[TTFT].values()
    assert buckets == expected
    assert state.done == 100
