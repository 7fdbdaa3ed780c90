"""Argument types of the command line: numbers that are finite and within range.

Every numeric flag goes through :func:`number`, so ``nan``, ``inf`` and values out of range
are refused by the parser with one line naming the flag (``kubeplex load: error: argument
--rate: must be a finite number > 0, got 'nan'``) instead of reaching code that would loop
forever or fail deep inside. The upper bounds are named below with where they come from.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = [
    "MAX_COUNT",
    "MAX_RATE",
    "MAX_SECONDS",
    "MAX_TOKENS",
    "number",
    "port",
]

#: Longest duration any flag takes (seconds): a day. Runs, periods and start-up times past it
#: are typos (a trace of longer spans is read from a file, bounded there).
MAX_SECONDS = 86_400.0
#: Highest request rate a flag takes (requests/s): far past one machine's load generator
#: (one Python process sends a few thousand per second) and the placement benchmark's scale.
MAX_RATE = 10_000.0
#: Most tokens per request a flag takes: past every model's context length.
MAX_TOKENS = 10_000_000
#: Most GPUs, models or nodes a flag takes: past the largest pools kubeplex plans.
MAX_COUNT = 10_000


def number(low: float | None = None, high: float | None = None, *, above: bool = False,
           integer: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number ``>= low`` (``> low`` when ``above``) and
    ``<= high``; an integer when ``integer``."""

    def parse(text: str) -> float:
        try:
            value: float = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if integer else 'a number'}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if above
                                                             else value < low)) \
                or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_range(low, high, above, integer)}, "
                                             f"got {text!r}")
        return value

    parse.__name__ = "integer" if integer else "number"
    return parse


def _range(low: float | None, high: float | None, above: bool, integer: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    parts = []
    if low is not None:
        parts.append(f"{'>' if above else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return f"{kind} {' and '.join(parts)}".rstrip()


#: A TCP port number.
port = number(1, 65535, integer=True)
