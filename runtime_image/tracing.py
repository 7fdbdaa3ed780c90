"""W3C trace context through the routers, and their optional per-request log line.

Every kubeplex router (the runtime's, both gateways) forwards a client's ``traceparent`` and
``tracestate`` headers (W3C Trace Context) to the upstream with the request, so an engine that
traces (vLLM with ``--otlp-traces-endpoint``) continues the client's trace. A ``traceparent``
that is not well formed is dropped, not forwarded (the W3C rule for a malformed parent), and
so is ``tracestate`` with it.

With ``KUBEPLEX_ACCESS_LOG=true`` (or ``kubeplex-runtime --access-log``) each router also writes
one line per request it forwarded (once answered) to stderr, in logfmt, with the trace id, so a
router's line joins the client's and the engine's spans (``model`` is the upstream's: for a
LoRA adapter, its base model)::

    access method=POST path=/v1/completions model=llama-8b status=200 seconds=0.184
           request_id=5f0c... trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7

It is off by default: a line per request costs the router CPU on the serving path
(``benchmarks/runtime/router_overhead.py``), and the ``kubeplex_router_*`` series count requests.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import TextIO

__all__ = ["ACCESS_LOG_ENV", "TRACE_HEADERS", "AccessLog", "trace_headers", "trace_ids"]

#: The variable that turns the per-request log line on ("true", "1" or "yes").
ACCESS_LOG_ENV = "KUBEPLEX_ACCESS_LOG"
#: The W3C Trace Context headers a router forwards.
TRACE_HEADERS = ("traceparent", "tracestate")
#: version-traceid-parentid-flags, lowercase hex (W3C Trace Context, section 3.2); the
#: all-zero trace and parent ids are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
#: Version ff is forbidden; version 00 has nothing after the flags.
_INVALID_VERSION, _VERSION_00 = "ff", "00"


def trace_ids(traceparent: str | None) -> tuple[str, str] | None:
    """``(trace id, parent span id)`` of a well-formed ``traceparent``, else None."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None:
        return None
    version, trace, span, _flags, rest = match.groups()
    if version == _INVALID_VERSION or (version == _VERSION_00 and rest):
        return None
    if trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    return trace, span


def trace_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The trace context headers to forward (none when ``traceparent`` is malformed)."""
    parent = headers.get("traceparent")
    if trace_ids(parent) is None or parent is None:
        return {}
    out = {"traceparent": parent.strip()}
    state = headers.get("tracestate")
    if state:
        out["tracestate"] = state
    return out


class AccessLog:
    """One logfmt line per answered request (see the module doc)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AccessLog | None:
        """An access log when ``KUBEPLEX_ACCESS_LOG`` says so, else None."""
        value = (os.environ if environ is None else environ).get(ACCESS_LOG_ENV, "")
        return cls() if value.strip().lower() in ("1", "true", "yes") else None

    def write(self, method: str, path: str, model: str, status: str, seconds: float,
              request_id: str, headers: Mapping[str, str]) -> None:
        ids = trace_ids(headers.get("traceparent"))
        fields = [f"method={method}", f"path={path}", f"model={_quoted(model)}",
                  f"status={status}", f"seconds={seconds:.4f}",
                  f"request_id={_quoted(request_id)}"]
        if ids is not None:
            fields += [f"trace_id={ids[0]}", f"span_id={ids[1]}"]
        stream = self.stream or sys.stderr
        stream.write("access " + " ".join(fields) + "\n")
        stream.flush()


def _quoted(value: str) -> str:
    """A logfmt value: bare when it has no space, quote or equals sign, else quoted."""
    if value and not re.search(r'[\s"=]', value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
