"""``kubeplex bench placement`` and ``kubeplex plan`` end to end, and the spec adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeplex.api import load_documents
from kubeplex.cli import main
from kubeplex.placement.specs import demand_from_service, pool_from_resource, slo_target

SMALL = ["--gpus", "4", "--models", "4", "--rate", "8", "--duration", "40"]


def test_bench_json_has_the_issue_shape(capsys: pytest.CaptureFixture[str]) -> None:
    for policy in ("alpaserve", "sr", "clockwork"):
        assert main(["bench", "placement", *SMALL, "--policy", policy, "--seed", "0",
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert set(out) == {"policy", "attainment", "groups", "solve_seconds"}
        assert out["policy"] == policy
        assert 0.0 <= out["attainment"] <= 1.0
        assert all(set(g) == {"op", "pp", "models"} for g in out["groups"])
        assert sum(g["op"] * g["pp"] for g in out["groups"]) == 4


def test_bench_sweep_writes_table_json_and_plot(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "placement", "--gpus", "2", "--models", "2", "--rate", "4",
            "--duration", "20", "--sweep", "cv", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "SLO attainment vs coefficient of variation" in capsys.readouterr().out
    table = (tmp_path / "sweep-cv.md").read_text()
    assert table.startswith("| cv | alpaserve | clockwork | sr |")
    assert len(json.loads((tmp_path / "sweep-cv.json").read_text())["rows"]) == 7
    assert (tmp_path / "sweep-cv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--profile", "bert-9b"], "unknown profile 'bert-9b'; known: alpa-bert-1.3b"),
    (["--gpus", "0"], "argument --gpus: must be an integer >= 1"),
    (["--rate", "-3"], "argument --rate: must be a finite number >= 0"),
])
def test_bench_bad_input_is_one_error_line(args: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "placement", *args]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_plan_prints_json_for_the_local_example(repo_root: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(repo_root / "examples" / "local-cpu.yaml"), "--json"]) == 0
    [placement] = json.loads(capsys.readouterr().out)
    assert placement["pool"] == "local-cpu"
    assert placement["groups"][0]["models"][0]["name"] == "default/tiny-llama"
    assert placement["models"][0]["attainment"] >= placement["models"][0]["target"]


def test_plan_table_names_groups_slices_and_attainment(
        repo_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(repo_root / "examples" / "sim-h100.yaml")]) == 0
    out = capsys.readouterr().out
    for header in ("group", "node slice", "tp x pp", "models", "memory use", "predicted"):
        assert header in out
    assert "node 0 GPU" in out


def test_plan_without_a_pool_is_a_clear_error(tmp_path: Path, repo_root: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    text = (repo_root / "examples" / "local-cpu.yaml").read_text()
    only_service = tmp_path / "svc.yaml"
    only_service.write_text("---".join(d for d in text.split("---") if "ModelService" in d))
    assert main(["plan", str(only_service)]) == 2
    assert "no GPUPool" in capsys.readouterr().err


def test_spec_adapters_read_the_multi_model_example(repo_root: Path) -> None:
    services, pools = load_documents([repo_root / "examples" / "multi-model-h100.yaml"]).split()
    demands = {d.name: d for d in map(demand_from_service, services)}
    chat = demands["team-a/chat-8b"]
    assert (chat.model.name, chat.arrival_rate, chat.cv) == ("llama-3.1-8b", 30, 3)
    assert (chat.ttft_slo_s, chat.tpot_slo_s, chat.max_replicas) == (0.5, 0.05, 6)
    assert chat.tp is None
    assert chat.target_attainment == 0.95  # percentile 95 by default, attainment unset
    assert (chat.prompt_cv, chat.output_cv) == (1.0, 1.0)  # the planner's default spread
    pool = pool_from_resource(pools[0])
    assert (pool.nodes, pool.gpus_per_node, pool.usable_gpus) == (2, 8, 16)
    assert pool.gpu.name == "H100-80GB"


def test_spec_adapter_refuses_a_service_without_a_profile(repo_root: Path) -> None:
    import dataclasses

    from kubeplex.placement.errors import UnknownProfileError

    services, _ = load_documents([repo_root / "examples" / "sim-h100.yaml"]).split()
    service = services[0]
    no_profile = dataclasses.replace(
        service, spec=dataclasses.replace(
            service.spec, model=dataclasses.replace(service.spec.model, profile=None)))
    with pytest.raises(UnknownProfileError, match=r"spec.model.profile is not set"):
        demand_from_service(no_profile)
    fixed = dataclasses.replace(
        service, spec=dataclasses.replace(
            service.spec, parallelism=dataclasses.replace(service.spec.parallelism, tensor=2)))
    assert demand_from_service(fixed).tp == 2


@pytest.mark.parametrize(("percentile", "attainment", "target"), [
    (95, None, 0.95),    # unset attainment: the percentile's fraction
    (95, 0.99, 0.99),    # both: the stricter
    (99.9, 0.95, 0.999),
])
def test_one_rule_turns_percentile_and_attainment_into_the_planning_target(
        percentile: float, attainment: float | None, target: float) -> None:
    assert slo_target(percentile, attainment) == pytest.approx(target)


def test_spec_adapter_reads_declared_length_spreads(repo_root: Path) -> None:
    import dataclasses

    services, _ = load_documents([repo_root / "examples" / "sim-h100.yaml"]).split()
    service = services[0]
    workload = dataclasses.replace(service.spec.workload, prompt_tokens_cv=0.0,
                                   output_tokens_cv=2.5)
    declared = dataclasses.replace(service, spec=dataclasses.replace(service.spec,
                                                                     workload=workload))
    demand = demand_from_service(declared)
    assert (demand.prompt_cv, demand.output_cv) == (0.0, 2.5)


def test_spec_adapter_keys_colocation_by_namespace(repo_root: Path) -> None:
    services, _ = load_documents([repo_root / "examples" / "multi-model-h100.yaml"]).split()
    for service in services:
        assert demand_from_service(service).colocation_key == service.metadata.namespace


def _crowded_pool(tmp_path: Path, models: int) -> Path:
    docs = ["apiVersion: kubeplex.io/v1alpha1\nkind: GPUPool\nmetadata: {name: one}\n"
            "spec: {gpu: {product: H100-80GB}, gpusPerNode: 1, maxGPUs: 1}\n"]
    docs += [f"apiVersion: kubeplex.io/v1alpha1\nkind: ModelService\n"
             f"metadata: {{name: m{i}, namespace: default}}\n"
             "spec:\n  model: {uri: 'hf://meta-llama/Llama-3.1-8B', profile: llama-3.1-8b}\n"
             "  pool: one\n  slo: {ttftSeconds: 1.0}\n"
             "  workload: {requestsPerSecond: 0.2, promptTokens: 512, outputTokens: 64}\n"
             for i in range(models)]
    path = tmp_path / "crowded.yaml"
    path.write_text("---\n".join(docs))
    return path


def test_plan_fails_naming_the_models_left_without_a_replica(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _crowded_pool(tmp_path, 6)  # one H100 holds 4 of them
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pool 'one': no room for default/m") and "Traceback" not in err
    assert err.count("default/m") == 2
    assert main(["plan", str(path), "--allow-unplaced", "--json"]) == 0
    [placement] = json.loads(capsys.readouterr().out)
    assert len(placement["unplaced"]) == 2
    assert placement["held_out_samples"] == 5
    low, high = placement["attainment_range"]
    assert low <= placement["attainment"] <= high
