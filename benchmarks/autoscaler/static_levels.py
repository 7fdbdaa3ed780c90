"""Attainment and GPU-hours of a constant replica count on a real-trace benchmark trace.

What a policy that never scales would get at each level: the reference for traces whose bursts
no causal policy can see coming (docs/benchmarks.md, "Real traces"). Same trace, fleet, speed
and SLO as ``real_traces.py``.

Usage: python benchmarks/autoscaler/static_levels.py TRACE SPEED LEVELS
       (e.g. ``bursts 1.0 2,3,4``)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_traces


def main(argv: list[str]) -> int:
    from kubeplex.autoscaler.baselines import StaticPolicy
    from kubeplex.autoscaler.fleet import FleetConfig, simulate
    from kubeplex.placement.llm import profile

    if len(argv) != 3 or argv[0] not in real_traces.TRACES:
        print(__doc__, file=sys.stderr)
        print(f"traces: {', '.join(real_traces.TRACES)}", file=sys.stderr)
        return 2
    spec = real_traces.TRACES[argv[0]]
    speed = float(argv[1])
    trace = spec.trace(0)
    llm = profile(real_traces.MODEL, spec.gpu)
    for level in (int(n) for n in argv[2].split(",")):
        fleet = FleetConfig(profile=llm, cold_start_s=real_traces.COLD_START_S,
                            warm_start_s=real_traces.WARM_START_S, initial_replicas=level,
                            gpus_per_replica=llm.gpus, speed=speed)
        result = simulate(trace, StaticPolicy(level), fleet, spec.slo_s,
                          real_traces.PERCENTILE, None)
        print(f"{spec.name} x{speed:g} static {level}: {result.attainment:.2%}, "
              f"{result.gpu_hours:.2f} GPU-h")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
