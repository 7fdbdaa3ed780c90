"""The gateway's hold-at-zero rules over real HTTP (no replicas, or one sim runtime)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kubeplex.gateway import Gateway, Replica
from kubeplex.runtime.harness import RuntimeProcess, model_entry
from kubeplex.runtime.routing import UNKNOWN_REQUEST
from kubeplex.runtime.supervisor import free_port


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str, list[str]]]:
    held: list[str] = []
    gw = Gateway({"m": "default/m"}, hold_timeout=0.5, hold_limit=2,
                 retry_after=lambda model: 7.0, on_hold=held.append,
                 status_source=lambda: {"hello": "status"})
    port = free_port()
    runner = await gw.open("127.0.0.1", port)
    try:
        yield gw, f"http://127.0.0.1:{port}", held
    finally:
        await runner.cleanup()
        await gw.close()


async def test_held_requests_time_out_with_retry_after(gateway):
    gw, url, held = gateway
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        body = {"model": "m", "prompt": "x", "max_tokens": 1}
        started = time.monotonic()
        answers = await asyncio.gather(*(client.post("/v1/completions", json=body)
                                         for _ in range(3)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [503, 503, 503]
        assert all(a.headers["Retry-After"] == "7" for a in answers)
        messages = " ".join(a.json()["error"]["message"] for a in answers)
        assert "already wait for it (the limit)" in messages  # the third: over the limit
        assert "after 0.5 s of waiting" in messages
        assert time.monotonic() - started < 5
        assert held == ["m", "m"]  # the autoscaler was told, once per held request
        assert gw.held["m"] == 0
        unknown = await client.post("/v1/completions", json={"model": "nope"})
        assert unknown.status_code == 404 and "Models: m" in unknown.json()["error"]["message"]
        assert (await client.get("/kubeplex/v1/status")).json() == {"hello": "status"}
        metrics = (await client.get("/metrics")).text
        assert ('kubeplex_gateway_arrivals_total{model="m",modelservice="m",'
                'namespace="default"} 3.0') in metrics
        assert ('kubeplex_gateway_held_requests{model="m",modelservice="m",'
                'namespace="default"} 0.0') in metrics
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200


async def test_held_request_is_forwarded_once_a_replica_is_ready(gateway, tmp_path: Path):
    gw, url, _ = gateway
    gw.hold_timeout = 60
    config = {"models": [model_entry("m", "sim")]}
    with RuntimeProcess(config, tmp_path) as rt:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            pending = asyncio.create_task(client.post(
                "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 2}))
            await asyncio.sleep(0.3)
            assert gw.held["m"] == 1 and not pending.done()
            gw.add(Replica("m", "g1", rt.url))
            answer = await pending
            assert answer.status_code == 200
            assert answer.json()["usage"]["completion_tokens"] == 2
            # A second replica gets the next request when the first is busy.
            gw.add(Replica("m", "g2", rt.url))
            busy = gw.routers["m"].sent(gw.replicas["m"][0], UNKNOWN_REQUEST, 0.0)
            assert gw._pick("m").group == "g2"
            gw.routers["m"].done(busy, 0.0)
            assert gw.remove("m", "g1") is not None and [r.group for r in gw.replicas["m"]] \
                == ["g2"]


async def test_hf_style_served_names_pass_through(tmp_path: Path):
    """HF-style served names ('org/model') reach a runtime that hosts them under that name."""
    gw = Gateway({"org/m": "default/m"}, hold_timeout=5, hold_limit=2,
                 retry_after=lambda model: 1.0)
    port = free_port()
    runner = await gw.open("127.0.0.1", port)
    try:
        with RuntimeProcess({"models": [model_entry("org/m", "sim")]}, tmp_path) as rt:
            gw.add(Replica("org/m", "g1", rt.url))
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.post(f"http://127.0.0.1:{port}/v1/completions", json={
                    "model": "org/m", "prompt": "x", "max_tokens": 2})
            assert answer.status_code == 200, answer.text
            assert answer.json()["usage"]["completion_tokens"] == 2
            assert answer.json()["model"] == "org/m"
    finally:
        await runner.cleanup()
        await gw.close()
