"""CPU of one ``signals.extract`` over a 60 s window (31 scrapes 2 s apart), by engine count.

The law extracts a few windows per evaluation, every 2 s per model, so this is on the
operator's and the replays' hot path. Prints the median of ``--repeats`` timings of
``--calls`` extracts each, in milliseconds per extract::

    python benchmarks/autoscaler/extract_cpu.py [--engines 2,8,32] [--calls 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from kubeplex.autoscaler.metrics import COMPLETIONS, RUNNING, TTFT, WAITING, Scrape
from kubeplex.autoscaler.signals import extract


def window(engines: int, seed: int = 1) -> list[Scrape]:
    """31 scrapes of ``engines`` engines, each completing 3-9 requests per 2 s."""
    rng = random.Random(seed)
    done = {f"e{i}": 0.0 for i in range(engines)}
    scrapes = []
    for k in range(31):
        for e in done:
            done[e] += rng.randint(3, 9)
        scrapes.append(Scrape(2.0 * k, {COMPLETIONS: dict(done),
                                        WAITING: dict.fromkeys(done, 1.0),
                                        RUNNING: dict.fromkeys(done, 4.0)},
                              {TTFT: {e: ((1.0, n), (float("inf"), n))
                                      for e, n in done.items()}}))
    return scrapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="2,8,32")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    try:
        counts = [int(n) for n in args.engines.split(",")]
    except ValueError:
        parser.error(f"--engines must be comma-separated integers, got {args.engines!r}")
    if args.calls < 1 or args.repeats < 1 or any(n < 1 for n in counts):
        parser.error("--calls, --repeats and every engine count must be >= 1")
    for n in counts:
        scrapes = window(n)
        timings = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(args.calls):
                extract(scrapes, 60.0, 60.0, 99.0, 30.0)
            timings.append((time.perf_counter() - start) / args.calls * 1e3)
        print(f"{n:3d} engines: {statistics.median(timings):.3f} ms per extract "
              f"(range {min(timings):.3f}-{max(timings):.3f})")


if __name__ == "__main__":
    main()
