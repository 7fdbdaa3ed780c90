"""LoRA adapters in the runtime: routing by adapter name, ``/v1/models`` cards, run-time updates.

A model's adapters (``adapters`` in its config entry) are served by its engine under their own
names: the engine starts with them (:mod:`kubeplex.runtime.engines` adds ``--enable-lora`` and
``--lora-modules``), the router sends a request whose ``model`` names an adapter to the engine
of the model that carries it (:func:`engine_for`), and ``GET /v1/models`` lists each adapter with
its base model as ``parent`` (:func:`adapter_cards`, vLLM's card shape).

The control API changes a running engine's adapters (:func:`add_control_routes`)::

    PUT /kubeplex/v1/models/{name}/adapters   body {"adapters": [{name, path, rank}, ...]}

It unloads the adapters that are gone or changed and loads the new ones through the engine's
``POST /v1/unload_lora_adapter`` and ``POST /v1/load_lora_adapter`` (enabled by
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``), then answers 200 with the model's status. 400: an invalid
list (field named); 404: unknown model; 409: the engine is not ready, was started without
adapters (``--enable-lora`` is fixed at start: a replica started with adapters serves them), or
an adapter's rank is above the engine's ``--max-lora-rank`` (a restart sizes it anew). In-flight
requests on an unloaded adapter finish; new ones get 503 + Retry-After for a while
(:mod:`.departures`); an engine restart starts with the current list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from kubeplex.runtime._limits import BadRequestBody, parse_json
from kubeplex.runtime.config import AdapterConfig, check_names, parse_adapters
from kubeplex.runtime.departures import Departures
from kubeplex.runtime.engines import adapter_source, lora_slots_of
from kubeplex.runtime.errors import (
    EngineStateError,
    ModelConflictError,
    RuntimeConfigError,
    UnknownModelError,
)
from kubeplex.runtime.supervisor import Engine, EngineState

__all__ = ["LOAD_PATH", "UNLOAD_PATH", "adapter_cards", "add_control_routes", "engine_for",
           "update_adapters"]

#: vLLM's adapter endpoints (0.32-0.33; the sim engine serves the same).
LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"
#: Timeout of one adapter load (a hub download or a large adapter read from disk).
ADAPTER_CALL_TIMEOUT_SECONDS = 300.0


class _Host(Protocol):
    """What the routes need of the runtime (:class:`kubeplex.runtime.app.Runtime`)."""

    engines: dict[str, Engine]
    departures: Departures

    @property
    def session(self) -> aiohttp.ClientSession | None: ...


def engine_for(engines: Mapping[str, Engine], model: object) -> Engine | None:
    """The engine serving ``model``: a hosted model's own, or the one carrying that adapter."""
    if not isinstance(model, str):
        return None
    engine = engines.get(model)
    if engine is not None:
        return engine
    return next((e for e in engines.values() if any(a.name == model for a in e.model.adapters)),
                None)


def adapter_cards(engines: Mapping[str, Engine]) -> list[dict[str, Any]]:
    """``/v1/models`` entries of every hosted adapter (``parent``: its base model)."""
    return [{"id": a.name, "object": "model", "created": 0, "owned_by": "kubeplex",
             "root": a.path, "parent": e.name, "max_model_len": e.model.max_model_len}
            for e in engines.values() for a in e.model.adapters]


async def _call(session: aiohttp.ClientSession, engine: Engine, path: str,
                body: dict[str, Any]) -> tuple[int, str]:
    async with session.post(engine.base_url + path, json=body,
                            timeout=aiohttp.ClientTimeout(total=ADAPTER_CALL_TIMEOUT_SECONDS)
                            ) as resp:
        return resp.status, (await resp.text())[:500]


async def update_adapters(session: aiohttp.ClientSession, engine: Engine,
                          wanted: tuple[AdapterConfig, ...]) -> None:
    """Make ``engine`` serve exactly ``wanted`` (see the module doc for the refusals)."""
    slots = lora_slots_of(engine.launched)
    if wanted and slots is None:
        raise ModelConflictError(
            f"model {engine.name} was started without LoRA adapters (vLLM's --enable-lora is "
            "fixed at start); a replica started with adapters serves them")
    if slots is not None and wanted and max(a.rank for a in wanted) > slots[1]:
        raise ModelConflictError(
            f"model {engine.name}: rank {max(a.rank for a in wanted)} is above the engine's "
            f"--max-lora-rank {slots[1]}; a replica started with these adapters serves them")
    if engine.state is not EngineState.READY:
        raise EngineStateError(f"model {engine.name} is {engine.state}, not ready; retry once "
                               "it serves")
    current = {a.name: a for a in engine.model.adapters}
    target = {a.name: a for a in wanted}
    loaded = dict(current)  # what the engine serves, kept up to date call by call
    try:
        for name in [n for n, a in current.items() if target.get(n) != a]:
            code, text = await _call(session, engine, UNLOAD_PATH, {"lora_name": name})
            if code not in (200, 404):  # 404: the engine lost it already (a restart)
                raise EngineStateError(f"model {engine.name}: unloading adapter {name} "
                                       f"answered {code}: {text}")
            del loaded[name]
        for name, adapter in target.items():
            if loaded.get(name) == adapter:
                continue
            code, text = await _call(session, engine, LOAD_PATH, {
                "lora_name": name, "lora_path": adapter_source(engine.model, adapter)})
            if code != 200:
                raise EngineStateError(f"model {engine.name}: loading adapter {name} from "
                                       f"{adapter.path} answered {code}: {text}")
            loaded[name] = adapter
    except aiohttp.ClientError as exc:
        raise EngineStateError(f"model {engine.name}: its engine went away while changing "
                               f"adapters ({exc.__class__.__name__})") from exc
    finally:  # what the engine serves now, in the wanted order where it got that far
        order = [n for n in target if n in loaded] + [n for n in loaded if n not in target]
        engine.model = replace(engine.model, adapters=tuple(loaded[n] for n in order))


def add_control_routes(host: _Host, router: web.UrlDispatcher) -> None:
    """Register ``PUT /kubeplex/v1/models/{name}/adapters`` on the control API."""

    locks: dict[str, asyncio.Lock] = {}  # one change at a time per model

    async def put_adapters(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        engine = host.engines.get(name)
        if engine is None:
            raise UnknownModelError(f"model {name!r} is not hosted here; hosted: "
                                    f"{', '.join(sorted(host.engines)) or '(none)'}")
        try:
            data = parse_json(await request.read())
        except BadRequestBody as exc:
            raise RuntimeConfigError(f"the body must be JSON: {{\"adapters\": [...]}} ({exc})"
                                     ) from exc
        if not isinstance(data, Mapping) or "adapters" not in data:
            raise RuntimeConfigError("adapters: is required (the body is {\"adapters\": "
                                     "[{name, path, rank}, ...]})")
        wanted = parse_adapters(data["adapters"], "adapters", engine.model.engine, name)
        others = [e.model for e in host.engines.values() if e is not engine]
        check_names([*others, replace(engine.model, adapters=wanted)], "models")
        if host.session is None:
            raise EngineStateError("the runtime is not started")
        before = {a.name for a in engine.model.adapters}
        async with locks.setdefault(name, asyncio.Lock()):
            try:
                await update_adapters(host.session, engine, wanted)
            finally:
                now_served = {a.name for a in engine.model.adapters}
                host.departures.note(before - now_served, time.monotonic())
                host.departures.back(now_served)
        return web.json_response(engine.status(time.monotonic()))

    router.add_put("/kubeplex/v1/models/{name:.+}/adapters", put_adapters)
