"""Real-trace autoscaler benchmark: every policy, the oracle's curve, fleet speeds 1.0 and 0.7.

Traces: the Mooncake production trace (``../shared/traces/``) and generated ones with
different burst shapes (see :data:`TRACES`). For each trace and fleet speed it replays
kubeplex, HPA, KPA, static-peak, the oracle at several utilizations (its cost/attainment
curve) and the reactive reference (the oracle without foresight, over headroom and hold)
through :func:`kubeplex.autoscaler.evaluation.replay` (what ``kubeplex simulate autoscale``
runs; the policy plans with the analytic profile, the fleet runs it at the given
speed, which the policy is not told). It then checks issue 14's bars per trace and speed:

* kubeplex's attainment >= min(99%, the oracle's ceiling - 0.5 point);
* kubeplex's GPU-hours <= 1.3 x the oracle's at kubeplex's attainment (the cheapest oracle
  point at least as good, or the curve interpolated between its two neighbours);
* no baseline both cheaper and better than kubeplex.

The same bars are checked on the reactive reference's points: a row that none of them passes
asks for foresight (a forecast of the trace), not for a better reaction.

Writes ``results/real_traces.json``, ``results/real_traces.md`` (the table) and
``results/real_traces.png`` (GPU-hours vs attainment per trace, the oracle's curve drawn).
Runs are cached in ``build/bench/real_traces/cache.json`` by what they depend on (trace,
speed, policy, the law's source for kubeplex), so a re-run replays only what changed.

``--draw K`` (K >= 1) draws the generated traces again with other seeds (the table's plus
10 K; the Mooncake trace is what it is, so it is left out) and writes
``results/real_traces-draw{K}.*``: the same bars on traces no constant was looked at on. A
change to the law that passes more rows of the table by chance shows here.

``--set later`` runs the shapes made after the law's development (a slow ramp, a sawtooth,
a trickle, a flood from the first second, long prompts, spikes shorter than a cold start on
a period, a decay, two compressed days) with the same bars, into
``results/real_traces-later[-drawK].*``. ``--set round18`` runs six more made in round 18 (a
flash crowd, a 10-minute outage, two tenants on one model, a fast wave, a step down, long
outputs) into ``results/real_traces-round18[-drawK].*``.

Usage: python benchmarks/autoscaler/real_traces.py [--set table|later|round18] [--traces a,b]
       [--speeds 1.0,0.7] [--policies kubeplex,hpa,...] [--draw K] [--jobs 2] [--no-plot]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
BUILD = ROOT / "build" / "bench" / "real_traces"
MOONCAKE = ROOT.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"
MODEL = "llama-3.1-8b"
PERCENTILE = 99.0
COLD_START_S, WARM_START_S = 60.0, 2.0
SPEEDS = (1.0, 0.7)
BASELINES = ("hpa", "kpa", "static-peak")
ORACLE_UTILIZATIONS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: The reactive reference's curve (the oracle without foresight, ``autoscaler/oracle.py``):
#: its headroom, and how long it keeps a replica after the need that asked for it (one cold
#: start, five, to the end of the trace).
REACTIVE_UTILIZATIONS = (0.4, 0.6, 0.8, 1.0)
REACTIVE_HOLDS_S = (COLD_START_S, 5 * COLD_START_S, math.inf)
UTILIZATIONS = {"oracle": ORACLE_UTILIZATIONS, "reactive": REACTIVE_UTILIZATIONS}
#: Issue 14's bars.
ATTAINMENT_BAR, CEILING_MARGIN, COST_BAR = 0.99, 0.005, 1.3


@dataclass(frozen=True)
class TraceSpec:
    name: str
    what: str
    gpu: str
    slo_s: float
    make: Callable[[int], Any]
    #: The table's seed; None for a recorded trace, which cannot be drawn again.
    seed: int | None = None
    #: ``table``: the shapes the law was developed on; ``later`` and ``round18``: made after
    #: it (``--set``).
    family: str = "table"

    def trace(self, draw: int) -> Any:
        if draw and self.seed is None:
            raise ValueError(f"{self.name} is a recorded trace: it has no other draws")
        return self.make((self.seed or 0) + DRAW_SEED_STEP * draw)


#: Draw K of a generated trace uses the table's seed plus this times K.
DRAW_SEED_STEP = 10


def _bursts(gap_s: float, seed: int) -> Any:
    from kubeplex.autoscaler.trace import burst_train_rate, generate

    duration = 5400.0
    rate = burst_train_rate(1.0, 20.0, 60.0, (2.0, 10.0), gap_s, duration, seed)
    return generate(rate, duration, 1.0, seed)


def _diurnal_bursts(seed: int) -> Any:
    from kubeplex.autoscaler.trace import diurnal_rate, generate, with_bursts

    bursts = ((900.0, 60.0, 3.0), (1700.0, 150.0, 2.0), (2300.0, 90.0, 2.5),
              (3000.0, 120.0, 3.0))
    return generate(with_bursts(diurnal_rate(4.0, 20.0, 3600.0), bursts), 3600.0, 2.0, seed)


def _step(seed: int) -> Any:
    from kubeplex.autoscaler.trace import generate, spike_rate

    return generate(spike_rate(10.0, 5.0, 1200.0, 300.0, 60.0), 2400.0, 2.0, seed)


def _on_off(seed: int) -> Any:
    from kubeplex.autoscaler.trace import generate, square_rate

    return generate(square_rate(3.0, 30.0, 600.0, 180.0), 3600.0, 1.5, seed)


def _gamma(seed: int) -> Any:
    return _constant(15.0, 3600.0, 4.0, seed)


def _constant(rate: float, duration_s: float, cv: float, seed: int, prompt: float = 512.0,
              output: float = 128.0) -> Any:
    from kubeplex.autoscaler.trace import generate

    return generate(lambda t: np.full_like(t, rate), duration_s, cv, seed, prompt, output)


def _shaped(points: tuple[tuple[float, float], ...], duration_s: float, cv: float,
            seed: int) -> Any:
    """A rate through ``(time, req/s)`` points, linear in between."""
    from kubeplex.autoscaler.trace import generate

    times, rates = zip(*points, strict=True)
    return generate(lambda t: np.interp(t, times, rates), duration_s, cv, seed)


def _sawtooth(seed: int) -> Any:
    from kubeplex.autoscaler.trace import generate

    return generate(lambda t: 5.0 + 20.0 * np.mod(t, 300.0) / 300.0, 3600.0, 1.5, seed)


def _periodic_spikes(seed: int) -> Any:
    from kubeplex.autoscaler.trace import generate, square_rate

    return generate(square_rate(5.0, 40.0, 300.0, 30.0), 3600.0, 1.0, seed)


def _decay(seed: int) -> Any:
    from kubeplex.autoscaler.trace import generate

    return generate(lambda t: 5.0 + 35.0 * np.exp(-t / 900.0), 3600.0, 1.5, seed)


def _twin_diurnal(seed: int) -> Any:
    from kubeplex.autoscaler.trace import diurnal_rate, generate

    return generate(diurnal_rate(2.0, 30.0, 1800.0), 3600.0, 3.0, seed)


def _flash(seed: int) -> Any:
    return _shaped(((0, 4), (1200, 4), (1230, 40), (1830, 40), (1860, 4), (3600, 4)), 3600.0,
                   1.2, seed)


def _outage(seed: int) -> Any:
    from kubeplex.autoscaler.trace import generate

    return generate(lambda t: np.where((t >= 1200) & (t < 1800), 0.0, 10.0), 3600.0, 1.0, seed)


def _two_tenants(seed: int) -> Any:
    """A chat tenant (8 req/s, ~512-token prompts, Poisson) and a retrieval one (1 req/s,
    ~8k-token prompts, ~256-token outputs, cv 2) on one model."""
    from kubeplex.autoscaler.trace import Trace

    chat = _constant(8.0, 3600.0, 1.0, seed)
    rag = _constant(1.0, 3600.0, 2.0, seed + 7, 8000.0, 256.0)
    order = np.argsort(np.concatenate((chat.arrival_s, rag.arrival_s)), kind="stable")
    return Trace(*(np.concatenate((a, b))[order] for a, b in (
        (chat.arrival_s, rag.arrival_s), (chat.prompt_tokens, rag.prompt_tokens),
        (chat.output_tokens, rag.output_tokens))))


def _wave(seed: int) -> Any:
    from kubeplex.autoscaler.trace import generate

    return generate(lambda t: 15.0 - 10.0 * np.cos(2 * np.pi * t / 1200.0), 3600.0, 2.0, seed)


def _step_down(seed: int) -> Any:
    from kubeplex.autoscaler.trace import generate

    return generate(lambda t: np.where(t < 1800, 20.0, 3.0), 3600.0, 1.0, seed)


def _long_outputs(seed: int) -> Any:
    from kubeplex.autoscaler.trace import generate

    return generate(lambda t: 6.0 + 3.0 * np.sin(2 * np.pi * t / 1800.0), 3600.0, 1.5, seed,
                    150.0, 1000.0)


def _mooncake(_seed: int) -> Any:
    from kubeplex.autoscaler.trace import read_trace

    return read_trace(MOONCAKE)


TRACES: dict[str, TraceSpec] = {s.name: s for s in (
    TraceSpec("mooncake", "Mooncake conversation trace (Kimi production, 12,031 requests, "
              "~12k-token prompts, 59 min)", "H100-80GB", 2.0, _mooncake),
    TraceSpec("bursts", "bursts of 20-60 req/s lasting 2-10 s, exponential idle gaps of mean "
              "60 s over 1 req/s, 90 min", "A100-80GB", 1.0, lambda s: _bursts(60.0, s), 1),
    TraceSpec("bursts-sparse", "the same bursts, gaps of mean 240 s, 90 min", "A100-80GB", 1.0,
              lambda s: _bursts(240.0, s), 2),
    TraceSpec("diurnal-bursts", "diurnal 4 -> 20 -> 4 req/s over 60 min, cv 2, four bursts of "
              "2-3x for 60-150 s", "A100-80GB", 1.0, _diurnal_bursts, 3),
    TraceSpec("diurnal-bursts-0.3s", "the same at a 0.3 s SLO (the longest prompts cannot "
              "meet it)", "A100-80GB", 0.3, _diurnal_bursts, 3),
    TraceSpec("step", "10 req/s, a 5x step for 5 min with a 60 s ramp (as fast as a cold "
              "start), cv 2, 40 min", "A100-80GB", 1.0, _step, 4),
    TraceSpec("on-off", "3 req/s with 3 min at 30 req/s every 10 min, cv 1.5, 60 min",
              "H100-80GB", 0.5, _on_off, 5),
    TraceSpec("gamma", "15 req/s, Gamma inter-arrivals cv 4, 60 min", "A100-80GB", 1.0,
              _gamma, 6),
    # Made in round 13, after the law's development, and first run before any change to it.
    TraceSpec("ramp", "2 req/s for 5 min, rising to 40 over 40 min, back to 2 in 15, cv 1",
              "A100-80GB", 1.0,
              lambda s: _shaped(((0, 2), (300, 2), (2700, 40), (3600, 2)), 3600.0, 1.0, s),
              101, "later"),
    TraceSpec("sawtooth", "5 -> 25 req/s in 5 min, dropping back, repeated, cv 1.5, 60 min",
              "A100-80GB", 1.0, _sawtooth, 102, "later"),
    TraceSpec("trickle", "0.3 req/s, Poisson, 60 min", "A100-80GB", 1.0,
              lambda s: _constant(0.3, 3600.0, 1.0, s), 103, "later"),
    TraceSpec("flood", "60 req/s from the first second, Poisson, 30 min", "A100-80GB", 1.0,
              lambda s: _constant(60.0, 1800.0, 1.0, s), 104, "later"),
    TraceSpec("long-prompts", "3 req/s of ~4k-token prompts and ~256-token outputs, cv 2, "
              "60 min", "H100-80GB", 2.0,
              lambda s: _constant(3.0, 3600.0, 2.0, s, 4096.0, 256.0), 105, "later"),
    TraceSpec("spikes", "5 req/s, 30 s at 40 every 5 min (shorter than a cold start), "
              "Poisson, 60 min", "A100-80GB", 1.0, _periodic_spikes, 106, "later"),
    TraceSpec("decay", "40 req/s decaying to 5 (time constant 15 min), cv 1.5, 60 min",
              "A100-80GB", 1.0, _decay, 107, "later"),
    TraceSpec("twin-diurnal", "two 30-min days of 2 -> 30 req/s, cv 3", "A100-80GB", 1.0,
              _twin_diurnal, 108, "later"),
    # Made in round 18 and first run with the law of round 17; two faults they showed at the
    # outage's return were fixed before the set's tables were written (docs/benchmarks.md).
    TraceSpec("flash", "4 req/s, a flash crowd of 40 req/s for 10 min (30 s ramps), cv 1.2, "
              "60 min", "A100-80GB", 1.0, _flash, 201, "round18"),
    TraceSpec("outage", "10 req/s with no request for 10 min (a client outage), Poisson, "
              "60 min", "A100-80GB", 1.0, _outage, 202, "round18"),
    TraceSpec("two-tenants", "chat 8 req/s (~512 tokens) + retrieval 1 req/s (~8k tokens, "
              "cv 2), 60 min", "H100-80GB", 2.0, _two_tenants, 203, "round18"),
    TraceSpec("wave", "5 -> 25 req/s sinusoid of 20 min, cv 2, 60 min", "A100-80GB", 1.0,
              _wave, 204, "round18"),
    TraceSpec("step-down", "20 req/s for 30 min, then 3, Poisson", "A100-80GB", 1.0,
              _step_down, 205, "round18"),
    TraceSpec("long-outputs", "6 +- 3 req/s over 30 min, ~150-token prompts, ~1,000-token "
              "outputs, cv 1.5, 60 min", "A100-80GB", 1.0, _long_outputs, 206, "round18"),
)}
FAMILIES = ("table", "later", "round18")


#: The control law's own modules: a change re-runs kubeplex only. Every other module of
#: ``autoscaler/`` and ``placement/`` is the simulated world (the fleet, traces, queueing,
#: the metric names and scrapes of ``metrics.py``, placement's latency model: the baselines
#: and the oracle use them too), and a change there re-runs every policy.
LAW_MODULES = ("policy.py", "capacity.py", "memory.py", "forecast.py", "feedback.py",
               "recurrence.py", "release.py", "signals.py")
#: Modules that only read a replay's results (no policy or world runs them): in no digest.
ANALYSIS_MODULES = ("misses.py", "spend.py")
#: What the world takes from the law's modules (the fleet's view of a policy, the oracle's
#: and the baselines' sizing): their source counts as the world's, so a change to them
#: re-runs every policy too. ``test_benchmark_scripts`` checks the list against the imports.
WORLD_FROM_LAW = {"policy": ("AutoscalerConfig", "Observed", "Starting", "profile_capacity",
                             "slo_replicas", "target_per_replica")}


def _digests() -> tuple[str, str]:
    """(digest of the simulated world, digest of the world and the law)."""
    import dataclasses
    import importlib
    import inspect

    world, law = hashlib.sha256(), hashlib.sha256()
    for folder in ("autoscaler", "placement"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if folder == "autoscaler" and path.name in ANALYSIS_MODULES:
                continue
            (law if path.name in LAW_MODULES and folder == "autoscaler" else world).update(
                path.read_bytes())
    for module, names in WORLD_FROM_LAW.items():
        loaded = importlib.import_module(f"kubeplex.autoscaler.{module}")
        for name in names:
            member = getattr(loaded, name)
            # Its source, and the defaults it takes from module constants (VLLM_MAX_NUM_SEQS).
            defaults = ([(f.name, f.default) for f in dataclasses.fields(member)
                         if f.default is not dataclasses.MISSING]
                        if dataclasses.is_dataclass(member) else member.__defaults__)
            world.update(inspect.getsource(member).encode() + repr(defaults).encode())
    law.update(world.digest())
    return world.hexdigest()[:16], law.hexdigest()[:16]


#: trace, speed, policy, oracle or reactive utilization, reactive hold (0 for the others), draw
Job = tuple[str, float, str, float, float, int]


def _run(job: Job) -> dict[str, Any]:
    from kubeplex.autoscaler.evaluation import Scenario, replay
    from kubeplex.placement.llm import profile

    name, speed, policy, utilization, hold, draw = job
    spec = TRACES[name]
    trace = spec.trace(draw)
    scenario = Scenario(profile(MODEL, spec.gpu), spec.slo_s, PERCENTILE, COLD_START_S,
                        WARM_START_S, None, None, speed, utilization,
                        hold if policy == "reactive" else None)
    start = time.monotonic()
    kept: list[Any] = []
    result = replay(trace, scenario, policy, built=kept.append)
    row = {"trace": name, "speed": speed, "policy": policy, "utilization": utilization,
           "attainment": result.attainment, "gpu_hours": result.gpu_hours,
           "max_replicas": result.max_replicas, "scale_events": result.scale_events,
           "requests": result.requests, "seconds": round(time.monotonic() - start, 1)}
    if policy == "reactive":
        row["hold_s"] = hold
    if policy == "kubeplex":  # where it missed, and why (autoscaler/misses.py)
        from kubeplex.autoscaler.misses import replay_misses
        from kubeplex.autoscaler.spend import spend

        found = replay_misses(trace, result, scenario)
        row["misses"] = found.by_kind()
        row["largest_miss"] = next((e.describe() for e in found.largest(1)), None)
        row["spend"] = spend(kept[0].stages, result.duration_s).to_json()  # by stage
    return row


def _key(job: Job, digests: tuple[str, str]) -> str:
    name, speed, policy, utilization, hold, draw = job
    version = digests[1] if policy == "kubeplex" else digests[0]
    return (f"{name}|{speed}|{policy}|{utilization}|{version}"
            + (f"|hold{hold:g}" if policy == "reactive" else "") + (f"|draw{draw}" if draw else ""))


def oracle_cost_at(points: list[dict[str, Any]], attainment: float) -> float | None:
    """The oracle's GPU-hours at ``attainment``: interpolated on its curve (points sorted by
    cost), the cheapest point reaching it when it lies beyond; None if no point reaches it."""
    curve = sorted(points, key=lambda p: p["gpu_hours"])
    best = max(p["attainment"] for p in curve)
    if attainment > best:
        return None
    previous = None
    for p in curve:
        if p["attainment"] >= attainment:
            if previous is None or previous["attainment"] >= p["attainment"]:
                return float(p["gpu_hours"])
            span = p["attainment"] - previous["attainment"]
            share = (attainment - previous["attainment"]) / span
            return float(previous["gpu_hours"] + share * (p["gpu_hours"] - previous["gpu_hours"]))
        if previous is None or p["attainment"] > previous["attainment"]:
            previous = p
    return None


def _judge(rows: list[dict[str, Any]], mine: dict[str, Any]) -> dict[str, Any]:
    """Issue 14's bars for one point (kubeplex's, or one of the reactive reference's)."""
    oracle = [r for r in rows if r["policy"] == "oracle"]
    ceiling = max(r["attainment"] for r in oracle)
    needed = min(ATTAINMENT_BAR, ceiling - CEILING_MARGIN)
    at = oracle_cost_at(oracle, mine["attainment"])
    dominated = [r["policy"] for r in rows if r["policy"] in BASELINES
                 and r["gpu_hours"] < mine["gpu_hours"] and r["attainment"] > mine["attainment"]]
    ratio = None if at is None else mine["gpu_hours"] / at
    return {"ceiling": ceiling, "needed": needed, "attainment_ok": mine["attainment"] >= needed,
            "oracle_cost": at, "cost_ratio": ratio,
            "cost_ok": ratio is None or ratio <= COST_BAR, "dominated_by": dominated}


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """kubeplex's verdict; with the reactive reference's points, under ``reactive`` its best
    one: the cheapest that passes, else the best cost ratio at the bar, else the highest."""
    found = _judge(rows, next(r for r in rows if r["policy"] == "kubeplex"))
    points = [(p, _judge(rows, p)) for p in rows if p["policy"] == "reactive"]
    if points:
        passing = [pv for pv in points if _passes(pv[1])]
        reaching = [pv for pv in points if pv[1]["attainment_ok"]]
        point, judged = (min(passing, key=lambda pv: pv[0]["gpu_hours"]) if passing
                         else min(reaching, key=lambda pv: pv[1]["cost_ratio"] or 0.0)
                         if reaching else max(points, key=lambda pv: pv[0]["attainment"]))
        found["reactive"] = {**{k: point[k] for k in (
            "attainment", "gpu_hours", "utilization", "hold_s")}, **judged,
            "passes": _passes(judged)}
    return found


