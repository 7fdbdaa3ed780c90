"""The root of kubeplex's exception trees.

Each library (``kubeplex.api``, ``kubeplex.placement``, ``kubeplex.autoscaler``,
``kubeplex.runtime``, ``kubeplex.operator``) defines one base class deriving from
:class:`KubeplexError` and raises only its subclasses, so callers can catch one library's
failures without catching programming errors.
"""

__all__ = ["KubeplexError"]


class KubeplexError(Exception):
    """Base class of every error kubeplex raises on purpose (bad input, impossible requests)."""
