"""The gateway sends a request refused by a leaving replica (503 before any byte) once more.

Real ``kubeplex-runtime`` processes with sim engines behind an in-process gateway. The
replica is drained *without* telling the gateway first: the window between the operator
draining a pod and the endpoint update reaching the gateway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kubeplex.gateway import Gateway, Replica
from kubeplex.runtime.harness import RuntimeProcess, model_entry
from kubeplex.runtime.supervisor import free_port

pytestmark = pytest.mark.timeout(180)

RETRIES = 'kubeplex_gateway_retries_total{model="m",modelservice="m",namespace="default"}'
#: The sim's 8B/H100 profile decodes a token in about 9 ms: 40 tokens take ~0.4 s.
TOKENS = 40


def _runtime(tmp_path: Path, name: str) -> RuntimeProcess:
    config = {"models": [model_entry("m", "sim", memory_share=0.5)],
              "drainGraceSeconds": 60}
    return RuntimeProcess(config, tmp_path / name)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str, list[str]]]:
    held: list[str] = []
    gw = Gateway({"m": "default/m"}, hold_timeout=60, hold_limit=100,
                 retry_after=lambda model: 3.0, on_hold=held.append)
    port = free_port()
    runner = await gw.open("127.0.0.1", port)
    try:
        yield gw, f"http://127.0.0.1:{port}", held
    finally:
        await runner.cleanup()
        await gw.close()


async def _retries(client: httpx.AsyncClient) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(RETRIES):
            return float(line.split()[-1])
    raise AssertionError("no kubeplex_gateway_retries_total series for m")


async def _request(client: httpx.AsyncClient, stream: bool) -> tuple[int, int]:
    """(status, completion tokens) of one request, streamed or not."""
    body = {"model": "m", "prompt": "x", "max_tokens": TOKENS, "stream": stream,
            "stream_options": {"include_usage": True}}
    if not stream:
        answer = await client.post("/v1/completions", json=body)
        tokens = answer.json()["usage"]["completion_tokens"] if answer.status_code == 200 else 0
        return answer.status_code, tokens
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as answer:
        async for line in answer.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                tokens = usage["completion_tokens"] if usage else tokens
        return answer.status_code, tokens


async def test_draining_replica_costs_clients_nothing(gateway, tmp_path: Path) -> None:
    """Two replicas; one drains while requests flow and the gateway still routes to it: every
    request succeeds (the refused ones went to the other replica) and retries are counted."""
    gw, url, held = gateway
    with _runtime(tmp_path, "a") as a, _runtime(tmp_path, "b") as b:
        gw.add(Replica("m", "a", a.url))
        gw.add(Replica("m", "b", b.url))
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async def flow() -> list[tuple[int, int]]:
                tasks = []
                for i in range(60):  # 60 requests over ~3 s, half of them streamed
                    tasks.append(asyncio.create_task(_request(client, stream=i % 2 == 0)))
                    await asyncio.sleep(0.05)
                return list(await asyncio.gather(*tasks))

            flowing = asyncio.create_task(flow())
            await asyncio.sleep(1.0)
            drain = await client.post(a.control + "/kubeplex/v1/drain")
            assert drain.status_code == 202
            results = await flowing
            retries = await _retries(client)
            # The drained replica refuses with 503 itself (what a client would have seen).
            direct = await client.post(a.url + "/v1/completions",
                                       json={"model": "m", "prompt": "x"})
    assert direct.status_code == 503
    assert results == [(200, TOKENS)] * 60
    assert retries >= 1  # requests picked replica a after it began draining
    assert held == []  # another replica was there: nothing was held


async def test_last_replica_draining_holds_until_another_is_ready(gateway,
                                                                  tmp_path: Path) -> None:
    """The only replica refuses (draining): the request waits like one at zero replicas (the
    autoscaler is told) and is served by the next replica that becomes ready."""
    gw, url, held = gateway
    with _runtime(tmp_path, "a") as a:
        gw.add(Replica("m", "a", a.url))
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            assert (await client.post(a.control + "/kubeplex/v1/drain?wait=true")
                    ).status_code == 200
            pending = asyncio.create_task(_request(client, stream=True))
            for _ in range(200):  # until it is held (bounded)
                if gw.held["m"]:
                    break
                await asyncio.sleep(0.02)
            assert gw.held["m"] == 1 and not pending.done()
            assert held == ["m"]
            with _runtime(tmp_path, "b") as b:
                gw.add(Replica("m", "b", b.url))
                assert await pending == (200, TOKENS)
                assert await _retries(client) == 1
            assert gw.held["m"] == 0
