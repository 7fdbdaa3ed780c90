"""The autoscaler benchmark scripts' own Python paths (they run by path, outside the package),
so that a change to the evaluation API breaks a test, not a 15-minute benchmark run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from kubeplex.autoscaler.trace import generate, spike_rate, write_trace

SCRIPTS = Path(__file__).resolve().parents[3] / "benchmarks" / "autoscaler"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _cli(bench: ModuleType, monkeypatch: pytest.MonkeyPatch,
         capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str, bool]:
    """Run a script's ``main`` with ``argv``: (stdout, stderr, whether it exited)."""
    monkeypatch.setattr(sys, "argv", [bench.__name__, *argv])
    try:
        bench.main()
    except SystemExit:
        captured = capsys.readouterr()
        return captured.out, captured.err, True
    captured = capsys.readouterr()
    return captured.out, captured.err, False


def test_the_iso_cost_search_scales_a_baseline_to_the_budget(tmp_path: Path) -> None:
    """run.py's iso-cost section replays HPA with its target scaled until it uses no more
    GPU-hours than the budget: a budget under its unscaled cost needs a larger target."""
    trace = generate(spike_rate(4.0, 4.0, 120.0, 120.0, 30.0), 360.0, 2.0, seed=1)
    path = tmp_path / "spike.csv"
    with path.open("w") as f:
        write_trace(trace, f)
    run = _load("run")
    unscaled = run.iso_cost(path, "hpa", budget=1e9)
    assert unscaled["scale"] == 1.0 and unscaled["gpu_hours"] > 0
    cheaper = run.iso_cost(path, "hpa", budget=unscaled["gpu_hours"] * 0.8)
    assert cheaper["scale"] > 1.0
    assert cheaper["gpu_hours"] <= unscaled["gpu_hours"] * 0.8
    # No scale fits a budget of nothing: said as such, not as an infinite cost (which
    # results.json wrote as the non-JSON token Infinity).
    assert run.iso_cost(path, "hpa", budget=0.0) == {"scale": None, "gpu_hours": None,
                                                     "attainment": None}


def test_a_draw_redraws_the_generated_traces_and_leaves_the_table_seeds_alone() -> None:
    """real_traces.py --draw K: the generated traces with other seeds (the table's plus 10 K),
    each draw its own cache entries; a recorded trace has no other draws."""
    rt = _load("real_traces")
    spec = rt.TRACES["on-off"]
    table, again, other = spec.trace(0), spec.trace(0), spec.trace(1)
    assert (table.arrival_s == again.arrival_s).all()
    assert len(other) != len(table) or (other.arrival_s != table.arrival_s).any()
    assert (other.arrival_s == rt._on_off(spec.seed + rt.DRAW_SEED_STEP).arrival_s).all()
    digests = ("world", "law")
    assert rt._key(("on-off", 1.0, "hpa", 1.0, 0.0, 0), digests) == "on-off|1.0|hpa|1.0|world"
    assert rt._key(("on-off", 1.0, "hpa", 1.0, 0.0, 2), digests).endswith("|draw2")
    # The reactive reference's points differ by their hold too.
    assert rt._key(("on-off", 1.0, "reactive", 0.6, float("inf"), 2), digests) == (
        "on-off|1.0|reactive|0.6|world|holdinf|draw2")
    with pytest.raises(ValueError, match="recorded trace"):
        rt.TRACES["mooncake"].trace(1)


def test_the_later_shapes_are_a_set_of_their_own() -> None:
    """real_traces.py --set later: shapes made after the law, each generated, drawable, and
    none in the table's set (whose default run must not change)."""
    rt = _load("real_traces")
    later = [s for s in rt.TRACES.values() if s.family == "later"]
    table = [s for s in rt.TRACES.values() if s.family == "table"]
    assert len(later) == 8 and len(table) == 8
    assert set(rt.FAMILIES) == {s.family for s in rt.TRACES.values()}
    for spec in later:
        trace = spec.trace(0)
        assert len(trace) > 0 and spec.seed is not None
        assert (spec.trace(0).arrival_s == trace.arrival_s).all()
    ramp = rt.TRACES["ramp"].trace(0).arrival_s
    early, late = (ramp < 300).sum() / 300, ((ramp > 2600) & (ramp < 2700)).sum() / 100
    assert 1.5 < early < 2.5 and 34 < late < 46, (early, late)


