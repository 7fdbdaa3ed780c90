"""The gateway's exception tree (rooted at :class:`kubeplex.errors.KubeplexError`)."""

from __future__ import annotations

from kubeplex.errors import KubeplexError

__all__ = ["GatewayConfigError", "GatewayError"]


class GatewayError(KubeplexError):
    """Base class of every error :mod:`kubeplex.gateway` raises on purpose."""


class GatewayConfigError(GatewayError):
    """A gateway setting that is out of range (e.g. a negative migrate-after)."""
