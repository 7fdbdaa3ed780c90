"""Following the replicas' engine load: what the prefix-aware policy counts in place of its guess.

A replica whose engine publishes its queue (the sim engine does; its runtime forwards it at
``/kubeplex/v1/load/<model>``, :mod:`kubeplex.runtime.kv_events`) streams one event per
change: the uncached prompt tokens waiting and when the running step ends. The gateway keeps
one stream open per such replica of a ``prefix-aware`` route and hands every event to the
route's router (:meth:`kubeplex.runtime.routing.Router.observe`), which then counts the
engine's own queue plus what it sent there since, instead of its own count down. That is the
replay's ``prefix-aware`` row in docs/benchmarks.md ("Prefix-aware routing"), reports after
every change.

A replica that answers 404 (vLLM publishes no load; an older runtime) is not asked again: the
router keeps its own view of it. A stream that breaks, or stays silent for
:data:`STALE_AFTER_S` (the engine repeats itself every second), drops the report (the router
falls back to its own view) and is opened again after a back-off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp

from kubeplex.gateway._health import ReplicaTasks
from kubeplex.runtime.kv_events import LOAD_HEARTBEAT_S, LOAD_PATH, EngineLoad, decode_load

__all__ = ["STALE_AFTER_S", "Followed", "LoadFollower"]

#: A stream silent this long (seconds, three missed heartbeats) is taken for lost.
STALE_AFTER_S = 3 * LOAD_HEARTBEAT_S
#: Waits (seconds) before opening a broken stream again: first, and at most (doubling).
RETRY_S = (0.5, 10.0)


class Followed(Protocol):
    """What the follower needs of a replica (``kubeplex.gateway.Replica``)."""

    name: str
    base_url: str


class LoadFollower:
    """One load stream per followed replica (see the module docstring). ``on_load(replica,
    load)`` gets every report, and ``load`` None when the reports stop."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession | None],
                 on_load: Callable[[Followed, EngineLoad | None], None]) -> None:
        self._session = session
        self._on_load = on_load
        self._streams = ReplicaTasks()

    def follow(self, replica: Followed) -> None:
        """Open ``replica``'s load stream (once)."""
        self._streams.start(replica, lambda: self._follow(replica))

    def forget(self, replica: Followed) -> None:
        """Close ``replica``'s stream (it left, or its route no longer needs it)."""
        self._streams.stop(replica)

    def following(self, replica: Followed) -> bool:
        return self._streams.running(replica)

    async def close(self) -> None:
        await self._streams.close()

    async def _follow(self, replica: Followed) -> None:
        delay = RETRY_S[0]
        while True:
            published = await self._read(replica)
            self._on_load(replica, None)
            if published is False:
                return  # this engine publishes no load: the router's own view it is
            await asyncio.sleep(delay)
            delay = min(RETRY_S[1], 2 * delay)

    async def _read(self, replica: Followed) -> bool | None:
        """Read one stream to its end: False when the replica publishes no load (404), else
        None (broken, silent or ended: try again later)."""
        session = self._session()
        if session is None:
            return None
        url = f"{replica.base_url}{LOAD_PATH}/{replica.name}"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(
                    total=None, sock_read=STALE_AFTER_S)) as answer:
                if answer.status == 404:
                    return False
                if answer.status != 200:
                    return None
                async for line in answer.content:
                    if line.startswith(b"data: "):
                        self._on_load(replica, decode_load(line[6:], time.monotonic()))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass  # broken, silent too long, or not a load event: the report is dropped
        return None
