"""Local-mode settings: loop timings, start-up delays and gateway limits.

They come from an optional document beside the ModelServices and GPUPools (other tools skip
it: it is not in the ``kubeplex.io`` API group)::

    apiVersion: local.kubeplex.io/v1alpha1
    kind: LocalSettings
    spec:
      tickSeconds: 1            # autoscaling loop period (also the metrics scrape period)
      stableWindowSeconds: 60   # autoscaler windows (Knative KPA defaults: 60 s and 6 s)
      panicWindowSeconds: 6
      scaleDownDelaySeconds: 120
      coldStartSeconds: 10      # the sim engine's simulated cold start (model load)
      holdTimeoutSeconds: 60    # the gateway holds a request this long for a first replica
      holdQueueLimit: 256       # ... and at most this many per model (then 503 at once)
      drainGraceSeconds: 30     # in-flight requests get this long when a replica drains
      migrateAfterSeconds: 5    # ... and generations still running after this long resume
                                # on another replica instead (request migration)
      resumePlainRequests: true # plain requests too (streamed from the replica; false
                                # saves the engine an SSE event per token)
      engine: auto              # auto | sim | vllm (auto: vllm where it can run, else sim)

Every key is optional; unknown keys are refused with the list of known ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeplex.api import FileError, read_yaml
from kubeplex.gateway import DEFAULT_MIGRATE_AFTER_SECONDS
from kubeplex.operator.local.errors import SettingsError

__all__ = ["API_VERSION", "KIND", "LocalSettings", "load_settings"]

API_VERSION = "local.kubeplex.io/v1alpha1"
KIND = "LocalSettings"
ENGINES = ("auto", "sim", "vllm")


@dataclass(frozen=True)
class LocalSettings:
    tick_seconds: float = 1.0
    # Knative KPA's windows (see the autoscaler's AutoscalerConfig).
    stable_window_seconds: float = 60.0
    panic_window_seconds: float = 6.0
    scale_down_delay_seconds: float = 120.0
    cold_start_seconds: float = 10.0
    hold_timeout_seconds: float = 60.0
    hold_queue_limit: int = 256
    drain_grace_seconds: float = 30.0
    migrate_after_seconds: float = DEFAULT_MIGRATE_AFTER_SECONDS
    resume_plain_requests: bool = True
    engine: str = "auto"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "engine":
                if value not in ENGINES:
                    raise SettingsError(f"LocalSettings spec.engine: must be one of "
                                        f"{', '.join(ENGINES)}, got {value!r}")
            elif f.name == "resume_plain_requests":
                if not isinstance(value, bool):
                    raise SettingsError(f"LocalSettings spec.resumePlainRequests: must be true "
                                        f"or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0 <= value < float("inf") \
                    or (value == 0 and f.name in ("tick_seconds", "stable_window_seconds",
                                                  "panic_window_seconds", "hold_queue_limit")):
                raise SettingsError(f"LocalSettings spec.{_camel(f.name)}: must be a "
                                    f"finite number >= 0 (tick, windows and queue limit: > 0), "
                                    f"got {value!r}")

    def with_overrides(self, **values: Any) -> LocalSettings:
        """A copy with the non-None ``values`` replaced (command-line options)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def parse_settings(spec: Mapping[str, Any] | None, where: str = "LocalSettings") -> LocalSettings:
    if spec is None:
        return LocalSettings()
    if not isinstance(spec, Mapping):
        raise SettingsError(f"{where}: spec must be a mapping, got {spec!r}")
    keys = {_camel(f.name): f.name for f in dataclasses.fields(LocalSettings)}
    unknown = sorted(set(spec) - set(keys))
    if unknown:
        raise SettingsError(f"{where}: spec.{unknown[0]} is not a setting; known: "
                            f"{', '.join(sorted(keys))}")
    return LocalSettings(**{keys[k]: v for k, v in spec.items()})


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        elif path.exists():
            out.append(path)
    return out


def load_settings(paths: Iterable[str | Path]) -> LocalSettings:
    """The LocalSettings document of ``paths`` (files or directories), defaults when none.
    Two such documents are an error (which one wins would be a guess)."""
    found: list[tuple[str, Any]] = []
    for path in _files(paths):
        try:
            docs = read_yaml(path)
        except FileError:
            continue  # kubeplex.api reports unreadable files, naming the problem
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == KIND \
                    and doc.get("apiVersion") == API_VERSION:
                found.append((str(path), doc.get("spec")))
    if len(found) > 1:
        raise SettingsError(f"two {KIND} documents ({found[0][0]} and {found[1][0]}); keep one")
    return parse_settings(found[0][1], f"{found[0][0]} {KIND}") if found else LocalSettings()
