"""The operator's configuration: environment variables with documented defaults.

Every setting is one ``KUBEPLEX_*`` variable (the Helm chart sets them; see
``operator/README.md``). :meth:`Settings.from_env` names the variable and the fix on bad input.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from kubeplex.autoscaler.policy import AutoscalerConfig
from kubeplex.operator.errors import ConfigError

__all__ = ["ENV_DOCS", "Settings", "parse_env", "parse_overrides", "read_token"]

#: Variable -> (field, default, help). The README table is generated from this.
ENV_DOCS: dict[str, tuple[str, str, str]] = {
    "KUBEPLEX_WATCH_NAMESPACES": ("watch_namespaces", "",
                                  "Comma-separated namespaces to serve; empty: all namespaces."),
    "KUBEPLEX_PEERING": ("peering", "",
                         "kopf peering object name (one active operator); empty: standalone."),
    "KUBEPLEX_PEERING_PRIORITY": ("peering_priority", "0",
                                  "kopf peering priority (highest acts, others pause); 0: a "
                                  "random one per process, so replicas never tie (a tie "
                                  "pauses them all)."),
    "KUBEPLEX_PEERING_LIFETIME_SECONDS": ("peering_lifetime_s", "60",
                                          "How long a silent peer counts as alive (a killed "
                                          "active operator is replaced after this)."),
    "KUBEPLEX_POD_NAMESPACE": ("pod_namespace", "default",
                               "The operator's own namespace (alert Secret, warm pods fallback)."),
    "KUBEPLEX_BIND_ADDRESS": ("bind_address", "0.0.0.0",
                              "Address the health, metrics and webhook servers bind."),
    "KUBEPLEX_HEALTH_PORT": ("health_port", "8080", "Port of GET /healthz (kopf liveness)."),
    "KUBEPLEX_METRICS_PORT": ("metrics_port", "9090", "Port of GET /metrics."),
    "KUBEPLEX_WEBHOOK_PORT": ("webhook_port", "8443", "Port of POST /alerts (Alertmanager v4)."),
    "KUBEPLEX_ALERT_TOKEN": ("alert_token", "",
                             "Bearer token /alerts requires (wins over the token file)."),
    "KUBEPLEX_ALERT_TOKEN_FILE": ("alert_token_file", "",
                                  "File holding the token (the mounted alert Secret); re-read "
                                  "on change. No token at all: /alerts answers 503."),
    "KUBEPLEX_PROMETHEUS_URL": ("prometheus_url", "",
                                "Prometheus base URL for signals; empty: scrape pods directly."),
    "KUBEPLEX_GATEWAY_METRICS_URL": ("gateway_metrics_url", "",
                                     "The cluster gateway's /metrics URL (the chart sets it "
                                     "when the gateway is enabled): requests it holds drive "
                                     "scale-from-zero. Read once per cycle with KUBEPLEX_SCRAPE="
                                     "pods; with prometheus, Prometheus is asked instead. "
                                     "One endpoint: out of cluster, or one gateway replica."),
    "KUBEPLEX_GATEWAY_SERVICE": ("gateway_service", "",
                                 "namespace/name of the cluster gateway's Service (the chart "
                                 "sets it when the gateway is enabled): with KUBEPLEX_SCRAPE="
                                 "pods, every ready address of its EndpointSlices is scraped "
                                 "and the held requests summed (wins over "
                                 "KUBEPLEX_GATEWAY_METRICS_URL)."),
    "KUBEPLEX_SCRAPE": ("scrape", "auto",
                        "Signal source: pods (direct /metrics scrape), prometheus, off, or auto "
                        "(prometheus when KUBEPLEX_PROMETHEUS_URL is set, else pods)."),
    "KUBEPLEX_RUNTIME_IMAGE": ("runtime_image", "ghcr.io/kubeplex/kubeplex:latest",
                               "Image of serving and warm pods (runs kubeplex-runtime)."),
    "KUBEPLEX_RUNTIME_PORT": ("runtime_port", "8000", "The runtime's router port (/v1, /metrics)."),
    "KUBEPLEX_CONTROL_PORT": ("control_port", "8001",
                              "The runtime's control API port (/readyz, /kubeplex/v1)."),
    "KUBEPLEX_INTERVAL_SECONDS": ("interval_s", "5",
                                  "Seconds between autoscaling/reconcile cycles of a pool."),
    "KUBEPLEX_SCRAPE_TIMEOUT_SECONDS": ("scrape_timeout_s", "2",
                                        "Timeout of one metrics scrape or control API call."),
    "KUBEPLEX_URL_ANNOTATIONS": ("url_annotations", "false",
                                 "Honour kubeplex.io/router-url and kubeplex.io/control-url pod "
                                 "annotations (test harnesses that run runtimes off-cluster)."),
    "KUBEPLEX_AUTOSCALER": ("autoscaler", "",
                            "JSON object overriding autoscaler timings, e.g. "
                            '{"stable_window_s": 10, "scale_down_delay_s": 10}.'),
    "KUBEPLEX_PLACEMENT": ("placement", "search",
                           "search: run the AlpaServe placement in the background to choose "
                           "replica shapes; quick: smallest fitting shape only."),
    "KUBEPLEX_ENDPOINT_GRACE_SECONDS": ("endpoint_grace_s", "2",
                                        "Scale-down: seconds a pod keeps serving a model after "
                                        "its label came off, unless the model's EndpointSlices "
                                        "drop it sooner (then the runtime drains/unloads it)."),
    "KUBEPLEX_INFERENCE_POOLS": ("inference_pools", "false",
                                 "Keep one Gateway API Inference Extension InferencePool "
                                 "(inference.networking.k8s.io/v1) per served ModelService; "
                                 "needs that CRD installed (chart: inferencePool.enabled)."),
    "KUBEPLEX_INFERENCE_POOL_EPP": ("inference_pool_epp", "{name}-epp:9002",
                                    "The endpoint picker Service each InferencePool names, as "
                                    "NAME:PORT; {name} is the ModelService's name (the "
                                    "upstream inferencepool chart's <release>-epp on 9002)."),
    "KUBEPLEX_CPU_REQUEST": ("cpu_request", "4", "CPU request of a serving pod."),
    "KUBEPLEX_MEMORY_REQUEST": ("memory_request", "32Gi", "Memory request of a serving pod."),
}


def read_token(token: str, path: str) -> str:
    """The alert webhook token: ``token`` when given, else the file's content (re-read on
    every call, so a rotated Secret applies at once), else ""."""
    if token:
        return token
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return ""
    return ""


def parse_env(cls: type, docs: Mapping[str, tuple[str, str, str]],
              env: Mapping[str, str] | None = None) -> dict[str, object]:
    """The fields of dataclass ``cls`` from the variables in ``docs`` (variable -> (field,
    default, help)), converted to the fields' types; a bad value names its variable."""
    env = os.environ if env is None else env
    types = {f.name: f.type for f in fields(cls)}
    values: dict[str, object] = {}
    for var, (name, default, _help) in docs.items():
        raw = env.get(var, default).strip()
        kind = types[name]
        try:
            if kind == "int":
                values[name] = int(raw)
            elif kind == "float":
                values[name] = float(raw)
            elif kind == "bool":
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no", ""):
                    raise ValueError(raw)
                values[name] = raw.lower() in ("true", "1", "yes")
            elif kind == "tuple[str, ...]":
                values[name] = tuple(p.strip() for p in raw.split(",") if p.strip())
            else:
                values[name] = raw
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not a valid {kind}; unset it for the "
                              f"default ({default!r})") from None
    return values


