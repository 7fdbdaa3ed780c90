"""Held requests from every gateway replica, on the real control plane: the operator lists the
gateway Service's EndpointSlices (``KUBEPLEX_GATEWAY_SERVICE``) through the real API server and
sums the ``/metrics`` of each ready address. The "replicas" are real aiohttp servers on
loopback, one per EndpointSlice, one of them failing. The API server refuses loopback
addresses in EndpointSlices, so each slice lists a pod-network address (10.244.0.n) and the
test maps it to loopback before the scrape (as ``KUBEPLEX_URL_ANNOTATIONS`` does for pods)."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client as k8s

from kubeplex.operator._kube import Kube
from kubeplex.operator._runtime_client import RuntimeClient
from kubeplex.operator._settings import Settings

pytestmark = pytest.mark.cluster

HELD = "kubeplex_gateway_held_requests"


def exposition(held: dict[str, int]) -> str:
    return "".join(f'{HELD}{{namespace="ns",modelservice="{m}",model="{m}"}} {n}\n'
                   for m, n in held.items())


async def serve(body: str, status: int = 200) -> tuple[web.AppRunner, int]:
    async def handle(_request: web.Request) -> web.Response:
        return web.Response(text=body, status=status, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


def endpoint_slice(namespace: str, name: str, port: int, ready: bool) -> dict[str, Any]:
    """One gateway replica at 10.244.0.<n> (``n``: the slice's index), its port ``port``."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": "gw",
                                    "endpointslice.kubernetes.io/managed-by": "kubeplex-test"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [f"10.244.0.{name.rsplit('-', 1)[1]}"],
                           "conditions": {"ready": ready}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}


@pytest.fixture
async def replicas() -> AsyncIterator[list[int]]:
    runners = [await serve(exposition({"a": 2, "b": 1})), await serve(exposition({"a": 3})),
               await serve("down", 503)]
    yield [port for _runner, port in runners]
    for runner, _port in runners:
        await runner.cleanup()


async def test_held_requests_are_summed_over_the_gateway_services_endpointslices(
        cluster: Any, namespace: str, k8s_client: Any, replicas: list[int]) -> None:
    ok1, ok2, failing = replicas
    discovery = k8s.DiscoveryV1Api(k8s_client)
    for i, (port, ready) in enumerate([(ok1, True), (ok2, True), (failing, True),
                                       (ok1 + 1, False)]):
        await asyncio.to_thread(discovery.create_namespaced_endpoint_slice, namespace,
                                endpoint_slice(namespace, f"gw-{i}", port, ready))
    kube = Kube(k8s_client)
    urls = await asyncio.to_thread(kube.service_urls, namespace, "gw", "/metrics")
    assert urls == [f"http://10.244.0.{i}:{p}/metrics"
                    for i, p in enumerate((ok1, ok2, failing))]  # not the unready one

    def on_loopback(service: str) -> list[str]:
        return [re.sub(r"10\.244\.0\.\d+", "127.0.0.1", u)
                for u in kube.service_urls(namespace, service, "/metrics")]

    settings = Settings(scrape="pods", gateway_service=f"{namespace}/gw", scrape_timeout_s=2.0)
    client = RuntimeClient(settings, functools.partial(on_loopback, "gw"))
    try:
        held = await asyncio.to_thread(client.held_requests)
    finally:
        client.close()
    assert held.counts == {"ns/a": 5, "ns/b": 1}
    assert held.partial and f"127.0.0.1:{failing}" in str(held.problem)
    assert "1 of 3 replica(s)" in str(held.problem)
    # a Service with no slices: no replica to read, said so
    empty = RuntimeClient(replace(settings, gateway_service=f"{namespace}/none"),
                          functools.partial(on_loopback, "none"))
    try:
        held = await asyncio.to_thread(empty.held_requests)
    finally:
        empty.close()
    assert held.problem == f"the gateway Service {namespace}/none has no ready endpoint"
