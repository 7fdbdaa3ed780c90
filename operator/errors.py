"""The operator's exception tree (rooted at :class:`kubeplex.errors.KubeplexError`)."""

from __future__ import annotations

from kubeplex.errors import KubeplexError

__all__ = ["ConfigError", "OperatorError", "UnservableError"]


class OperatorError(KubeplexError):
    """Base class of every error :mod:`kubeplex.operator` raises on purpose."""


class ConfigError(OperatorError):
    """An environment variable or flag of the operator is invalid (names it and the fix)."""


class UnservableError(OperatorError):
    """A spec the schema accepts but the operator cannot serve (unknown pool or profile,
    a model bigger than any group of the pool). Becomes a Degraded condition and an Event."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
