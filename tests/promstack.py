"""A real Prometheus + Alertmanager pair for tests, on loopback, in temp dirs.

Any test can import it (``tests/`` is on pytest's ``pythonpath``) or use the ``promstack``
fixture factory from ``tests/conftest.py``::

    def test_something(promstack, tmp_path):
        stack = promstack(
            targets=[ScrapeTarget("kubeplex-operator", "127.0.0.1:9090", honor_labels=True)],
            rules=render_rules(RuleSettings(queue_for="0s")),
            webhook_url="http://127.0.0.1:8443/alerts", webhook_token="secret",
        )
        stack.wait_for(lambda: stack.query('ALERTS{alertstate="firing"}'), "an alert fires")

Both binaries come from Debian (scripts/ensure-prometheus.sh) and run directly, as ENV.md
describes: free loopback ports, temp dirs, 1 s scrape and evaluation intervals. Alertmanager's
configuration is the chart's example (helm/kubeplex/files/alertmanager-example.yaml) with the
operator receiver's URL and token swapped for the test's, so the test exercises the routing
users get (``kubeplex_receiver="operator"`` -> webhook, 1 s ``group_wait``). :meth:`PromStack.start`
returns once both servers are ready and every scrape target has ``up == 1``; nothing sleeps a
guessed time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kubeplex.runtime.supervisor import free_port

__all__ = [
    "ALERTMANAGER_BIN",
    "ALERTMANAGER_EXAMPLE",
    "PROMETHEUS_BIN",
    "PromStack",
    "PromStackError",
    "ScrapeTarget",
    "TextExporter",
    "WebhookPost",
    "WebhookReceiver",
    "missing_binaries",
]

REPO = Path(__file__).resolve().parent.parent
ALERTMANAGER_EXAMPLE = REPO / "helm" / "kubeplex" / "files" / "alertmanager-example.yaml"
PROMETHEUS_BIN = "prometheus"
# Debian names Alertmanager's binary prometheus-alertmanager.
ALERTMANAGER_BIN = "prometheus-alertmanager"
#: The receiver in the example configuration that posts to the operator.
OPERATOR_RECEIVER_NAME = "kubeplex-operator"

#: Scrape and rule-evaluation interval: the fastest settings ENV.md measured (1.0-2.0 s from a
#: metric change to the webhook).
INTERVAL = "1s"
#: How long start() waits for readiness and the first successful scrape of every target. The
#: first scrape lands ~5 s after start on these machines (ENV.md); 60 s absorbs a loaded box.
START_TIMEOUT_S = 60.0
#: Polling period of wait_for(): a tenth of the scrape interval.
POLL_S = 0.1

T = TypeVar("T")


class PromStackError(RuntimeError):
    """Prometheus or Alertmanager did not start, or a condition was not met in time."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One scrape job with one target, e.g. a runtime's or the operator's /metrics."""

    job: str
    #: host:port on loopback.
    address: str
    path: str = "/metrics"
    #: Keep the target's own labels (the operator's `namespace`), like the chart's
    #: ServiceMonitor; otherwise clashing labels become exported_<name>.
    honor_labels: bool = False
    #: Static target labels, e.g. {"namespace": "team-a"} the way a PodMonitor adds them.
    labels: Mapping[str, str] = field(default_factory=dict)


def missing_binaries() -> list[str]:
    """The Prometheus/Alertmanager commands not on PATH (empty when the stack can run)."""
    return [b for b in (PROMETHEUS_BIN, ALERTMANAGER_BIN, "promtool", "amtool")
            if shutil.which(b) is None]


