"""The placement library's exception tree."""

from __future__ import annotations

from kubeplex.errors import KubeplexError

__all__ = ["DoesNotFitError", "PlacementError", "UnknownProfileError"]


class PlacementError(KubeplexError):
    """Base class of every error :mod:`kubeplex.placement` raises on purpose."""


class UnknownProfileError(PlacementError, KeyError):
    """A GPU, model or profile name that is not in a catalogue."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DoesNotFitError(PlacementError):
    """A model (or set of models) that cannot fit the memory it was offered."""
