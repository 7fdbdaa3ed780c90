"""The cluster gateway over real HTTP without a cluster: API objects are fed to
:meth:`ClusterGateway.apply` as its watches would, the held alert goes to the operator's real
``/alerts`` app, and a real sim runtime is the replica. (The watches themselves run against the
real control plane in tests/cluster/test_gateway.py.)"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from kubernetes import client as k8s

from kubeplex.cli import main
from kubeplex.gateway.cluster import ClusterGateway, GatewaySettings
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._server import alerts_app
from kubeplex.operator._settings import Settings
from kubeplex.runtime.harness import RuntimeProcess, model_entry
from kubeplex.runtime.supervisor import free_port

TOKEN = "gateway-test-token"
HOLD_S = 0.6


@dataclass
class Memo:
    """What the operator's /alerts handler needs from kopf's memo."""

    pool_of: dict[str, str] = field(default_factory=lambda: {"a/llama": "pool-1"})
    triggers: dict[str, dict[str, str]] = field(default_factory=dict)
    woken: list[str] = field(default_factory=list)

    def wake(self, pool: str) -> None:
        self.woken.append(pool)


def msvc(name: str, ns: str, served: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"model": {"servedName": served}}}


@pytest.fixture
async def stack() -> AsyncIterator[tuple[ClusterGateway, str, Memo, OperatorMetrics]]:
    memo, metrics = Memo(), OperatorMetrics()
    op_port = free_port()
    op_runner = web.AppRunner(alerts_app(Settings(alert_token=TOKEN), metrics, memo))
    await op_runner.setup()
    await web.TCPSite(op_runner, "127.0.0.1", op_port).start()
    settings = GatewaySettings(port=free_port(), bind_address="127.0.0.1", hold_timeout_s=HOLD_S,
                               max_held=10, operator_url=f"http://127.0.0.1:{op_port}",
                               alert_token=TOKEN)
    cg = ClusterGateway(settings, k8s.ApiClient())
    runner = await cg.gateway.open("127.0.0.1", settings.port)
    ticker = asyncio.create_task(cg.tick())
    try:
        yield cg, f"http://127.0.0.1:{settings.port}", memo, metrics
    finally:
        ticker.cancel()
        await runner.cleanup()
        await cg.gateway.close()
        await op_runner.cleanup()


async def test_resolution_hold_alert_and_routing(stack, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cg, url, memo, _ = stack
    cg.apply("modelservices", "RESET", [msvc("llama", "a", "meta/llama"),
                                        msvc("llama", "b", "meta/llama"),
                                        msvc("qwen", "a", "qwen")])
    body = {"model": "meta/llama", "prompt": "x", "max_tokens": 2}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (await client.get("/readyz")).status_code == 200
        models = (await client.get("/v1/models")).json()["data"]
        assert sorted((m["id"], m["root"]) for m in models) == [
            ("meta/llama", "a/llama"), ("meta/llama", "b/llama"), ("qwen", "a/qwen")]
        ambiguous = await client.post("/v1/completions", json=body)
        assert ambiguous.status_code == 400
        assert "X-Kubeplex-Namespace" in ambiguous.json()["error"]["message"]
        unknown = await client.post("/v1/completions", json={"model": "nope"})
        assert unknown.status_code == 404
        assert "Models: meta/llama, qwen." in unknown.json()["error"]["message"]

        # held at zero replicas: two requests, one alert to the operator, then 503s
        pick_a = {"X-Kubeplex-Namespace": "a"}
        held = await asyncio.gather(*(client.post("/v1/completions", json=body, headers=pick_a)
                                      for _ in range(2)))
        assert [r.status_code for r in held] == [503, 503]
        assert held[0].headers["Retry-After"] == "10"
        assert memo.triggers == {"pool-1": {"a/llama": "KubeplexRequestsHeld"}}
        assert memo.woken == ["pool-1"]
        metrics = (await client.get("/metrics")).text
        assert ('kubeplex_gateway_arrivals_total{model="meta/llama",modelservice="llama",'
                'namespace="a"} 2.0') in metrics
        assert ('kubeplex_gateway_held_requests{model="meta/llama",modelservice="llama",'
                'namespace="a"} 0.0') in metrics
        assert 'kubeplex_gateway_scale_signals_total{outcome="sent"} 1.0' in metrics
        # a new hold episode posts again (new startsAt): a new trigger; re-posts within the
        # episode reach the operator but are duplicates there
        memo.triggers.clear()
        cg.repost_s = 0.2
        await asyncio.sleep(0.01)
        again = await client.post("/v1/completions", json=body, headers=pick_a)
        assert again.status_code == 503
        assert memo.triggers == {"pool-1": {"a/llama": "KubeplexRequestsHeld"}}
        assert memo.woken == ["pool-1", "pool-1"]
        sent = re.search(r'kubeplex_gateway_scale_signals_total\{outcome="sent"\} (\S+)',
                         (await client.get("/metrics")).text)
        assert sent is not None and float(sent.group(1)) >= 3  # 1 + this episode's 2+

        # a ready endpoint in the ModelService's Service: requests are forwarded
        with RuntimeProcess({"models": [model_entry("meta/llama", "sim"),
                                        model_entry("qwen", "sim")]}, tmp_path) as rt:
            port = int(rt.url.rsplit(":", 1)[1])
            cg.apply("endpointslices", "ADDED", [{
                "metadata": {"name": f"{svc}-abc", "namespace": "a",
                             "labels": {"kubernetes.io/service-name": svc}},
                "ports": [{"name": "http", "port": port}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                               "targetRef": {"kind": "Pod", "name": f"{svc}-pod-1"}}]}
                for svc in ("llama", "qwen")])
            served = await client.post("/v1/completions", json=body, headers=pick_a)
            assert served.status_code == 200, served.text
            assert served.json()["usage"]["completion_tokens"] == 2
            status = (await client.get("/kubeplex/v1/status")).json()
            llama_a = next(m for m in status["models"] if m["namespace"] == "a"
                           and m["modelService"] == "llama")
            assert list(llama_a["replicas"]) == ["llama-pod-1"]
            assert "sloTTFT" not in llama_a  # its ModelService states no SLO
            # `kubeplex load` judges a run on the ModelService's SLO and its status
            qwen = msvc("qwen", "a", "qwen")
            qwen["spec"]["slo"] = {"ttftSeconds": 5, "percentile": 90}
            qwen["status"] = {"replicas": 1, "readyReplicas": 1, "desiredReplicas": 1,
                              "lastScale": {"reason": "scale up 0 -> 1: held requests"}}
            cg.apply("modelservices", "MODIFIED", [qwen])
            entry = next(m for m in (await client.get("/kubeplex/v1/status")).json()["models"]
                         if m["model"] == "qwen")
            assert (entry["name"], entry["ready"], entry["starting"], entry["desired"],
                    entry["decision"], entry["sloTTFT"], entry["percentile"]) == (
                "qwen", 1, 0, 1, "scale up 0 -> 1: held requests", 5.0, 90.0)
            capsys.readouterr()
            assert await asyncio.to_thread(main, [
                "load", "--gateway", url, "--model", "qwen", "--rate", "4", "--duration", "3",
                "--prompt-tokens", "16", "--max-tokens", "2"]) == 0
            judged = [line for line in capsys.readouterr().out.splitlines()
                      if " third: TTFT p90 " in line]
            assert len(judged) == 3 and all("within the 5 s SLO" in line for line in judged)
            # `kubeplex status` shows a cluster gateway's routes
            assert await asyncio.to_thread(main, ["status", "--gateway", url]) == 0
            shown = capsys.readouterr().out
            assert "cluster gateway" in shown and "a/llama" in shown and "b/llama" in shown
            metrics = (await client.get("/metrics")).text
            assert ('kubeplex_gateway_replicas{model="meta/llama",modelservice="llama",'
                    'namespace="a"} 1.0') in metrics

        # the ModelService deleted: its route and series are gone
        cg.apply("modelservices", "DELETED", [msvc("llama", "a", "meta/llama")])
        assert "a/llama" not in cg.gateway.routes
        gone = await client.post("/v1/completions", json=body, headers=pick_a)
        assert gone.status_code == 404
        metrics = (await client.get("/metrics")).text
        assert 'modelservice="llama",namespace="a"' not in metrics
        # only b serves meta/llama now: no header needed (held there: b has no replica)
        only_b = await client.post("/v1/completions", json=body)
        assert only_b.status_code == 503 and "no ready replica" in only_b.text


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: nobody}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_unreachable_api_server_keeps_readyz_503_saying_why(tmp_path: Path) -> None:
    """``kubeplex gateway`` as a process with no API server behind its kubeconfig: it serves,
    /readyz says which list fails, SIGTERM stops it cleanly."""
    import signal
    import subprocess
    import sys
    import time

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.replace("{port}", str(free_port())))
    port = free_port()
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "kubeplex.cli", "gateway", "--host",
                             "127.0.0.1", "--port", str(port), "--kubeconfig", str(kubeconfig)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, answer = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if "cannot list" in answer.text:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert answer is not None and answer.status_code == 503, answer
        assert re.match(r"cannot list (modelservices|endpointslices):\*: .*Connection refused",
                        answer.json()["reason"]), answer.text
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
    output = (tmp_path / "gateway.log").read_text()
    assert code == 0, output
    assert "Traceback" not in output and "watch modelservices:* failed" in output, output
