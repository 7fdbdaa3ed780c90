"""Offline validation: examples pass, each bad spec is refused naming its field, CEL rules hold."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeplex.api import (
    ApiError,
    GPUPool,
    ModelService,
    ValidationError,
    check_documents,
    from_dict,
    load_documents,
    validate_object,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
BAD = sorted((REPO / "examples" / "bad").glob("*.yaml"))


def expected_field(path: Path) -> str:
    match = re.search(r"^# expect: (\S+)", path.read_text(), re.MULTILINE)
    assert match, f"{path} lacks an '# expect: FIELD' line"
    return match.group(1)


def test_there_are_examples_and_bad_specs() -> None:
    assert len(EXAMPLES) >= 4
    assert len(BAD) >= 15


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    docs = check_documents([path])
    assert docs, f"{path} has no kubeplex documents"
    assert all(not d.errors for d in docs), [str(e) for d in docs for e in d.errors]


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_every_bad_spec_is_refused_naming_its_field(path: Path) -> None:
    (doc,) = check_documents([path])
    field = expected_field(path)
    paths = [e.path for e in doc.errors]
    assert paths == [field], f"expected exactly one error at {field}, got {doc.errors}"


MODEL_SERVICE: dict[str, Any] = {
    "apiVersion": "kubeplex.io/v1alpha1",
    "kind": "ModelService",
    "metadata": {"name": "m", "namespace": "ns"},
    "spec": {"model": {"uri": "hf://org/model"}, "pool": "p", "slo": {"ttftSeconds": 1}},
}


def with_spec(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(MODEL_SERVICE)
    obj["spec"].update(changes)
    return obj


def test_defaults_come_from_the_crd() -> None:
    ms = from_dict(MODEL_SERVICE)
    assert isinstance(ms, ModelService)
    assert ms.spec.scaling.min_replicas == 1
    assert ms.spec.scaling.max_replicas == 4
    assert ms.spec.slo.percentile == 95.0
    assert ms.spec.parallelism.tensor == "auto"
    assert ms.spec.engine == "vllm"
    assert ms.served_name == "m"
    assert ms.key == "ns/m"


def test_numbers_are_cel_doubles_even_when_written_as_integers() -> None:
    group = {
        "apiVersion": "kubeplex.io/v1alpha1", "kind": "ServingGroup",
        "metadata": {"name": "g", "namespace": "ns"},
        "spec": {"pool": "p", "gpus": 1, "tensorParallel": 1, "pipelineParallel": 1,
                 "models": [{"modelService": "a", "memoryShare": 1}]},
    }
    assert validate_object(group)[1] == []


def test_shares_summing_to_one_with_float_rounding_are_accepted() -> None:
    shares = [0.1, 0.2, 0.7]  # 1.0000000000000002 in binary floating point
    group = {
        "apiVersion": "kubeplex.io/v1alpha1", "kind": "ServingGroup",
        "metadata": {"name": "g", "namespace": "ns"},
        "spec": {"pool": "p", "gpus": 1, "tensorParallel": 1, "pipelineParallel": 1,
                 "models": [{"modelService": f"m{i}", "memoryShare": s}
                            for i, s in enumerate(shares)]},
    }
    assert validate_object(group)[1] == []


def test_transition_rules_need_the_old_object() -> None:
    old = with_spec(model={"uri": "hf://org/model", "servedName": "a"})
    new = with_spec(model={"uri": "hf://org/model", "servedName": "b"})
    assert validate_object(new)[1] == []  # a create: nothing to compare with
    _, errors = validate_object(new, old=validate_object(old)[0])
    assert [e.path for e in errors] == ["spec.model.servedName"]
    assert "immutable" in errors[0].message


def test_every_error_is_reported_at_once() -> None:
    obj = with_spec(slo={"ttftSeconds": 0}, scaling={"minReplicas": 3, "maxReplicas": 1},
                    bogus=True)
    with pytest.raises(ValidationError) as caught:
        from_dict(obj, where="x.yaml")
    paths = {e.path for e in caught.value.errors}
    assert paths == {"spec.slo.ttftSeconds", "spec.scaling.minReplicas", "spec.bogus"}
    assert str(caught.value).startswith("x.yaml is invalid:")


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ([1, 2], ""),
        ({"apiVersion": "kubeplex.io/v1alpha1", "kind": "Pod"}, "kind"),
        ({**MODEL_SERVICE, "apiVersion": "kubeplex.io/v2"}, "apiVersion"),
        ({k: v for k, v in MODEL_SERVICE.items() if k != "metadata"}, "metadata"),
    ],
)
def test_wrong_envelopes_name_the_field(obj: Any, field: str) -> None:
    _, errors = validate_object(obj)
    assert errors and errors[0].path == field


def test_gpu_pool_spec_fills_catalogue_numbers() -> None:
    docs = load_documents([REPO / "examples" / "llama-3.1-70b-a100.yaml"])
    _, pools = docs.split()
    (pool,) = pools
    assert isinstance(pool, GPUPool)
    spec = pool.spec.gpu.spec()
    assert spec.memory_gib == 80 and spec.bf16_tflops == 312.0
    assert pool.metadata.namespace is None


def test_load_documents_raises_on_invalid_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"spec\.slo\.percentile"):
        load_documents([REPO / "examples" / "bad" / "ms-percentile-100.yaml"])
    with pytest.raises(ApiError, match="no such file"):
        load_documents([tmp_path / "nope.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    (doc,) = check_documents([broken])
    assert "not valid YAML" in str(doc.errors[0])


def test_foreign_documents_are_skipped() -> None:
    docs = check_documents([REPO / "examples" / "multi-model-h100.yaml"])
    assert {d.kind for d in docs} == {"GPUPool", "ModelService"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubeplex.cli", *args],
                          capture_output=True, text=True, check=False, cwd=REPO)


def test_cli_validate_examples_succeeds() -> None:
    result = run_cli("validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 invalid" in result.stdout


@pytest.mark.parametrize("path", BAD[:3] + BAD[-3:], ids=lambda p: p.name)
def test_cli_validate_bad_spec_exits_nonzero_naming_the_field(path: Path) -> None:
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert expected_field(path) in result.stdout


def test_cli_crds_prints_all_three() -> None:
    result = run_cli("crds")
    assert result.returncode == 0
    kinds = {d["spec"]["names"]["kind"] for d in yaml.safe_load_all(result.stdout) if d}
    assert kinds == {"ModelService", "GPUPool", "ServingGroup"}


def test_cli_reports_library_errors_without_traceback(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
