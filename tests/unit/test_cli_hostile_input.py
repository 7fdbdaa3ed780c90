"""Every command on binary, deep, huge, NaN/inf and out-of-range input: a non-zero exit with
one line naming the problem, within seconds, never a traceback or a hang (issue 15)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubeplex.cli import main

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
#: What "within seconds" means here (generous for a loaded 2-core machine).
WITHIN_S = 20.0
SIMULATE = ["simulate", "autoscale", "--model", "llama-3.1-8b", "--gpu", "H100-80GB",
            "--slo-ttft", "1", "--policy", "kubeplex"]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *named: str) -> str:
    """Run ``kubeplex argv`` in process; assert the one-line refusal naming ``named``."""
    started = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert elapsed < WITHIN_S
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for word in named:
        assert word in err, err
    return err


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 8)
    flow = tmp_path / "flow-deep.yaml"
    flow.write_text("spec: " + "[" * 100_000)
    block = tmp_path / "block-deep.yaml"
    block.write_text("".join("  " * i + "x:\n" for i in range(2000)))
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb.write_text("\n".join(lines) + "\n")
    huge = tmp_path / "huge.yaml"
    huge.write_text("a: " + "x" * (17 * 1024 * 1024))
    deployment = tmp_path / "deployment.yaml"
    deployment.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
                          "spec: {}\n")
    far = tmp_path / "far.csv"
    far.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,10\n1e12,10,10\n")
    overflow = tmp_path / "overflow.csv"
    overflow.write_text("arrival_s,prompt_tokens,output_tokens\n0,1e400,10\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    return {"binary": binary, "flow": flow, "block": block, "bomb": bomb, "huge": huge,
            "deployment": deployment, "far": far, "overflow": overflow, "file": a_file}


@pytest.mark.parametrize("command", ["plan", "up"])
@pytest.mark.parametrize(("kind", "problem"), [
    ("binary", "not UTF-8 text"), ("flow", "nested deeper than 64 levels"),
    ("block", "nested deeper than 64 levels"), ("bomb", "expand to more than"),
    ("huge", "larger than"),
])
def test_unreadable_yaml_is_refused_in_one_line(files: dict[str, Path], command: str,
                                                kind: str, problem: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _refused([command, str(files[kind])], capsys, str(files[kind]), problem)


@pytest.mark.parametrize(("kind", "problem"), [
    ("binary", "not UTF-8 text"), ("flow", "nested deeper"), ("bomb", "expand to more than"),
    ("huge", "larger than"),
])
def test_validate_reports_an_unreadable_file_as_invalid(files: dict[str, Path], kind: str,
                                                        problem: str,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    started = time.monotonic()
    assert main(["validate", str(files[kind])]) == 1
    assert time.monotonic() - started < WITHIN_S
    out = capsys.readouterr()
    assert problem in out.out and "Traceback" not in out.out + out.err


def test_a_deployment_is_named_not_called_empty(files: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["validate", str(files["deployment"])], capsys, "apps/v1 Deployment",
             "ModelService, GPUPool and ServingGroup")


@pytest.mark.parametrize(("kind", "problem"), [
    ("binary", "not UTF-8 text"), ("far", "past the longest trace"),
    ("overflow", "integer prompt_tokens"),
])
def test_bad_traces_are_refused(files: dict[str, Path], kind: str, problem: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _refused([*SIMULATE, "--trace", str(files[kind])], capsys, problem)


def test_up_with_a_file_as_workdir(files: dict[str, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["up", str(REPO / "examples" / "local"), "--workdir", str(files["file"])], capsys,
             "--workdir", "not a directory")


@pytest.mark.parametrize(("argv", "flag"), [
    (["load", "--rate", "nan", "--duration", "1"], "--rate"),
    (["load", "--rate", "inf", "--duration", "1"], "--rate"),
    (["load", "--rate", "1", "--duration", "inf"], "--duration"),
    (["load", "--rate", "1", "--duration", "1", "--max-tokens", "0"], "--max-tokens"),
    (["up", "x", "--tick", "nan"], "--tick"), (["up", "x", "--gateway-port", "0"],
                                                "--gateway-port"),
    (["up", "x", "--migrate-after", "-1"], "--migrate-after"),
    (["up", "x", "--cold-start", "1e400"], "--cold-start"),
    (["simulate", "trace", "--pattern", "gamma", "--duration-s", "nan"], "--duration-s"),
    (["simulate", "trace", "--pattern", "gamma", "--rate", "1e9"], "--rate"),
    (["simulate", "trace", "--pattern", "gamma", "--seed", "-1"], "--seed"),
    ([*SIMULATE, "--trace", "t.csv", "--cold-start-s", "inf"], "--cold-start-s"),
    (["bench", "placement", "--gpus", "100000"], "--gpus"),
    (["bench", "placement", "--cv", "nan"], "--cv"),
    (["plan", "x", "--nodes", "0"], "--nodes"),
])
def test_numbers_out_of_range_are_refused_naming_the_flag(argv: list[str], flag: str,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    _refused(argv, capsys, f"argument {flag}")


def test_huge_workloads_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["bench", "placement", "--rate", "10000", "--duration", "86400"], capsys,
             "requests")
    _refused(["simulate", "trace", "--pattern", "gamma", "--rate", "10000",
              "--duration-s", "604800"], capsys, "more than the 10000000")


def test_paths_the_system_refuses_are_one_line(files: dict[str, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["simulate", "trace", "--pattern", "gamma", "--duration-s", "10", "--out",
              str(files["file"] / "trace.csv")], capsys, "a-file")


@pytest.mark.parametrize("kubeconfig", ["missing", "unreachable"])
def test_the_operator_without_a_cluster_exits(tmp_path: Path, kubeconfig: str) -> None:
    config = tmp_path / "kubeconfig"
    if kubeconfig == "unreachable":  # a port nothing listens on
        config.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
            "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
            "users: [{name: u, user: {token: t}}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(HOME=str(tmp_path), KUBECONFIG=str(config))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "kubeplex.cli", "operator"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=WITHIN_S * 2)
    assert time.monotonic() - started < WITHIN_S * 2
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert ("no Kubernetes cluster configured" if kubeconfig == "missing"
            else "does not answer") in err
