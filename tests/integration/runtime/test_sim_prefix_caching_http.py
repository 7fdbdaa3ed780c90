"""The sim engine's prefix cache over HTTP: text prompts and trace block ids hit like vLLM's
automatic prefix caching, and vLLM's counters say so."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubeplex.runtime.supervisor import free_port

pytestmark = pytest.mark.timeout(120)
SHARED = "the shared system prompt of this test " * 40  # 1,520 characters: 23 full blocks


@pytest.fixture(params=["on", "off"])
def sim(request: pytest.FixtureRequest) -> Iterator[tuple[str, bool]]:
    port = free_port()
    flag = "--enable-prefix-caching" if request.param == "on" else "--no-enable-prefix-caching"
    proc = subprocess.Popen([sys.executable, "-m", "kubeplex.runtime.sim", "--port", str(port),
                             "--served-model-name", "m", flag], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError("the sim exited")
            time.sleep(0.05)
        yield url, request.param == "on"
    finally:
        proc.terminate()
        proc.wait(10)


def _counters(url: str) -> tuple[float, float]:
    values = {s.name: s.value
              for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)
              for s in f.samples}
    return values["vllm:prefix_cache_hits_total"], values["vllm:prefix_cache_queries_total"]


def _complete(url: str, **body: object) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"model": "m", "max_tokens": 2, **body},
                      timeout=30)


def test_a_repeated_prefix_is_served_from_the_cache(sim: tuple[str, bool]) -> None:
    url, caching = sim
    assert _complete(url, prompt=SHARED + "first question").status_code == 200
    hits, queries = _counters(url)
    assert hits == 0 and queries > 0
    assert _complete(url, prompt=SHARED + "second question").status_code == 200
    hits, _ = _counters(url)
    # 23 full 64-character blocks of the shared text (16 tokens each) when caching is on.
    assert hits == (23 * 16 if caching else 0)


def test_trace_block_ids_hit_in_their_own_block_size(sim: tuple[str, bool]) -> None:
    url, caching = sim
    body = {"prompt_tokens": 2000, "block_hashes": [1, 2, 3, 4], "block_size": 512}
    assert _complete(url, **body).status_code == 200
    assert _complete(url, **{**body, "block_hashes": [1, 2, 9, 9]}).status_code == 200
    hits, queries = _counters(url)
    assert queries == 4000 and hits == (1024 if caching else 0)  # blocks 1 and 2


@pytest.mark.parametrize(("field", "value", "message"), [
    ("block_hashes", "abc", "block_hashes must be a list"),
    ("block_hashes", [1.5], "block id must be an integer or a string"),
    ("block_size", 0, "block_size must be a positive integer"),
])
def test_bad_block_ids_are_refused_with_400(sim: tuple[str, bool], field: str, value: object,
                                            message: str) -> None:
    url, _ = sim
    body = {"prompt": "x", "block_hashes": [1], field: value}
    answer = _complete(url, **body)
    assert answer.status_code == 400
    assert message in answer.json()["error"]["message"]