def test_the_round18_shapes_are_what_they_say() -> None:
    """real_traces.py --set round18: six shapes, each drawable; the outage has no request
    for its 10 minutes, the two tenants' prompts are two populations, the step down drops."""
    rt = _load("real_traces")
    shapes = {n: s for n, s in rt.TRACES.items() if s.family == "round18"}
    assert len(shapes) == 6 and all(s.seed is not None for s in shapes.values())
    outage = shapes["outage"].trace(0).arrival_s
    assert not ((outage >= 1201) & (outage < 1799)).any()  # the rate grid's 1 s edges ramp
    assert 9 < (outage < 1200).sum() / 1200 < 11
    tenants = shapes["two-tenants"].trace(1)
    assert (np.diff(tenants.arrival_s) >= 0).all()
    long = tenants.prompt_tokens > 3000
    assert 0.07 < long.mean() < 0.15 and tenants.prompt_tokens[~long].mean() < 800
    down = shapes["step-down"].trace(0).arrival_s
    assert (down < 1800).sum() > 5 * (down >= 1800).sum()


def test_what_the_world_takes_from_the_law_reruns_every_policy() -> None:
    """real_traces.py caches the baselines and the oracle by the world's digest alone. A name
    that a world module imports from a law module (the oracle's sizing, the baselines'
    tuning) must count as the world's, or a change to it would leave their rows stale. Only
    the kubeplex policy's own entry points (``decide``, its state) may be left out."""
    import ast

    rt = _load("real_traces")
    law = {name.removesuffix(".py") for name in rt.LAW_MODULES}
    counted = {(m, n) for m, names in rt.WORLD_FROM_LAW.items() for n in names}
    allowed = counted | {("policy", "decide"), ("policy", "AutoscalerState")}  # kubeplex's
    package = SCRIPTS.parents[1] / "autoscaler"
    missing = []
    for path in sorted(package.glob("*.py")):
        if path.stem in law or path.stem == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                source = node.module.removeprefix("kubeplex.autoscaler.")
                missing += [f"{path.name}: {source}.{alias.name}" for alias in node.names
                            if source in law and (source, alias.name) not in allowed]
    assert not missing, f"add to WORLD_FROM_LAW: {missing}"
    world, _ = rt._digests()
    assert len(world) == 16


def test_the_spend_table_groups_the_stages_and_keeps_the_rest() -> None:
    """real_traces.py's table of where kubeplex's GPU-hours went: each group sums its stages,
    what no group names is the rest, and the asked total is the stages' sum."""
    rt = _load("real_traces")
    run = {"policy": "kubeplex", "gpu_hours": 2.6, "spend": {
        "by_stage": {"slo": 1.5, "rise": 0.1, "panic": 0.1, "hold": 0.5, "rate_limit": -0.2},
        "standby_hours": 0.3}}
    row = rt._spend_table([{"trace": "decay", "speed": 1.0, "runs": [run]}]).splitlines()[-1]
    assert row == ("| decay | 1 | 2.60 | 2.00 | 1.50 (75%) | 0.50 (25%) | 0.00 | 0.20 (10%) | "
                   "0.00 | -0.20 (-10%) | 0.30 |")


