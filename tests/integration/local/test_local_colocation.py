"""Local mode co-locates models: several models in one ``kubeplex-runtime`` process.

Two small sim models with little traffic on one H100 pool: placement packs them into one
group (each with its memory share), so local mode runs one runtime process for both, the
gateway routes each model to it, a model scaling from zero is *added* to the running
process, and a model scaling to zero is *unloaded* from it while the process keeps serving
the other one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

COLD_START_S = 1.0


def _scenario(coder_min: int) -> str:
    return f"""
apiVersion: kubeplex.io/v1alpha1
kind: GPUPool
metadata: {{name: h100}}
spec: {{gpu: {{product: H100-80GB}}, gpusPerNode: 2, maxGPUs: 2, warmPool: {{size: 0}}}}
---
apiVersion: kubeplex.io/v1alpha1
kind: ModelService
metadata: {{name: chat, namespace: default}}
spec:
  model: {{uri: "hf://meta-llama/Llama-3.1-8B-Instruct", profile: llama-3.1-8b}}
  engine: sim
  pool: h100
  slo: {{ttftSeconds: 1.0}}
  scaling: {{minReplicas: 1, maxReplicas: 2}}
  workload: {{requestsPerSecond: 0.5, burstiness: 4}}
---
apiVersion: kubeplex.io/v1alpha1
kind: ModelService
metadata: {{name: coder, namespace: default}}
spec:
  model: {{uri: "hf://Qwen/Qwen2.5-7B-Instruct", profile: qwen-2.5-7b}}
  engine: sim
  pool: h100
  slo: {{ttftSeconds: 1.0}}
  scaling: {{minReplicas: {coder_min}, maxReplicas: 2, scaleToZeroAfterSeconds: 4}}
  workload: {{requestsPerSecond: 0.5, burstiness: 4}}
---
apiVersion: local.kubeplex.io/v1alpha1
kind: LocalSettings
spec:
  tickSeconds: 0.5
  stableWindowSeconds: 4
  panicWindowSeconds: 2
  scaleDownDelaySeconds: 2
  coldStartSeconds: {COLD_START_S}
  holdTimeoutSeconds: 60
"""


def _groups(up: Any) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = up.status()["pools"][0]["groups"]
    return groups


def _ask(up: Any, model: str) -> httpx.Response:
    return httpx.post(up.url + "/v1/completions", timeout=60, json={
        "model": model, "prompt": "hi", "prompt_tokens": 16, "max_tokens": 4})


def _ready_group(up: Any, models: list[str]) -> dict[str, Any] | None:
    return next((g for g in _groups(up) if g["phase"] == "ready"
                 and sorted(g["models"]) == sorted(models) and not g["loading"]
                 and not g["unloading"]), None)


def test_partners_start_in_one_runtime_process(start_up: Any, tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(_scenario(coder_min=1))
    up = start_up([path])
    group = up.wait_for("one group hosting both", lambda: _ready_group(up, ["chat", "coder"]),
                        60)
    assert len(_groups(up)) == 1, _groups(up)
    shares = group["memoryShares"]
    assert sum(shares.values()) <= 0.9 + 1e-3 and all(v < 0.9 for v in shares.values())
    for model in ("chat", "coder"):
        answer = _ask(up, model)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == model
    runtime = httpx.get(group["url"] + "/v1/models", timeout=5).json()
    assert sorted(m["id"] for m in runtime["data"]) == ["chat", "coder"]
    shown = subprocess.run([sys.executable, "-m", "kubeplex.cli", "status", "--gateway", up.url],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "chat (0." in shown.stdout and "mem)" in shown.stdout, \
        shown.stdout
    assert up.stop() == 0 and up.leftover() == []


def test_scale_from_zero_adds_to_the_shared_process_and_scale_to_zero_unloads(
        start_up: Any, tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(_scenario(coder_min=0))
    up = start_up([path])
    alone = up.wait_for("chat ready", lambda: _ready_group(up, ["chat"]), 60)

    # coder is at zero: the request is held, coder is loaded into chat's process, answered.
    answer = _ask(up, "coder")
    assert answer.status_code == 200, answer.text
    shared = up.wait_for("coder added to chat's process",
                         lambda: _ready_group(up, ["chat", "coder"]), 30)
    assert shared["pid"] == alone["pid"] and len(_groups(up)) == 1, _groups(up)
    events = "\n".join(up.status()["events"])
    assert f"add coder to {alone['id']}" in events, events

    # coder idles past scaleToZeroAfterSeconds: unloaded, the process keeps serving chat.
    up.wait_for("coder unloaded", lambda: _ready_group(up, ["chat"]), 40)
    groups = _groups(up)
    assert [g["pid"] for g in groups] == [alone["pid"]], groups
    events = "\n".join(up.status()["events"])
    assert "coder unloaded from" in events and "drained and stopped" not in events, events
    runtime = httpx.get(alone["url"] + "/v1/models", timeout=5).json()
    assert [m["id"] for m in runtime["data"]] == ["chat"]
    assert _ask(up, "chat").status_code == 200
    assert up.stop() == 0 and up.leftover() == []
