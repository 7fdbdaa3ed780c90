"""The control layer's exception tree (rooted at :class:`kubeplex.errors.KubeplexError`).

Every error that stops a model from being served carries a typed :attr:`PlanningError.reason`
(a :class:`DegradedReason`): the backends put it in the model's ``Degraded`` condition and
Event as it is, never by searching the message text.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from kubeplex.errors import KubeplexError

__all__ = [
    "ControlError",
    "DegradedReason",
    "DoesNotFitError",
    "PlanningError",
    "UnknownPoolError",
    "UnknownProfileError",
    "UnplacedError",
    "UnsupportedSourceError",
]


class DegradedReason(enum.StrEnum):
    """Why a model is not served (the ``Degraded`` condition's reason, an Event's reason)."""

    INVALID_SPEC = "InvalidSpec"              # the spec does not parse or is inconsistent
    UNKNOWN_POOL = "UnknownPool"              # spec.pool names no GPUPool
    UNKNOWN_PROFILE = "UnknownProfile"        # no latency/memory profile for the model
    DOES_NOT_FIT = "DoesNotFit"               # the model fits no group of its pool
    UNSUPPORTED_SOURCE = "UnsupportedSource"  # the runtime cannot load the model's URI
    DUPLICATE_SERVED_NAME = "DuplicateServedName"  # another ModelService serves that name


class ControlError(KubeplexError):
    """Base class of every error :mod:`kubeplex.control` raises on purpose."""


class PlanningError(ControlError):
    """A declared model or pool that cannot be planned; the message names it and the fix."""

    reason: ClassVar[DegradedReason] = DegradedReason.INVALID_SPEC


class UnknownPoolError(PlanningError):
    reason = DegradedReason.UNKNOWN_POOL


class UnknownProfileError(PlanningError):
    reason = DegradedReason.UNKNOWN_PROFILE


class DoesNotFitError(PlanningError):
    reason = DegradedReason.DOES_NOT_FIT


class UnplacedError(DoesNotFitError):
    """Placement could give ``models`` (model keys) no replica at all in ``pool``, even with
    every other model held to one: code reads ``models``, never the message."""

    def __init__(self, message: str, models: tuple[str, ...], pool: str) -> None:
        super().__init__(message)
        self.models = models
        self.pool = pool


class UnsupportedSourceError(PlanningError):
    reason = DegradedReason.UNSUPPORTED_SOURCE
