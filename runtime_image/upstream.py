"""What the router forwards to: the request-counting half of an engine or a replica.

A router forwards a model's requests (with :meth:`kubeplex.runtime.proxy.Proxy.forward`) to an
*upstream*: in a serving pod, the engine process hosting the model
(:class:`~kubeplex.runtime.supervisor.Engine`); in local mode's gateway, one replica of the
model (``kubeplex.gateway._gateway``). Both derive from :class:`Upstream`, which keeps
the parsed URLs and the in-flight count the proxy and the drain logic rely on. Subclasses
provide ``name`` and ``retry_after(now)`` (together: the :class:`~kubeplex.runtime.proxy.Target`
protocol).
"""

from __future__ import annotations

import asyncio

from yarl import URL

__all__ = ["Upstream"]


class Upstream:
    """A base URL, its parsed request URLs, and the requests in flight to it."""

    def __init__(self, base_url: str = "") -> None:
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.set_base_url(base_url)

    def set_base_url(self, base_url: str) -> None:
        """Point at a new address (an engine restarted on another port)."""
        self.base_url = base_url
        self._urls: dict[str, URL] = {}

    def url(self, path: str) -> URL:
        """The URL for ``path``, parsed once per path (the router's hot path)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.base_url + path)
        return url

    # The router calls these around each forwarded request.
    def acquire(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, within: float) -> bool:
        """Wait until no request is in flight; False when ``within`` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True
