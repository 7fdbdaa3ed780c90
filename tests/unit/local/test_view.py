"""Local mode's status view: the law's target told as what each stage added, and the cold
start it plans with."""

from __future__ import annotations

from rich.console import Console

from kubeplex.operator.local.view import by_stage, render_status


def test_the_target_reads_as_the_sum_of_its_stages() -> None:
    assert by_stage([["slo", 2], ["hold", 1]]) == "3 = 2 slo + 1 hold"
    assert by_stage([["slo", 3], ["rate_limit", -1]]) == "2 = 3 slo - 1 rate_limit"
    assert by_stage([["no data", 1]]) == "1 = 1 no data"


def _model(**extra: object) -> dict[str, object]:
    return {"name": "chat", "engine": "sim", "ready": 1, "desired": 1, "starting": 0,
            "draining": 0, "warm": 0, "warming": 0, "queue": 0.0, "running": 1.0,
            "arrivalRate": 2.0, "held": 0, "sloTTFT": 0.5, "ttft": 0.1,
            "decision": "hold at 1", **extra}


def _shown(model: dict[str, object]) -> str:
    status = {"gateway": "http://127.0.0.1:1", "uptimeSeconds": 5, "models": [model],
              "pools": [], "events": []}
    console = Console(width=200, record=True)
    console.print(render_status(status))
    return console.export_text()


def test_the_view_says_which_cold_start_the_autoscaler_plans_with() -> None:
    assert "plans with a 13 s cold start (configured)" in _shown(
        _model(plannedColdStartSeconds=13.0, plannedColdStartTimed=0))
    assert "plans with a 21 s cold start (median of 4 timed)" in _shown(
        _model(plannedColdStartSeconds=21.2, plannedColdStartTimed=4))
    assert "cold start" not in _shown(_model(plannedColdStartSeconds=None))
