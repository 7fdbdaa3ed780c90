"""Models and adapters a runtime served until a moment ago: refused with 503, not 404.

When the operator takes a model off a pod (scale-down, unload, drain) it first removes the
pod's model label, and routers that pick endpoints from that label (kube-proxy, kubeplex's
gateways, an Inference Extension endpoint picker) stop sending after their own refresh. A request
that still arrives for a model this runtime no longer hosts is answered ``503`` with
``Retry-After`` for :data:`DEPARTED_GRACE_SECONDS` after it left, so the client's gateway
retries it on another endpoint of the pool, instead of a ``404`` it would pass to the client as
"no such model". Later, an unknown model is ``404`` again.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DEPARTED_GRACE_SECONDS", "Departures"]

#: How long a departed model is answered 503: above the endpoint refresh of the routers in
#: front (kube-proxy and EndpointSlice watches take seconds; an endpoint picker polls pods
#: every few seconds), well under a human's retry.
DEPARTED_GRACE_SECONDS = 60.0


class Departures:
    """Names that left, and when (monotonic seconds)."""

    def __init__(self, grace: float = DEPARTED_GRACE_SECONDS) -> None:
        self.grace = grace
        self._left: dict[str, float] = {}

    def note(self, names: Iterable[str], now: float) -> None:
        for name in names:
            self._left[name] = now
        for name in [n for n, t in self._left.items() if now - t > self.grace]:
            del self._left[name]

    def recent(self, name: object, now: float) -> bool:
        left = self._left.get(name) if isinstance(name, str) else None
        return left is not None and now - left <= self.grace

    def back(self, names: Iterable[str]) -> None:
        """Names served again (a model loaded back): no longer departed."""
        for name in names:
            self._left.pop(name, None)
