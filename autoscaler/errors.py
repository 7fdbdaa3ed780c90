"""The autoscaler library's exception tree.

Every error :mod:`kubeplex.autoscaler` raises on purpose derives from :class:`AutoscalerError`
(itself a :class:`~kubeplex.errors.KubeplexError`), so the CLI prints it as one ``error: ...``
line and the operator maps it to a permanent or temporary handler error.
"""

from __future__ import annotations

from kubeplex.errors import KubeplexError

__all__ = [
    "AlertPayloadError",
    "AutoscalerConfigError",
    "AutoscalerError",
    "MetricsSourceError",
    "TraceError",
]


class AutoscalerError(KubeplexError):
    """Base class of every error :mod:`kubeplex.autoscaler` raises on purpose."""


class AutoscalerConfigError(AutoscalerError):
    """A configuration value out of range (negative SLO, min above max, ...)."""


class AlertPayloadError(AutoscalerError):
    """An Alertmanager webhook body that does not follow the v4 format.

    ``field`` names the offending field as a path (``alerts[2].labels``) so the HTTP answer
    can say exactly what to fix.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"alert payload field {field}: {problem}")
        self.field = field
        self.problem = problem


class MetricsSourceError(AutoscalerError):
    """A metrics endpoint or Prometheus server that cannot be read or answers nonsense."""


class TraceError(AutoscalerError):
    """A request trace (CSV or per-minute counts) or trace-generator argument that is invalid."""
