"""The operator's exception tree (rooted at :class:`kubeplex.errors.KubeplexError`)."""

from __future__ import annotations

from kubeplex.errors import KubeplexError

__all__ = ["ConfigError", "OperatorError"]


class OperatorError(KubeplexError):
    """Base class of every error :mod:`kubeplex.operator` raises on purpose."""


class ConfigError(OperatorError):
    """An environment variable or flag of the operator is invalid (names it and the fix)."""
