"""Issue 15's acceptance run: runtimes ``kill -9``ed under load cost no request.

A real ``kubeplex up`` with three sim replicas of one model; eight closed-loop clients (half
streaming, half chat) for 45 s; at 12 s one runtime process (or all of them) is killed.
Every request must complete with the whole answer: a stream ends with ``[DONE]`` and its text
is exactly the uncut generation (the sim's text is a function of its context, so a gap or a
repeated token shows), a plain answer has every token; usage counts each token once.

Killing every runtime needs the control loop to replace the dead groups (warm standby
first, then cold: ``LocalMode._bury_dead``): answers must resume within ``BACK_WITHIN_S``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubeplex.runtime.sim.sampling import Sampling, generate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

CLIENTS = 8
RUN_S = 45.0
KILL_AT_S = 12.0
#: After a kill of every runtime, new requests must be served again within this long.
BACK_WITHIN_S = 30.0
#: 48 tokens of Llama-3.1-8B on a simulated L4: about 1.5 s per request, so a kill finds
#: several requests in the middle of their generation.
MAX_TOKENS = 48
PROMPT = "Describe a fox."
SCENARIO = """
apiVersion: kubeplex.io/v1alpha1
kind: GPUPool
metadata: {name: l4}
spec:
  gpu: {product: L4}
  gpusPerNode: 4
  maxGPUs: 4
  warmPool: {size: 1}
---
apiVersion: kubeplex.io/v1alpha1
kind: ModelService
metadata: {name: llama, namespace: default}
spec:
  model: {uri: "hf://meta-llama/Llama-3.1-8B-Instruct", profile: llama-3.1-8b}
  engine: sim
  pool: l4
  slo: {ttftSeconds: 5, percentile: 95}
  scaling: {minReplicas: 3, maxReplicas: 3}
  workload: {requestsPerSecond: 2, promptTokens: 256, outputTokens: 48}
---
apiVersion: local.kubeplex.io/v1alpha1
kind: LocalSettings
spec:
  tickSeconds: 0.5
  coldStartSeconds: 2
  holdTimeoutSeconds: 60
"""


def _expected(chat: bool) -> str:
    return generate("" if chat else PROMPT, MAX_TOKENS, Sampling()).text


async def _one(client: httpx.AsyncClient, model: str, stream: bool, chat: bool) -> str | None:
    """One request; None when it completed whole, else what was wrong."""
    body: dict[str, Any] = {"model": model, "max_tokens": MAX_TOKENS, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if chat:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    path = "/v1/chat/completions" if chat else "/v1/completions"
    try:
        if not stream:
            answer = await client.post(path, json=body)
            if answer.status_code != 200:
                return f"status {answer.status_code}: {answer.text[:200]}"
            out = answer.json()
            choice = out["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
            usage = out["usage"]["completion_tokens"]
            done = True
        else:
            text, usage, done = "", None, False
            async with client.stream("POST", path, json=body) as answer:
                if answer.status_code != 200:
                    return f"status {answer.status_code}"
                async for line in answer.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        event = json.loads(line[6:])
                        if "error" in event:
                            return f"error event: {event['error']}"
                        for c in event["choices"]:
                            text += (c.get("delta") or {}).get("content") or "" if chat \
                                else c["text"]
                        usage = (event.get("usage") or {}).get("completion_tokens", usage)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if not done:
        return "the stream ended without [DONE]"
    if text != _expected(chat):
        return f"text differs: {text!r}"
    if usage != MAX_TOKENS:
        return f"usage counts {usage} completion tokens"
    return None


def _groups(up: Any) -> list[dict[str, Any]]:
    return [g for pool in up.status()["pools"] for g in pool["groups"]]


async def _run(up: Any, kill_all: bool) -> tuple[list[str | None], float | None]:
    model = up.model()["name"]
    serving = [g for g in _groups(up) if g["phase"] == "ready" and g["models"]]
    victims = serving if kill_all else serving[:1]
    results: list[str | None] = []
    back_after: float | None = None
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=up.url, timeout=120) as client:
        async def client_loop(i: int) -> None:
            nonlocal back_after
            while time.monotonic() - started < RUN_S:
                sent = time.monotonic()
                results.append(await _one(client, model, stream=i % 2 == 0, chat=i % 4 >= 2))
                if back_after is None and sent - started > KILL_AT_S and results[-1] is None:
                    back_after = time.monotonic() - started - KILL_AT_S

        async def killer() -> None:
            await asyncio.sleep(KILL_AT_S)
            for group in victims:
                os.kill(group["pid"], signal.SIGKILL)

        await asyncio.gather(killer(), *(client_loop(i) for i in range(CLIENTS)))
    return results, back_after


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "failures.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.mark.parametrize("kill_all", [False, True], ids=["one-of-three", "all"])
def test_killed_runtimes_cost_no_request(start_up, tmp_path: Path, kill_all: bool) -> None:
    up = start_up([_scenario(tmp_path)])
    up.wait_for("three ready replicas", lambda: up.model()["ready"] == 3, 120)
    results, back_after = asyncio.run(_run(up, kill_all))
    failures = [r for r in results if r is not None]
    assert len(results) > 3 * CLIENTS  # the clients kept going through the kill
    assert failures == [], f"{len(failures)} of {len(results)} failed: {failures[:5]}"
    if kill_all:
        assert back_after is not None and back_after < BACK_WITHIN_S
    metrics = httpx.get(up.url + "/metrics", timeout=10).text
    moved = sum(float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("kubeplex_gateway_migrations_total{")
                and 'cause="replica-failed"' in line)
    assert moved >= 1, "no request was in flight on the killed replica"
    assert up.stop() == 0
    assert up.leftover() == []
