"""Metric sources: what a backend read, turned into :class:`Scrape`\\ s (pure parsing).

The backends do the HTTP (local mode and the operator's direct scrape GET each runtime's
``/metrics``; the operator's Prometheus mode asks :func:`series_query`); this module only
parses what they read. Three kinds of reads:

* **Direct scrape** of a runtime's ``/metrics`` (local mode, or an operator without
  Prometheus): :func:`parse_metrics_text` parses the text with prometheus_client's parser and
  keeps the series of one model (label ``model_name``). Several replicas' scrapes at one
  moment combine with :func:`merge`.
* **Held requests** of the cluster gateway (scale-from-zero): :func:`parse_held_text` reads
  ``kubeplex_gateway_held_requests{namespace, modelservice, model}`` from the gateway's
  ``/metrics``, :func:`parse_held_query` the answer to :data:`HELD_QUERY` from Prometheus;
  both give ``{(namespace, modelservice): held}``.
* **Prometheus HTTP API**: one instant query, :func:`series_query`, for the raw series
  (``{__name__=~"vllm:...", model_name="..."}``, every pod at once);
  :func:`parse_query_result` turns the answer into the same :class:`Scrape`, so rates and the
  TTFT percentile are computed by the same pure code (reset handling included) either way.

Instances are identified by their labels minus ``le``, ``__name__`` and ``finished_reason``
(plus the scrape target for direct scrapes), so per-pod counters keep their own reset handling
and an engine's completions (summed over finished reasons) line up with its other series.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubeplex.autoscaler.errors import MetricsSourceError
from kubeplex.autoscaler.metrics import (
    COMPLETIONS,
    GENERATION_TOKENS,
    KV_USAGE,
    PREFILL_TIME_COUNT,
    PREFILL_TIME_SUM,
    PROMPT_HISTOGRAM,
    PROMPT_TOKENS,
    RUNNING,
    TTFT,
    WAITING,
    Buckets,
    Scrape,
)

__all__ = [
    "HELD_QUERY",
    "HELD_REQUESTS",
    "SERIES_SELECTOR",
    "WANTED",
    "merge",
    "parse_held_query",
    "parse_held_text",
    "parse_metrics_text",
    "parse_query_result",
    "series_query",
]

#: Sample names the signals use (the TTFT and prompt-length histograms by their ``_bucket``
#: samples).
WANTED = frozenset({WAITING, RUNNING, KV_USAGE, COMPLETIONS, PROMPT_TOKENS,
                    GENERATION_TOKENS, f"{TTFT}_bucket", f"{PROMPT_HISTOGRAM}_bucket",
                    PREFILL_TIME_SUM, PREFILL_TIME_COUNT})
#: Histograms kept (by their base name), read from their ``_bucket`` samples.
HISTOGRAMS = (TTFT, PROMPT_HISTOGRAM)
#: PromQL selector of those series; ``{model}`` is filled with the served model name.
SERIES_SELECTOR = ('{{__name__=~"{names}",model_name="{model}"}}')
#: The gateway's gauge of requests it holds for a model with no ready replica (its contract:
#: labels ``namespace``, ``modelservice``, ``model``).
HELD_REQUESTS = "kubeplex_gateway_held_requests"
#: PromQL for held requests per ModelService (every gateway replica summed).
HELD_QUERY = f"sum by (namespace, modelservice) ({HELD_REQUESTS})"
_HELD_LABELS = ("namespace", "modelservice")
#: Labels left out of an instance's key: ``le`` (a bucket's bound), the sample name, and
#: ``finished_reason``, whose series of one engine (stop, length, abort) are summed into one
#: completions counter per engine, so it lines up with the engine's TTFT histogram.
_SKIP_LABELS = frozenset({"le", "__name__", "finished_reason"})


def _instance(labels: Mapping[str, str], prefix: str) -> str:
    key = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in _SKIP_LABELS)
    return f"{prefix}|{key}" if prefix else key


def _bound(text: str) -> float:
    """A histogram bucket's ``le`` bound (MetricsSourceError when it is not a number)."""
    if text in ("+Inf", "Inf", "inf"):
        return math.inf
    try:
        return float(text)
    except ValueError as err:
        raise MetricsSourceError(f"histogram bucket bound le={text[:40]!r} is not a number"
                                 ) from err


