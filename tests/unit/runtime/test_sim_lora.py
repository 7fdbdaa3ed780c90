"""The sim engine's LoRA options: vLLM's two --lora-modules forms and the slot checks."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from kubeplex.runtime.sim.__main__ import main
from kubeplex.runtime.sim.lora import LoraRegistry, parse_modules


def test_lora_modules_take_vllms_two_forms() -> None:
    assert parse_modules(["sql=/loras/sql", '{"name": "chat", "path": "hf://o/chat"}', ""]) == \
        {"sql": "/loras/sql", "chat": "hf://o/chat"}
    with pytest.raises(ValueError, match="neither name=path nor JSON"):
        parse_modules(['{"name": "x"}'])


@pytest.mark.parametrize("args", [["--max-lora-rank", "7"], ["--max-loras", "0"],
                                  ["--lora-modules", "not a module"]])
def test_bad_lora_options_fail_before_serving(args: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--enable-lora", *args]) == 1
    assert capsys.readouterr().err.startswith("sim: error:")


def test_running_adapters_show_in_the_info_gauge() -> None:
    registry = CollectorRegistry()
    lora = LoraRegistry("base", 2, {"sql": "p"}, registry, environ={})
    assert not lora.runtime_updates  # vLLM's endpoints need VLLM_ALLOW_RUNTIME_LORA_UPDATING
    lora.started("sql")
    lora.started("sql")
    lora.finished("sql")

    def running() -> list[str]:
        return [s.labels["running_lora_adapters"] for m in registry.collect()
                if m.name == "vllm:lora_requests_info" for s in m.samples]

    assert running() == ["sql"]  # one series: the previous label set is removed
    lora.finished("sql")
    assert running() == [""]
    assert LoraRegistry("b", 1, {}, CollectorRegistry(),
                        environ={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}).runtime_updates
