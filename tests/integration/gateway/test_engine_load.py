"""The gateway follows the load its sim replicas' engines publish (their runtimes forward it),
and the prefix-aware router counts it; a replica whose stream breaks falls back to the
router's own view, and a least-loaded route follows nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from kubeplex.gateway import Gateway, Replica, Route
from kubeplex.runtime.harness import RuntimeProcess, model_entry
from kubeplex.runtime.kv_events import LOAD_PATH, decode_load
from kubeplex.runtime.supervisor import free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    gw = Gateway({"m": "default/m"}, hold_timeout=30, hold_limit=100,
                 retry_after=lambda model: 1.0)
    port = free_port()
    runner = await gw.open("127.0.0.1", port)
    try:
        yield gw, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await gw.close()


def _runtime(tmp_path: Path, name: str) -> RuntimeProcess:
    return RuntimeProcess({"models": [model_entry("m", "sim", memory_share=0.5)]},
                          tmp_path / name)


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(200):  # 10 s
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_the_runtime_streams_its_sim_engines_queue(tmp_path: Path) -> None:
    with _runtime(tmp_path, "a") as rt:
        async with httpx.AsyncClient(base_url=rt.url, timeout=30) as client:
            missing = await client.get(f"{LOAD_PATH}/other")
            assert missing.status_code == 404 and "other" in missing.json()["error"]["message"]
            body = {"model": "m", "prompt": "x", "prompt_tokens": 20_000, "max_tokens": 4}
            queued = [asyncio.create_task(client.post("/v1/completions", json=body))
                      for _ in range(6)]
            seen = []
            async with client.stream("GET", f"{LOAD_PATH}/m") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        seen.append(decode_load(line[6:], time.monotonic()))
                    if any(s.prefill_tokens for s in seen) and len(seen) >= 3:
                        break
            await asyncio.gather(*queued)
    # Six 20,000-token prompts at once: the first steps run while the others wait.
    assert max(s.prefill_tokens for s in seen) >= 20_000
    assert max(s.waiting for s in seen) >= 1


async def test_a_prefix_aware_route_follows_its_replicas_and_forgets_a_dead_one(
        gateway, tmp_path: Path) -> None:
    gw, _ = gateway
    with _runtime(tmp_path, "a") as a, _runtime(tmp_path, "b") as b:
        ra, rb = Replica("m", "a", a.url), Replica("m", "b", b.url)
        gw.add(ra)
        gw.add(rb)
        router = gw.routers["m"]
        await _until(lambda: router._state(ra).load is not None
                     and router._state(rb).load is not None)
        assert gw.loads.following(ra) and gw.loads.following(rb)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)  # its stream breaks: back to the own view
        await _until(lambda: router._state(ra).load is None)
        assert router._state(rb).load is not None
        gw.remove("m", "b")
        assert not gw.loads.following(rb)
        # A least-loaded route has no use for queues: it follows nothing.
        gw.set_routes({"m": Route.of_key("m", "default/m", "least-loaded")})
        assert not gw.loads.following(ra)