def _build(time: float, samples: Iterable[tuple[str, Mapping[str, str], float]],
           prefix: str) -> Scrape:
    values: dict[str, dict[str, float]] = {}
    buckets: dict[str, dict[str, list[tuple[float, float]]]] = {}
    bucket_names = {f"{h}_bucket": h for h in HISTOGRAMS}
    for name, labels, value in samples:
        if name not in WANTED or math.isnan(value):
            continue
        instance = _instance(labels, prefix)
        if name in bucket_names:
            if "le" not in labels:
                raise MetricsSourceError(f"{name} sample without an le label")
            per_instance = buckets.setdefault(bucket_names[name], {})
            per_instance.setdefault(instance, []).append((_bound(labels["le"]), value))
        elif name == COMPLETIONS:
            per_engine = values.setdefault(name, {})
            per_engine[instance] = per_engine.get(instance, 0.0) + value
        else:
            values.setdefault(name, {})[instance] = value
    histograms: dict[str, dict[str, Buckets]] = {
        h: {k: tuple(sorted(v)) for k, v in per.items()} for h, per in buckets.items()}
    return Scrape(time, values, histograms)


def parse_metrics_text(text: str, model: str, time: float, target: str = "") -> Scrape:
    """One model's series from a Prometheus text exposition (``/metrics``) read at ``time``.

    Series without a ``model_name`` label are kept (a single-model engine); others must match.
    """
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError) as err:
        raise MetricsSourceError(f"metrics from {target or 'the runtime'} are not in the "
                                 f"Prometheus text format: {err}") from err
    samples = ((s.name, s.labels, float(s.value)) for f in families for s in f.samples
               if s.labels.get("model_name", model) == model)
    return _build(time, samples, target)


def merge(scrapes: Sequence[Scrape], time: float) -> Scrape:
    """Combine scrapes of several targets (taken at about ``time``) into one."""
    values: dict[str, dict[str, float]] = {}
    histograms: dict[str, dict[str, Buckets]] = {}
    for scrape in scrapes:
        for name, series in scrape.values.items():
            values.setdefault(name, {}).update(series)
        for name, per_instance in scrape.histograms.items():
            histograms.setdefault(name, {}).update(per_instance)
    return Scrape(time, values, histograms)


def _vector(body: Any, query: str) -> list[tuple[dict[str, str], float]]:
    """The ``(labels, value)`` samples of a Prometheus ``/api/v1/query`` instant vector."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise MetricsSourceError(f"Prometheus query {query} failed: {error or body!r}")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise MetricsSourceError("Prometheus answered something other than an instant vector")
    samples = []
    for item in data.get("result") or []:
        try:
            samples.append((dict(item["metric"]), float(item["value"][1])))
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise MetricsSourceError(f"malformed Prometheus sample {item!r}") from err
    return samples


def parse_query_result(body: Any, time: float) -> Scrape:
    """A Prometheus ``/api/v1/query`` answer (instant vector, JSON-decoded) as a Scrape."""
    samples: list[tuple[str, Mapping[str, str], float]] = []
    for labels, value in _vector(body, "for vLLM series"):
        if "__name__" not in labels:
            raise MetricsSourceError(f"Prometheus sample without __name__: {labels!r}")
        samples.append((labels["__name__"], labels, value))
    return _build(time, samples, "")


def series_query(model: str, namespace: str | None = None) -> str:
    """The PromQL instant query for ``model``'s raw vLLM series (every pod at once), in
    ``namespace`` when given; its answer parses with :func:`parse_query_result`."""
    selector = SERIES_SELECTOR.format(names="|".join(sorted(WANTED)), model=model)
    if namespace is not None:
        selector = selector[:-1] + f',namespace="{namespace}"}}'
    return selector


def _held(samples: Iterable[tuple[Mapping[str, str], float]],
          where: str) -> dict[tuple[str, str], int]:
    held: dict[tuple[str, str], int] = {}
    for labels, value in samples:
        if math.isnan(value):
            continue
        missing = [k for k in _HELD_LABELS if not labels.get(k)]
        if missing:
            raise MetricsSourceError(
                f"{HELD_REQUESTS} from {where} has a sample without the {', '.join(missing)} "
                f"label(s) ({dict(labels)}); the gateway must label every held request with "
                f"namespace and modelservice (are operator and gateway the same version?)")
        key = (labels["namespace"], labels["modelservice"])
        held[key] = held.get(key, 0) + max(0, round(value))
    return held


def parse_held_text(text: str, where: str = "the gateway") -> dict[tuple[str, str], int]:
    """Held requests per ``(namespace, modelservice)`` from the gateway's ``/metrics`` text
    (samples of several models of one ModelService, or several gateways' texts joined, add).
    Raises :class:`MetricsSourceError` naming ``where`` when the text does not parse."""
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError) as err:
        raise MetricsSourceError(f"metrics from {where} are not in the Prometheus text "
                                 f"format: {err}") from err
    return _held(((s.labels, float(s.value)) for f in families for s in f.samples
                  if s.name == HELD_REQUESTS), where)


def parse_held_query(body: Any) -> dict[tuple[str, str], int]:
    """Held requests per ``(namespace, modelservice)`` from Prometheus' answer to
    :data:`HELD_QUERY` (JSON-decoded ``/api/v1/query`` body)."""
    return _held(_vector(body, repr(HELD_QUERY)), "Prometheus")
