"""The queueing model's replica count against the fewest the simulated fleet needs.

At a steady arrival rate (Gamma inter-arrivals of cv ``--cvs``) the law's TTFT rule
(``queueing.replicas_for_mix``, p99) picks a replica count from the prompt mix it would read
off vLLM's prompt histogram. The simulated fleet (``autoscaler/fleet.py``: one engine per
replica, prefills one at a time, a queue-aware gateway) then replays the trace at fixed
counts, and the fewest that keep the requests the SLO can count (own prefill within it) at
p99 after a minute's warm-up is the truth. Two readings of the arrivals' variability are
compared: each replica's share of the stream (``split_cv2``, what the law uses) and the whole
stream's, as before. Prints a markdown table::

    python benchmarks/autoscaler/queueing_vs_fleet.py [--gpu A100-80GB] [--slo 1.0]
        [--prompt 512] [--output 128] [--cvs 1,1.5,2,3,4] [--rates 3,10,30,60]
        [--heavy SHARE,TOKENS] [--duration 1800]

``--heavy 0.06,40000`` replaces that share of the prompts by prompts of that length (a
heavy-tailed mix, which the SLO cannot count but which occupy a replica).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

from kubeplex.autoscaler.baselines import StaticPolicy
from kubeplex.autoscaler.capacity import prompt_mix, token_capacity
from kubeplex.autoscaler.fleet import FleetConfig, simulate
from kubeplex.autoscaler.metrics import prompt_token_buckets
from kubeplex.autoscaler.policy import AutoscalerConfig
from kubeplex.autoscaler.queueing import ReplicaCapacity, miss_fraction, replicas_for_mix
from kubeplex.autoscaler.trace import Trace, generate
from kubeplex.placement.llm import LLMProfile, profile

MODEL = "llama-3.1-8b"
PERCENTILE = 99.0
WARM_UP_S = 60.0
#: The fleet is not run above this utilization (its queue would grow without end).
FLEET_CAP = 0.97


@dataclass(frozen=True)
class World:
    """The fleet's profile, the law's settings (its defaults, at the SLO) and the traffic."""

    profile: LLMProfile
    config: AutoscalerConfig
    prompt: float
    output: float
    heavy: tuple[float, int] | None
    duration_s: float

    def trace(self, rate: float, cv: float, seed: int) -> Trace:
        made = generate(lambda t: np.full_like(t, rate), self.duration_s, cv, seed,
                        self.prompt, self.output)
        if self.heavy is None:
            return made
        share, tokens = self.heavy
        prompts = made.prompt_tokens.copy()
        prompts[np.random.default_rng(seed + 1).random(prompts.size) < share] = tokens
        return Trace(made.arrival_s, prompts, made.output_tokens)

    def capacity(self, trace: Trace) -> ReplicaCapacity:
        """What the law reads: the mix off vLLM's prompt-token histogram of the trace."""
        bounds = prompt_token_buckets(self.profile.model.max_model_len)
        counts = np.searchsorted(np.sort(trace.prompt_tokens), bounds, side="right")
        buckets = (*zip(bounds, counts.astype(float), strict=True),
                   (math.inf, float(len(trace))))
        mix = prompt_mix(buckets, float(trace.prompt_tokens.mean()))
        return token_capacity(self.profile, mix, float(trace.output_tokens.mean()),
                              self.config.slo_ttft_s, self.config.max_num_seqs).capacity

    def countable(self, trace: Trace) -> np.ndarray:
        """The requests the SLO counts: after the warm-up, own prefill within the SLO."""
        own = np.array([self.profile.prefill_seconds(int(n)) for n in trace.prompt_tokens])
        return (trace.arrival_s >= WARM_UP_S) & (own <= self.config.slo_ttft_s)

    def missed(self, trace: Trace, counted: np.ndarray, replicas: int) -> float:
        """The fleet's share of the ``counted`` requests over the SLO at ``replicas``."""
        slo = self.config.slo_ttft_s
        result = simulate(trace, StaticPolicy(replicas, interval_s=math.inf),
                          FleetConfig(profile=self.profile, initial_replicas=replicas,
                                      cold_start_s=0.0), slo, self.config.percentile)
        return float(np.mean(result.ttft[counted] > slo)) if counted.any() else 0.0

    def rule(self, rate: float, capacity: ReplicaCapacity, cv2: float) -> int:
        """The law's count (each replica's share of the arrivals)."""
        return replicas_for_mix(rate, capacity, self.config.slo_ttft_s, self.config.quantile,
                                self.config.max_utilization, cv2)


