"""The SLO verdict of a load run's phase, and why a missed one missed (operator/local/verdict)."""

from __future__ import annotations

import pytest

from kubeplex.operator.local.load import LoadResult, Sample
from kubeplex.operator.local.verdict import FleetPoint, explain_phase, fleet_point

SLO_S = 1.0


def _samples(late_until: float, late_from: float = 1e9, end: float = 15.0) -> list[Sample]:
    """One request every 0.1 s over [0, end): late (2 s) before ``late_until`` and from
    ``late_from`` on, 0.2 s otherwise."""
    out = []
    for i in range(int(end * 10)):
        t = i / 10
        out.append(Sample(t, 200, 2.0 if t < late_until or t >= late_from else 0.2, 3.0))
    return out


def _fleet(*steps: tuple[float, int, int, str]) -> list[FleetPoint]:
    """Points every 0.25 s over [0, 15): (from t, serving, wanted, reason) steps."""
    points = []
    for i in range(60):
        t = i * 0.25
        _, ready, desired, reason = [s for s in steps if s[0] <= t][-1]
        points.append(FleetPoint(t, ready, 0, desired, reason))
    return points


SCALING = _fleet((0.0, 1, 1, "hold 1"), (1.5, 1, 2, "scale up 1 -> 2: rise"),
                 (2.0, 2, 2, "hold 2"), (7.0, 2, 3, "scale up 2 -> 3: SLO"),
                 (8.0, 3, 3, "hold 3"))


def test_a_met_phase_is_one_line_within_the_slo() -> None:
    lines = explain_phase(_samples(late_until=0.4), "during the burst", 0.0, 15.0, SLO_S, 95,
                          SCALING)
    assert len(lines) == 1
    assert "TTFT p95 0.20 s, within the 1 s SLO (4 of 150" in lines[0]
    assert "p95 allows 7" in lines[0]


def test_late_requests_while_scaling_up_are_laid_to_the_reaction() -> None:
    lines = explain_phase(_samples(late_until=7.5), "during the burst", 0.0, 15.0, SLO_S, 95,
                          SCALING)
    text = "\n".join(lines)
    assert "TTFT p95 2.00 s, over the 1 s SLO (75 of 150" in lines[0]
    # the fleet reached 3 serving at 8.0 s: every late request was sent before
    assert "75 before the fleet reached its 3 serving at +8.0 s, 0 after" in text
    assert "+1.5 s  the autoscaler wants 2: scale up 1 -> 2: rise" in text
    assert "+7.0 s  the autoscaler wants 3: scale up 2 -> 3: SLO" in text
    assert "+8.0 s  3 serving" in text
    assert "scaled up" in lines[-1] and "minReplicas" in lines[-1]


def test_late_requests_at_the_full_level_name_what_held_the_fleet() -> None:
    capped = _fleet((0.0, 2, 2, "hold 2"), (3.0, 2, 4, "GPU budget: wanted 4, places 2"))
    lines = explain_phase(_samples(late_until=0.0, late_from=5.0), "during the burst", 0.0,
                          15.0, SLO_S, 95, capped)
    assert "0 before the fleet reached its 2 serving at +0.0 s, 100 after" in lines[1]
    assert lines[-1] == ("  why: the fleet stayed under what the autoscaler wanted (4): "
                         "GPU budget: wanted 4, places 2")
    enough = _fleet((0.0, 2, 2, "hold 2: SLO needs 2"))
    lines = explain_phase(_samples(late_until=0.0, late_from=5.0), "during the burst", 0.0,
                          15.0, SLO_S, 95, enough)
    assert "judged that enough (hold 2: SLO needs 2)" in lines[-1]
    assert "kubeplex calibrate" in lines[-1]


def test_failed_requests_count_as_late_and_a_phase_without_answers_is_not_judged() -> None:
    samples = [*_samples(late_until=0.0, end=5.0),
               *[Sample(5.0 + i / 10, 503, None, None) for i in range(50)]]
    lines = explain_phase(samples, "x", 0.0, 10.0, SLO_S, 95, SCALING)
    assert "within" in lines[0] and "(50 of 100 requests over it or failed" in lines[0]
    assert explain_phase(samples[50:], "x", 5.0, 10.0, SLO_S, 95, SCALING) == [
        "x: no request answered, nothing to judge"]
    assert explain_phase(_samples(7.5), "x", 0.0, 15.0, SLO_S, 95, [])[-1] == (
        "  no record of the fleet during this phase to say why")
    with pytest.raises(ValueError, match="percentile"):
        explain_phase(samples, "x", 0.0, 10.0, SLO_S, 100, SCALING)


def test_the_run_judges_each_phase_on_the_runs_own_clock() -> None:
    result = LoadResult("m", "burst", 10.0, 45.0, _samples(late_until=0.0, late_from=16.0,
                                                             end=45.0), started=100.0)
    fleet = [FleetPoint(100.0 + p.t + 15.0, p.ready, p.starting, p.desired, p.reason)
             for p in SCALING]  # monotonic times: the fleet record of the burst's third
    lines = result.verdicts(SLO_S, 95, fleet)
    heads = [line for line in lines if not line.startswith("  ")]
    assert [h.split(":")[0] for h in heads] == ["before the burst", "during the burst",
                                                "after the burst"]
    assert "within" in heads[0] and "over" in heads[1] and "over" in heads[2]
    assert "+1.5 s  the autoscaler wants 2" in "\n".join(lines)


def test_a_status_entry_becomes_a_point_and_odd_fields_do_not_break_it() -> None:
    point = fleet_point(3.0, {"ready": 2, "starting": 1, "desired": 3, "decision": "why"})
    assert point == FleetPoint(3.0, 2, 1, 3, "why")
    assert fleet_point(1.0, {"ready": "2", "desired": None}) == FleetPoint(1.0, 0, 0, None,
                                                                          None)


@pytest.mark.parametrize("status", [{"models": 5}, ["x"], {"models": [{"name": "m",
                                                                    "sloTTFT": "fast"}]}])
def test_load_on_a_gateway_whose_status_is_odd_runs_and_says_the_slo_is_not_judged(
        status: object, capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway that is not kubeplex's (here a loopback stand-in answering completions and
    an odd status): the run completes, its figures print, and the SLO is left unjudged."""
    import asyncio
    import threading

    from aiohttp import web

    from kubeplex.cli import main
    from kubeplex.runtime.supervisor import free_port

    async def completion(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse()
        await answer.prepare(request)
        await answer.write(b'data: {"choices": [{"text": "x"}]}\n\n')
        await answer.write_eof()
        return answer

    async def odd(_: web.Request) -> web.Response:
        return web.json_response(status)

    port, ready, stop = free_port(), threading.Event(), threading.Event()

    def serve() -> None:
        async def run() -> None:
            app = web.Application()
            app.router.add_post("/v1/completions", completion)
            app.router.add_get("/kubeplex/v1/status", odd)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            ready.set()
            await asyncio.to_thread(stop.wait)
            await runner.cleanup()
        asyncio.run(run())

    server = threading.Thread(target=serve)
    server.start()
    try:
        assert ready.wait(10)
        assert main(["load", "--gateway", f"http://127.0.0.1:{port}", "--model", "m",
                     "--rate", "20", "--duration", "1"]) == 0
    finally:
        stop.set()
        server.join()
    out = capsys.readouterr().out
    assert "SLO not judged" in out and "ttft p95 first third" in out
