"""Scale from zero through the cluster gateway: the operator reads the gateway's
``kubeplex_gateway_held_requests`` once per pool cycle (a real exposition served by a real
aiohttp server on loopback), feeds it to the autoscaler, and treats a failed read as "0 held"
with the reason saying so, never as a crash."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import types
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import operator_fakes as cyc
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from kubeplex.autoscaler.errors import MetricsSourceError
from kubeplex.autoscaler.sources import HELD_QUERY, parse_held_query, parse_held_text
from kubeplex.operator._kube import Kube
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._reconcile import run_cycle
from kubeplex.operator._runtime_client import HeldRequests, RuntimeClient
from kubeplex.operator._server import alerts_app
from kubeplex.operator._settings import Settings
from kubeplex.operator.errors import ConfigError, OperatorError


def gateway_text(held: dict[tuple[str, str, str], int]) -> str:
    """What the gateway exports (its contract), rendered by prometheus_client itself."""
    registry = CollectorRegistry()
    gauge = Gauge("kubeplex_gateway_held_requests", "Requests held while scaling from zero",
                  ["namespace", "modelservice", "model"], registry=registry)
    arrivals = Counter("kubeplex_gateway_arrivals", "Requests that arrived",
                       ["namespace", "modelservice", "model"], registry=registry)
    for (ns, msvc, model), n in held.items():
        gauge.labels(ns, msvc, model).set(n)
        arrivals.labels(ns, msvc, model).inc(n + 5)
    return generate_latest(registry).decode()


# ---- parsing --------------------------------------------------------------------------------

def test_held_requests_per_modelservice_from_the_gateway_text() -> None:
    text = gateway_text({("ns", "a", "org/a"): 3, ("ns", "b", "b"): 0,
                         ("other", "a", "org/a"): 2})
    assert "kubeplex_gateway_arrivals_total" in text  # a counter beside it is ignored
    assert parse_held_text(text) == {("ns", "a"): 3, ("ns", "b"): 0, ("other", "a"): 2}


def test_bad_gateway_text_is_a_clear_error() -> None:
    with pytest.raises(MetricsSourceError, match="from the gateway at http://gw/metrics are "
                                                 "not in the Prometheus text format"):
        parse_held_text('kubeplex_gateway_held_requests{namespace="ns" 3\n',
                        "the gateway at http://gw/metrics")
    with pytest.raises(MetricsSourceError, match="without the modelservice label"):
        parse_held_text('kubeplex_gateway_held_requests{namespace="ns",model="m"} 3\n')


def test_held_requests_from_a_prometheus_answer() -> None:
    body = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"namespace": "ns", "modelservice": "a"}, "value": [1.0, "4"]},
        {"metric": {"namespace": "ns", "modelservice": "b"}, "value": [1.0, "NaN"]}]}}
    assert parse_held_query(body) == {("ns", "a"): 4}
    assert "sum by (namespace, modelservice)" in HELD_QUERY
    with pytest.raises(MetricsSourceError, match="failed: 'bad_data'"):
        parse_held_query({"status": "error", "error": "bad_data"})


# ---- the operator's read, against a real HTTP server ----------------------------------------

class Gateway:
    """A loopback aiohttp server standing in for the gateway's /metrics."""

    def __init__(self) -> None:
        self.body, self.status, self.hits = "", 200, 0

    async def handle(self, _request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=self.body, status=self.status,
                            content_type="text/plain", charset="utf-8")


