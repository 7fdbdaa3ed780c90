"""W3C trace context through the shared proxy: a client's traceparent/tracestate reach the
upstream (a real HTTP server standing in for the engine), a malformed one is dropped, and the
optional access line carries the trace id."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kubeplex.gateway import Replica
from kubeplex.runtime.metrics import RouterMetrics
from kubeplex.runtime.proxy import Proxy
from kubeplex.runtime.tracing import AccessLog, trace_ids

TRACE_ID, SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.mark.parametrize(("header", "ids"), [
    (TRACEPARENT, (TRACE_ID, SPAN_ID)),
    (f"01-{TRACE_ID}-{SPAN_ID}-01-future-fields", (TRACE_ID, SPAN_ID)),  # later versions
    (f"00-{TRACE_ID}-{SPAN_ID}-01-extra", None),  # version 00 ends at the flags
    (f"ff-{TRACE_ID}-{SPAN_ID}-01", None),
    (f"00-{'0' * 32}-{SPAN_ID}-01", None),
    (f"00-{TRACE_ID}-{'0' * 16}-01", None),
    (f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", None),  # lowercase hex only
    ("not-a-trace", None), ("", None), (None, None),
])
def test_traceparent_parsing_follows_the_w3c_rules(header: str | None,
                                                   ids: tuple[str, str] | None) -> None:
    assert trace_ids(header) == ids


class Routes:
    """An upstream that records the headers it got, and the router in front of it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.proxy = Proxy(RouterMetrics())
        self.log = io.StringIO()
        self.proxy.access_log = AccessLog(self.log)

    async def engine(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    async def router(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return await self.proxy.forward(request, self.upstream, body, "req-1",
                                        time.monotonic())


@pytest.fixture
async def routes() -> AsyncIterator[tuple[Routes, str]]:
    r = Routes()
    engine_app, router_app = web.Application(), web.Application()
    engine_app.router.add_post("/v1/completions", r.engine)
    router_app.router.add_post("/v1/completions", r.router)
    async with TestServer(engine_app) as engine, TestServer(router_app) as router:
        r.upstream = Replica("m", "g", str(engine.make_url("")).rstrip("/"))
        await r.proxy.open()
        try:
            yield r, str(router.make_url("/v1/completions"))
        finally:
            await r.proxy.close()


async def _post(url: str, headers: dict[str, str]) -> Any:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url, json={"model": "m"}, headers=headers)


async def test_trace_context_reaches_the_upstream_and_the_access_line(
        routes: tuple[Routes, str]) -> None:
    r, url = routes
    answer = await _post(url, {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"})
    assert answer.status_code == 200
    assert r.seen[-1]["traceparent"] == TRACEPARENT
    assert r.seen[-1]["tracestate"] == "congo=t61rcWkgMzE"
    line = r.log.getvalue().splitlines()[-1]
    assert line.startswith("access method=POST path=/v1/completions model=m status=200 ")
    assert f"request_id=req-1 trace_id={TRACE_ID} span_id={SPAN_ID}" in line


async def test_a_malformed_traceparent_is_dropped_with_its_tracestate(
        routes: tuple[Routes, str]) -> None:
    r, url = routes
    await _post(url, {"traceparent": "00-nope-01", "tracestate": "a=b"})
    assert "traceparent" not in r.seen[-1] and "tracestate" not in r.seen[-1]
    assert "trace_id" not in r.log.getvalue()
    await _post(url, {})
    assert "traceparent" not in r.seen[-1]
