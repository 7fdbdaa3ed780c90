"""A gateway serving on a free loopback port for integration tests (route ``m``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from kubeplex.gateway import Gateway
from kubeplex.runtime.supervisor import free_port


@contextlib.asynccontextmanager
async def opened_gateway(**options: Any) -> AsyncIterator[tuple[Gateway, str]]:
    """``Gateway({"m": "default/m"}, **options)`` (defaults: hold 60 s, 100 requests,
    Retry-After 3 s) serving, and its base URL; closed on exit."""
    gw = Gateway({"m": "default/m"}, **{"hold_timeout": 60, "hold_limit": 100,
                                        "retry_after": lambda model: 3.0, **options})
    port = free_port()
    runner = await gw.open("127.0.0.1", port)
    try:
        yield gw, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await gw.close()
