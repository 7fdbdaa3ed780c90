"""``kubeplex operator`` with tracemalloc on, for ``scale.py --tracemalloc OUT``: on SIGUSR1
it writes where the Python heap is (top allocation sites by line and by file, sizes in KiB)
to ``$KUBEPLEX_TRACEMALLOC_OUT``. Tracing starts before any import, so imported code counts
too; it roughly doubles the operator's memory and slows it, so read shares, not totals."""

from __future__ import annotations

import tracemalloc

tracemalloc.start(1)

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from types import FrameType  # noqa: E402

#: Rows of each table.
TOP = 40


def dump(_signum: int, _frame: FrameType | None) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    by_line = snapshot.statistics("lineno")
    by_file = snapshot.statistics("filename")
    total = sum(s.size for s in by_line)
    peak = tracemalloc.get_traced_memory()[1]
    lines = [f"traced Python heap: {total / 2**20:.1f} MiB in {len(by_line)} sites "
             f"(peak since start: {peak / 2**20:.1f} MiB)", "",
             "## by file", ""]
    lines += [f"{s.size / 1024:10.0f} KiB {s.count:9d} blocks  {s.traceback[0].filename}"
              for s in by_file[:TOP]]
    lines += ["", "## by line", ""]
    lines += [f"{s.size / 1024:10.0f} KiB {s.count:9d} blocks  {s.traceback[0].filename}:"
              f"{s.traceback[0].lineno}" for s in by_line[:TOP]]
    out = os.environ["KUBEPLEX_TRACEMALLOC_OUT"]
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(out + ".tmp", out)


signal.signal(signal.SIGUSR1, dump)

from kubeplex.cli import main  # noqa: E402

sys.exit(main(["operator"]))
