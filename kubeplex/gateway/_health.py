"""Which replicas the gateway may route to: a failed one is out at once, and back once probed.

Passive detection (Envoy's outlier detection, with a threshold of one): a replica that refuses
a connection, resets one, cuts a response or answers ``503`` (its runtime drains, or the
model's engine restarts) is *marked down* by the request that saw it, so the next request goes
elsewhere instead of paying the same failure. A down replica stays in the gateway's list
(the control loop decides whether to replace it) but is skipped by routing, and a probe task
asks it ``GET /health?model=NAME`` (the runtime answers 200 only while that model's engine
serves) after :data:`PROBE_FIRST_SECONDS`, backing off to :data:`PROBE_MAX_SECONDS`. The first
200 marks it up again and calls ``on_up``, which releases the requests held for its model.

A process known to be gone (local mode sees its runtime exit) is taken out of the gateway by
its control loop (``Gateway.remove``), which also stops the probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import aiohttp

__all__ = ["PROBE_FIRST_SECONDS", "PROBE_MAX_SECONDS", "Probed", "ReplicaHealth", "ReplicaTasks"]

#: First re-probe of a replica marked down (seconds): a runtime that refused one connection
#: during a hiccup is back within this.
PROBE_FIRST_SECONDS = 0.1
#: Longest wait between probes of a replica that stays down (seconds): held requests go at
#: most this long after its engine serves again (benchmarks/gateway/failover.py measures
#: it); one GET to the runtime's event loop twice a second per down replica costs nothing.
PROBE_MAX_SECONDS = 0.5
#: Timeout of one probe (seconds): the runtime answers /health from its event loop at once.
PROBE_TIMEOUT_SECONDS = 2.0


class ReplicaTasks:
    """At most one background task per replica (a probe, a load stream), cancelled when the
    replica goes and all of them at :meth:`close`."""

    def __init__(self) -> None:
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def start(self, replica: object, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work()`` for ``replica`` unless a task of its runs already."""
        key = id(replica)
        if key in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(work())
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._untrack(key, done))

    def _untrack(self, key: int, done: asyncio.Task[None]) -> None:
        # Unless a newer task for the same replica (started after this one was cancelled)
        # took its place.
        if self._tasks.get(key) is done:
            del self._tasks[key]

    def stop(self, replica: object) -> None:
        task = self._tasks.pop(id(replica), None)
        if task is not None:
            task.cancel()

    def running(self, replica: object) -> bool:
        return id(replica) in self._tasks

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Probed(Protocol):
    """What the health tracker needs of a replica (``kubeplex.gateway.Replica``)."""

    name: str
    base_url: str
    down: str | None
    down_since: float | None


class ReplicaHealth:
    """Marks replicas down and probes them back up (see the module docstring)."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession | None],
                 on_up: Callable[[Probed], None]) -> None:
        self._session = session
        self._on_up = on_up
        self._probes = ReplicaTasks()

    def mark_down(self, replica: Probed, reason: str) -> bool:
        """Take ``replica`` out of routing and start probing it; False if it was down already."""
        if replica.down is not None:
            return False
        replica.down = reason
        replica.down_since = time.monotonic()
        self._probes.start(replica, lambda: self._probe(replica))
        return True

    def forget(self, replica: Probed) -> None:
        """Stop probing ``replica`` (it left the gateway)."""
        self._probes.stop(replica)

    async def close(self) -> None:
        await self._probes.close()

    async def _probe(self, replica: Probed) -> None:
        delay = PROBE_FIRST_SECONDS
        while replica.down is not None:
            await asyncio.sleep(delay)
            delay = min(PROBE_MAX_SECONDS, 2 * delay)
            if await self._serves(replica):
                replica.down = None
                replica.down_since = None
                self._on_up(replica)
                return

    async def _serves(self, replica: Probed) -> bool:
        session = self._session()
        if session is None:
            return False
        try:
            async with session.get(
                    f"{replica.base_url}/health", params={"model": replica.name},
                    timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_SECONDS)) as answer:
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
