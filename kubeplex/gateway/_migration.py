"""Request migration: a generation whose replica dies or leaves continues on another one.

The gateway hands every request :func:`~kubeplex.gateway._resume.resumable` accepts to
:meth:`Migrator.forward` instead of the plain proxy. Per attempt it:

* sends the request to a replica: a chat stream as the client's own bytes; a completion
  asking for token ids too; a plain request as a stream with usage, so the gateway knows
  what was generated (:meth:`Resumable.upstream_body`);
* passes the replica's SSE events to the client whole (a partial event is held back until its
  end arrives, so a cut never leaves half an event on the client's stream), keeping a copy
  that is parsed only if the attempt is cut; a plain request's events are collected and
  answered as one JSON body at the end;
* when the replica fails mid-generation (connection reset, a cut chunked body, EOF before
  ``[DONE]``), marks it down (:mod:`kubeplex.gateway._health`) and *moves* the request: the
  next attempt goes to another ready replica (or waits, held, for one) with the prompt plus
  what was generated so far (token ids, or text) and the rest of the budget
  (:meth:`Progress.resume_body`), and
  its events are rewritten into the client's stream (:meth:`Progress.rewrite`);
* when the replica *leaves* (scale-down, drain: :meth:`Migrator.evacuate`, called
  ``migrate_after_s`` after the gateway stopped routing to it), closes the upstream response,
  which makes vLLM abort the request there, and moves it the same way.

A request moves at most :attr:`MigrationPolicy.max_moves` times; then, or when no replica
comes within the hold timeout, a client's stream ends with an error event and ``[DONE]``, a
plain request gets 503.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from kubeplex.gateway._resume import DONE, Progress, Resumable, events
from kubeplex.gateway.errors import GatewayConfigError
from kubeplex.runtime.proxy import CLIENT_CLOSED, PASSED_HEADERS, Proxy, error_response
from kubeplex.runtime.tracing import trace_headers

__all__ = [
    "DEFAULT_MAX_MOVES",
    "DEFAULT_MIGRATE_AFTER_SECONDS",
    "Handle",
    "MigrationPolicy",
    "Migrator",
    "Movable",
]

#: How long a replica that left routing (scale-down, drain) keeps its in-flight requests
#: before they move (seconds). Most answers finish within it in place (a 256-token reply
#: at 50-100 tokens/s); longer generations move instead of holding the drain for up to the
#: drain grace period.
DEFAULT_MIGRATE_AFTER_SECONDS = 5.0
#: Moves per request at most (each one recomputes the prompt and the text so far): enough
#: for a replica failure during a scale-down, few enough that a request the replicas keep
#: failing on ends instead of making its rounds.
DEFAULT_MAX_MOVES = 3
#: Repeated refusals (503 before any byte, connection refused, from a replica that refused
#: this request before and was handed out again) a request may meet per move before the
#: gateway gives up on it: the fleet is failing faster than the health checks see. A first
#: refusal by each replica does not count: it marks that replica down, so a request that
#: meets a whole dead fleet ends up held until a replica is back, not refused.
REFUSALS_PER_MOVE = 2
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class MigrationPolicy:
    """When the gateway moves requests (``kubeplex up --migrate-after``,
    ``KUBEPLEX_MIGRATE_AFTER_SECONDS`` for the cluster gateway)."""

    enabled: bool = True
    #: Seconds a leaving replica keeps its in-flight requests before they move.
    migrate_after_s: float = DEFAULT_MIGRATE_AFTER_SECONDS
    max_moves: int = DEFAULT_MAX_MOVES
    #: Whether plain (non-streaming) requests are resumable too: they are then streamed from
    #: the replica (an SSE event per token costs the engine's API server some CPU) and the
    #: gateway answers them whole; off, a plain request cut by a failure starts again.
    resume_plain: bool = True

    def __post_init__(self) -> None:
        if not self.migrate_after_s >= 0 or self.migrate_after_s == float("inf"):
            raise GatewayConfigError(f"migrate-after must be a finite number of seconds >= 0, "
                                     f"got {self.migrate_after_s!r}")
        if isinstance(self.max_moves, bool) or not isinstance(self.max_moves, int) \
                or self.max_moves < 0:
            raise GatewayConfigError(f"max moves must be an integer >= 0, got "
                                     f"{self.max_moves!r}")


class Handle:
    """One resumable request in flight on a replica; :meth:`move` sends it elsewhere."""

    __slots__ = ("moving", "response")

    def __init__(self) -> None:
        self.moving = False
        self.response: aiohttp.ClientResponse | None = None

    def move(self) -> None:
        """Cut the upstream response (the engine aborts the request) so the request moves."""
        self.moving = True
        if self.response is not None:
            self.response.close()


class Movable(Protocol):
    """A replica as the migrator sees it (``kubeplex.gateway.Replica``)."""

    @property
    def name(self) -> str: ...

    streams: set[Handle]

    def url(self, path: str) -> URL: ...

    def acquire(self) -> None: ...

    def release(self) -> None: ...


#: (route, request id) -> the replica a request goes to next (held if need be), or None.
Replacement = Callable[[str, str], Awaitable[Movable | None]]


class _End(enum.Enum):
    DONE = "done"  # the generation finished (or an answer went to the client)
    CUT = "cut"  # the replica failed or was left mid-generation
    REFUSED = "refused"  # the replica refused before answering (503, connection refused)


class _ClientGone(Exception):
    """The client hung up (a write to it failed): stop, which closes the upstream too."""


#: Why a cut attempt ended when the gateway moved it on purpose (the replica left).
LEFT = "left"


class Migrator:
    """Forwards resumable requests and moves them (see the module docstring)."""

    def __init__(self, proxy: Proxy, policy: MigrationPolicy, replacement: Replacement,
                 failed: Callable[[Movable, str], None],
                 moved: Callable[[str, str], None],
                 first_output: Callable[[str], None] | None = None) -> None:
        """``first_output(request_id)``: an attempt's first bytes came from its replica (the
        routing policy's signal that the engine's prefill is over)."""
        self.proxy = proxy
        self.policy = policy
        self.replacement = replacement
        self.failed = failed
        self.moved = moved
        self.first_output = first_output

    @staticmethod
    def evacuate(replica: Movable) -> int:
        """Move every resumable request in flight on ``replica``; returns how many."""
        handles = list(replica.streams)
        for handle in handles:
            handle.move()
        return len(handles)

    async def forward(self, request: web.Request, route: str, replica: Movable,
                      plan: Resumable, body: bytes, request_id: str,
                      arrived: float) -> web.StreamResponse:
        """Answer ``request`` from ``replica``, moving it as often as the policy allows."""
        exchange = _Exchange(self, request, route, plan, request_id, arrived, replica.name)
        return await exchange.run(replica, plan.upstream_body() or body)


class _Exchange:
    """One client request across its upstream attempts."""

    def __init__(self, migrator: Migrator, request: web.Request, route: str, plan: Resumable,
                 request_id: str, arrived: float, model: str) -> None:
        self.m = migrator
        self.request = request
        self.route = route
        self.plan = plan
        self.request_id = request_id
        self.arrived = arrived
        self.model = model
        self.series = migrator.proxy.metrics.series(model)
        self.progress = Progress(plan)
        self.client: web.StreamResponse | None = None
        self.answered: web.Response | None = None
        self.code = "502"
        self.saw_done = False
        self.wrote = False

    async def run(self, replica: Movable, body: bytes) -> web.StreamResponse:
        self.series.in_flight.inc()
        upstream: Movable | None = replica
        refusals, refused_by = 0, set()
        try:
            while upstream is not None:
                end, why = await self._attempt(upstream, body)
                if end is _End.DONE:
                    return self._finish()
                if end is _End.REFUSED:
                    refusals += upstream.name in refused_by
                    refused_by.add(upstream.name)
                    self.m.failed(upstream, why)
                    if refusals > REFUSALS_PER_MOVE * (self.progress.moves + 1):
                        return await self._give_up(f"replicas of the model refused it ({why})")
                else:  # cut mid-generation
                    if why != LEFT:
                        self.m.failed(upstream, why)
                    if self.progress.finished or not self.progress.budget_left():
                        return await self._complete()
                    if self.progress.moves >= self.m.policy.max_moves:
                        return await self._give_up(f"it was moved {self.progress.moves} times")
                    self.progress.next_attempt()
                    if self.progress.stuck is not None:
                        return await self._give_up(f"it cannot be resumed: {self.progress.stuck}")
                    self.m.moved(self.route, "replica-left" if why == LEFT else "replica-failed")
                    body = self.progress.resume_body()
                upstream = await self.m.replacement(self.route, self.request_id)
            return await self._give_up("no replica of the model became ready in time")
        except _ClientGone:
            self.code = CLIENT_CLOSED
            return self.client or web.Response(status=499)
        finally:
            self.series.in_flight.dec()
            self.m.proxy.metrics.count(self.model, self.code)
            log = self.m.proxy.access_log
            if log is not None:
                log.write(self.request.method, self.request.path, self.model, self.code,
                          time.monotonic() - self.arrived, self.request_id,
                          self.request.headers)

    async def _attempt(self, upstream: Movable, body: bytes) -> tuple[_End, str]:
        """One upstream attempt: how it ended, and why it was cut or refused."""
        session = self.m.proxy.session
        if session is None:
            return _End.REFUSED, "the gateway is closing"
        handle = Handle()
        upstream.streams.add(handle)
        upstream.acquire()
        raw = bytearray()  # events passed through (or collected) and not parsed yet
        end, why = _End.CUT, ""
        try:
            async with session.post(upstream.url(self.request.path), data=body,
                                    headers={"Content-Type": "application/json",
                                             "X-Request-Id": self.request_id,
                                             **trace_headers(self.request.headers)}) as answer:
                handle.response = answer
                end, why = await self._read(answer, handle, raw)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            why = LEFT if handle.moving else type(exc).__name__
            end = _End.REFUSED if handle.response is None and not handle.moving else _End.CUT
        finally:
            upstream.release()
            upstream.streams.discard(handle)
        if end is not _End.DONE or not self.plan.client_stream:
            self._parse(raw)  # a client's stream that went through whole is never parsed
        return end, why

    async def _read(self, answer: aiohttp.ClientResponse, handle: Handle,
                    raw: bytearray) -> tuple[_End, str]:
        if handle.moving:
            return _End.CUT, LEFT
        if answer.status == 503:
            return _End.REFUSED, "answered 503"
        if answer.status != 200 or not answer.headers.get(
                "Content-Type", "").startswith("text/event-stream"):
            await self._pass_answer(answer)
            return _End.DONE, ""
        await self._open_client(answer)
        pending = b""
        first = self.m.first_output
        while True:
            try:
                chunk = await answer.content.readany()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                return _End.CUT, LEFT if handle.moving else type(exc).__name__
            if first is not None and chunk:
                first(self.request_id)
                first = None
            if not chunk:
                done = self.saw_done or raw.endswith(DONE + b"\n\n")
                return (_End.DONE, "") if done else (_End.CUT, "the stream ended early")
            pending += chunk
            cut = pending.rfind(b"\n\n")
            if cut >= 0:
                whole, pending = pending[:cut + 2], pending[cut + 2:]
                await self._events(whole, raw)

    def _rewriting(self) -> bool:
        return self.progress.moves > 0 and self.progress.sent > 0

    async def _events(self, whole: bytes, raw: bytearray) -> None:
        """Whole events of the current attempt: to the client (or collected, plain)."""
        if not self.plan.client_stream or not self._rewriting():
            raw += whole
            await self._write(whole)
            return
        out = bytearray()
        for event in events(whole):
            self.progress.absorb(event)
            self.saw_done = self.saw_done or event == DONE
            rewritten = self.progress.rewrite(event)
            if rewritten is not None:
                out += rewritten + b"\n\n"
                self.progress.sent += 1
        await self._write(bytes(out))

    def _parse(self, raw: bytearray) -> None:
        """Parse what the attempt passed through unparsed (after a cut, or a plain one's)."""
        sent = 0
        for event in events(bytes(raw)):
            self.progress.absorb(event)
            sent += 1
        if self.client is not None:
            self.progress.sent += sent
        self.saw_done = self.saw_done or raw.endswith(DONE + b"\n\n")
        raw.clear()

    async def _open_client(self, answer: aiohttp.ClientResponse) -> None:
        if not self.plan.client_stream or self.client is not None:
            return
        headers = {h: answer.headers[h] for h in PASSED_HEADERS if h in answer.headers}
        headers["X-Request-Id"] = self.request_id
        self.client = web.StreamResponse(status=200, headers=headers)
        try:
            await self.client.prepare(self.request)
        except ConnectionResetError as exc:
            raise _ClientGone from exc
        self.code = "200"

    async def _write(self, data: bytes) -> None:
        if self.client is None or not data:
            return
        try:
            await self.client.write(data)
        except ConnectionResetError as exc:
            raise _ClientGone from exc
        if not self.wrote:
            self.wrote = True
            self.series.ttfb.observe(time.monotonic() - self.arrived)

    async def _pass_answer(self, answer: aiohttp.ClientResponse) -> None:
        """A non-stream answer (an error, or a request the engine answered plainly)."""
        data = await answer.read()
        self.code = str(answer.status)
        if self.client is None:
            headers = {h: answer.headers[h] for h in PASSED_HEADERS if h in answer.headers}
            headers["X-Request-Id"] = self.request_id
            self.answered = web.Response(body=data, status=answer.status, headers=headers)
            return
        # A resumed attempt refused mid-stream (e.g. the longer prompt): end the stream.
        message = data.decode(errors="replace")[:500]
        await self._end_stream(f"the request was moved to another replica, which answered "
                               f"{answer.status}: {message}")

    def _finish(self) -> web.StreamResponse:
        """The exchange ended: the client's stream, a passed answer, or the JSON body."""
        if self.answered is not None:
            self.series.ttfb.observe(time.monotonic() - self.arrived)
            return self.answered
        if self.client is not None:
            return self.client
        return self._plain_answer()

    def _plain_answer(self) -> web.Response:
        self.code = "200"
        self.series.ttfb.observe(time.monotonic() - self.arrived)
        return web.json_response(self.progress.answer(),
                                 headers={"X-Request-Id": self.request_id})

    async def _complete(self) -> web.StreamResponse:
        """Cut after the last token: the generation is whole, only its ending was lost."""
        if self.progress.finish_reason is None:
            self.progress.finish_reason = "length"
        if self.client is None:
            return self._plain_answer()
        await self._write(b"" if self.saw_done else DONE + b"\n\n")
        await self._close_client()
        return self.client

    async def _give_up(self, why: str) -> web.StreamResponse:
        message = f"model {self.model}: the request could not be completed: {why}"
        if self.client is None:
            self.code = "503"
            return error_response(503, message, "ServiceUnavailableError", retry_after=1,
                                  request_id=self.request_id)
        await self._end_stream(message)
        return self.client

    async def _end_stream(self, message: str) -> None:
        """End a started stream with vLLM's in-stream error event, then ``[DONE]``."""
        error = {"error": {"message": message, "type": "ServiceUnavailableError",
                           "param": None, "code": 503}}
        await self._write(b"data: " + _DUMPS(error).encode() + b"\n\n" + DONE + b"\n\n")
        self.saw_done = True
        await self._close_client()

    async def _close_client(self) -> None:
        if self.client is not None:
            try:
                await self.client.write_eof()
            except ConnectionResetError as exc:
                raise _ClientGone from exc
