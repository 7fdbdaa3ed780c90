"""``kubeplex simulate trace`` and ``kubeplex simulate autoscale`` end to end (in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeplex.cli import main


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "spike.csv"
    code = main(["simulate", "trace", "--pattern", "spike", "--rate", "8", "--spike-factor",
                 "3", "--spike-at-s", "120", "--spike-for-s", "60", "--duration-s", "240",
                 "--out", str(path)])
    assert code == 0
    return path


def _autoscale(trace: Path, *extra: str) -> list[str]:
    return ["simulate", "autoscale", "--trace", str(trace), "--model", "llama-3.1-8b",
            "--gpu", "A100-80GB", "--slo-ttft", "1.0", "--cold-start-s", "20", *extra]


@pytest.mark.parametrize("policy", ["kubeplex", "hpa", "kpa", "static-peak", "oracle", "reactive"])
def test_json_report(trace_file: Path, policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_autoscale(trace_file, "--policy", policy, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"policy", "attainment", "gpu_hours", "scale_events", "max_replicas"}
    assert report["policy"] == policy
    assert 0 < report["attainment"] <= 1
    assert report["gpu_hours"] > 0
    assert report["max_replicas"] >= 1


def test_plot_and_text_report(trace_file: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "out" / "kubeplex.png"
    assert main(_autoscale(trace_file, "--policy", "kubeplex", "--warm-pool", "1",
                           "--percentile", "99", "--plot", str(png), "--explain", "1")) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "attainment" in capsys.readouterr().out


def test_explain_lists_the_misses_by_kind(trace_file: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # the spike (3x for 60 s) outruns KPA's replicas with a 20 s cold start: some misses
    assert main(_autoscale(trace_file, "--policy", "kpa", "--explain", "2", "--json")) == 0
    misses = json.loads(capsys.readouterr().out)["misses"]
    assert misses["late"] == sum(misses["by_kind"].values()) > 0
    assert 1 <= len(misses["largest"]) <= min(2, misses["episodes"])
    first = misses["largest"][0]
    assert first["late"] <= first["sent"] and first["kind"] in misses["by_kind"]
    assert main(_autoscale(trace_file, "--policy", "kubeplex", "--explain", "3")) == 0
    out = capsys.readouterr().out
    assert "late requests:" in out or "no request missed the SLO" in out
    assert main(_autoscale(trace_file, "--policy", "kubeplex", "--explain", "-1")) == 2
    assert "--explain" in capsys.readouterr().err


def test_explain_tells_which_stage_asked_for_the_replica_hours(
        trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_autoscale(trace_file, "--policy", "kubeplex", "--explain", "1", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    spent = report["replica_hours"]
    assert spent["asked"] == pytest.approx(sum(spent["by_stage"].values()), abs=1e-3)
    assert spent["by_stage"]["slo"] > 0 and spent["standby_hours"] >= 0
    # Asked replica-hours against the fleet's GPU-hours (1 GPU per replica): these lag the
    # asks by the starts and count the start-up itself, so they differ, but not by a factor.
    assert 0.5 < spent["asked"] / report["gpu_hours"] < 1.5
    png = tmp_path / "stages.png"
    assert main(_autoscale(trace_file, "--policy", "kubeplex", "--explain", "1",
                           "--plot", str(png))) == 0
    assert "replica-hours asked, by the stage that set them:" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(_autoscale(trace_file, "--policy", "kpa", "--explain", "1", "--json")) == 0
    assert "replica_hours" not in json.loads(capsys.readouterr().out)  # kubeplex's stages


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slo-ttft", "-1"], "argument --slo-ttft: must be a finite number > 0"),
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["--gpu", "TPU"], "unknown GPU 'TPU'"),
        (["--percentile", "100"], "--percentile must be in (0, 100)"),
        (["--warm-pool", "some"], "--warm-pool must be a count >= 0 or 'auto'"),
        (["--fleet-speed", "0"], "argument --fleet-speed: must be a finite number > 0"),
        (["--oracle-utilization", "2"],
         "--oracle-utilization: must be a finite number > 0 and <= 1.5"),
        (["--reactive-hold-s", "-5"],
         "--reactive-hold-s: must be a finite number >= 0 and <= 86400"),
        (["--fleet-model", "gpt-9"], "unknown model 'gpt-9'"),
        (["--fleet-profile", "/nonexistent.json"], "cannot read the profile"),
    ],
)
def test_bad_flags_are_one_line_errors(trace_file: Path, args: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_autoscale(trace_file, "--policy", "kubeplex"), *args]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("arrival_s,prompt_tokens,output_tokens\n", "the trace has no requests"),
        ("arrival_s,prompt_tokens,output_tokens\n5,10,10\n1,10,10\n", "must be ascending"),
    ],
)
def test_bad_trace_files(tmp_path: Path, content: str, message: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(_autoscale(path, "--policy", "hpa", "--json")) == 2
    assert message in capsys.readouterr().err


def test_trace_generator_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "trace", "--pattern", "azure"]) == 2
    assert "--pattern azure needs --counts" in capsys.readouterr().err
    assert main(["simulate", "trace", "--pattern", "gamma", "--rate", "0"]) == 2
    assert "argument --rate: must be a finite number > 0" in capsys.readouterr().err


def test_a_slower_fleet_and_a_shipped_profile(trace_file: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_autoscale(trace_file, "--policy", "static-peak", "--json")) == 0
    fast = json.loads(capsys.readouterr().out)
    assert main(_autoscale(trace_file, "--policy", "static-peak", "--fleet-speed", "0.3",
                           "--json")) == 0
    slow = json.loads(capsys.readouterr().out)
    assert slow["attainment"] < fast["attainment"]
    assert slow["max_replicas"] == fast["max_replicas"]  # the policy was not told
    # the fleet runs the sim's measured profile while the policy plans with the model
    assert main(_autoscale(trace_file, "--policy", "kubeplex", "--fleet-model",
                           "llama-3.1-8b-sim-h100", "--json")) == 0


def test_bursts_pattern(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.csv"
    assert main(["simulate", "trace", "--pattern", "bursts", "--rate", "1", "--burst-rates",
                 "20,60", "--burst-s", "2,10", "--gap-s", "60", "--duration-s", "600",
                 "--out", str(out)]) == 0
    assert "requests over" in capsys.readouterr().err
    assert main(["simulate", "trace", "--pattern", "bursts", "--burst-rates", "60"]) == 2
    assert "--burst-rates must be two numbers" in capsys.readouterr().err


def test_on_off_and_points_patterns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """on-off: --peak-rate for --on-s of every period; points: a rate through the points,
    linear in between (a ramp here), each checked on the generated arrivals."""
    from kubeplex.autoscaler.trace import read_trace

    out = tmp_path / "on-off.csv"
    assert main(["simulate", "trace", "--pattern", "on-off", "--rate", "2", "--peak-rate",
                 "40", "--period-s", "300", "--on-s", "60", "--duration-s", "1200",
                 "--out", str(out)]) == 0
    arrivals = read_trace(out).arrival_s
    on = (arrivals % 300 < 60).sum() / (4 * 60)
    off = (arrivals % 300 >= 60).sum() / (4 * 240)
    assert 34 < on < 46 and 1.4 < off < 2.6, (on, off)
    ramp = tmp_path / "ramp.csv"
    assert main(["simulate", "trace", "--pattern", "points", "--points", "0:1,600:31",
                 "--duration-s", "900", "--out", str(ramp)]) == 0
    arrivals = read_trace(ramp).arrival_s
    early, late = (arrivals < 100).sum() / 100, ((arrivals >= 600) & (arrivals < 900)).sum() / 300
    assert 2 < early < 5 and 27 < late < 35, (early, late)  # mean 3.5 over 0-100 s, then 31
    capsys.readouterr()


@pytest.mark.parametrize(("args", "message"), [
    (["--pattern", "points"], "--pattern points needs --points"),
    (["--pattern", "points", "--points", "0:1,x"], "'x' is not T:RATE"),
    (["--pattern", "points", "--points", "0:1,60:-2"], "a rate >= 0"),
    (["--pattern", "points", "--points", "0:1,60:2,30:4"], "times must increase"),
    (["--pattern", "points", "--points", "10:1,60:2"], "the first point must be at 0 s"),
    (["--pattern", "on-off", "--period-s", "60", "--on-s", "90"], "--on-s (90 s) must be at most"),
])
def test_shape_pattern_errors(args: list[str], message: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "trace", *args]) == 2
    assert message in capsys.readouterr().err
