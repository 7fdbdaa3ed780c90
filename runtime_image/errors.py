"""The serving runtime's exception tree (rooted at :class:`kubeplex.errors.KubeplexError`).

Each error carries the HTTP status the control API answers it with, so handlers map errors to
responses in one place instead of one ``except`` per call site.
"""

from __future__ import annotations

from kubeplex.errors import KubeplexError

__all__ = [
    "EngineStartError",
    "EngineStateError",
    "ModelConflictError",
    "RuntimeConfigError",
    "RuntimeError_",
    "TraceFormatError",
    "UnknownModelError",
]


class RuntimeError_(KubeplexError):
    """Base class of every error :mod:`kubeplex.runtime` raises on purpose."""

    http_status = 500


class RuntimeConfigError(RuntimeError_):
    """A runtime config file (or a model added through the control API) that is invalid.

    The message starts with the path of the offending field, e.g.
    ``models[1].memoryShare: must be in (0, 1]``.
    """

    http_status = 400


class UnknownModelError(RuntimeError_, KeyError):
    """A model name this runtime does not host."""

    http_status = 404

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelConflictError(RuntimeError_):
    """A model operation that conflicts with the model's state (already hosted, cannot sleep)."""

    http_status = 409


class EngineStateError(RuntimeError_):
    """An engine that is not in a state to do what was asked (e.g. waking one that is awake)."""

    http_status = 409


class EngineStartError(RuntimeError_):
    """An engine process that could not be started (missing interpreter, bad arguments)."""

    http_status = 500


class TraceFormatError(RuntimeError_):
    """A request trace (``kubeplex simulate routing --trace``) that cannot be read; the
    message names the file, the line and what is wrong."""

    http_status = 400
