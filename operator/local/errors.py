"""The local backend's exception tree (rooted at :class:`kubeplex.errors.KubeplexError`)."""

from __future__ import annotations

from kubeplex.errors import KubeplexError

__all__ = ["LocalModeError", "ProcessError", "SettingsError"]


class LocalModeError(KubeplexError):
    """Base class of every error local mode raises on purpose."""


class SettingsError(LocalModeError):
    """A bad LocalSettings document or command-line option (the message names it)."""


class ProcessError(LocalModeError):
    """A runtime process that could not start, load, wake or drain."""
