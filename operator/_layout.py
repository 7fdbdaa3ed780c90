"""Smoke module: proves kubeplex.operator resolves in a checkout and a wheel."""

__all__ = ["PACKAGE"]

PACKAGE = "kubeplex.operator"
