"""The single place that names kubeplex's version."""

__version__ = "0.1.0"