def whole_stream_count(world: World, rate: float, capacity: ReplicaCapacity,
                       cv2: float) -> int:
    """The count the rule picked before it split the arrivals over the replicas: at ``c``
    replicas, the share's variability ``1 + (x - 1) / c`` equals the whole stream's ``cv2``
    for ``x = 1 + c (cv2 - 1)``."""
    replicas = world.rule(rate, capacity, 1.0)
    while miss_fraction(replicas, rate, capacity, world.config.slo_ttft_s,
                        1.0 + replicas * (cv2 - 1.0)) > 1 - world.config.quantile:
        replicas += 1
    return replicas


def fewest(world: World, trace: Trace, capacity: ReplicaCapacity, rate: float,
           limit: int) -> tuple[int | None, dict[int, float]]:
    """The fewest replicas (up to ``limit``) whose fleet meets p99, and each count's miss."""
    replicas = max(1, math.ceil(rate * capacity.work_s / FLEET_CAP))
    counted = world.countable(trace)
    misses: dict[int, float] = {}
    while replicas <= limit:
        misses[replicas] = world.missed(trace, counted, replicas)
        if misses[replicas] <= 1 - world.config.quantile:
            return replicas, misses
        replicas += 1
    return None, misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="A100-80GB")
    parser.add_argument("--slo", type=float, default=1.0)
    parser.add_argument("--prompt", type=float, default=512.0)
    parser.add_argument("--output", type=float, default=128.0)
    parser.add_argument("--cvs", default="1,1.5,2,3,4")
    parser.add_argument("--rates", default="3,10,30,60")
    parser.add_argument("--heavy", default=None, metavar="SHARE,TOKENS")
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    try:
        cvs = [float(x) for x in args.cvs.split(",")]
        rates = [float(x) for x in args.rates.split(",")]
        heavy = None
        if args.heavy:
            share, tokens = args.heavy.split(",")
            heavy = (float(share), int(tokens))
    except ValueError:
        parser.error("--cvs and --rates take comma-separated numbers, --heavy SHARE,TOKENS")
    if any(not x > 0 for x in (*cvs, *rates)) or args.duration <= WARM_UP_S or args.slo <= 0:
        parser.error(f"cvs, rates and --slo must be > 0 and --duration > {WARM_UP_S:g} s")
    if heavy is not None and not (0 < heavy[0] < 1 and heavy[1] >= 1):
        parser.error("--heavy takes a share in (0, 1) and a token count >= 1")
    llm = profile(MODEL, args.gpu)
    world = World(llm, AutoscalerConfig(slo_ttft_s=args.slo, percentile=PERCENTILE, profile=llm),
                  args.prompt, args.output, heavy, args.duration)
    print(f"{MODEL} on {args.gpu}, TTFT p99 <= {args.slo:g} s, ~{args.prompt:g}-token prompts"
          f"{f' ({heavy[0]:.0%} of {heavy[1]} tokens)' if heavy else ''}, "
          f"{args.duration:g} s per replay\n")
    print("| arrival cv | req/s | fleet needs | rule (share) | rule (whole stream) | "
          "fleet's miss at each count |")
    print("|---|---|---|---|---|---|")
    for cv in cvs:
        for rate in rates:
            trace = world.trace(rate, cv, args.seed)
            capacity = world.capacity(trace)
            share = world.rule(rate, capacity, cv * cv)
            whole = whole_stream_count(world, rate, capacity, cv * cv)
            needed, misses = fewest(world, trace, capacity, rate, 2 * max(share, whole) + 4)
            cells = ", ".join(f"{c}: {m:.2%}" for c, m in sorted(misses.items()))
            print(f"| {cv:g} | {rate:g} | {needed if needed else '> ' + str(max(misses))} | "
                  f"{share} | {whole} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