def alertmanager_config(webhook_url: str, token_file: Path | None) -> dict[str, Any]:
    """The chart's example Alertmanager configuration, posting to ``webhook_url``."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    for receiver in config["receivers"]:
        if receiver["name"] != OPERATOR_RECEIVER_NAME:
            continue
        hook = receiver["webhook_configs"][0]
        hook["url"] = webhook_url
        if token_file is None:
            hook.pop("http_config", None)
        else:
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
        return config
    raise PromStackError(f"{ALERTMANAGER_EXAMPLE} has no receiver {OPERATOR_RECEIVER_NAME!r}")


class PromStack:
    """Prometheus and Alertmanager processes; use as a context manager or start()/stop()."""

    def __init__(self, workdir: Path, *, targets: Sequence[ScrapeTarget], rules: str,
                 webhook_url: str, webhook_token: str | None = None) -> None:
        self.workdir = workdir
        self.targets = tuple(targets)
        self.rules = rules
        self.webhook_url = webhook_url
        self.webhook_token = webhook_token
        self.prometheus_port = free_port()
        self.alertmanager_port = free_port()
        self._procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self._http = httpx.Client(timeout=5.0)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    # --- lifecycle ---

    def __enter__(self) -> PromStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        missing = missing_binaries()
        if missing:
            raise PromStackError(f"missing {', '.join(missing)}: run scripts/ensure-prometheus.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_alertmanager()
            self._start_prometheus()
            self.wait_for(lambda: self._ready(self.alertmanager_url), "Alertmanager ready",
                          START_TIMEOUT_S)
            self.wait_for(lambda: self._ready(self.prometheus_url), "Prometheus ready",
                          START_TIMEOUT_S)
            self.wait_for(self._all_targets_up, "every scrape target up == 1", START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for _, proc, _ in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        self._http.close()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self._procs.append((name, proc, log))

    def _start_alertmanager(self) -> None:
        token_file = None
        if self.webhook_token is not None:
            token_file = self.workdir / "webhook-token"
            token_file.write_text(self.webhook_token)
        config = self.workdir / "alertmanager.yml"
        config.write_text(yaml.safe_dump(alertmanager_config(self.webhook_url, token_file)))
        (self.workdir / "alertmanager-data").mkdir(exist_ok=True)
        self._spawn("alertmanager", [
            ALERTMANAGER_BIN, f"--config.file={config}",
            f"--storage.path={self.workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
            "--cluster.listen-address=",  # no gossip port: a single instance
            "--log.level=warn",
        ])

    def _start_prometheus(self) -> None:
        rules = self.workdir / "rules.yaml"
        rules.write_text(self.rules)
        scrape_configs = [{
            "job_name": t.job,
            "metrics_path": t.path,
            "honor_labels": t.honor_labels,
            "static_configs": [{"targets": [t.address], "labels": dict(t.labels)}],
        } for t in self.targets]
        config = {
            "global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL,
                       "evaluation_interval": INTERVAL},
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [
                {"static_configs": [{"targets": [f"127.0.0.1:{self.alertmanager_port}"]}]}]},
            "scrape_configs": scrape_configs,
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        (self.workdir / "prometheus-data").mkdir(exist_ok=True)
        self._spawn("prometheus", [
            PROMETHEUS_BIN, f"--config.file={path}",
            f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
            "--log.level=warn",
        ])

    # --- probing ---

    def _check_alive(self) -> None:
        for name, proc, log in self._procs:
            if proc.poll() is not None:
                raise PromStackError(
                    f"{name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")

    def _ready(self, base: str) -> bool:
        try:
            return self._http.get(f"{base}/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def _all_targets_up(self) -> bool:
        up = {s["metric"].get("job"): s["value"][1] for s in self.query("up")}
        return all(up.get(t.job) == "1" for t in self.targets)

    def wait_for(self, probe: Callable[[], T], what: str, timeout: float = 30.0) -> T:
        """Poll ``probe`` until it returns something truthy; raise after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise PromStackError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(POLL_S)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant PromQL query; the result vector."""
        rsp = self._http.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr})
        rsp.raise_for_status()
        result: list[dict[str, Any]] = rsp.json()["data"]["result"]
        return result

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        """Prometheus' pending and firing alerts."""
        rsp = self._http.get(f"{self.prometheus_url}/api/v1/alerts")
        rsp.raise_for_status()
        alerts: list[dict[str, Any]] = rsp.json()["data"]["alerts"]
        return alerts

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds (API v2)."""
        rsp = self._http.get(f"{self.alertmanager_url}/api/v2/alerts")
        rsp.raise_for_status()
        alerts: list[dict[str, Any]] = rsp.json()
        return alerts

    def logs(self) -> Iterator[tuple[str, str]]:
        for name, _, log in self._procs:
            yield name, log.read_text()


class _QuietServer(ThreadingHTTPServer):
    """Loopback test server: a client that hangs up early (a scrape past its timeout) is not
    an error worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _BackgroundServer:
    """A :class:`_QuietServer` on a free loopback port, served from a thread while entered."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@dataclass(frozen=True)
class WebhookPost:
    """One POST Alertmanager made: when it arrived (time.monotonic() and wall-clock
    time.time()), headers, JSON body."""

    at: float
    wall: float
    path: str
    headers: Mapping[str, str]
    body: Any


class WebhookReceiver(_BackgroundServer):
    """A plain HTTP server on loopback recording every POST (a stand-in for the operator's
    /alerts that answers 200 and keeps what it got), for tests of the alert path itself."""

    def __init__(self) -> None:
        self.posts: list[WebhookPost] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at, wall = time.monotonic(), time.time()
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                post = WebhookPost(at, wall, self.path, dict(self.headers.items()), json.loads(raw))
                with receiver._lock:
                    receiver.posts.append(post)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def received(self) -> list[WebhookPost]:
        with self._lock:
            return list(self.posts)


class TextExporter(_BackgroundServer):
    """Serves a prometheus_client registry on loopback in the Prometheus text format 0.0.4.

    Not prometheus_client's own start_http_server: with Prometheus 2.x it negotiates
    OpenMetrics with underscore escaping, and prometheus_client 0.26 then renames the samples
    of names with a colon (``vllm:num_requests_waiting`` is stored as
    ``vllm_num_requests_waiting``; prometheus/client_python#1177). The text format keeps vLLM's
    names as they are.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        super().__init__(Handler)

    @property
    def address(self) -> str:
        """host:port, for a ScrapeTarget."""
        return f"127.0.0.1:{self.port}"