def _passes(v: dict[str, Any]) -> bool:
    return bool(v["attainment_ok"] and v["cost_ok"] and not v["dominated_by"])


def _table(report: dict[str, Any]) -> str:
    lines = ["| trace | speed | kubeplex | hpa | kpa | static-peak | oracle ceiling | bar | "
             "oracle GPU-h at kubeplex's attainment | cost ratio | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in report["results"]:
        rows = {r["policy"]: r for r in entry["runs"]
                if r["policy"] not in ("oracle", "reactive")}
        v = entry["verdict"]

        def cell(policy: str, rows: dict[str, Any] = rows) -> str:
            r = rows.get(policy)
            return "-" if r is None else f"{r['attainment']:.2%} / {r['gpu_hours']:.2f}"

        ok = _passes(v)
        why = [] if ok else [w for w, bad in (
            ("attainment", not v["attainment_ok"]), ("cost", not v["cost_ok"]),
            (f"dominated by {', '.join(v['dominated_by'])}", bool(v["dominated_by"]))) if bad]
        ratio = "-" if v["cost_ratio"] is None else f"{v['cost_ratio']:.2f}x"
        at = "-" if v["oracle_cost"] is None else f"{v['oracle_cost']:.2f}"
        lines.append(f"| {entry['trace']} | {entry['speed']:g} | **{cell('kubeplex')}** | "
                     f"{cell('hpa')} | {cell('kpa')} | {cell('static-peak')} | "
                     f"{v['ceiling']:.2%} | {v['needed']:.2%} | {at} | {ratio} | "
                     f"{'pass' if ok else 'FAIL: ' + '; '.join(why)} |")
    return "\n".join(lines) + "\n"


def _reactive_table(results: list[dict[str, Any]]) -> str:
    """Per row, whether a policy with no foresight could meet the bars at all."""
    def hold(seconds: float) -> str:
        return "to the end" if math.isinf(seconds) else f"{seconds:g} s"

    lines = ["The reactive reference (`autoscaler/oracle.py`): the oracle without foresight, "
             "which knows the fleet's true speed and every request that has arrived, and "
             "predicts nothing; its curve runs over headroom (utilization "
             f"{', '.join(f'{u:g}' for u in REACTIVE_UTILIZATIONS)}) and hold (how long a "
             f"replica stays after the need that asked for it: "
             f"{', '.join(hold(h) for h in REACTIVE_HOLDS_S)}). Its best point: the cheapest "
             "that passes the same bars, else the one nearest the cost bar among those that "
             "reach the attainment bar, else the highest. Where none passes, the bars ask for "
             "foresight on that trace.", "",
             "| trace | speed | kubeplex | reactive, best point | utilization / hold | "
             "cost ratio | reactive passes |", "|---|---|---|---|---|---|---|"]
    for entry in results:
        v, mine = entry["verdict"], next(r for r in entry["runs"] if r["policy"] == "kubeplex")
        best = v["reactive"]
        ratio = "-" if best["cost_ratio"] is None else f"{best['cost_ratio']:.2f}x"
        why = [w for w, bad in (("attainment", not best["attainment_ok"]),
                                ("cost", not best["cost_ok"]),
                                ("dominated", bool(best["dominated_by"]))) if bad]
        lines.append(
            f"| {entry['trace']} | {entry['speed']:g} | {mine['attainment']:.2%} / "
            f"{mine['gpu_hours']:.2f} ({'pass' if _passes(v) else 'fail'}) | "
            f"{best['attainment']:.2%} / {best['gpu_hours']:.2f} | "
            f"{best['utilization']:g} / {hold(best['hold_s'])} | {ratio} | "
            f"{'yes' if best['passes'] else 'no: ' + ', '.join(why)} |")
    return "\n".join(lines) + "\n"


def reactive_summary(results: list[dict[str, Any]]) -> str:
    """One line: how many rows kubeplex and the reactive reference pass, and their overlap."""
    rows = [e["verdict"] for e in results if "reactive" in e["verdict"]]
    reach = [v for v in rows if v["reactive"]["passes"]]
    return (f"{sum(map(_passes, rows))} of {len(rows)} rows pass for kubeplex; the reactive "
            f"reference passes {len(reach)} (kubeplex {sum(map(_passes, reach))} of them); "
            f"no reactive point passes {len(rows) - len(reach)} (kubeplex "
            f"{sum(_passes(v) for v in rows if not v['reactive']['passes'])} of them)")


def _misses_table(results: list[dict[str, Any]]) -> str:
    """kubeplex's late requests per row by kind (``kubeplex simulate autoscale --explain``)."""
    from kubeplex.autoscaler.misses import EPISODE_GAP_S, KINDS

    lines = ["kubeplex's late requests by kind (`autoscaler/misses.py`: late requests under "
             f"{EPISODE_GAP_S:g} s apart are an episode; *reaction*: replicas asked for "
             "became ready during it; *late start*: asked for, none ready before it ended; "
             "*not asked*: no "
             "replica asked for from a cold start before it; *alone*: prompts whose prefill "
             "alone exceeds the SLO, in no episode):", "",
             "| trace | speed | late | " + " | ".join(KINDS) + " | largest episode |",
             "|---|---|---|" + "---|" * len(KINDS) + "---|"]
    for entry in results:
        mine = next(r for r in entry["runs"] if r["policy"] == "kubeplex")
        by_kind = mine["misses"]
        lines.append(f"| {entry['trace']} | {entry['speed']:g} | {sum(by_kind.values())} | "
                     + " | ".join(str(by_kind[k]) for k in KINDS)
                     + f" | {mine['largest_miss'] or '-'} |")
    return "\n".join(lines) + "\n"


#: How the spend table groups the law's stages (``autoscaler/spend.py``); the rest (rate
#: limit, scale to zero, bounds, budget, no data) is one column.
SPEND_COLUMNS = {"SLO stage": ("slo",), "hold": ("hold",), "burst memory": ("recurrence",),
                 "reaction": ("credit", "rise", "claim", "panic"), "feedback": ("feedback",)}


def _spend_table(results: list[dict[str, Any]]) -> str:
    """Where kubeplex's GPU-hours went: the replica-hours each stage of its law asked for."""
    lines = ["Where kubeplex's GPU-hours went: the replica-hours each stage of its law asked "
             "for (`autoscaler/spend.py`, `kubeplex simulate autoscale --explain`), and the "
             "warm standby-hours; *reaction*: backlog credit, rise, standby claims and panic; "
             "*rest*: rate limit, scale to zero, bounds, budget:", "",
             "| trace | speed | GPU-h | asked | " + " | ".join(SPEND_COLUMNS)
             + " | rest | standbys |",
             "|---|---|---|---|" + "---|" * len(SPEND_COLUMNS) + "---|---|"]
    for entry in results:
        mine = next(r for r in entry["runs"] if r["policy"] == "kubeplex")
        by_stage = mine["spend"]["by_stage"]
        asked = sum(by_stage.values())
        grouped = [sum(by_stage.get(s, 0.0) for s in stages) for stages in SPEND_COLUMNS.values()]
        rest = asked - sum(grouped)
        cells = [f"{hours:.2f}" + (f" ({hours / asked:.0%})" if asked > 0 and round(hours, 2)
                                   else "")
                 for hours in (*grouped, rest)]
        lines.append(f"| {entry['trace']} | {entry['speed']:g} | {mine['gpu_hours']:.2f} | "
                     f"{asked:.2f} | " + " | ".join(cells)
                     + f" | {mine['spend']['standby_hours']:.2f} |")
    return "\n".join(lines) + "\n"


def _plot_misses(results: list[dict[str, Any]], path: Path) -> None:
    """kubeplex's late requests per row, stacked by kind, in units of what the row's
    attainment bar lets be late (1.0: the bar): the rows past it, and why, at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kubeplex.autoscaler.misses import KIND_COLORS, KINDS

    labels = [f"{e['trace']} x{e['speed']:g}" for e in results]
    mine = [next(r for r in e["runs"] if r["policy"] == "kubeplex") for e in results]
    allowed = [max((1 - e["verdict"]["needed"]) * m["requests"], 1.0)
               for e, m in zip(results, mine, strict=True)]
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(results) + 1.6))
    left = [0.0] * len(results)
    for kind in KINDS:
        shares = [m["misses"][kind] / a for m, a in zip(mine, allowed, strict=True)]
        ax.barh(labels, shares, left=left, color=KIND_COLORS[kind], label=kind)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.axvline(1.0, color="black", lw=1.2, label="what the bar allows")
    ax.invert_yaxis()
    ax.set_xlabel("kubeplex's late requests / the late requests its attainment bar allows")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(e["trace"] for e in report["results"]))
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    markers = {"kubeplex": "*", "hpa": "s", "kpa": "^", "static-peak": "D"}
    colors = {1.0: "tab:blue", 0.7: "tab:red"}
    for ax, name in zip(axes.flat, names, strict=False):
        for entry in (e for e in report["results"] if e["trace"] == name):
            color = colors.get(entry["speed"], "tab:gray")
            curve = sorted((r for r in entry["runs"] if r["policy"] == "oracle"),
                           key=lambda r: r["gpu_hours"])
            ax.plot([r["gpu_hours"] for r in curve], [100 * r["attainment"] for r in curve],
                    "-o", color=color, ms=3, lw=1, alpha=0.6,
                    label=f"oracle, speed {entry['speed']:g}")
            frontier: list[dict[str, Any]] = []  # the reactive points no other beats
            for r in sorted((r for r in entry["runs"] if r["policy"] == "reactive"),
                            key=lambda r: (r["gpu_hours"], -r["attainment"])):
                if not frontier or r["attainment"] > frontier[-1]["attainment"]:
                    frontier.append(r)
            if frontier:
                ax.plot([r["gpu_hours"] for r in frontier],
                        [100 * r["attainment"] for r in frontier], "--", color=color, lw=1,
                        alpha=0.6, label=f"reactive, speed {entry['speed']:g}")
            for r in entry["runs"]:
                if r["policy"] in markers:
                    ax.scatter(r["gpu_hours"], 100 * r["attainment"], color=color,
                               marker=markers[r["policy"]], s=90 if r["policy"] == "kubeplex"
                               else 30, zorder=3,
                               label=f"{r['policy']}, {entry['speed']:g}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("GPU-hours")
        ax.set_ylabel("attainment (%)")
        ax.set_ylim(max(50, ax.get_ylim()[0]), 100.5)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", default="",
                        help=f"comma-separated, of {', '.join(TRACES)} (default: all)")
    parser.add_argument("--speeds", default=",".join(f"{s:g}" for s in SPEEDS))
    parser.add_argument("--policies",
                        default="kubeplex," + ",".join(BASELINES) + ",oracle,reactive")
    parser.add_argument("--set", default="table", choices=FAMILIES, dest="family",
                        help="table: the shapes the law was developed on; later: shapes made "
                             "after it (default: table)")
    parser.add_argument("--draw", type=int, default=0,
                        help="draw the generated traces with other seeds (0: the table's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    if args.draw < 0:
        parser.error(f"--draw must be 0 (the table's seeds) or more, not {args.draw}")
    # A recorded trace (seed None) is in draw 0 only.
    drawable = [n for n, spec in TRACES.items() if spec.family == args.family
                and (spec.seed is not None or not args.draw)]
    names = [n for n in args.traces.split(",") if n] if args.traces else drawable
    unknown = [n for n in names if n not in TRACES]
    if unknown:
        parser.error(f"unknown traces {unknown}; known: {', '.join(TRACES)}")
    recorded = [n for n in names if n not in drawable]
    if recorded:
        parser.error(f"{', '.join(recorded)}: a recorded trace has no other draws; "
                     f"leave it out of --traces with --draw {args.draw}")
    if "mooncake" in names and not MOONCAKE.exists():
        parser.error(f"the Mooncake trace is not at {MOONCAKE}")
    speeds = [float(s) for s in args.speeds.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    jobs: list[Job] = []
    for name in names:
        for speed in speeds:
            for policy in policies:
                for u in UTILIZATIONS.get(policy, (1.0,)):
                    for hold in REACTIVE_HOLDS_S if policy == "reactive" else (0.0,):
                        jobs.append((name, speed, policy, u, hold, args.draw))
    BUILD.mkdir(parents=True, exist_ok=True)
    cache_path = BUILD / "cache.json"
    cache: dict[str, dict[str, Any]] = (json.loads(cache_path.read_text())
                                        if cache_path.exists() else {})
    law = _digests()
    # kubeplex's rows carry its misses by kind and its stages' replica-hours (rows cached
    # before that are replayed)
    todo = [j for j in jobs if _key(j, law) not in cache
            or (j[2] == "kubeplex" and not {"misses", "spend"} <= set(cache[_key(j, law)]))]
    print(f"{len(jobs)} runs, {len(todo)} to replay", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for done, (job, row) in enumerate(zip(todo, pool.map(_run, todo), strict=True), 1):
            cache[_key(job, law)] = row
            cache_path.write_text(json.dumps(cache))
            knobs = (f" u={row['utilization']}" if row["policy"] in UTILIZATIONS else "") + (
                f" hold={row['hold_s']:g}" if "hold_s" in row else "")
            print(f"[{done}/{len(todo)}] {row['trace']} x{row['speed']:g} {row['policy']}{knobs}: "
                  f"{row['attainment']:.2%}, {row['gpu_hours']:.2f} GPU-h ({row['seconds']} s)",
                  file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "model": MODEL, "percentile": PERCENTILE, "cold_start_s": COLD_START_S,
        "warm_start_s": WARM_START_S, "draw": args.draw,
        "command": "python benchmarks/autoscaler/real_traces.py"
                   + ("" if args.family == "table" else f" --set {args.family}")
                   + (f" --draw {args.draw}" if args.draw else ""),
        "traces": {n: {"what": TRACES[n].what, "gpu": TRACES[n].gpu,
                       "slo_ttft_s": TRACES[n].slo_s} for n in names},
        "results": []}
    for name in names:
        for speed in speeds:
            runs = [cache[_key(j, law)] for j in jobs if j[0] == name and j[1] == speed]
            entry: dict[str, Any] = {"trace": name, "speed": speed, "runs": runs}
            if any(r["policy"] == "kubeplex" for r in runs) and any(
                    r["policy"] == "oracle" for r in runs):
                entry["verdict"] = verdict(runs)
            report["results"].append(entry)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = ("real_traces" + ("" if args.family == "table" else f"-{args.family}")
            + (f"-draw{args.draw}" if args.draw else ""))
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    complete = [e for e in report["results"] if "verdict" in e]
    table = _table({"results": complete})
    misses = _misses_table(complete) + "\n" + _spend_table(complete)
    reactive = all("reactive" in e["verdict"] for e in complete)
    if reactive:
        misses += "\n" + _reactive_table(complete) + "\n" + reactive_summary(complete) + ".\n"
    (RESULTS / f"{stem}.md").write_text(table + "\n" + misses)
    print(table + "\n" + misses)
    passed = sum(1 for e in complete if _passes(e["verdict"]))
    print(f"{passed} of {len(complete)} rows pass", file=sys.stderr)
    if reactive:
        print(reactive_summary(complete), file=sys.stderr)
    if not args.no_plot:
        _plot(report, RESULTS / f"{stem}.png")
        _plot_misses(complete, RESULTS / f"{stem}-misses.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
