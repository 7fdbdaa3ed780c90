"""The ``kubeplex`` command line.

Each area contributes one module with a ``register(cli: Commands)`` function; the modules are
listed in :data:`COMMAND_MODULES` and imported when the parser is built. Command handlers take
the parsed arguments and return an exit code. Errors from kubeplex's libraries
(:class:`~kubeplex.errors.KubeplexError`), bad arguments (numbers go through
:func:`kubeplex.cli._args.number`: finite, within range) and files the system cannot open
or write (``OSError``) are printed as one ``error: ...`` line and exit 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from kubeplex.errors import KubeplexError

__all__ = ["COMMAND_MODULES", "Commands", "main"]

#: Modules that add subcommands. Keep them light at import time: import heavy libraries
#: inside the handlers, so ``kubeplex version`` stays instant.
COMMAND_MODULES: tuple[str, ...] = (
    "kubeplex.cli._basic",
    "kubeplex.cli._autoscale",
    "kubeplex.cli._calibrate",
    "kubeplex.cli._routing",
    "kubeplex.cli._api",
    "kubeplex.cli._placement",
    "kubeplex.cli._local",
    "kubeplex.cli._operator",
    "kubeplex.cli._alerts",
    "kubeplex.cli._gateway",
)

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Commands:
    """The subcommand tree: top-level commands and named groups such as ``bench``."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._top = parser.add_subparsers(dest="command", metavar="COMMAND")
        self._groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}

    def command(self, name: str, help: str, handler: Handler,
                group: str | None = None) -> argparse.ArgumentParser:
        """Add ``kubeplex [group] name``; returns its parser for the caller's arguments."""
        where = self._top if group is None else self._group(group)
        parser = where.add_parser(name, help=help, description=help)
        parser.set_defaults(handler=handler)
        return parser

    def _group(self, name: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        if name not in self._groups:
            parser = self._top.add_parser(name, help=f"{name} commands")
            parser.set_defaults(handler=None, group_parser=parser)
            self._groups[name] = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        return self._groups[name]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kubeplex",
        description="Serve LLMs on Kubernetes under latency SLOs.",
    )
    commands = Commands(parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed on one line
        return done.code if isinstance(done.code, int) else 2
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        (getattr(args, "group_parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except KubeplexError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the user gave that cannot be opened, written, listened on
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
