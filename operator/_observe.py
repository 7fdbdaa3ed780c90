"""What a pool cycle reads for the control layer: each model's metrics and held requests
(:class:`kubeplex.control.ModelInputs`), and each group's load.

``KUBEPLEX_SCRAPE=pods`` reads every ready pod's ``/metrics`` once per cycle (a co-located
pod's text serves all its models) and also gives each group's load (waiting + running of its
models), which orders scale-downs (least loaded first); ``prometheus`` asks one query per
model (no per-group load: scale-down order then falls back to age); ``off`` reads nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kubeplex.autoscaler.errors import AutoscalerError
from kubeplex.autoscaler.metrics import RUNNING, WAITING, Scrape
from kubeplex.autoscaler.sources import merge, parse_metrics_text
from kubeplex.control import GroupId, ModelInputs, ModelKey, ResolvedModel
from kubeplex.operator._executor import GroupObj
from kubeplex.operator._runtime_client import HeldRequests, RuntimeClient
from kubeplex.operator._settings import Settings

__all__ = ["observe_models"]


def _scrape_pods(runtime: RuntimeClient, model: ResolvedModel, ready: list[GroupObj],
                 texts: dict[GroupId, str | None], load: dict[GroupId, float],
                 now: float) -> Scrape | None:
    parts = []
    for g in ready:
        gid = f"{g.namespace}/{g.name}"
        if gid not in texts:
            texts[gid] = runtime.metrics(g.endpoints.router) if g.endpoints.router else None
        text = texts[gid]
        if text is None:
            continue
        try:
            part = parse_metrics_text(text, model.served_name, now, target=g.name)
        except AutoscalerError:
            continue
        load[gid] = load.get(gid, 0.0) + (part.total(WAITING) or 0.0) + \
            (part.total(RUNNING) or 0.0)
        parts.append(part)
    return merge(parts, now) if parts else None


def observe_models(settings: Settings, runtime: RuntimeClient,
                   models: Mapping[ModelKey, ResolvedModel], groups: Mapping[GroupId, GroupObj],
                   triggers: Mapping[ModelKey, str], held: HeldRequests | None,
                   cold_starts: Mapping[ModelKey, Sequence[float]], now: float
                   ) -> tuple[dict[ModelKey, ModelInputs], dict[GroupId, float]]:
    """Each model's inputs this cycle, and the load of each group whose metrics were read;
    ``cold_starts``: those the last cycle saw finish."""
    texts: dict[GroupId, str | None] = {}
    load: dict[GroupId, float] = {}
    inputs: dict[ModelKey, ModelInputs] = {}
    ready_groups: dict[ModelKey, list[GroupObj]] = {}
    for g in groups.values():
        if g.phase == "Ready":
            for name in g.models:
                ready_groups.setdefault(f"{g.namespace}/{name}", []).append(g)
    for key, model in models.items():
        ready = ready_groups.get(f"{model.namespace}/{model.name}", [])
        scrape = None
        if settings.scrape == "pods":
            scrape = _scrape_pods(runtime, model, ready, texts, load, now)
        elif settings.scrape == "prometheus" and ready:
            scrape = runtime.prometheus(settings.prometheus_url, model.served_name,
                                        model.namespace, now)
        caveat = None
        if held is not None and held.problem:
            caveat = f"{held.caveat}: {held.problem}"
        inputs[key] = ModelInputs(scrape, held.of(key) if held else 0, caveat, triggers.get(key),
                                  cold_starts=tuple(cold_starts.get(key, ())))
    return inputs, load
