"""Engine command lines (pure): the vLLM arguments the issue asks for, and the sim's."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeplex.runtime.config import parse_config
from kubeplex.runtime.engines import can_sleep, launch, resolve_device, vllm_python
from kubeplex.runtime.errors import RuntimeConfigError


def _config(**model: object) -> object:
    return parse_config({"models": [{"name": "m", "engine": "vllm", "model": "hf://org/llama",
                                     "tensorParallel": 2, "pipelineParallel": 2,
                                     "memoryShare": 0.45, "maxModelLen": 4096,
                                     "args": ["--enforce-eager"], **model}],
                         "vllmPython": "/opt/vllm/bin/python"})


def _flag(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_vllm_on_gpu_gets_sizes_share_name_and_sleep_mode() -> None:
    config = _config()
    spec = launch(config.models[0], config, 9000, "gpu", environ={})
    argv = spec.argv
    assert argv[:3] == ("/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server")
    assert _flag(argv, "--model") == "org/llama"
    assert _flag(argv, "--served-model-name") == "m"
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--port") == "9000"
    assert _flag(argv, "--tensor-parallel-size") == "2"
    assert _flag(argv, "--pipeline-parallel-size") == "2"
    assert _flag(argv, "--gpu-memory-utilization") == "0.45"
    assert _flag(argv, "--max-model-len") == "4096"
    assert "--enable-sleep-mode" in argv
    assert "--enable-request-id-headers" in argv
    assert "--disable-uvicorn-access-log" in argv
    assert argv[-1] == "--enforce-eager"
    assert spec.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert "VLLM_CPU_KVCACHE_SPACE" not in spec.env


def test_vllm_on_cpu_has_kv_space_and_no_sleep_mode() -> None:
    config = _config()
    spec = launch(config.models[0], config, 9000, "cpu", environ={})
    assert "--enable-sleep-mode" not in spec.argv
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert not can_sleep(config.models[0], "cpu")
    config2 = _config(sleepMode=True)
    with pytest.raises(RuntimeConfigError, match="sleepMode needs a GPU"):
        launch(config2.models[0], config2, 9000, "cpu", environ={})


def test_sim_gets_the_profile_and_group_gpu() -> None:
    config = parse_config({"models": [{"name": "s", "engine": "sim", "model": "qwen-2.5-7b",
                                       "args": ["--time-scale", "0.1"]}], "gpu": "L4"})
    spec = launch(config.models[0], config, 9100, "cpu", environ={"A": "1"})
    assert spec.argv[1:3] == ("-m", "kubeplex.runtime.sim")
    assert _flag(spec.argv, "--model-profile") == "qwen-2.5-7b"
    assert _flag(spec.argv, "--gpu") == "L4"
    assert spec.argv[-2:] == ("--time-scale", "0.1")
    assert spec.env["A"] == "1"
    assert not can_sleep(config.models[0], "gpu")  # sim sleeps only when asked to


def test_interpreter_and_device_resolution(tmp_path: Path) -> None:
    config = parse_config({"models": []})
    assert vllm_python(config, {"KUBEPLEX_VLLM_PYTHON": "/x/python"}) == "/x/python"
    assert resolve_device(config, tmp_path / "nvidia0") == "cpu"
    (tmp_path / "nvidia0").touch()
    assert resolve_device(config, tmp_path / "nvidia0") == "gpu"


def _lora_args(argv: tuple[str, ...]) -> list[str]:
    start = argv.index("--lora-modules") + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))
    return list(argv[start:end])


@pytest.mark.parametrize("engine", ["vllm", "sim"])
def test_adapters_enable_lora_sized_from_them_and_runtime_updates(engine: str) -> None:
    config = _config(engine=engine, model="hf://org/llama" if engine == "vllm" else "llama-3.1-8b",
                     adapters=[{"name": "sql", "path": "hf://org/sql", "rank": 8},
                               {"name": "chat", "path": "file:///loras/chat", "rank": 20}])
    spec = launch(config.models[0], config, 9000, "gpu", environ={})
    argv = spec.argv
    assert "--enable-lora" in argv
    assert _flag(argv, "--max-loras") == "2"
    assert _flag(argv, "--max-lora-rank") == "32"  # 20 rounded up to a rank vLLM accepts
    paths = {"vllm": ("org/sql", "/loras/chat"), "sim": ("hf://org/sql", "file:///loras/chat")}
    assert _lora_args(argv) == [f'{{"name":"sql","path":"{paths[engine][0]}"}}',
                                f'{{"name":"chat","path":"{paths[engine][1]}"}}']
    assert spec.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    plain = _config(engine=engine, model="hf://org/llama" if engine == "vllm"
                    else "llama-3.1-8b")
    spec = launch(plain.models[0], plain, 9000, "gpu", environ={})
    assert "--enable-lora" not in spec.argv
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in spec.env


def test_a_local_adapter_with_a_larger_rank_than_declared_is_refused(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text('{"r": 64, "peft_type": "LORA"}')
    config = _config(adapters=[{"name": "sql", "path": str(tmp_path), "rank": 16}])
    with pytest.raises(RuntimeConfigError, match="declare rank: 64"):
        launch(config.models[0], config, 9000, "gpu", environ={})
    config = _config(adapters=[{"name": "sql", "path": str(tmp_path), "rank": 64}])
    assert _flag(launch(config.models[0], config, 9000, "gpu", environ={}).argv,
                 "--max-lora-rank") == "64"
