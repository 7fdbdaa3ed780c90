"""The status view of local mode (``kubeplex up``'s live screen and ``kubeplex status``).

Drawn from the JSON that :meth:`LocalMode.status` returns (and the gateway serves at
``/kubeplex/v1/status``), so both commands show the same thing.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["by_stage", "render_status"]


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _ttft(model: dict[str, Any]) -> Text:
    ttft, slo = model.get("ttft"), model["sloTTFT"]
    label = f"{_seconds(ttft)} / {_seconds(slo)}"
    if ttft is None:
        return Text(label, style="dim")
    return Text(label, style="red" if ttft > slo else "green")


def by_stage(changes: list[list[Any]]) -> str:
    """The law's target as the sum of what its stages added: ``3 = 2 slo + 1 hold``."""
    terms = []
    for i, (name, change) in enumerate(changes):
        sign = "-" if change < 0 else "+" if i else ""
        terms.append(f"{sign} {abs(change)} {name}".strip())
    return f"{sum(change for _, change in changes)} = {' '.join(terms)}"


def render_status(status: dict[str, Any], events: int = 8) -> RenderableType:
    """Models table, groups table and the latest events."""
    models = Table(title=f"kubeplex local mode  {status['gateway']}  "
                         f"(up {status['uptimeSeconds']:.0f} s)", expand=True)
    for column in ("model", "engine", "ready/desired", "warm", "TTFT p / SLO", "queue",
                   "req/s", "held", "last decision"):
        models.add_column(column, overflow="fold")
    for m in status["models"]:
        desired = "-" if m["desired"] is None else str(m["desired"])
        starting = f" (+{m['starting']} starting)" if m["starting"] else ""
        draining = f" (-{m['draining']} draining)" if m["draining"] else ""
        warm = f"{m['warm']}" + (f" (+{m['warming']})" if m["warming"] else "")
        queue = "-" if m["queue"] is None else f"{m['queue']:.0f}+{m['running'] or 0:.0f}"
        rate = "-" if m["arrivalRate"] is None else f"{m['arrivalRate']:.1f}"
        decision = m["decision"] or "-"
        if m.get("targetByStage"):
            decision = f"target {by_stage(m['targetByStage'])}\n{decision}"
        if m.get("plannedColdStartSeconds") is not None:
            timed = m.get("plannedColdStartTimed") or 0
            decision += (f"\nplans with a {m['plannedColdStartSeconds']:.0f} s cold start ("
                         + (f"median of {timed} timed)" if timed else "configured)"))
        if m.get("message"):
            decision += f"\n[budget] {m['message']}"
        name = Text(m["name"], style="bold")
        if m.get("inPanic"):
            name.append(" PANIC", style="bold red")
        models.add_row(name, m["engine"], f"{m['ready']}/{desired}{starting}{draining}", warm,
                       _ttft(m), queue, rate, str(m["held"]), decision)
    groups = Table(title="groups", expand=True)
    for column in ("pool", "group", "phase", "GPUs", "models", "in flight", "for"):
        groups.add_column(column)
    for pool in status["pools"]:
        budget = f"{pool['usedGPUs']}/{pool['maxGPUs'] if pool['maxGPUs'] is not None else '∞'}"
        if not pool["groups"]:
            groups.add_row(f"{pool['name']} ({pool['gpu']}, {budget} GPUs)", "-", "-", "-",
                           "-", "-", "-")
        for i, g in enumerate(pool["groups"]):
            label = f"{pool['name']} ({pool['gpu']}, {budget} GPUs)" if i == 0 else ""
            shares = g.get("memoryShares") or {}
            hosted = ", ".join(f"{m} ({shares[m]:.2f} mem)" if len(g["models"]) > 1
                               and m in shares else m for m in g["models"]) or (
                f"({', '.join(g['preloaded'])} preloaded)" if g["preloaded"] else "-")
            groups.add_row(label, g["id"], g["phase"], str(g["gpus"]), hosted,
                           str(g["inFlight"]), f"{g['forSeconds']:.0f} s")
    recent = Text("\n".join(status["events"][-events:]), style="dim")
    return Group(models, groups, recent)
