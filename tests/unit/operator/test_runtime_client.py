"""The operator's HTTP reads, against a real loopback server: Prometheus instant queries
(KUBEPLEX_SCRAPE=prometheus) and the pod URL rules."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kubeplex.operator._runtime_client import PodEndpoints, RuntimeClient
from kubeplex.operator._settings import Settings

QUERIES: list[str] = []
ANSWER = {"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {"__name__": "vllm:num_requests_waiting", "model_name": "m", "pod": "m-0"},
     "value": [0, "3"]},
    {"metric": {"__name__": "vllm:num_requests_running", "model_name": "m", "pod": "m-0"},
     "value": [0, "2"]}]}}


class Prom(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        QUERIES.append(urllib.parse.parse_qs(url.query)["query"][0])
        body = json.dumps(ANSWER).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Prom)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_prometheus_query_selects_the_model_in_its_namespace(prometheus: str) -> None:
    client = RuntimeClient(Settings(scrape_timeout_s=2))
    scrape = client.prometheus(prometheus, "m", "team-a", 100.0)
    client.close()
    assert scrape is not None
    assert scrape.total("vllm:num_requests_waiting") == 3
    assert 'model_name="m"' in QUERIES[-1] and 'namespace="team-a"' in QUERIES[-1]


def test_unreachable_sources_are_no_data_not_errors() -> None:
    client = RuntimeClient(Settings(scrape_timeout_s=0.5))
    assert client.prometheus("http://127.0.0.1:9", "m", "ns", 1.0) is None
    assert client.metrics("http://127.0.0.1:9") is None
    assert client.status("http://127.0.0.1:9") is None
    assert client.load("http://127.0.0.1:9", {}) is False
    client.close()


def test_pod_urls_from_ip_or_only_from_annotations() -> None:
    ann = {"kubeplex.io/router-url": "http://127.0.0.1:5", "kubeplex.io/control-url": "x"}
    assert PodEndpoints.of(Settings(), "10.0.0.7", ann) == PodEndpoints(
        "http://10.0.0.7:8000", "http://10.0.0.7:8001")
    assert PodEndpoints.of(Settings(url_annotations=True), "10.0.0.7", ann) == PodEndpoints(
        "http://127.0.0.1:5", "x")
    assert PodEndpoints.of(Settings(url_annotations=True), "10.0.0.7", {}) == PodEndpoints(
        None, None)