@contextlib.asynccontextmanager
async def serve_gateway() -> AsyncIterator[tuple[Gateway, str]]:
    gw = Gateway()
    app = web.Application()
    app.router.add_get("/metrics", gw.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield gw, f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    finally:
        await runner.cleanup()


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    async with serve_gateway() as served:
        yield served


@pytest.fixture
async def second_gateway() -> AsyncIterator[tuple[Gateway, str]]:
    async with serve_gateway() as served:
        yield served


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_operator_reads_the_gateway_once_and_reports_failures(
        gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    client = RuntimeClient(Settings(scrape="pods", gateway_metrics_url=url,
                                    scrape_timeout_s=2.0))
    try:
        gw.body = gateway_text({("ns", "a", "org/a"): 3})
        held = await asyncio.to_thread(client.held_requests)
        assert held == HeldRequests({"ns/a": 3}) and held.of("ns/b") == 0
        gw.body = "this is { not metrics"
        held = await asyncio.to_thread(client.held_requests)
        assert held.counts == {}
        assert held.problem is not None and "not in the Prometheus text format" in held.problem
        assert url in held.problem
        gw.status, gw.body = 500, "boom"
        held = await asyncio.to_thread(client.held_requests)
        assert held.problem is not None and "500" in held.problem
    finally:
        client.close()
    down = RuntimeClient(Settings(scrape="pods", scrape_timeout_s=1.0,
                                  gateway_metrics_url=f"http://127.0.0.1:{_closed_port()}/m"))
    try:
        held = await asyncio.to_thread(down.held_requests)
        assert held.problem is not None and "cannot read held requests" in held.problem
    finally:
        down.close()
    # no gateway configured: nothing to read, nothing to complain about
    assert RuntimeClient(Settings(scrape="pods")).held_requests() == HeldRequests()


async def test_pool_cycle_scales_from_zero_on_held_requests(
        gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    kube = cyc.FakeKube()
    idle, busy = cyc.msvc("idle", None), cyc.msvc("busy", None)
    cyc.register(kube, idle, busy)
    ctx = cyc.context(kube)
    ctx.settings = replace(ctx.settings, scrape="pods", gateway_metrics_url=url)
    ctx.runtime = RuntimeClient(ctx.settings)
    try:
        gw.body = gateway_text({("ns", "busy", "busy"): 2})
        snap = cyc.snapshot(kube, cyc.pool(), [idle, busy], cyc.nodes(1))
        await asyncio.to_thread(run_cycle, ctx, snap, cyc.NOW)
        assert gw.hits == 1  # once per cycle, not once per model
        assert [g["metadata"]["name"] for g in kube.of("ServingGroup")] == ["busy-0"]
        # its first status comes with the next cycle (the new group wakes it), group placed,
        # and says why it started
        assert not kube.objects[("ModelService", "ns", "busy")].get("status")
        snap = cyc.snapshot(kube, cyc.pool(), [idle, busy], cyc.nodes(1))
        await asyncio.to_thread(run_cycle, ctx, snap, cyc.NOW + 0.5)
        busy_status = kube.objects[("ModelService", "ns", "busy")]["status"]
        assert [p["group"] for p in busy_status["placement"]] == ["busy-0"]
        assert busy_status["desiredReplicas"] == 1
        assert (busy_status["lastScale"]["from"], busy_status["lastScale"]["to"]) == (0, 1)
        assert "2 requests held" in busy_status["lastScale"]["reason"]
        # A broken gateway text: the cycle goes on, held assumed 0, the reason says why.
        gw.body = "garbage { text"
        snap = cyc.snapshot(kube, cyc.pool(), [idle, busy], cyc.nodes(1))
        await asyncio.to_thread(run_cycle, ctx, snap, cyc.NOW + 1)
        assert gw.hits == 1  # within half an interval: the first read serves (all pools)
        snap = cyc.snapshot(kube, cyc.pool(), [idle, busy], cyc.nodes(1))
        await asyncio.to_thread(run_cycle, ctx, snap, cyc.NOW + ctx.settings.interval_s)
        assert gw.hits == 2
        idle_status = kube.objects[("ModelService", "ns", "idle")]["status"]
        scaling = {c["type"]: c for c in idle_status["conditions"]}["Scaling"]
        assert "held requests assumed 0" in scaling["message"]
        assert "not in the Prometheus text format" in scaling["message"]
        # ... and busy keeps the replica it got (no data is no reason to drop it)
        assert kube.objects[("ModelService", "ns", "busy")]["status"]["desiredReplicas"] == 1
    finally:
        ctx.runtime.close()


async def test_held_requests_are_summed_over_every_gateway_replica(
        gateway: tuple[Gateway, str], second_gateway: tuple[Gateway, str]) -> None:
    """Through the Service one replica would answer: the operator scrapes each ready address
    of the gateway Service's EndpointSlices and sums; one failing replica is named in the
    problem and the others still count."""
    (one, url1), (two, url2) = gateway, second_gateway
    urls = [url1, url2]
    settings = Settings(scrape="pods", gateway_service="kp/kp-gateway", interval_s=4.0,
                        gateway_metrics_url="http://unused.invalid/metrics",
                        scrape_timeout_s=2.0)
    client = RuntimeClient(settings, lambda: urls)
    try:
        one.body = gateway_text({("ns", "a", "org/a"): 2})
        two.body = gateway_text({("ns", "a", "org/a"): 1, ("ns", "b", "b"): 4})
        held = await asyncio.to_thread(client.held_requests, 100.0)
        assert held == HeldRequests({"ns/a": 3, "ns/b": 4})
        # read once per half interval for every pool that asks
        assert (await asyncio.to_thread(client.held_requests, 101.9)) is held
        assert (one.hits, two.hits) == (1, 1)
        two.status, two.body = 500, "boom"
        held = await asyncio.to_thread(client.held_requests, 102.0)
        assert (one.hits, two.hits) == (2, 2)
        assert held.counts == {"ns/a": 2} and held.partial
        assert held.problem is not None and url2 in held.problem and url1 not in held.problem
        assert "1 of 2 replica(s) of the gateway Service kp/kp-gateway" in held.problem
        assert held.caveat == "held requests of the reachable gateway replicas only"
        # an unreachable address counts the same way
        urls[1] = f"http://127.0.0.1:{_closed_port()}/metrics"
        held = await asyncio.to_thread(client.held_requests)
        assert held.counts == {"ns/a": 2} and held.partial and urls[1] in str(held.problem)
        # every replica down: nothing counted, the reason says 0 is assumed
        one.status = 503
        urls.pop()
        held = await asyncio.to_thread(client.held_requests)
        assert held.counts == {} and not held.partial
        assert held.caveat == "held requests assumed 0" and "503" in str(held.problem)
        urls.clear()
        held = await asyncio.to_thread(client.held_requests)
        assert held.problem == "the gateway Service kp/kp-gateway has no ready endpoint"
    finally:
        client.close()

    def forbidden() -> list[str]:
        raise OperatorError("listing its EndpointSlices failed: 403 Forbidden")

    held = RuntimeClient(settings, forbidden).held_requests()
    assert held.problem == ("cannot list the gateway Service kp/kp-gateway: listing its "
                            "EndpointSlices failed: 403 Forbidden")


def test_gateway_replica_urls_from_the_services_endpointslices() -> None:
    """Ready addresses only (unknown readiness counts as ready), the port named http."""
    from kubernetes import client as k8s

    def ep(addresses: list[str], ready: bool | None) -> k8s.V1Endpoint:
        return k8s.V1Endpoint(addresses=addresses,
                              conditions=k8s.V1EndpointConditions(ready=ready))

    slices = k8s.V1EndpointSliceList(items=[
        k8s.V1EndpointSlice(address_type="IPv4", endpoints=[
            ep(["10.0.0.1"], True), ep(["10.0.0.2"], False), ep(["10.0.0.3"], None)],
            ports=[k8s.DiscoveryV1EndpointPort(name="other", port=1),
                   k8s.DiscoveryV1EndpointPort(name="http", port=8080)]),
        k8s.V1EndpointSlice(address_type="IPv6", endpoints=[ep(["fd00::5"], True)],
                            ports=[k8s.DiscoveryV1EndpointPort(name="http", port=8080)])])
    asked: list[tuple[str, str]] = []

    class Discovery:
        def list_namespaced_endpoint_slice(self, namespace: str, label_selector: str
                                           ) -> k8s.V1EndpointSliceList:
            asked.append((namespace, label_selector))
            return slices

    kube = Kube.__new__(Kube)
    kube.discovery = Discovery()  # type: ignore[assignment]
    assert kube.service_urls("kp", "kp-gateway", "/metrics") == [
        "http://10.0.0.1:8080/metrics", "http://10.0.0.3:8080/metrics",
        "http://[fd00::5]:8080/metrics"]
    assert asked == [("kp", "kubernetes.io/service-name=kp-gateway")]


def test_the_gateway_service_setting_names_namespace_and_name() -> None:
    env = {"KUBEPLEX_GATEWAY_SERVICE": "kp/kp-gateway"}
    assert Settings.from_env(env).gateway_service == "kp/kp-gateway"
    with pytest.raises(ConfigError, match="KUBEPLEX_GATEWAY_SERVICE='kp-gateway': use "
                                          "namespace/name"):
        Settings.from_env({"KUBEPLEX_GATEWAY_SERVICE": "kp-gateway"})


async def test_the_gateways_held_alert_wakes_the_models_pool() -> None:
    """The gateway POSTs ``KubeplexRequestsHeld`` (namespace + modelservice) when it starts
    holding: the operator's /alerts runs that model's pool cycle at once."""
    woken: list[str] = []
    memo = types.SimpleNamespace(pool_of={"ns/busy": "p"}, triggers={}, wake=woken.append)
    runner = web.AppRunner(alerts_app(Settings(alert_token="t"), OperatorMetrics(), memo))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    labels = {"alertname": "KubeplexRequestsHeld", "namespace": "ns", "modelservice": "busy"}
    body = {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
            "receiver": "kubeplex", "groupLabels": {}, "commonLabels": labels,
            "commonAnnotations": {}, "externalURL": "http://gateway",
            "alerts": [{"status": "firing", "labels": labels, "annotations": {},
                        "startsAt": "2026-11-21T06:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://gateway", "fingerprint": "held-1"}]}
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{runner.addresses[0][1]}/alerts",
                                  json=body, headers={"Authorization": "Bearer t"})
        assert r.status_code == 200 and r.json()["triggered"] == ["ns/busy"]
        assert woken == ["p"] and memo.triggers == {"p": {"ns/busy": "KubeplexRequestsHeld"}}
    finally:
        await runner.cleanup()
