"""CPU seconds per process (by program name) while a command runs, from /proc.

Runs the command after ``--``, samples every process's CPU time once a second, and prints
the CPU each program used over a window: from the moment a process whose command line
contains ``--from`` appears (default: the command's start) for ``--seconds`` (default: until
the command ends). The operator is ``operator``, the benchmark script ``benchmark``; other
Python processes are left out. docs/benchmarks.md ("Where the CPU goes while kubeplex
converges") used:

    .venv/bin/python benchmarks/operator/cpu_by_process.py --from "kubeplex.cli operator" \\
        --seconds 43 -- .venv/bin/python benchmarks/operator/scale.py --no-floor --no-steady
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def _program(cmdline: str) -> str | None:
    if "kubeplex" in cmdline and " operator" in cmdline:
        return "operator"
    if "scale.py" in cmdline:
        return "benchmark"
    exe = cmdline.split()[0].rsplit("/", 1)[-1] if cmdline else ""
    return None if not exe or exe.startswith("python") else exe


def _sample(known: dict[str, tuple[str | None, float]], marker: str | None) -> bool:
    """Update ``known`` (pid -> (program, CPU s)); whether a process matching ``marker`` runs."""
    seen = False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            if pid not in known or marker:
                with open(f"/proc/{pid}/cmdline") as f:
                    cmdline = f.read().replace("\0", " ")
                seen = seen or bool(marker and marker in cmdline)
                program = known[pid][0] if pid in known else _program(cmdline)
            else:
                program = known[pid][0]
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        known[pid] = (program, (int(fields[11]) + int(fields[12])) / HZ)
    return seen


def _totals(known: dict[str, tuple[str | None, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for program, cpu in known.values():
        if program is not None:
            out[program] = out.get(program, 0.0) + cpu
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="marker", default=None,
                   help="start the window when a process whose command line has this appears")
    p.add_argument("--seconds", type=float, default=None, help="length of the window")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to run after --")
    known: dict[str, tuple[str | None, float]] = {}
    proc = subprocess.Popen(command)
    start: dict[str, float] | None = None if args.marker else _totals(known)
    began = time.monotonic()
    end: dict[str, float] | None = None
    while proc.poll() is None:
        seen = _sample(known, args.marker if start is None else None)
        if start is None and seen:
            start, began = _totals(known), time.monotonic()
        if start is not None and args.seconds and time.monotonic() - began >= args.seconds:
            end = end or _totals(known)
        time.sleep(1.0)
    if start is None:
        print(f"no process matching {args.marker!r} appeared", file=sys.stderr)
        return 1
    end = end or _totals(known)
    used = {k: v - start.get(k, 0.0) for k, v in end.items()}
    total = sum(used.values()) or 1.0
    window = min(time.monotonic() - began, args.seconds or float("inf"))
    print(f"CPU seconds by program over {window:.0f} s:")
    for program, cpu in sorted(used.items(), key=lambda kv: -kv[1]):
        if cpu >= 0.05:
            print(f"{cpu:8.1f} s {100 * cpu / total:5.1f}%  {program}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
