"""One engine process per hosted model: start, health-check, restart with backoff, stop.

Each :class:`Engine` runs a supervision task:

    start process -> poll GET /health until 200 (STARTING) -> READY
    -> process exits unexpectedly -> RESTARTING (backoff) -> start again ...

The backoff doubles from ``restartInitialSeconds`` to ``restartMaxSeconds`` per consecutive
failure and resets once an engine has stayed ready for ``restartResetSeconds`` (Kubernetes'
CrashLoopBackOff shape). Engines run in their own process group (vLLM forks an EngineCore
process), die with the runtime (``PR_SET_PDEATHSIG``), and are stopped with SIGTERM to the
group, then SIGKILL after ``engineStopSeconds``. Their output is forwarded to the runtime's
stderr prefixed with ``[model]``; the last lines are kept for the status API.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp

from kubeplex.runtime.config import ModelConfig, RuntimeConfig
from kubeplex.runtime.engines import LOOPBACK, can_sleep, launch
from kubeplex.runtime.errors import EngineStartError
from kubeplex.runtime.upstream import Upstream

__all__ = ["Engine", "EngineState", "free_port"]

#: How often a starting engine's /health is polled (seconds).
HEALTH_POLL_SECONDS = 0.1
#: Timeout of one /health probe (seconds): a starting vLLM may hold connections a while.
HEALTH_TIMEOUT_SECONDS = 2.0
#: How often a running engine process is checked for exit (seconds).
EXIT_POLL_SECONDS = 0.05
#: Lines of engine output kept for the status API.
LOG_TAIL_LINES = 20
#: Linux prctl option: signal the child when its parent dies (<linux/prctl.h>).
PR_SET_PDEATHSIG = 1


class EngineState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    SLEEPING = "sleeping"
    DRAINING = "draining"
    STOPPED = "stopped"


#: Ports :func:`free_port` handed out lately in this process. The kernel may offer a port
#: again as soon as the probe socket closes, before the engine given it binds it: two engines
#: spawned together then got one port, and the second one's health check reached the first.
RECENT_PORTS = 256
#: Kernel offers :func:`free_port` tries before it gives up (each repeats a recent port with
#: a chance of about 256 in the ~28,000 ephemeral ports).
PORT_ATTEMPTS = 64
_recent_ports: deque[int] = deque(maxlen=RECENT_PORTS)
_ports_lock = threading.Lock()


def free_port() -> int:
    """A free loopback TCP port (the kernel's choice; the caller binds it right after), never
    one of the last :data:`RECENT_PORTS` this process handed out."""
    with _ports_lock:
        for _ in range(PORT_ATTEMPTS):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((LOOPBACK, 0))
                port = int(s.getsockname()[1])
            if port not in _recent_ports:
                _recent_ports.append(port)
                return port
    raise OSError(f"the kernel offered only loopback ports this process handed out lately "
                  f"({PORT_ATTEMPTS} tries): is the ephemeral port range "
                  f"(/proc/sys/net/ipv4/ip_local_port_range) nearly used up?")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Engine(Upstream):
    """A hosted model's engine process and its routing state."""

    def __init__(self, model: ModelConfig, config: RuntimeConfig, device: str,
                 session: aiohttp.ClientSession,
                 on_change: Callable[[Engine], None] | None = None,
                 shared_device: str | None = None) -> None:
        super().__init__()
        self.shared_device = shared_device
        self.model = model
        #: The config its running process was started with (``model`` may have changed since:
        #: adapters updated at run time; a restart starts from ``model``).
        self.launched = model
        self.config = config
        self.device = device
        self.session = session
        self.on_change = on_change
        self.state = EngineState.STARTING
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.failures = 0
        self.last_exit_code: int | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.startup_seconds: float | None = None
        self.restart_at: float | None = None
        self.sleep_level = 0
        self.message = "starting"
        self.log_tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._ready = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None

    # ---- routing state --------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.model.name

    @property
    def can_sleep(self) -> bool:
        return can_sleep(self.model, self.device)

    async def wait_ready(self, within: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), within)
        except TimeoutError:
            return False
        return True

    def retry_after(self, now: float) -> int:
        """Seconds a client should wait before retrying this model (for ``Retry-After``)."""
        expected = self.startup_seconds or 1.0
        if self.state is EngineState.RESTARTING and self.restart_at is not None:
            wait = max(0.0, self.restart_at - now) + expected
        elif self.state is EngineState.STARTING and self.started_at is not None:
            wait = expected - (now - self.started_at)
        else:
            wait = 1.0
        return max(1, math.ceil(wait))

    def _set(self, state: EngineState, message: str) -> None:
        self.state = state
        self.message = message
        if state is EngineState.READY:
            self._ready.set()
        else:
            self._ready.clear()
        if self.on_change is not None:
            self.on_change(self)

    def status(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name, "engine": self.model.engine, "model": self.model.model,
            "state": str(self.state), "message": self.message, "port": self.port,
            "pid": self.process.pid if self.process else None, "inFlight": self.in_flight,
            "restarts": self.restarts, "lastExitCode": self.last_exit_code,
            "startupSeconds": self.startup_seconds,
            "readyForSeconds": (now - self.ready_at) if self.ready_at is not None
            and self.state is EngineState.READY else None,
            "canSleep": self.can_sleep, "sleepLevel": self.sleep_level,
            "logTail": list(self.log_tail), "config": self.model.to_dict(),
        }

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Begin supervising (returns at once; see :meth:`wait_ready`)."""
        self._task = asyncio.create_task(self._supervise(), name=f"engine-{self.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.port = free_port()
        self.set_base_url(f"http://{LOOPBACK}:{self.port}")
        spec = launch(self.model, self.config, self.port, self.device,
                      shared_device=self.shared_device)
        self.launched = self.model
        try:
            self.process = await asyncio.create_subprocess_exec(
                *spec.argv, env=dict(spec.env), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                # A neutral working directory: `python -m` puts it on sys.path.
                cwd=tempfile.gettempdir(), start_new_session=True,
                preexec_fn=_die_with_parent)
        except OSError as exc:
            raise EngineStartError(f"model {self.name}: cannot start {spec.argv[0]}: "
                                   f"{exc.strerror}") from exc
        self._log_task = asyncio.create_task(self._forward_output(self.process))
        return self.process

    async def _forward_output(self, process: asyncio.subprocess.Process) -> None:
        if process.stdout is None:
            return
        prefix = f"[{self.name}] ".encode()
        while line := await process.stdout.readline():
            self.log_tail.append(line.decode(errors="replace").rstrip())
            sys.stderr.buffer.write(prefix + line)
            sys.stderr.flush()

    async def _healthy(self) -> bool:
        try:
            async with self.session.get(
                    f"{self.base_url}/health",
                    timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_SECONDS)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _wait_healthy(self, process: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.config.ready_timeout_seconds
        while time.monotonic() < deadline:
            if process.returncode is not None:
                return False
            if await self._healthy():
                return True
            await asyncio.sleep(HEALTH_POLL_SECONDS)
        return False

    async def _supervise(self) -> None:
        while not self._stopping:
            self.started_at = time.monotonic()
            self.sleep_level = 0
            self._set(EngineState.STARTING, "engine process starting")
            try:
                process = await self._spawn()
            except EngineStartError as exc:
                self.last_exit_code = None
                await self._backoff(str(exc))
                continue
            if await self._wait_healthy(process):
                self.ready_at = time.monotonic()
                self.startup_seconds = self.ready_at - self.started_at
                self._set(EngineState.READY, f"ready in {self.startup_seconds:.1f}s")
                code = await self._exited(process)
            elif process.returncode is None:
                self._kill_group(process, signal.SIGKILL)
                code = await self._exited(process)
                self.log_tail.append("kubeplex: not healthy within readyTimeoutSeconds")
            else:
                code = process.returncode
            await self._drain_output()
            self._kill_group(process, signal.SIGKILL)  # leftovers (vLLM's EngineCore)
            if self._stopping:
                break
            self.last_exit_code = code
            if self.ready_at and time.monotonic() - self.ready_at >= \
                    self.config.restart_reset_seconds:
                self.failures = 0
            self.ready_at = None
            await self._backoff(f"engine exited with code {code}")
        self._set(EngineState.STOPPED, "stopped")

    async def _drain_output(self) -> None:
        if self._log_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._log_task, 1.0)

    async def _backoff(self, reason: str) -> None:
        delay = min(self.config.restart_max_seconds,
                    self.config.restart_initial_seconds * 2 ** self.failures)
        self.failures += 1
        self.restarts += 1
        self.restart_at = time.monotonic() + delay
        self._set(EngineState.RESTARTING, f"{reason}; restarting in {delay:.1f}s")
        print(f"kubeplex-runtime: model {self.name}: {reason}; restart #{self.restarts} in "
              f"{delay:.1f}s", file=sys.stderr, flush=True)
        await asyncio.sleep(delay)
        self.restart_at = None

    @staticmethod
    async def _exited(process: asyncio.subprocess.Process) -> int:
        """The exit code, as soon as the process exits.

        ``Process.wait()`` also waits for the output pipe to close, which a surviving child
        (vLLM's EngineCore, in the same process group) keeps open; ``returncode`` is set
        at exit.
        """
        while process.returncode is None:  # noqa: ASYNC110 - nothing to wait on but the flag
            await asyncio.sleep(EXIT_POLL_SECONDS)
        return process.returncode

    @staticmethod
    def _kill_group(process: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    def mark(self, state: EngineState, message: str) -> None:
        """Routing-state changes made by the runtime (draining, sleeping, awake)."""
        self._set(state, message)

    async def stop(self) -> None:
        """Stop the engine for good: SIGTERM to its group, SIGKILL after engineStopSeconds."""
        self._stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            self._kill_group(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(self._exited(process), self.config.engine_stop_seconds)
            except TimeoutError:
                self._kill_group(process, signal.SIGKILL)
                await self._exited(process)
            self._kill_group(process, signal.SIGKILL)
        if self._task is not None:
            if not self._task.done():
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.state is not EngineState.STOPPED:
            self._set(EngineState.STOPPED, "stopped")
