"""The runtime's ``/metrics``: every engine's ``vllm:*`` series plus the router's own.

Engines label their series ``model_name`` (the served name, which is the hosted model's name),
so the per-engine expositions can be concatenated family by family. Prometheus' text format
allows each family's ``# HELP``/``# TYPE`` once and its samples together, so
:func:`merge_expositions` groups the samples of all engines under one header per family.
Only ``vllm:*`` families are kept: the engines' ``python_*``, ``process_*`` and ``http_*``
series describe the engine processes and would collide with each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubeplex.runtime.sim.metrics import TTFT_BUCKETS

__all__ = ["ModelSeries", "RouterMetrics", "merge_expositions", "only_model", "with_model_name"]


def _family_of_sample(line: str) -> str:
    end = len(line)
    for sep in ("{", " "):
        i = line.find(sep)
        if i != -1:
            end = min(end, i)
    return line[:end]


def merge_expositions(texts: Iterable[str], prefix: str = "vllm:") -> str:
    """Merge Prometheus text expositions, keeping the families whose name starts with
    ``prefix``; each family appears once, with the samples of every input in input order."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for text in texts:
        current: str | None = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith(("# HELP ", "# TYPE ")):
                name = line.split(" ", 3)[2]
                current = name
                header = headers.setdefault(name, [])
                if len(header) < 2 and not any(h[:7] == line[:7] for h in header):
                    header.append(line)
                samples.setdefault(name, [])
                continue
            if line.startswith("#"):
                continue
            if current is None:  # a sample with no header: its own untyped family
                current = _family_of_sample(line)
                headers.setdefault(current, [])
                samples.setdefault(current, [])
            samples[current].append(line)
    out: list[str] = []
    for name, header in headers.items():
        if name.startswith(prefix):
            out.extend(header)
            out.extend(samples[name])
    return "\n".join(out) + "\n" if out else ""


def with_model_name(text: str, model: str) -> str:
    """An engine's exposition with ``model_name="<model>"`` on the samples that lack it
    (vLLM's ``vllm:lora_requests_info`` has no model label: two engines' series would
    collide in the merged ``/metrics``)."""
    label = f'model_name="{model}"'
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#") and "model_name=" not in line:
            name = _family_of_sample(line)
            rest = line[len(name):]
            line = (f"{name}{{{label},{rest[1:]}" if rest.startswith("{")
                    else f"{name}{{{label}}}{rest}")
        out.append(line)
    return "\n".join(out) + "\n" if out else ""


def only_model(text: str, model: str) -> str:
    """The router's exposition cut down to ``model``'s series (``model="<model>"``) and the
    ones with no model label; the headers stay."""
    mine = f'model="{model}"'
    kept = [line for line in text.splitlines()
            if line.startswith("#") or 'model="' not in line or mine in line]
    return "\n".join(kept) + "\n"


class ModelSeries:
    """One model's in-flight gauge and time-to-first-byte histogram children."""

    __slots__ = ("in_flight", "ttfb")

    def __init__(self, in_flight: Any, ttfb: Any) -> None:
        self.in_flight = in_flight
        self.ttfb = ttfb


class RouterMetrics:
    """The router's series, labelled per hosted model (``model``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kubeplex_router_requests", "Requests the router answered, by model and HTTP "
            "status code (model is empty when the request named no hosted model).",
            ["model", "code"], registry=self.registry)
        self.in_flight = Gauge("kubeplex_router_in_flight",
                               "Requests being forwarded to the model's engine now.",
                               ["model"], registry=self.registry)
        # The TTFT buckets of vLLM, so router and engine histograms line up edge for edge.
        self.ttfb = Histogram(
            "kubeplex_router_time_to_first_byte_seconds",
            "Time from a request's arrival at the router to the first response byte it sent "
            "(for streams: the first chunk; includes queueing in the engine).",
            ["model"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.engine_ready = Gauge("kubeplex_runtime_engine_ready",
                                  "1 when the model's engine is ready to serve, else 0.",
                                  ["model"], registry=self.registry)
        self.engine_restarts = Gauge("kubeplex_runtime_engine_restarts",
                                     "Times the model's engine was restarted.",
                                     ["model"], registry=self.registry)
        self.draining = Gauge("kubeplex_runtime_draining",
                              "1 while the runtime drains (new requests get 503).",
                              registry=self.registry)
        # Labelled children, looked up once (``labels()`` costs a lock and a few dict
        # operations per call, which the router would otherwise pay on every request).
        self._series: dict[str, ModelSeries] = {}
        self._counts: dict[tuple[str, str], Any] = {}

    def series(self, model: str) -> ModelSeries:
        """``model``'s in-flight and time-to-first-byte series (cached until :meth:`forget`)."""
        found = self._series.get(model)
        if found is None:
            found = self._series[model] = ModelSeries(self.in_flight.labels(model),
                                                      self.ttfb.labels(model))
        return found

    def count(self, model: str, code: str) -> None:
        """Count one answered request of ``model`` ("" for none hosted) with status ``code``."""
        child = self._counts.get((model, code))
        if child is None:
            child = self._counts[model, code] = self.requests.labels(model, code)
        child.inc()

    def forget(self, model: str) -> None:
        """Drop an unloaded model's series."""
        self._series.pop(model, None)
        for key in [key for key in self._counts if key[0] == model]:
            del self._counts[key]
        for metric in (self.in_flight, self.ttfb, self.engine_ready, self.engine_restarts):
            with contextlib.suppress(KeyError):
                metric.remove(model)
        for labels in list(self.requests._metrics):
            if labels[0] == model:
                self.requests.remove(*labels)