def test_the_reactive_reference_is_judged_by_the_same_bars() -> None:
    """real_traces.py: the reactive reference's best point is the cheapest that passes the
    bars kubeplex is held to; a row where none passes is counted as asking for foresight."""
    rt = _load("real_traces")

    def point(policy: str, attainment: float, hours: float, u: float = 1.0,
              hold: float = 60.0) -> dict[str, object]:
        return {"policy": policy, "attainment": attainment, "gpu_hours": hours,
                "utilization": u, "hold_s": hold}

    oracle = [point("oracle", 0.95, 1.0, 1.0), point("oracle", 1.0, 2.0, 0.5)]
    rows = [*oracle, point("kubeplex", 0.995, 3.0), point("hpa", 0.9, 1.5),
            point("reactive", 0.999, 2.5, 0.6, 300.0), point("reactive", 0.9999, 2.55, 0.4),
            point("reactive", 0.98, 1.2)]
    v = rt.verdict(rows)
    assert not rt._passes(v)  # kubeplex: 3.0 GPU-h where the oracle needs 1.9 at 99.5%
    best = v["reactive"]
    assert best["passes"] and (best["utilization"], best["hold_s"]) == (0.6, 300.0)
    assert best["cost_ratio"] == pytest.approx(2.5 / 1.98)
    # Without foresight nothing reaches the bar: the highest point is shown, and fails.
    short = [*oracle, point("kubeplex", 0.995, 2.2), point("reactive", 0.97, 1.2, 0.4),
             point("reactive", 0.95, 1.0)]
    lacking = rt.verdict(short)
    assert lacking["reactive"]["attainment"] == 0.97 and not lacking["reactive"]["passes"]
    entries = [{"trace": "step", "speed": 1.0, "runs": rows, "verdict": v},
               {"trace": "bursts", "speed": 0.7, "runs": short, "verdict": lacking}]
    table = rt._reactive_table(entries).splitlines()
    assert table[-2].endswith("| 0.6 / 300 s | 1.26x | yes |")
    assert table[-1].endswith("| 0.4 / 60 s | 0.86x | no: attainment |")
    assert rt.reactive_summary(entries) == (
        "1 of 2 rows pass for kubeplex; the reactive reference passes 1 (kubeplex 0 of them); "
        "no reactive point passes 1 (kubeplex 1 of them)")


def test_the_extract_benchmark_times_a_real_window_and_refuses_bad_flags(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("extract_cpu")
    from kubeplex.autoscaler import Signals, extract

    scrapes = bench.window(3)
    signals = extract(scrapes, 60.0, 60.0, 99.0, 30.0)
    # 3 engines completing 3-9 requests each per 2 s, holding a steady 5: ~9 req/s arrive.
    assert isinstance(signals, Signals) and 6.0 < signals.arrival_rate < 12.0
    out, _, _ = _cli(bench, monkeypatch, capsys, "--engines", "2", "--calls", "2",
                     "--repeats", "1")
    assert "2 engines:" in out
    _, err, exited = _cli(bench, monkeypatch, capsys, "--engines", "two")
    assert exited and "--engines must be comma-separated integers" in err


def test_queueing_vs_fleet_finds_the_fewest_replicas_the_fleet_needs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("queueing_vs_fleet")
    from kubeplex.autoscaler import AutoscalerConfig
    from kubeplex.placement.llm import profile

    llm = profile("llama-3.1-8b", "A100-80GB")
    world = bench.World(llm, AutoscalerConfig(slo_ttft_s=1.0, percentile=99.0, profile=llm),
                        512.0, 128.0, None, 300.0)
    trace = world.trace(30.0, 3.0, 7)
    capacity = world.capacity(trace)
    needed, misses = bench.fewest(world, trace, capacity, 30.0, 12)
    # The fewest is the first count that meets p99, and one fewer (where the fleet ran it)
    # does not; every count started from the throughput bound.
    assert needed is not None and misses[needed] <= 0.01
    assert all(miss > 0.01 for count, miss in misses.items() if count < needed)
    assert min(misses) >= 30.0 * capacity.work_s / bench.FLEET_CAP
    # The whole stream's variability never asks fewer than the share's.
    for cv2 in (1.0, 4.0, 9.0):
        share = world.rule(30.0, capacity, cv2)
        assert share == bench.replicas_for_mix(30.0, capacity, 1.0, 0.99, 0.85, cv2)
        assert bench.whole_stream_count(world, 30.0, capacity, cv2) >= share
    out, _, _ = _cli(bench, monkeypatch, capsys, "--cvs", "2", "--rates", "10",
                     "--duration", "120")
    assert "| 2 | 10 |" in out
    _, err, exited = _cli(bench, monkeypatch, capsys, "--heavy", "half")
    assert exited and "--heavy SHARE,TOKENS" in err
