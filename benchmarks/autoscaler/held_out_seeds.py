"""kubeplex on the generated real-trace shapes drawn with other seeds than the table's.

The table of ``real_traces.py`` draws each generated trace once; a change to the law that helps
there may help by chance (a noise-driven rise before an unannounced burst). This replays
kubeplex alone on the same shapes with held-out seeds (no oracle, no baselines: compare two
versions of the law, e.g. before and after a change, on the same draws). Same fleet, speeds
and SLOs as ``real_traces.py``.

Usage: python benchmarks/autoscaler/held_out_seeds.py [--jobs 2]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_traces as rt

#: The table's shapes with seeds it does not use (its seeds are 1-6).
HELD_OUT: dict[str, Callable[[], Any]] = {
    "bursts": lambda: rt._bursts(60.0, 11),
    "bursts-sparse": lambda: rt._bursts(240.0, 12),
    "diurnal-bursts": lambda: rt._diurnal_bursts(13),
    "step": lambda: rt._step(14),
    "on-off": lambda: rt._on_off(15),
    "gamma": lambda: rt._gamma(16),
}


def _run(job: tuple[str, float]) -> str:
    from kubeplex.autoscaler.evaluation import Scenario, replay
    from kubeplex.placement.llm import profile

    name, speed = job
    spec = rt.TRACES[name]
    scenario = Scenario(profile(rt.MODEL, spec.gpu), spec.slo_s, rt.PERCENTILE,
                        rt.COLD_START_S, rt.WARM_START_S, None, None, speed, 1.0)
    result = replay(HELD_OUT[name](), scenario, "kubeplex")
    return f"| {name} | {speed:g} | {result.attainment:.2%} / {result.gpu_hours:.2f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    jobs = [(name, speed) for name in HELD_OUT for speed in rt.SPEEDS]
    print("| trace (held-out seed) | speed | kubeplex |\n|---|---|---|")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for done, line in enumerate(pool.map(_run, jobs), 1):
            print(line, flush=True)
            print(f"[{done}/{len(jobs)}]", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
