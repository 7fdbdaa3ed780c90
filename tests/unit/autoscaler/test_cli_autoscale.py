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


@pytest.mark.parametrize("policy", ["kubeplex", "hpa", "kpa", "static-peak"])
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
                           "--percentile", "99", "--plot", str(png))) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "attainment" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slo-ttft", "-1"], "argument --slo-ttft: must be a finite number > 0"),
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["--gpu", "TPU"], "unknown GPU 'TPU'"),
        (["--percentile", "100"], "--percentile must be in (0, 100)"),
        (["--warm-pool", "some"], "--warm-pool must be a count >= 0 or 'auto'"),
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
