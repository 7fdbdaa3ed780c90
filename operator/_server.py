"""The operator's HTTP endpoints (aiohttp, in kopf's event loop):

* ``POST /alerts`` on ``KUBEPLEX_WEBHOOK_PORT``: Alertmanager webhook v4 with
  ``Authorization: Bearer <token>``. 503 while no token is configured (Alertmanager retries
  5xx: the alerts arrive once the Secret is mounted), 401 without the right token, 400 on a
  malformed body (not JSON, nested deeper than 64 levels, not v4; Alertmanager does not retry
  4xx), 413 over :data:`MAX_BODY_BYTES`, all as JSON ``{"error": ...}``; 200 with what was
  triggered and what was ignored. Each
  firing alert labelled ``namespace`` + ``modelservice`` wakes that model's pool at once;
  duplicates (same fingerprint and startsAt) are dropped. The decision itself always reads
  fresh metrics: an alert only says "look now".
* ``GET /metrics`` on ``KUBEPLEX_METRICS_PORT``: the operator's metrics.
* ``GET /healthz`` on ``KUBEPLEX_HEALTH_PORT`` is kopf's liveness endpoint (see cli).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubeplex.autoscaler.alerts import AlertLedger, parse_webhook
from kubeplex.autoscaler.errors import AutoscalerError
from kubeplex.operator._metrics import OperatorMetrics
from kubeplex.operator._settings import Settings
from kubeplex.runtime._limits import BadRequestBody, json_errors, parse_json

__all__ = ["MAX_BODY_BYTES", "start_servers"]

#: Largest alert body accepted (Alertmanager batches; 1 MiB holds thousands of alerts).
MAX_BODY_BYTES = 1 << 20


def _shape(status: int, message: str) -> dict[str, str]:
    return {"error": message}


def _error(status: int, message: str) -> web.Response:
    return web.json_response(_shape(status, message), status=status)


def alerts_app(settings: Settings, metrics: OperatorMetrics, memo: Any) -> web.Application:
    state = {"ledger": AlertLedger()}

    async def alerts(request: web.Request) -> web.Response:
        token = settings.token()
        if not token:
            metrics.alerts.labels(outcome="unauthorized").inc()
            return _error(503, "no alert token configured on the operator "
                               "(KUBEPLEX_ALERT_TOKEN or KUBEPLEX_ALERT_TOKEN_FILE)")
        # Header values arrive as str (undecodable bytes as surrogates): compare bytes.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            metrics.alerts.labels(outcome="unauthorized").inc()
            return _error(401, "missing or wrong bearer token (Authorization: Bearer <token> "
                               "from the alert webhook Secret)")
        raw = await request.read()
        try:
            payload = parse_json(raw)
            parsed = parse_webhook(payload, state["ledger"], time.time())
        except BadRequestBody as e:
            metrics.alerts.labels(outcome="malformed").inc()
            return _error(400, f"body is not JSON: {e}")
        except AutoscalerError as e:
            metrics.alerts.labels(outcome="malformed").inc()
            return _error(400, f"not an Alertmanager v4 webhook body: {e}")
        state["ledger"] = parsed.ledger
        triggered, ignored = [], list(parsed.ignored)
        for t in parsed.triggers:
            pool = memo.pool_of.get(t.key)
            if pool is None:
                ignored.append(f"{t.key}: no such ModelService")
                continue
            memo.triggers.setdefault(pool, {})[t.key] = t.alertname
            memo.wake(pool)
            triggered.append(t.key)
        metrics.alerts.labels(outcome="accepted").inc()
        return web.json_response({"triggered": triggered, "ignored": ignored})

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors(_shape)])
    app.router.add_post("/alerts", alerts)
    return app


def metrics_app(metrics: OperatorMetrics) -> web.Application:
    async def serve(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[json_errors(_shape)])
    app.router.add_get("/metrics", serve)
    return app


async def start_servers(settings: Settings, metrics: OperatorMetrics,
                        memo: Any) -> list[web.AppRunner]:
    runners = []
    apps = [(alerts_app(settings, metrics, memo), settings.webhook_port),
            (metrics_app(metrics), settings.metrics_port)]
    for app, port in apps:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, settings.bind_address, port).start()
        runners.append(runner)
    return runners
