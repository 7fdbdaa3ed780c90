"""Forwarding one OpenAI request to an upstream: the hot path every kubeplex router shares.

A router decides *where* a request goes (the runtime: the engine hosting its model; local
mode's gateway: the least busy replica; a cluster gateway: a pod) and hands the rest to a
:class:`Proxy`::

    proxy = Proxy(RouterMetrics())
    await proxy.open()                       # one pooled keep-alive connection pool
    model = request_model(body)              # the body's "model" (BadRequestBody if none)
    response = await proxy.forward(request, upstream, body, request_id, arrived)
    await proxy.close()

:meth:`Proxy.forward` sends the body bytes as they came (never re-encoded) with the request's
``X-Request-Id``; passes a JSON answer back whole and an SSE stream chunk by chunk as the
upstream sends it (one ``write`` per chunk, nothing buffered); counts the request in the
``kubeplex_router_*`` series; and keeps ``upstream.in_flight``, which drains wait on. An
upstream that cannot be reached before any byte went out is answered ``503`` with
``Retry-After: upstream.retry_after(now)``, and an upstream's own 503 is passed on, unless
the caller's ``fallback`` names another upstream to try once instead (the gateway's retry of
a draining replica); one that goes away mid-stream cuts the client's stream (its status is
already sent), and a started stream is never sent again. A client that hangs up closes the
upstream connection, which makes vLLM abort the request.

What keeps it lean (``benchmarks/runtime/router_overhead.py`` measures it against hitting the
engine directly): one ``aiohttp`` session for the process (keep-alive pool, no cookie jar, no
decompression, no per-request timers); the body is parsed once, only to read ``model``, and
forwarded as the original bytes; labelled metric children are looked up once per model and
status code, not per request; no log line per request unless ``KUBEPLEX_ACCESS_LOG`` asks for
one (:mod:`kubeplex.runtime.tracing`, which also forwards the W3C ``traceparent`` and
``tracestate`` headers).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from kubeplex.runtime._limits import BadRequestBody, parse_request
from kubeplex.runtime.errors import EngineStateError
from kubeplex.runtime.metrics import ModelSeries, RouterMetrics
from kubeplex.runtime.tracing import AccessLog, trace_headers

__all__ = [
    "CLIENT_CLOSED",
    "UPSTREAM_KEEPALIVE_SECONDS",
    "BadRequestBody",
    "Fallback",
    "Proxy",
    "Target",
    "error_response",
    "request_model",
]

#: Status recorded when the client closed the connection mid-stream (nginx's convention).
CLIENT_CLOSED = "499"
#: How long an idle upstream connection stays pooled. Below vLLM's own idle timeout
#: (``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``, 5 s in vLLM 0.32), so the router closes an idle
#: connection before the engine does and never sends a request into one being closed.
UPSTREAM_KEEPALIVE_SECONDS = 4.0
#: Connecting to a loopback engine takes microseconds; a stuck connect means it is gone.
UPSTREAM_CONNECT_TIMEOUT_SECONDS = 5.0
#: Response headers passed back from the upstream (besides ``X-Request-Id``, which the
#: router sets). Content-Length and Transfer-Encoding are the router's own framing.
PASSED_HEADERS = ("Content-Type", "Cache-Control")


class Target(Protocol):
    """Where :meth:`Proxy.forward` sends a request: an engine, a replica, a pod
    (:class:`kubeplex.runtime.upstream.Upstream` and its subclasses)."""

    @property
    def name(self) -> str:
        """The model's served name (the ``model`` label of the router series)."""
        ...

    def url(self, path: str) -> str | URL:
        """The absolute URL for a request path such as ``/v1/completions``."""
        ...

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def retry_after(self, now: float) -> int:
        """Seconds a refused client should wait (``Retry-After``)."""
        ...


#: Where a refused request may go instead (see :meth:`Proxy.forward`).
Fallback = Callable[[Target], Awaitable[Target | None]]


def error_response(status: int, message: str, kind: str, *, param: str | None = None,
                   retry_after: int | None = None,
                   request_id: str | None = None) -> web.Response:
    """An OpenAI-style error answer (``{"error": {"message", "type", "param", "code"}}``)."""
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status, headers=headers)


def request_model(body: bytes) -> str:
    """The ``model`` of an OpenAI request body (see :func:`kubeplex.runtime._limits.parse_request`).

    Raises :class:`BadRequestBody` unless the body is a JSON object (within the depth limit)
    with a non-empty string ``model``. (A full parse with the C decoder: about 2 µs for a
    typical request, 0.1 ms for a 100 KB prompt; a hand-written scan for the top-level key
    would be slower in Python and easy to fool.)
    """
    return parse_request(body).model


