"""Pure status helpers: conditions that keep their transition time, timestamps, READY text.
(The SLO status rule is the control layer's: :func:`kubeplex.control.slo_status`.)"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["condition", "iso", "merge_conditions", "ready_string"]


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
