"""Pure status helpers: conditions that keep their transition time, and the status trees of
ModelServices, ServingGroups and GPUPools."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["condition", "iso", "merge_conditions", "ready_string", "slo_status"]

#: Observed TTFT above this fraction of the target counts as AtRisk (below: Met).
AT_RISK_FRACTION = 0.8


def iso(t: float) -> str:
    """RFC 3339 seconds, as Kubernetes writes timestamps."""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: bool | None, reason: str, message: str,
              generation: int | None) -> dict[str, Any]:
    return {"type": kind, "status": {True: "True", False: "False", None: "Unknown"}[status],
            "reason": reason, "message": message[:32768],
            **({"observedGeneration": generation} if generation is not None else {})}


def merge_conditions(previous: Sequence[Mapping[str, Any]] | None,
                     new: Sequence[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """``new`` with ``lastTransitionTime`` kept from ``previous`` where the status is unchanged."""
    before = {c.get("type"): c for c in previous or ()}
    out = []
    for c in new:
        old = before.get(c["type"])
        stamp = old.get("lastTransitionTime") if old and old.get("status") == c["status"] \
            else None
        out.append({**c, "lastTransitionTime": stamp or iso(now)})
    return out


def ready_string(ready: int, desired: int) -> str:
    return f"{ready}/{desired}"


def slo_status(ttft: float | None, target: float, arrival_rate: float | None) -> str:
    """Met, AtRisk, Violated, Idle (no traffic) or Unknown (no data yet)."""
    if arrival_rate is not None and arrival_rate == 0 and ttft is None:
        return "Idle"
    if ttft is None:
        return "Unknown"
    if ttft > target:
        return "Violated"
    return "AtRisk" if ttft > AT_RISK_FRACTION * target else "Met"