class Proxy:
    """The pooled connection to the upstreams plus the router series (see the module doc)."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None
        #: One line per forwarded request (``KUBEPLEX_ACCESS_LOG``; :mod:`.tracing`).
        self.access_log = AccessLog.from_env()

    async def open(self) -> None:
        """Open the connection pool (idempotent)."""
        if self.session is not None:
            return
        # No connection limit: a router-side queue would hide waiting requests from the
        # engine's vllm:num_requests_waiting, which the autoscaler scales on.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS,
                                         ttl_dns_cache=None)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            # Bytes pass through as the engine sent them, so ask for no compression.
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            timeout=aiohttp.ClientTimeout(total=None,
                                          sock_connect=UPSTREAM_CONNECT_TIMEOUT_SECONDS))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def forward(self, request: web.Request, upstream: Target, body: bytes,
                      request_id: str, arrived: float, fallback: Fallback | None = None,
                      first_byte: Callable[[], None] | None = None) -> web.StreamResponse:
        """Send ``request`` (its path, ``body``) to ``upstream`` and answer the client.

        ``arrived`` (``time.monotonic()`` at arrival) starts the time-to-first-byte clock.
        ``fallback``: when ``upstream`` refuses the request before any byte went to the
        client (it answers 503: draining, unloading, engine restarting; or it cannot be
        reached), ``await fallback(upstream)`` may name another upstream of the same model
        to send it to instead, once (None: the refusal goes to the client). A response that
        has started streaming is never sent again. ``first_byte()`` is called when a stream's
        first chunk went out (a router's signal that the engine's prefill is over).
        """
        session = self.session
        if session is None:
            raise EngineStateError("the proxy is not open")
        series = self.metrics.series(upstream.name)
        series.in_flight.inc()
        code = "502"
        response: web.StreamResponse | None = None
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json"),
                   "X-Request-Id": request_id,
                   **trace_headers(request.headers)}  # W3C traceparent, tracestate
        try:
            while True:
                upstream.acquire()
                try:
                    async with session.post(upstream.url(request.path), data=body,
                                            headers=headers) as answer:
                        code = str(answer.status)
                        in_headers = answer.headers
                        out_headers = {h: in_headers[h] for h in PASSED_HEADERS
                                       if h in in_headers}
                        out_headers["X-Request-Id"] = request_id
                        if not in_headers.get("Content-Type", "").startswith(
                                "text/event-stream"):
                            data = await answer.read()
                            reply = web.Response(body=data, status=answer.status,
                                                 headers=out_headers)
                            if answer.status != 503 or fallback is None:
                                series.ttfb.observe(time.monotonic() - arrived)
                                return reply
                            refused = reply
                        else:
                            response = web.StreamResponse(status=answer.status,
                                                          headers=out_headers)
                            await response.prepare(request)
                            try:
                                await self._stream(answer.content, response, series, arrived,
                                                   first_byte)
                            except ConnectionResetError:
                                # The client went away; leaving the block closes the upstream
                                # connection, which makes the engine abort the request.
                                code = CLIENT_CLOSED
                            return response
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                    if response is not None:  # mid-stream: the status is out, cut the stream
                        raise ConnectionResetError(
                            f"{upstream.name}'s upstream went away mid-stream") from exc
                    code = "503"
                    refused = error_response(
                        503, f"model {upstream.name}'s engine went away "
                             f"({exc.__class__.__name__}); it is being restarted",
                        "ServiceUnavailableError",
                        retry_after=upstream.retry_after(time.monotonic()),
                        request_id=request_id)
                finally:
                    upstream.release()
                # Refused before any byte went out: maybe once more, elsewhere.
                other = await fallback(upstream) if fallback is not None else None
                fallback = None
                if other is None:
                    return refused
                upstream = other
        finally:
            series.in_flight.dec()
            self.metrics.count(upstream.name, code)
            if self.access_log is not None:
                self.access_log.write(request.method, request.path, upstream.name, code,
                                      time.monotonic() - arrived, request_id, request.headers)

    @staticmethod
    async def _stream(content: aiohttp.StreamReader, response: web.StreamResponse,
                      series: ModelSeries, arrived: float,
                      first_byte: Callable[[], None] | None = None) -> None:
        """Pass an SSE stream through chunk by chunk (ConnectionResetError: client gone)."""
        chunk = await content.readany()
        await response.write(chunk)
        series.ttfb.observe(time.monotonic() - arrived)
        if first_byte is not None:
            first_byte()
        while chunk := await content.readany():  # b"" at the end
            await response.write(chunk)
        await response.write_eof()
