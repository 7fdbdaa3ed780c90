"""Runtime config parsing: every error names the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubeplex.runtime.config import load_config, parse_config
from kubeplex.runtime.errors import RuntimeConfigError


def _model(**over: Any) -> dict[str, Any]:
    return {"name": "m", "engine": "sim", "model": "llama-3.1-8b", **over}


def test_minimal_config_gets_defaults() -> None:
    config = parse_config({"models": [_model()]})
    m = config.models[0]
    assert (m.tensor_parallel, m.pipeline_parallel, m.memory_share) == (1, 1, 0.9)
    assert config.drain_grace_seconds == 30
    assert config.device == "auto"


@pytest.mark.parametrize(("doc", "message"), [
    ({"models": [_model(), _model(name="b", memoryShare=1.5)]},
     "models[1].memoryShare: must be in (0, 1], got 1.5"),
    ({"models": [_model(memoryShare=0)]}, "models[0].memoryShare: must be in (0, 1]"),
    ({"models": [_model(engine="tgi")]}, "models[0].engine: must be one of vllm, sim"),
    ({"models": [_model(tensorParallel=3)]}, "models[0].tensorParallel: must be a power of two"),
    ({"models": [_model(pipelineParallel=0)]}, "models[0].pipelineParallel: must be >= 1"),
    ({"models": [_model(maxModelLen="long")]}, "models[0].maxModelLen: must be an integer"),
    ({"models": [{"name": "m", "engine": "sim"}]}, "models[0].model: is required"),
    ({"models": [_model(tensorparallel=2)]}, "models[0].tensorparallel: unknown key"),
    ({"models": [_model(name="bad name")]}, "models[0].name: 'bad name' must be"),
    ({"models": [_model(), _model()]}, "models[1].name: 'm' is already used by models[0]"),
    ({"models": [_model(name="a", memoryShare=0.6), _model(name="b", memoryShare=0.5)]},
     "models[*].memoryShare: the models share one GPU group; their shares sum to 0.6 + 0.5"),
    ({"models": [_model(engine="vllm", model="s3://bucket/x")]},
     "models[0].model: 's3://bucket/x': the runtime loads local paths"),
    ({"models": [_model(args="--x")]}, "models[0].args: must be a list of strings"),
    ({"models": [_model(sleepMode="yes")]}, "models[0].sleepMode: must be true, false or null"),
    ({"models": "m"}, "models: is required and must be a list"),
    ({"models": [], "device": "tpu"}, "device: must be one of auto, gpu, cpu"),
    ({"models": [], "drainGraceSeconds": -1}, "drainGraceSeconds: must be >= 0"),
    ({"models": [], "graceSeconds": 1}, "graceSeconds: unknown key"),
    ([1, 2], "(top level): must be a mapping"),
    ({"models": [_model(adapters={"a": "x"})]}, "models[0].adapters: must be a list"),
    ({"models": [_model(adapters=[{"name": "a"}])]}, "models[0].adapters[0].path: is required"),
    ({"models": [_model(adapters=[{"name": "a", "path": "p", "alpha": 2}])]},
     "models[0].adapters[0].alpha: unknown key"),
    ({"models": [_model(adapters=[{"name": "m", "path": "p"}])]},
     "models[0].adapters[0].name: 'm' is the model's own name"),
    ({"models": [_model(adapters=[{"name": "a", "path": "p"}, {"name": "a", "path": "q"}])]},
     "models[0].adapters[1].name: 'a' is used by another adapter"),
    ({"models": [_model(adapters=[{"name": "a", "path": "p", "rank": 1024}])]},
     "models[0].adapters[0].rank: must be <= 512"),
    ({"models": [_model(engine="vllm", model="/m", adapters=[{"name": "a", "path": "s3://b/a"}])]},
     "models[0].adapters[0].path: 's3://b/a': the runtime loads local paths"),
    ({"models": [_model(), _model(name="b", memoryShare=0.05,
                                  adapters=[{"name": "m", "path": "p"}])]},
     "models[1].adapters[0].name: 'm' is already used by models[0]"),
])
def test_errors_name_the_field(doc: Any, message: str) -> None:
    with pytest.raises(RuntimeConfigError) as err:
        parse_config(doc)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.1-8B-Instruct", "org:model-v2", "m"])
def test_openai_style_served_names_are_accepted(name: str) -> None:
    # The CRD's spec.model.servedName rule: clients ask for these names verbatim.
    assert parse_config({"models": [_model(name=name)]}).model_names() == [name]


def test_shares_summing_to_one_are_fine() -> None:
    config = parse_config({"models": [_model(name=n, memoryShare=s)
                                      for n, s in (("a", 0.3), ("b", 0.3), ("c", 0.4))]})
    assert config.model_names() == ["a", "b", "c"]


def test_with_model_checks_the_group() -> None:
    config = parse_config({"models": [_model(memoryShare=0.9)]})
    with pytest.raises(RuntimeConfigError, match=r"sum to 0.9 \+ 0.2"):
        config.with_model(parse_config({"models": [_model(name="b", memoryShare=0.2)]}
                                       ).models[0])
    assert config.without_model("m").models == ()


def test_load_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("models:\n  - {name: a, engine: sim, model: llama-3.1-8b}\ngpu: A100-80GB\n")
    assert load_config(y).gpu == "A100-80GB"
    j = tmp_path / "c.json"
    j.write_text('{"models": [{"name": "a", "engine": "vllm", "model": "hf://org/m"}]}')
    assert load_config(j).models[0].engine == "vllm"
    j.write_text("{")
    with pytest.raises(RuntimeConfigError, match="not valid JSON"):
        load_config(j)
    with pytest.raises(RuntimeConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml")


def test_adapters_default_to_rank_16_and_show_in_the_status_config() -> None:
    model = parse_config({"models": [_model(adapters=[{"name": "a", "path": "hf://o/a"}])]}
                         ).models[0]
    assert model.to_dict()["adapters"] == [{"name": "a", "path": "hf://o/a", "rank": 16}]
