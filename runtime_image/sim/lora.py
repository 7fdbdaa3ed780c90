"""LoRA adapters in the sim engine: the slice of vLLM's adapter serving kubeplex relies on.

With ``--enable-lora`` the sim serves the adapters named by ``--lora-modules`` (vLLM's two
forms: ``name=path`` or ``{"name": ..., "path": ...}``) beside its base model: a request whose
``model`` is an adapter's name is served like one for the base model (the latency model has no
per-adapter cost; the adapter slots' memory is taken from the KV capacity, as on a GPU, in
``__main__``), ``/v1/models`` lists each adapter with the base model as ``parent``, and with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` set (as for vLLM) ``POST /v1/load_lora_adapter``
(``{"lora_name", "lora_path"}``) and ``POST /v1/unload_lora_adapter`` (``{"lora_name"}``)
change them, with vLLM's answers: 200 and a text body, 400 for a name already loaded or the
base model's, 404 for unloading an unknown one.

``vllm:lora_requests_info`` (labels ``max_lora``, ``waiting_lora_adapters``,
``running_lora_adapters``; value: the time of the last change) is kept like vLLM's, with the
adapters of the requests in flight as running (the sim's queue is not split by adapter, so
``waiting_lora_adapters`` stays empty).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from kubeplex.runtime._limits import BadRequestBody, parse_json

__all__ = ["RUNTIME_UPDATES_ENV", "LoraRegistry", "parse_modules"]

#: The variable that enables vLLM's adapter endpoints (vllm/envs.py, 0.32).
RUNTIME_UPDATES_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
#: Requests that run on an adapter (and count in ``vllm:lora_requests_info``).
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


def parse_modules(values: Iterable[str]) -> dict[str, str]:
    """``--lora-modules`` items (``name=path`` or JSON with name and path) -> name -> path."""
    modules: dict[str, str] = {}
    for item in values:
        if not item:
            continue
        if "=" in item and "," not in item:
            name, path = item.split("=", 1)
        else:
            try:
                data = json.loads(item)
                name, path = str(data["name"]), str(data["path"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"--lora-modules: {item!r} is neither name=path nor JSON with "
                                 "name and path") from exc
        modules[name] = path
    return modules


def _enabled(environ: Mapping[str, str]) -> bool:
    # vLLM's rule: "1" or "true", any case.
    return environ.get(RUNTIME_UPDATES_ENV, "0").strip().lower() in ("1", "true")


class LoraRegistry:
    """The adapters one sim engine serves, their endpoints and their info gauge."""

    def __init__(self, base: str, max_loras: int, modules: Mapping[str, str],
                 registry: CollectorRegistry, environ: Mapping[str, str] | None = None) -> None:
        self.base = base
        self.max_loras = max_loras
        self.adapters: dict[str, str] = dict(modules)
        self.runtime_updates = _enabled(os.environ if environ is None else environ)
        self.running: Tally[str] = Tally()
        self.info = Gauge("vllm:lora_requests_info", "Running stats on lora requests.",
                          ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                          registry=registry)
        self._labels: tuple[str, str, str] | None = None
        self._update()

    def serves(self, name: object) -> bool:
        return isinstance(name, str) and name in self.adapters

    def cards(self, created: int) -> list[dict[str, Any]]:
        return [{"id": name, "object": "model", "created": created, "owned_by": "vllm",
                 "root": path, "parent": self.base} for name, path in self.adapters.items()]

    # ---- requests ----------------------------------------------------------------------
    def started(self, name: str) -> None:
        self.running[name] += 1
        self._update()

    def finished(self, name: str) -> None:
        self.running[name] -= 1
        if self.running[name] <= 0:
            del self.running[name]
        self._update()

    def _update(self) -> None:
        labels = (str(self.max_loras), "", ",".join(sorted(self.running)))
        if labels != self._labels:
            if self._labels is not None:
                self.info.remove(*self._labels)
            self._labels = labels
        self.info.labels(*labels).set(time.time())

    # ---- endpoints ---------------------------------------------------------------------
    def attach(self, app: web.Application) -> None:
        """Add the adapter endpoints (when enabled) and the request tracking to ``app``."""
        if self.runtime_updates:
            app.router.add_post("/v1/load_lora_adapter", self.load)
            app.router.add_post("/v1/unload_lora_adapter", self.unload)
        app.middlewares.append(self._track)

    @web.middleware
    async def _track(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Count a generation request as running on its adapter until it is answered."""
        name = None
        if request.method == "POST" and request.path in GENERATION_PATHS:
            try:
                body = parse_json(await request.read())  # aiohttp keeps it for the handler
            except BadRequestBody:
                body = None  # the handler refuses it
            name = body.get("model") if isinstance(body, Mapping) else None
        if not isinstance(name, str) or not self.serves(name):
            response: web.StreamResponse = await handler(request)
            return response
        self.started(name)
        try:
            response = await handler(request)  # a stream is written out before this returns
        finally:
            self.finished(name)
        return response

    @staticmethod
    def _error(status: int, message: str, kind: str) -> web.Response:
        return web.json_response({"error": {"message": message, "type": kind, "param": None,
                                            "code": status}}, status=status)

    @staticmethod
    async def _body(request: web.Request) -> Mapping[str, Any] | None:
        try:
            body = parse_json(await request.read())
        except BadRequestBody:
            return None
        return body if isinstance(body, Mapping) else None

    async def load(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name, path = (body or {}).get("lora_name"), (body or {}).get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return self._error(400, "Both 'lora_name' and 'lora_path' must be provided.",
                               "InvalidUserInput")
        if name == self.base:
            return self._error(400, f"The lora adapter '{name}' conflicts with a served base "
                                    "model.", "InvalidUserInput")
        if name in self.adapters and not (body or {}).get("load_inplace"):
            return self._error(400, f"The lora adapter '{name}' has already been loaded. If you "
                                    "want to load the adapter in place, set 'load_inplace' to "
                                    "True.", "InvalidUserInput")
        self.adapters[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request: web.Request) -> web.Response:
        name = (await self._body(request) or {}).get("lora_name")
        if not isinstance(name, str) or not name:
            return self._error(400, "'lora_name' needs to be provided to unload a LoRA adapter.",
                               "InvalidUserInput")
        if name not in self.adapters:
            return self._error(404, f"The lora adapter '{name}' cannot be found.",
                               "NotFoundError")
        del self.adapters[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")
