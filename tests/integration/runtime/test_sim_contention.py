"""Co-located sim engines share their group's simulated GPU (runtime_image/sim/device.py).

Two sim models in one ``kubeplex-runtime``: one busy model next to an idle partner decodes at
its profile's step time; both busy, each one's steps take turns with the other's, so each
sees its inter-token latency (vLLM's ``vllm:inter_token_latency_seconds``, which the sim
observes on its simulated timeline, so CPU load on this machine does not move it) about
double. Ratios within one run, wide margins.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubeplex.placement.llm import profile
from kubeplex.runtime.harness import RuntimeProcess, model_entry

pytestmark = pytest.mark.timeout(180)

PROFILE = "llama-3.1-8b"
SHARES = {"a": 0.45, "b": 0.3}
CONCURRENT = 4
PROMPT_TOKENS = 512
OUTPUT_TOKENS = 150


def _itl(text: str) -> dict[str, tuple[float, float]]:
    """model -> (sum, count) of its inter-token latency histogram."""
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "vllm:inter_token_latency_seconds":
            continue
        for s in family.samples:
            pair = out.setdefault(s.labels["model_name"], [0.0, 0.0])
            if s.name.endswith("_sum"):
                pair[0] += s.value
            elif s.name.endswith("_count"):
                pair[1] += s.value
    return {m: (v[0], v[1]) for m, v in out.items()}


async def _mean_itl(rt: RuntimeProcess, busy: list[str]) -> dict[str, float]:
    """Load the ``busy`` models at once; each one's mean inter-token latency meanwhile."""
    body = {"prompt": "x", "prompt_tokens": PROMPT_TOKENS, "max_tokens": OUTPUT_TOKENS}
    async with httpx.AsyncClient(timeout=120) as client:
        before = _itl((await client.get(rt.url + "/metrics")).text)
        answers = await asyncio.gather(*(
            client.post(rt.url + "/v1/completions", json={**body, "model": m})
            for m in busy for _ in range(CONCURRENT)))
        after = _itl((await client.get(rt.url + "/metrics")).text)
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    means = {}
    for m in busy:
        tokens = after[m][1] - before.get(m, (0.0, 0.0))[1]
        assert tokens == CONCURRENT * (OUTPUT_TOKENS - 1)
        means[m] = (after[m][0] - before.get(m, (0.0, 0.0))[0]) / tokens
    return means


async def test_busy_co_located_sim_models_slow_each_other_an_idle_one_does_not(
        tmp_path: Path) -> None:
    config = {"models": [model_entry(m, "sim", memory_share=share, sim_profile=PROFILE)
                         for m, share in SHARES.items()]}
    with RuntimeProcess(config, tmp_path) as rt:
        alone = await _mean_itl(rt, ["a"])  # b is loaded and idle
        together = await _mean_itl(rt, ["a", "b"])
        log = rt.log()
    prof = profile(PROFILE, "H100-80GB")
    # Alone: the profile's decode step for the batch (plus a little for the other requests'
    # prefills landing in the first steps), not slowed by the idle partner.
    step = prof.decode_step_seconds(CONCURRENT, PROMPT_TOKENS + OUTPUT_TOKENS // 2)
    assert step * 0.9 < alone["a"] < step * 1.4, (alone, step)
    # Together: the two models' steps take turns (ideal: twice as long; margins for the
    # stretch of time when only one of them was busy).
    assert together["a"] > 1.5 * alone["a"], (alone, together)
    assert together["b"] > 1.5 * alone["a"], (alone, together)
    # Each engine's KV capacity follows its memory share (the sim logs it at start-up).
    for m, share in SHARES.items():
        assert f"sim: serving {m} (" in log
        assert f"KV {prof.kv_capacity_tokens(share)} tokens" in log
    assert "shared device" in log