@dataclass(frozen=True)
class Settings:
    watch_namespaces: tuple[str, ...] = ()
    peering: str = ""
    peering_priority: int = 0
    peering_lifetime_s: int = 60
    pod_namespace: str = "default"
    bind_address: str = "0.0.0.0"
    health_port: int = 8080
    metrics_port: int = 9090
    webhook_port: int = 8443
    alert_token: str = ""
    alert_token_file: str = ""
    prometheus_url: str = ""
    gateway_metrics_url: str = ""
    gateway_service: str = ""
    scrape: str = "auto"
    runtime_image: str = "ghcr.io/kubeplex/kubeplex:latest"
    runtime_port: int = 8000
    control_port: int = 8001
    interval_s: float = 5.0
    scrape_timeout_s: float = 2.0
    url_annotations: bool = False
    autoscaler: str = ""
    placement: str = "search"
    endpoint_grace_s: float = 2.0
    inference_pools: bool = False
    inference_pool_epp: str = "{name}-epp:9002"
    cpu_request: str = "4"
    memory_request: str = "32Gi"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        settings = cls(**parse_env(cls, ENV_DOCS, env))  # type: ignore[arg-type]
        if settings.scrape not in ("auto", "pods", "prometheus", "off"):
            raise ConfigError(f"KUBEPLEX_SCRAPE={settings.scrape!r}: use auto, pods, prometheus "
                              "or off")
        if settings.scrape == "auto":
            settings = replace(settings,
                               scrape="prometheus" if settings.prometheus_url else "pods")
        if settings.scrape == "prometheus" and not settings.prometheus_url:
            raise ConfigError("KUBEPLEX_SCRAPE=prometheus needs KUBEPLEX_PROMETHEUS_URL")
        if settings.gateway_service and not re.fullmatch(r"[a-z0-9.-]+/[a-z0-9.-]+",
                                                          settings.gateway_service):
            raise ConfigError(f"KUBEPLEX_GATEWAY_SERVICE={settings.gateway_service!r}: use "
                              "namespace/name of the gateway's Service, e.g. "
                              "kubeplex/kubeplex-gateway")
        if settings.placement not in ("search", "quick"):
            raise ConfigError(f"KUBEPLEX_PLACEMENT={settings.placement!r}: use search or quick")
        if settings.interval_s <= 0:
            raise ConfigError("KUBEPLEX_INTERVAL_SECONDS must be > 0")
        if settings.endpoint_grace_s < 0:
            raise ConfigError("KUBEPLEX_ENDPOINT_GRACE_SECONDS must be >= 0")
        if not re.fullmatch(r"[a-z0-9{}.-]+:[0-9]{1,5}", settings.inference_pool_epp) or not \
                0 < int(settings.inference_pool_epp.rpartition(":")[2]) < 65536:
            raise ConfigError(f"KUBEPLEX_INFERENCE_POOL_EPP={settings.inference_pool_epp!r}: "
                              "use SERVICE:PORT, e.g. {name}-epp:9002 ({name}: the "
                              "ModelService's name)")
        return settings

    def token(self) -> str:
        """The current alert token (the file is re-read so a rotated Secret applies at once)."""
        return read_token(self.alert_token, self.alert_token_file)


def parse_overrides(text: str) -> dict[str, float]:
    """``KUBEPLEX_AUTOSCALER``: a JSON object of AutoscalerConfig numbers, e.g.
    ``{"stable_window_s": 10, "scale_down_delay_s": 10}`` (for tests and demos)."""
    if not text.strip():
        return {}
    allowed = {f.name for f in fields(AutoscalerConfig)} - {
        "slo_ttft_s", "percentile", "min_replicas", "max_replicas", "gpus_per_replica",
        "profile", "forecast", "warm_pool"}
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"KUBEPLEX_AUTOSCALER is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("KUBEPLEX_AUTOSCALER must be a JSON object")
    for k, v in data.items():
        if k not in allowed:
            raise ConfigError(f"KUBEPLEX_AUTOSCALER: unknown key {k!r}; allowed: "
                              f"{', '.join(sorted(allowed))}")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"KUBEPLEX_AUTOSCALER: {k} must be a number, got {v!r}")
    return {k: float(v) for k, v in data.items()}
