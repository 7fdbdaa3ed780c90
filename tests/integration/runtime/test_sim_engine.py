"""The sim engine as its own process, and runtime behaviour only the sim can show quickly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubeplex.placement.llm import profile
from kubeplex.runtime.harness import RuntimeProcess, model_entry
from kubeplex.runtime.supervisor import free_port

pytestmark = pytest.mark.timeout(120)


def _start_sim(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kubeplex.runtime.sim", "--port", str(port),
                             "--served-model-name", "m", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _wait_up(proc: subprocess.Popen[bytes], url: str, timeout: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read().decode() if proc.stdout else "exited")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            time.sleep(0.02)
    raise TimeoutError(url)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def sim() -> Iterator[str]:
    proc, url = _start_sim("--max-num-seqs", "2")
    try:
        _wait_up(proc, url)
        yield url
    finally:
        _stop(proc)


def _gauge(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return float(family.samples[0].value)
    raise KeyError(name)


async def test_waiting_queue_shows_in_metrics_and_costs_ttft(sim: str) -> None:
    """6 requests, 2 sequence slots: 4 wait (FCFS), and waiting shows in TTFT."""
    body = {"model": "m", "prompt": "x", "max_tokens": 40}
    async with httpx.AsyncClient(timeout=60) as client:
        tasks = [asyncio.create_task(client.post(sim + "/v1/completions", json=body))
                 for _ in range(6)]
        seen_waiting = seen_running = 0.0
        while not all(t.done() for t in tasks):
            text = (await client.get(sim + "/metrics")).text
            seen_waiting = max(seen_waiting, _gauge(text, "vllm:num_requests_waiting"))
            seen_running = max(seen_running, _gauge(text, "vllm:num_requests_running"))
            await asyncio.sleep(0.01)
        assert all(t.result().status_code == 200 for t in tasks)
        text = (await client.get(sim + "/metrics")).text
    assert seen_running == 2
    assert seen_waiting == 4
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ttft = {s.name: s.value for s in families["vllm:time_to_first_token_seconds"].samples}
    assert ttft["vllm:time_to_first_token_seconds_count"] == 6
    # The last pair waited for two whole 40-token requests ahead of it: its TTFT includes at
    # least 2 x 39 decode steps of the 8B/H100 profile (lower bounds only: the machine is slow).
    prof = profile("llama-3.1-8b", "H100-80GB")
    floor = 2 * 39 * prof.decode_step_seconds(2, 20)
    assert ttft["vllm:time_to_first_token_seconds_sum"] > floor
    queue = {s.name: s.value for s in families["vllm:request_queue_time_seconds"].samples}
    assert queue["vllm:request_queue_time_seconds_sum"] > floor
    success = [s for s in families["vllm:request_success"].samples
               if s.labels.get("finished_reason") == "length" and s.name.endswith("_total")]
    assert success[0].value == 6


def _counter(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise KeyError(name)


def _histogram_count(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name.endswith("_count"))
    raise KeyError(name)


def test_tokens_are_counted_as_they_are_made_like_vllm(sim: str) -> None:
    """vLLM counts a request's prompt tokens (and its TTFT) when its prefill finishes and its
    output tokens step by step, so a long request shows in the counters while it runs."""
    body = {"model": "m", "prompt": "x", "prompt_tokens": 1000, "max_tokens": 400,
            "stream": True}
    with httpx.stream("POST", sim + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        next(chunks)  # the first token is out: the prefill is done
        text = httpx.get(sim + "/metrics").text
        assert _gauge(text, "vllm:num_requests_running") == 1  # still generating
        assert _counter(text, "vllm:prompt_tokens") == 1000
        assert _histogram_count(text, "vllm:time_to_first_token_seconds") == 1
        assert _counter(text, "vllm:request_success") == 0
        early = _counter(text, "vllm:generation_tokens")
        assert 1 <= early < 400
        for _ in range(5):  # a few more decode steps
            next(chunks)
        later = _counter(httpx.get(sim + "/metrics").text, "vllm:generation_tokens")
        assert early < later < 400
        for _ in chunks:
            pass
    text = httpx.get(sim + "/metrics").text
    assert _counter(text, "vllm:prompt_tokens") == 1000  # counted once
    assert _counter(text, "vllm:generation_tokens") == 400
    assert _histogram_count(text, "vllm:inter_token_latency_seconds") == 399
    assert _histogram_count(text, "vllm:request_prompt_tokens") == 1


def test_prompt_token_hint_and_context_limit(sim: str) -> None:
    r = httpx.post(sim + "/v1/completions", json={"model": "m", "prompt": "x",
                                                  "prompt_tokens": 1000, "max_tokens": 2})
    assert r.status_code == 200
    assert r.json()["usage"] == {"prompt_tokens": 1000, "completion_tokens": 2,
                                 "total_tokens": 1002}
    r = httpx.post(sim + "/v1/completions", json={"model": "m", "prompt": "x",
                                                  "max_tokens": 10**7})
    assert r.status_code == 400
    assert "maximum context length" in r.json()["error"]["message"]
    r = httpx.post(sim + "/v1/completions", json={"model": "other", "prompt": "x"})
    assert r.status_code == 404


def test_startup_delay_is_simulated() -> None:
    proc, url = _start_sim("--startup-seconds", "4", "--time-scale", "0.25")
    try:
        assert _wait_up(proc, url) >= 1.0  # 4 simulated seconds at 4x speed
    finally:
        _stop(proc)


def test_weights_that_do_not_fit_fail_like_vllm() -> None:
    proc, _ = _start_sim("--model-profile", "llama-3.1-70b", "--gpu", "L4")
    assert proc.wait(30) == 1
    assert proc.stdout is not None
    output = proc.stdout.read()
    proc.stdout.close()
    assert b"no memory left for the KV cache" in output


def test_sim_sleep_mode_through_the_runtime(tmp_path: Path) -> None:
    """With sleepMode: true the sim sleeps and wakes like vLLM on GPU (the default is 409)."""
    config = {"models": [model_entry("s", "sim", sleepMode=True, memory_share=0.5)]}
    with RuntimeProcess(config, tmp_path) as rt:
        r = httpx.post(rt.control + "/kubeplex/v1/models/s/sleep?level=1", timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "sleeping"
        r = httpx.post(rt.url + "/v1/completions", json={"model": "s", "prompt": "x"})
        assert r.status_code == 503
        assert "Retry-After" in r.headers
        # A standby whose only model sleeps is healthy and claimable: Ready (routing is by
        # the pod's model labels, not by readiness).
        ready = httpx.get(rt.control + "/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["reason"] == "1 model(s): 1 sleeping"
        metrics = httpx.get(rt.url + "/metrics").text
        assert 'vllm:engine_sleep_state{engine="0",model_name="s",sleep_state="awake"} 0.0' \
            in metrics
        assert httpx.post(rt.control + "/kubeplex/v1/models/s/sleep").status_code == 409
        r = httpx.post(rt.control + "/kubeplex/v1/models/s/wake", timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "ready"
        assert httpx.post(rt.url + "/v1/completions",
                          json={"model": "s", "prompt": "x"}).status_code == 200
        assert httpx.post(rt.control + "/kubeplex/v1/models/s/wake").status_code == 409


async def test_unloading_one_model_keeps_the_pod_ready_for_the_others(tmp_path: Path) -> None:
    """While a model drains for unload, /readyz stays 200 and the other model serves (a
    shared pod must not drop out of its other models' Services)."""
    config = {"models": [model_entry("a", "sim", memory_share=0.4),
                         model_entry("b", "sim", memory_share=0.4)]}
    with RuntimeProcess(config, tmp_path) as rt:
        async with httpx.AsyncClient(timeout=60) as client:
            long = asyncio.create_task(client.post(
                rt.url + "/v1/completions",
                json={"model": "b", "prompt": "x", "max_tokens": 200}))  # ~2 s
            for _ in range(1000):  # until it is in flight (bounded)
                if (await client.get(rt.control + "/kubeplex/v1/status")).json()["inFlight"]:
                    break
                await asyncio.sleep(0.01)
            unload = asyncio.create_task(client.delete(rt.control + "/kubeplex/v1/models/b"))
            for _ in range(1000):
                states = {m["name"]: m["state"] for m in
                          (await client.get(rt.control + "/kubeplex/v1/status")).json()["models"]}
                if states.get("b") == "draining":
                    break
                await asyncio.sleep(0.01)
            assert states == {"a": "ready", "b": "draining"}
            ready = await client.get(rt.control + "/readyz")
            assert ready.status_code == 200, ready.text
            assert (await client.post(rt.url + "/v1/completions",
                                      json={"model": "a", "prompt": "x"})).status_code == 200
            assert (await long).status_code == 200
            assert (await unload).json()["drained"] is True
            assert [m["name"] for m in rt.status()["models"]] == ["a"]


def test_served_names_with_slashes_route_and_control(tmp_path: Path) -> None:
    """``org/model`` names (OpenAI style) work in requests and in the control API's paths."""
    name = "meta-llama/Llama-3.1-8B-Instruct"
    config = {"models": [model_entry(name, "sim", sleepMode=True, memory_share=0.5)]}
    with RuntimeProcess(config, tmp_path) as rt:
        r = httpx.post(rt.url + "/v1/completions", json={"model": name, "prompt": "x"},
                       timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == name
        assert [m["id"] for m in httpx.get(rt.url + "/v1/models").json()["data"]] == [name]
        base = f"{rt.control}/kubeplex/v1/models/{name}"
        assert httpx.post(base + "/sleep", timeout=30).json()["state"] == "sleeping"
        assert httpx.post(base + "/wake", timeout=60).json()["state"] == "ready"
        assert httpx.delete(base, timeout=60).status_code == 200
        assert httpx.post(rt.url + "/v1/completions",  # just unloaded: 503, not 404
                          json={"model": name, "prompt": "x"}).status_code == 503


async def test_drain_endpoint_finishes_in_flight_then_stays_up(tmp_path: Path) -> None:
    """POST /kubeplex/v1/drain (what the operator and local mode call): new requests get 503
    at once, the one in flight finishes, ``wait=true`` returns when the engines are stopped,
    and the process stays up (drained, not ready) until SIGTERM."""
    config = {"models": [model_entry("s", "sim", memory_share=0.5)]}
    with RuntimeProcess(config, tmp_path) as rt:
        async with httpx.AsyncClient(timeout=60) as client:
            running = asyncio.create_task(client.post(
                rt.url + "/v1/completions",
                json={"model": "s", "prompt": "x", "max_tokens": 100}))  # ~1 s
            for _ in range(1000):  # until the request is in flight (bounded)
                status = (await client.get(rt.control + "/kubeplex/v1/status")).json()
                if status["inFlight"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert status["inFlight"] == 1
            r = await client.post(rt.control + "/kubeplex/v1/drain")
            assert r.status_code == 202
            assert r.json()["state"] == "draining"
            late = await client.post(rt.url + "/v1/completions",
                                     json={"model": "s", "prompt": "x"})
            assert late.status_code == 503
            assert late.headers["Retry-After"] == "1"
            r = await client.post(rt.control + "/kubeplex/v1/drain?wait=true")
            assert r.status_code == 200
            assert r.json()["state"] == "drained"
            assert r.json()["models"][0]["state"] == "stopped"
            finished = await running
            assert finished.status_code == 200
            assert finished.json()["usage"]["completion_tokens"] == 100
            assert (await client.get(rt.control + "/healthz")).status_code == 200
            assert (await client.get(rt.control + "/readyz")).status_code == 503
        assert rt.proc is not None
        assert rt.proc.poll() is None  # still up until told to stop
        assert rt.stop() == 0


def test_engine_that_cannot_start_backs_off_and_others_serve(tmp_path: Path) -> None:
    config = {"models": [model_entry("good", "sim", memory_share=0.5),
                         model_entry("bad", "sim", sim_profile="no-such-model",
                                     memory_share=0.5)],
              "restartInitialSeconds": 0.2, "restartMaxSeconds": 0.8}
    with RuntimeProcess(config, tmp_path, wait_ready=False) as rt:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            bad = rt.engine("bad")
            if bad["restarts"] >= 3:
                break
            time.sleep(0.1)
        assert bad["restarts"] >= 3
        assert bad["lastExitCode"] == 1
        assert any("unknown model 'no-such-model'" in line for line in bad["logTail"])
        assert rt.engine("good")["state"] == "ready"
        ready = httpx.get(rt.control + "/readyz")
        assert ready.status_code == 503
        assert "bad" in ready.json()["reason"]
        assert httpx.post(rt.url + "/v1/completions",
                          json={"model": "good", "prompt": "x"}).status_code == 200
        r = httpx.post(rt.url + "/v1/completions", json={"model": "bad", "prompt": "x"})
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) >= 1


def test_load_refuses_a_model_that_cannot_start_here(tmp_path: Path) -> None:
    with RuntimeProcess({"models": [], "device": "cpu"}, tmp_path) as rt:
        r = httpx.post(rt.control + "/kubeplex/v1/models",
                       json={"name": "v", "engine": "vllm", "model": "/models/x",
                             "sleepMode": True})
        assert r.status_code == 400
        assert "sleepMode needs a GPU" in r.json()["error"]
        assert rt.status()["models"] == []
        assert httpx.get(rt.control + "/readyz").status_code == 200  # nothing to wait for


def test_invalid_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  - {name: a, engine: sim, model: llama-3.1-8b}\n"
                    "  - {name: b, engine: sim, model: llama-3.1-8b, memoryShare: 1.5}\n")
    out = subprocess.run([sys.executable, "-m", "kubeplex.runtime", "--config", str(path)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2
    assert "models[1].memoryShare: must be in (0, 1], got 1.5" in out.stderr
    assert "Traceback" not in out.stderr
