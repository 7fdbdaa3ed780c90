"""``kubeplex version``."""

from __future__ import annotations

import argparse
import platform

from kubeplex._version import __version__
from kubeplex.cli import Commands


def register(cli: Commands) -> None:
    cli.command("version", "print kubeplex's version", _version)


def _version(args: argparse.Namespace) -> int:
    print(f"kubeplex {__version__} (Python {platform.python_version()})")
    return 0
