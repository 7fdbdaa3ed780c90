"""An open-loop load generator for the gateway (``kubeplex load``).

Requests arrive as a Poisson process whose rate follows a pattern over the run (thinning, so
the arrival times are exact for any rate curve); each is a streaming ``/v1/completions`` call,
so the time to the first streamed chunk is the client-side TTFT. The sim engine reads the
``prompt_tokens`` field as the prompt length (a kubeplex extension; vLLM ignores it).

Patterns (``rate`` is the peak):
    constant   ``rate`` for the whole run
    burst      ``rate * BURST_BASE`` for the first and last third, ``rate`` in the middle
    ramp       from 0 up to ``rate``, linearly
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from kubeplex.operator.local.errors import SettingsError
from kubeplex.operator.local.verdict import FleetPoint, explain_phase, fleet_point

__all__ = ["PATTERNS", "LoadResult", "Sample", "rate_at", "run_load", "watched"]

PATTERNS = ("constant", "burst", "ramp")
#: The burst pattern's quiet level, as a fraction of the peak rate.
BURST_BASE = 0.2
#: At most this many requests in flight (the generator stays bounded; the rest count as
#: refused client-side, code 0).
MAX_IN_FLIGHT = 2000
#: Seconds a single request may take before the client gives up.
REQUEST_TIMEOUT_S = 300.0
#: Seconds between two reads of the fleet while the load runs.
FLEET_PERIOD_S = 0.25


def rate_at(pattern: str, rate: float, t: float, duration: float) -> float:
    """The arrival rate (req/s) at ``t`` seconds into a run of ``duration`` seconds."""
    if pattern == "constant":
        return rate
    if pattern == "burst":
        return rate if duration / 3 <= t < 2 * duration / 3 else rate * BURST_BASE
    if pattern == "ramp":
        return rate * min(1.0, t / duration)
    raise SettingsError(f"--pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")


@dataclass(frozen=True)
class Sample:
    sent: float        # seconds since the start of the run
    status: int        # HTTP status, 0 when the request failed without an answer
    ttft: float | None
    latency: float | None
    error: str = ""


@dataclass
class LoadResult:
    model: str
    pattern: str
    rate: float
    duration: float
    samples: list[Sample] = field(default_factory=list)
    #: ``time.monotonic()`` at the run's start (``Sample.sent`` counts from it).
    started: float = 0.0

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200]

    @property
    def failed(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]

    def quantile(self, what: str, q: float, since: float = 0.0) -> float | None:
        values = [v for s in self.ok if s.sent >= since and (v := getattr(s, what)) is not None]
        return float(np.quantile(values, q)) if values else None

    def summary(self, phases: bool = True) -> list[tuple[str, str]]:
        """The run's figures as (name, value) rows; ``phases``: the TTFT p95 of each phase
        too (:meth:`verdicts` gives them against the SLO instead)."""
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"
        codes = Counter(s.status for s in self.failed)
        rows = [("model", self.model),
                ("load", f"{self.pattern}, peak {self.rate:g} req/s, {self.duration:g} s"),
                ("requests", str(len(self.samples))), ("ok", str(len(self.ok))),
                ("failed", ", ".join(f"{n} x {c or 'no answer'}" for c, n in codes.items())
                 or "0")]
        for name in ("ttft", "latency"):
            rows.append((f"{name} p50 / p95 / p99", " / ".join(
                ms(self.quantile(name, q)) for q in (0.5, 0.95, 0.99))))
        for label, since, until in self.phases() if phases else ():
            values = [s.ttft for s in self.ok if since <= s.sent < until and s.ttft is not None]
            p95 = float(np.quantile(values, 0.95)) if values else None
            rows.append((f"ttft p95 {label}", f"{ms(p95)} ({len(values)} requests)"))
        return rows

    def phases(self) -> list[tuple[str, float, float]]:
        """The pattern's parts as (label, start, end) seconds: thirds of the run."""
        third = self.duration / 3
        labels = {"burst": ("before the burst", "during the burst", "after the burst"),
                  "ramp": ("first third", "second third", "last third"),
                  "constant": ("first third", "second third", "last third")}[self.pattern]
        return [(label, i * third, (i + 1) * third) for i, label in enumerate(labels)]

    def verdicts(self, slo_s: float, percentile: float,
                 fleet: list[FleetPoint]) -> list[str]:
        """Each phase judged against the SLO, a miss explained (:mod:`.verdict`); ``fleet``
        as :func:`watched` records it (monotonic times)."""
        shifted = [FleetPoint(p.t - self.started, p.ready, p.starting, p.desired, p.reason)
                   for p in fleet]
        return [line for label, since, until in self.phases()
                for line in explain_phase(self.samples, label, since, until, slo_s,
                                          percentile, shifted)]

    def plot(self, path: Path, slo: float | None = None) -> None:
        """TTFT of every request over time, and the offered rate (PNG)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1]})
        ok = self.ok
        ax.scatter([s.sent for s in ok], [s.ttft for s in ok], s=6, label="TTFT (ok)")
        failed = self.failed
        if failed:
            ax.scatter([s.sent for s in failed], [0] * len(failed), s=12, c="red", marker="x",
                       label="failed")
        if slo is not None:
            ax.axhline(slo, color="gray", linestyle="--", label=f"SLO {slo:g} s")
        ax.set_ylabel("TTFT (s)")
        ax.set_yscale("log")
        ax.legend(loc="upper right")
        ax.set_title(f"kubeplex load: {self.model}, {self.pattern} to {self.rate:g} req/s")
        grid = np.linspace(0, self.duration, 200)
        bx.plot(grid, [rate_at(self.pattern, self.rate, t, self.duration) for t in grid])
        bx.set_ylabel("offered req/s")
        bx.set_xlabel("seconds since start")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, object], start: float,
               result: LoadResult) -> None:
    sent = time.monotonic()
    ttft = None
    try:
        async with client.stream("POST", url, json=body, timeout=REQUEST_TIMEOUT_S) as response:
            async for chunk in response.aiter_bytes():
                if ttft is None and chunk:
                    ttft = time.monotonic() - sent
            status = response.status_code
        latency = time.monotonic() - sent
        result.samples.append(Sample(sent - start, status, ttft if status == 200 else None,
                                     latency if status == 200 else None))
    except httpx.HTTPError as exc:
        result.samples.append(Sample(sent - start, 0, None, None, repr(exc)))


async def run_load(url: str, model: str, *, rate: float, duration: float, pattern: str,
                   prompt_tokens: int = 512, max_tokens: int = 64, seed: int = 0,
                   progress: Callable[[float], None] | None = None) -> LoadResult:
    """Offer the load to ``url`` (the gateway) and wait for every answer."""
    if rate <= 0 or duration <= 0:
        raise SettingsError(f"--rate and --duration must be > 0, got {rate} and {duration}")
    if prompt_tokens < 1 or max_tokens < 1:
        raise SettingsError("--prompt-tokens and --max-tokens must be >= 1")
    rate_at(pattern, rate, 0.0, duration)  # validates the pattern
    rng = random.Random(seed)
    result = LoadResult(model, pattern, rate, duration)
    body = {"model": model, "prompt": "kubeplex load", "prompt_tokens": prompt_tokens,
            "max_tokens": max_tokens, "stream": True}
    target = url.rstrip("/") + "/v1/completions"
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=256)
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(limits=limits) as client:
        start = result.started = time.monotonic()
        t = 0.0
        while True:
            t += rng.expovariate(rate)  # thinning: candidates at the peak rate ...
            if t >= duration:
                break
            if rng.random() * rate > rate_at(pattern, rate, t, duration):
                continue  # ... kept with probability rate(t) / peak
            delay = start + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if progress is not None:
                progress(t)
            if len(tasks) >= MAX_IN_FLIGHT:
                result.samples.append(Sample(t, 0, None, None, "client in-flight limit"))
                continue
            task = asyncio.create_task(_one(client, target, body, start, result))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if progress is not None:
            progress(duration)
        if tasks:
            await asyncio.gather(*tasks)
    result.samples.sort(key=lambda s: s.sent)
    return result


async def watched(load: Awaitable[LoadResult],
                  read: Callable[[], Awaitable[dict[str, object] | None]],
                  ) -> tuple[LoadResult, list[FleetPoint]]:
    """Run ``load`` (:func:`run_load`) while recording the model's fleet every
    ``FLEET_PERIOD_S``: ``read`` gives its entry of the status (None: nothing to record this
    time). The recording stops with the load, however that ends."""
    stop = asyncio.Event()

    async def record() -> list[FleetPoint]:
        points = []
        while not stop.is_set():
            model = await read()
            if model is not None:
                points.append(fleet_point(time.monotonic(), model))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLEET_PERIOD_S)
        return points

    fleet = asyncio.ensure_future(record())
    try:
        result = await load
    finally:
        stop.set()
    return result, await fleet


def expected_requests(pattern: str, rate: float, duration: float) -> float:
    """Mean number of requests a run offers (for progress bars)."""
    steps = 1000
    return sum(rate_at(pattern, rate, (i + 0.5) * duration / steps, duration)
               for i in range(steps)) * duration / steps if duration > 0 else math.nan
