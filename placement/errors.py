"""The placement library's exception tree."""

from __future__ import annotations

from kubeplex.errors import KubeplexError

__all__ = ["DoesNotFitError", "PlacementError", "UnknownProfileError", "UnplacedModelsError"]


class PlacementError(KubeplexError):
    """Base class of every error :mod:`kubeplex.placement` raises on purpose."""


class UnknownProfileError(PlacementError, KeyError):
    """A GPU, model or profile name that is not in a catalogue."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DoesNotFitError(PlacementError):
    """A model (or set of models) that cannot fit the memory it was offered."""


class UnplacedModelsError(DoesNotFitError):
    """Models with demand that the pool could not give a single replica, even after every other
    model was held to its first replica. ``models`` names them (code reads this, never the
    message); ``pool`` is the pool's name."""

    def __init__(self, message: str, models: tuple[str, ...], pool: str) -> None:
        super().__init__(message)
        self.models = models
        self.pool = pool
