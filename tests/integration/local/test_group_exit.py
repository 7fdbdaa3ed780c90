"""Local mode sees a runtime process die at once (its exit watch), and what it hands the
gateway: the group's replicas out of routing, requests still served by the others.

The replacement of the dead group (warm standby first, then cold) belongs to the control
loop; this suite checks the hook it is built on: ``GroupProcess.on_exit`` and
``Gateway.mark_down``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from kubeplex.control import GroupPhase
from kubeplex.gateway import Gateway, Replica
from kubeplex.operator.local.group import EXIT_POLL_SECONDS, GroupProcess
from kubeplex.runtime.harness import model_entry
from kubeplex.runtime.supervisor import free_port

pytestmark = pytest.mark.timeout(120)


def _group(tmp_path: Path, name: str) -> GroupProcess:
    config = {"models": [model_entry("m", "sim", memory_share=0.5)]}
    return GroupProcess(name, "pool", 1, config, tmp_path, GroupPhase.STARTING,
                        time.monotonic())


async def test_a_killed_runtime_is_seen_at_once_and_routed_around(tmp_path: Path) -> None:
    gw = Gateway({"m": "default/m"}, hold_timeout=30, hold_limit=10,
                 retry_after=lambda model: 1.0)
    port = free_port()
    runner = await gw.open("127.0.0.1", port)
    a, b = _group(tmp_path, "a"), _group(tmp_path, "b")
    exits: list[tuple[str, int, float]] = []

    def died(group: GroupProcess, code: int) -> None:
        exits.append((group.id, code, time.monotonic()))
        gw.mark_down(group.id, f"runtime exited with {code}")

    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for group in (a, b):
                group.on_exit = died
                await group.spawn()
                await group.wait_ready(client, 60)
                gw.add(Replica("m", group.id, group.url))
            assert a.process is not None
            killed = time.monotonic()
            os.kill(a.process.pid, signal.SIGKILL)
            assert await asyncio.wait_for(a.wait_exit(), 5) == -signal.SIGKILL
            assert [(g, c) for g, c, _ in exits] == [("a", -signal.SIGKILL)]
            detection = exits[0][2] - killed
            assert detection < 10 * EXIT_POLL_SECONDS, detection
            assert a.exit_code == -signal.SIGKILL and a.exited_at is not None
            assert [r.group for r in gw.replicas["m"] if r.down is None] == ["b"]
            body = {"model": "m", "prompt": "x", "max_tokens": 2}
            answers = [await client.post(f"http://127.0.0.1:{port}/v1/completions", json=body)
                       for _ in range(5)]
            assert [r.status_code for r in answers] == [200] * 5
            retries = [line for line in (await client.get(
                f"http://127.0.0.1:{port}/metrics")).text.splitlines()
                if line.startswith("kubeplex_gateway_retries_total{")]
            assert retries and float(retries[0].split()[-1]) == 0  # no request paid for it
        await b.stop()  # a stop on purpose is no death
        assert len(exits) == 1
        assert b.exit_code is None
    finally:
        for group in (a, b):
            await group.stop()
        await runner.cleanup()
        await gw.close()
