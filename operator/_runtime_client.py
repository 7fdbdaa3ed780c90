"""HTTP calls from the operator to a serving pod's runtime (router /metrics, control API).

A pod's URLs are ``http://<podIP>:<port>``; with ``KUBEPLEX_URL_ANNOTATIONS=true`` they come
from the pod annotations ``kubeplex.io/router-url`` and ``kubeplex.io/control-url`` instead
(and a pod without them has none): test harnesses run the runtimes off-cluster on loopback,
one per fake pod, and point the operator at them this way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from kubeplex.autoscaler.errors import AutoscalerError
from kubeplex.autoscaler.metrics import Scrape
from kubeplex.autoscaler.sources import (
    HELD_QUERY,
    parse_held_query,
    parse_held_text,
    parse_query_result,
    series_query,
)
from kubeplex.errors import KubeplexError
from kubeplex.operator._settings import Settings

__all__ = ["CONTROL_URL_ANNOTATION", "ROUTER_URL_ANNOTATION", "HeldRequests", "PodEndpoints",
           "RuntimeClient"]

ROUTER_URL_ANNOTATION = "kubeplex.io/router-url"
CONTROL_URL_ANNOTATION = "kubeplex.io/control-url"
#: An unload drains first (up to the runtime's grace, 30 s by default): send it, do not wait.
UNLOAD_REQUEST_TIMEOUT_S = 0.5
#: Changing a model's LoRA adapters waits for the loads: a local adapter loads in well under a
#: second; a hub download may take longer, and the next cycle asks again (the runtime keeps
#: loading meanwhile, one change at a time per model).
ADAPTERS_REQUEST_TIMEOUT_S = 30.0
#: Gateway replicas scraped at once for held requests (each call has the scrape timeout, so
#: a read takes about ceil(replicas / 8) timeouts at worst).
GATEWAY_CONCURRENCY = 8
#: Held requests are read at most once per this fraction of the interval, for all pools (each
#: pool's cycle asks; the first read of an interval serves the others).
HELD_REUSE_FRACTION = 0.5


@dataclass(frozen=True)
class PodEndpoints:
    router: str | None
    control: str | None

    @classmethod
    def of(cls, settings: Settings, ip: str | None,
           annotations: Mapping[str, str]) -> PodEndpoints:
        router = f"http://{ip}:{settings.runtime_port}" if ip else None
        control = f"http://{ip}:{settings.control_port}" if ip else None
        if settings.url_annotations:  # only the annotations: no guessing at unroutable IPs
            router = annotations.get(ROUTER_URL_ANNOTATION)
            control = annotations.get(CONTROL_URL_ANNOTATION)
        return cls(router, control)


@dataclass(frozen=True)
class HeldRequests:
    """Requests the cluster gateway holds, per ModelService key (``namespace/name``), summed
    over its replicas. ``problem``: why some or all could not be read; ``partial``: the counts
    are those of the replicas that answered (else every count is 0)."""

    counts: Mapping[str, int] = field(default_factory=dict)
    problem: str | None = None
    partial: bool = False

    def of(self, key: str) -> int:
        return self.counts.get(key, 0)

    @property
    def caveat(self) -> str:
        """What the counts mean given ``problem`` (for a decision's reason)."""
        return ("held requests of the reachable gateway replicas only" if self.partial
                else "held requests assumed 0")


class RuntimeClient:
    """Synchronous (called from worker threads); every call has the scrape timeout."""

    def __init__(self, settings: Settings,
                 gateway_urls: Callable[[], Sequence[str]] | None = None) -> None:
        """``gateway_urls``: the /metrics URL of every ready gateway replica (the operator
        lists ``KUBEPLEX_GATEWAY_SERVICE``'s EndpointSlices); raises a KubeplexError when
        they cannot be listed."""
        self.settings = settings
        self.client = httpx.Client(timeout=settings.scrape_timeout_s)
        self.gateway_urls = gateway_urls
        self._held_lock = threading.Lock()
        self._held: tuple[float, HeldRequests] | None = None  # (when read, what)

    def close(self) -> None:
        self.client.close()

    def metrics(self, router: str) -> str | None:
        try:
            r = self.client.get(f"{router}/metrics")
        except httpx.HTTPError:
            return None
        return r.text if r.status_code == 200 else None

    def status(self, control: str) -> dict[str, Any] | None:
        try:
            r = self.client.get(f"{control}/kubeplex/v1/status")
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        return body

    def load(self, control: str, model: dict[str, Any]) -> bool:
        """Ask the runtime to load ``model`` (not waiting); True once it is requested/hosted."""
        try:
            r = self.client.post(f"{control}/kubeplex/v1/models", json=model)
        except httpx.HTTPError:
            return False
        return r.status_code in (200, 201, 202, 409)

    def unload(self, control: str, model: str) -> bool:
        """Ask the runtime to drain ``model`` and unload it (not waiting: the runtime finishes
        the drain on its own; the next cycles see the model gone from its status)."""
        try:
            r = self.client.delete(f"{control}/kubeplex/v1/models/{model}",
                                   timeout=UNLOAD_REQUEST_TIMEOUT_S)
        except httpx.TimeoutException:
            return True  # the drain runs on in the runtime
        except httpx.HTTPError:
            return False
        return r.status_code in (200, 404)

    def set_adapters(self, control: str, model: str,
                     adapters: list[dict[str, Any]]) -> tuple[int | None, str]:
        """Make ``model``'s engine serve exactly ``adapters`` (the runtime loads and unloads
        them); the status code and answer (None: the runtime could not be reached)."""
        try:
            r = self.client.put(f"{control}/kubeplex/v1/models/{model}/adapters",
                                json={"adapters": adapters}, timeout=ADAPTERS_REQUEST_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return None, type(exc).__name__
        return r.status_code, r.text[:500]

    def sleep(self, control: str, model: str) -> int | None:
        """Put ``model`` to sleep (level 1); the status code (409: the engine cannot sleep),
        or None when the runtime could not be reached."""
        try:
            r = self.client.post(f"{control}/kubeplex/v1/models/{model}/sleep?level=1")
        except httpx.HTTPError:
            return None
        return r.status_code

    def wake(self, control: str, model: str) -> bool:
        try:
            r = self.client.post(f"{control}/kubeplex/v1/models/{model}/wake")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def drain(self, control: str) -> bool:
        try:
            r = self.client.post(f"{control}/kubeplex/v1/drain")
        except httpx.HTTPError:
            return False
        return r.status_code < 500

    def prometheus(self, base_url: str, model: str, namespace: str | None,
                   now: float) -> Scrape | None:
        """One instant query for ``model``'s raw vLLM series (every pod; those of
        ``namespace`` when given); None when Prometheus cannot be read or answers nonsense."""
        query = series_query(model, namespace)
        try:
            r = self.client.get(base_url.rstrip("/") + "/api/v1/query", params={"query": query})
            return parse_query_result(r.json(), now)
        except (httpx.HTTPError, ValueError, AutoscalerError):
            return None

    def held_requests(self, now: float | None = None) -> HeldRequests:
        """Held requests of the cluster gateway, read at most once per half interval for all
        pools (given ``now``; the pools' cycles ask concurrently, the first one reads):
        ``KUBEPLEX_SCRAPE=pods`` sums the ``/metrics`` of every replica behind
        ``KUBEPLEX_GATEWAY_SERVICE`` (or reads ``KUBEPLEX_GATEWAY_METRICS_URL``), ``prometheus``
        asks Prometheus; nothing configured: none. A failed read is a :class:`HeldRequests`
        with its ``problem``."""
        with self._held_lock:
            reuse_s = self.settings.interval_s * HELD_REUSE_FRACTION
            if now is not None and self._held is not None and \
                    0 <= now - self._held[0] < reuse_s:
                return self._held[1]
            held = self._read_held()
            if now is not None:
                self._held = (now, held)
            return held

    def _read_held(self) -> HeldRequests:
        s = self.settings
        if s.scrape == "pods" and s.gateway_service and self.gateway_urls is not None:
            return self._held_of_replicas(self.gateway_urls)
        where = f"the gateway at {s.gateway_metrics_url}"
        try:
            if s.scrape == "pods" and s.gateway_metrics_url:
                counts = self._gateway_held(s.gateway_metrics_url)
            elif s.scrape == "prometheus":
                where = f"Prometheus at {s.prometheus_url}"
                r = self.client.get(s.prometheus_url.rstrip("/") + "/api/v1/query",
                                    params={"query": HELD_QUERY})
                counts = parse_held_query(r.json())
            else:
                return HeldRequests()
        except (httpx.HTTPError, ValueError) as e:
            return HeldRequests(problem=f"cannot read held requests from {where}: {e}")
        except AutoscalerError as e:
            return HeldRequests(problem=str(e))
        return HeldRequests({f"{ns}/{name}": n for (ns, name), n in counts.items()})

    def _gateway_held(self, url: str) -> dict[tuple[str, str], int]:
        r = self.client.get(url)
        r.raise_for_status()
        return parse_held_text(r.text, f"the gateway at {url}")

    def _held_of_replicas(self, list_urls: Callable[[], Sequence[str]]) -> HeldRequests:
        """Every ready gateway replica scraped concurrently and summed; one that fails is
        named in ``problem`` and the others still count."""
        service = self.settings.gateway_service
        try:
            urls = list(list_urls())
        except KubeplexError as e:
            return HeldRequests(problem=f"cannot list the gateway Service {service}: {e}")
        if not urls:
            return HeldRequests(problem=f"the gateway Service {service} has no ready endpoint")

        def one(url: str) -> dict[tuple[str, str], int] | str:
            try:
                return self._gateway_held(url)
            except (httpx.HTTPError, ValueError) as e:
                return f"{url}: {e or type(e).__name__}"
            except AutoscalerError as e:
                return str(e)

        with ThreadPoolExecutor(min(GATEWAY_CONCURRENCY, len(urls)),
                                "kubeplex-gateway") as pool:
            results = list(pool.map(one, urls))
        counts: dict[str, int] = {}
        failed = [r for r in results if isinstance(r, str)]
        for r in results:
            if not isinstance(r, str):
                for (ns, name), n in r.items():
                    counts[f"{ns}/{name}"] = counts.get(f"{ns}/{name}", 0) + n
        if not failed:
            return HeldRequests(counts)
        return HeldRequests(counts, f"cannot read held requests from {len(failed)} of "
                                    f"{len(urls)} replica(s) of the gateway Service {service} "
                                    f"({'; '.join(failed)})", partial=len(failed) < len(urls))
