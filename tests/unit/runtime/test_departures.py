"""A model or adapter that just left a runtime is refused with 503 for a grace, then 404."""

from __future__ import annotations

from kubeplex.runtime.departures import DEPARTED_GRACE_SECONDS, Departures


def test_departed_names_are_recent_for_the_grace_only() -> None:
    d = Departures()
    d.note(["llama", "sql-lora"], now=100.0)
    assert d.recent("llama", 100.0) and d.recent("sql-lora", 100.0 + DEPARTED_GRACE_SECONDS)
    assert not d.recent("llama", 100.0 + DEPARTED_GRACE_SECONDS + 0.1)
    assert not d.recent("other", 100.0) and not d.recent(None, 100.0)
    d.back(["llama"])  # loaded again
    assert not d.recent("llama", 101.0) and d.recent("sql-lora", 101.0)
    d.note([], now=100.0 + 2 * DEPARTED_GRACE_SECONDS)  # old entries are dropped
    assert not d._left
