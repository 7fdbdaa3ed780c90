"""Fixtures of the local-mode suite: a real ``kubeplex up`` process with real runtimes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubeplex.runtime.supervisor import free_port

#: ``kubeplex up`` plans before it listens (placement: a few seconds on a busy machine).
GATEWAY_TIMEOUT_S = 120.0


class Up:
    """``kubeplex up`` as a child process, with helpers to read its status."""

    def __init__(self, paths: list[Path], workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "up.log"
        workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        # cwd outside the checkout: `python -m` puts it on sys.path (operator/ would shadow
        # the standard library's operator module).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubeplex.cli", "up", *map(str, paths), "--gateway-port",
             str(self.port), "--no-live", "--workdir", str(workdir / "run"), *extra],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        log.close()
        self.pids: set[int] = set()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_gateway(self) -> None:
        deadline = time.monotonic() + GATEWAY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"kubeplex up exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"no gateway after {GATEWAY_TIMEOUT_S:g} s:\n{self.log()}")

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.url + "/kubeplex/v1/status", timeout=10).json()
        for pool in data["pools"]:
            self.pids.update(g["pid"] for g in pool["groups"] if g["pid"])
        return data

    def model(self) -> dict[str, Any]:
        model: dict[str, Any] = self.status()["models"][0]
        return model

    def wait_for(self, what: str, check: Any, limit_s: float, every_s: float = 0.5) -> Any:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(every_s)
        raise AssertionError(f"{what}: not within {limit_s:g} s; status: {self.status()}\n"
                             f"log tail:\n{self.log()[-3000:]}")

    def stop(self, limit_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def leftover(self) -> list[int]:
        """Runtime processes that outlived ``kubeplex up`` (there must be none)."""
        alive = []
        for pid in self.pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            alive.append(pid)
        return alive


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Any]:
    started: list[Up] = []

    def start(paths: list[Path], *extra: str) -> Up:
        up = Up(paths, tmp_path / f"up{len(started)}", *extra)
        started.append(up)
        up.wait_gateway()
        up.status()
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            up.stop()
