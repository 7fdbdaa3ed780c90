"""One serving group (or warm standby) of local mode: a ``kubeplex-runtime`` child process.

The process runs in its own process group (so a stop reaches the engines it forked) and gets
SIGTERM when local mode dies (``PR_SET_PDEATHSIG``), so nothing is orphaned. Its router and
control API listen on free loopback ports; everything else goes through the runtime's control
API (``/kubeplex/v1/...``): load, wake, sleep, drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx

from kubeplex.control import GroupPhase, GroupView
from kubeplex.operator.local.errors import ProcessError
from kubeplex.runtime.supervisor import free_port

__all__ = ["GroupProcess"]

#: Linux prctl option: signal the child when its parent dies (<linux/prctl.h>).
PR_SET_PDEATHSIG = 1
#: How often a starting runtime's /readyz is polled (seconds).
READY_POLL_SECONDS = 0.1
#: SIGTERM -> SIGKILL of a runtime process group that does not exit (seconds).
STOP_TIMEOUT_SECONDS = 15.0
#: Output lines of the runtime kept for errors and `kubeplex status`.
LOG_LINES = 30


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class GroupProcess:
    """A runtime process plus what local mode knows about it (phase, routed models)."""

    def __init__(self, group_id: str, pool: str, gpus: int, config: dict[str, Any],
                 workdir: Path, phase: GroupPhase, now: float,
                 shape: tuple[int, int] | None = None) -> None:
        self.id = group_id
        self.pool = pool
        self.gpus = gpus
        self.shape = shape
        self.config = config
        self.workdir = workdir
        self.phase = phase
        self.since = now
        self.claimed = False
        #: Models routed to this group (or about to be); warm standbys route none.
        self.models: tuple[str, ...] = ()
        #: Models loaded but not routed (warm standbys).
        self.preloaded: tuple[str, ...] = ()
        #: Memory share of each hosted model (co-located models share the group's GPUs).
        self.shares: dict[str, float] = {}
        #: Models being added to the running group (loading), and unloads under way.
        self.loading: set[str] = set()
        self.unloading: set[str] = set()
        self.port = free_port()
        self.control_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.control = f"http://127.0.0.1:{self.control_port}"
        self.process: asyncio.subprocess.Process | None = None
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.started_at = time.monotonic()
        self.ready_seconds: float | None = None
        self._log_task: asyncio.Task[None] | None = None

    @property
    def file_stem(self) -> str:
        """The group id as a file name (``namespace.name``: neither part has a dot)."""
        return self.id.replace("/", ".")

    def view(self, load: float = 0.0) -> GroupView:
        """The planner's view; a group still unloading a model reports no shape (full)."""
        return GroupView(self.id, self.pool, self.gpus, self.phase, self.models,
                         self.preloaded, load, self.since, self.claimed,
                         None if self.unloading else self.shape,
                         tuple(self.shares.get(m, 1.0) for m in self.models),
                         tuple(m for m in self.models if m in self.loading))

    def set_phase(self, phase: GroupPhase, now: float) -> None:
        self.phase = phase
        self.since = now

    # ---- process ------------------------------------------------------------------------
    async def spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"{self.file_stem}.json"
        path.write_text(json.dumps(self.config, indent=2))
        argv = [sys.executable, "-m", "kubeplex.runtime", "--config", str(path),
                "--port", str(self.port), "--control-port", str(self.control_port)]
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                # A neutral working directory: `python -m` puts it on sys.path, and a
                # checkout's top-level operator/ folder would shadow the stdlib module.
                cwd=tempfile.gettempdir(), preexec_fn=_die_with_parent)
        except OSError as exc:
            raise ProcessError(f"group {self.id}: cannot start kubeplex-runtime: "
                               f"{exc.strerror}") from exc
        self._log_task = asyncio.create_task(self._collect_output())

    async def _collect_output(self) -> None:
        process = self.process
        if process is None or process.stdout is None:
            return
        log_file = (self.workdir / f"{self.file_stem}.log").open("ab")
        try:
            while line := await process.stdout.readline():
                self.log.append(line.decode(errors="replace").rstrip())
                log_file.write(line)
                log_file.flush()
        finally:
            log_file.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _tail(self) -> str:
        return "\n".join(list(self.log)[-8:])

    async def wait_ready(self, client: httpx.AsyncClient, limit_s: float) -> None:
        """Poll the control API's /readyz until 200; ProcessError on exit or timeout."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.process.returncode if self.process else None
                raise ProcessError(f"group {self.id}: kubeplex-runtime exited with {code}:\n"
                                   f"{self._tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(self.control + "/readyz", timeout=2)).status_code == 200:
                    self.ready_seconds = time.monotonic() - self.started_at
                    return
            await asyncio.sleep(READY_POLL_SECONDS)
        raise ProcessError(f"group {self.id}: not ready within {limit_s:g} s:\n{self._tail()}")

    # ---- control API --------------------------------------------------------------------
    async def _call(self, client: httpx.AsyncClient, method: str, path: str,
                    limit_s: float, body: Any = None) -> Any:
        try:
            response = await client.request(method, self.control + path, json=body,
                                             timeout=limit_s)
        except httpx.HTTPError as exc:
            raise ProcessError(f"group {self.id}: {method} {path}: {exc!r}") from exc
        if response.status_code >= 300:
            raise ProcessError(f"group {self.id}: {method} {path} answered "
                               f"{response.status_code}: {response.text[:300]}")
        return response.json()

    async def load(self, client: httpx.AsyncClient, entry: dict[str, Any],
                   limit_s: float) -> None:
        await self._call(client, "POST", "/kubeplex/v1/models?wait=true", limit_s, entry)

    async def unload(self, client: httpx.AsyncClient, model: str, limit_s: float) -> None:
        """Drain ``model``'s engine (in-flight requests finish) and unload it."""
        await self._call(client, "DELETE", f"/kubeplex/v1/models/{model}", limit_s)

    async def sleep(self, client: httpx.AsyncClient, model: str, limit_s: float) -> None:
        await self._call(client, "POST", f"/kubeplex/v1/models/{model}/sleep?level=1", limit_s)

    async def wake(self, client: httpx.AsyncClient, model: str, limit_s: float) -> None:
        await self._call(client, "POST", f"/kubeplex/v1/models/{model}/wake", limit_s)

    async def status(self, client: httpx.AsyncClient) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(client, "GET", "/kubeplex/v1/status", 5)
        return result

    async def drain(self, client: httpx.AsyncClient, limit_s: float) -> None:
        """Ask the runtime to finish in-flight requests and stop its engines."""
        await self._call(client, "POST", "/kubeplex/v1/drain?wait=true", limit_s)

    async def stop(self) -> None:
        """SIGTERM the process group (the runtime drains), SIGKILL after a timeout."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                self._signal(signal.SIGKILL)
                await process.wait()
        self._signal(signal.SIGKILL)  # leftovers of the group (engines), if any
        if self._log_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._log_task, 2.0)

    def kill(self) -> None:
        """SIGKILL the whole process group now (the runtime and its engines)."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)
