"""``kubeplex calibrate`` against a real sim engine process: it measures, fits and writes a
profile that the latency model then uses; bad invocations say what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kubeplex.cli import main
from kubeplex.placement.calibration import calibration_from_dict
from kubeplex.placement.llm import LLMProfile, calibrated, profile
from kubeplex.runtime.supervisor import free_port

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kubeplex.runtime.sim", "--port", str(port),
                             "--served-model-name", "m", "--model-profile", "llama-3.1-8b",
                             "--gpu", "H100-80GB"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_calibrating_the_sim_recovers_its_model(sim: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim.json"
    code = main(["calibrate", "--url", sim, "--model", "llama-3.1-8b", "--gpu", "H100-80GB",
                 "--name", "sim-test", "--engine", "sim", "--prompts", "256,2048,8192",
                 "--batches", "1,4", "--decode-batches", "1,16", "--contexts", "256,2048",
                 "--decode-tokens", "24", "--repeats", "2", "--out", str(out)])
    assert code == 0
    assert "fit error median" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert len(data["points"]["prefill"]) == 6 and len(data["points"]["decode"]) == 4
    cal = calibration_from_dict(data)
    measured = LLMProfile(calibrated(cal), profile("llama-3.1-8b", "H100-80GB").gpu)
    model = profile("llama-3.1-8b", "H100-80GB")
    # The sim serves its analytic model plus HTTP and event-loop overhead (a shared machine:
    # generous bounds) and reserves prompt + max_tokens of KV, so the estimate is exact-ish.
    assert 0.7 < measured.prefill_seconds(8192) / model.prefill_seconds(8192) < 2.0
    assert 0.5 < measured.decode_step_seconds(16, 2048) / model.decode_step_seconds(16, 2048) \
        < 4.0
    assert cal.kv_capacity_tokens == pytest.approx(model.kv_capacity_tokens(), rel=0.1)
    # the profile plans: `kubeplex simulate autoscale --profile FILE` accepts it
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,512,16\n1.0,512,16\n")
    assert main(["simulate", "autoscale", "--trace", str(trace), "--profile", str(out),
                 "--gpu", "H100-80GB", "--slo-ttft", "1", "--policy", "kubeplex",
                 "--json"]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "llama-3.1-8b", "--gpu", "H100-80GB"], "give --url"),
        (["--model", "gpt-9", "--gpu", "H100-80GB", "--url", "http://x"], "unknown model"),
        (["--model", "llama-3.1-8b", "--gpu", "H100-80GB", "--url", "http://127.0.0.1:9",
          "--served-model", "m", "--prompts", "a,b"], "--prompts must be"),
    ],
)
def test_bad_invocations_say_what_is_wrong(args: list[str], message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["calibrate", "--name", "x", "--engine", "e", "--out", str(tmp_path / "p.json"),
                 *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_refit_reads_points_measured_elsewhere(tmp_path: Path) -> None:
    points = Path(__file__).resolve().parents[3] / "benchmarks" / "calibration" / "results" / \
        "h200_hf_points.json"
    out = tmp_path / "h200.json"
    assert main(["calibrate", "--refit", str(points), "--model", "llama-3.1-8b", "--gpu",
                 "H200-141GB", "--name", "h200", "--engine", "hf", "--out", str(out)]) == 0
    cal = calibration_from_dict(json.loads(out.read_text()))
    assert cal.prefill_error.points == 25
    assert cal.prefill.per_token_s > 0
