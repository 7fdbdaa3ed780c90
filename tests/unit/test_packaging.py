"""The folder -> namespace mapping, the console scripts and the stdlib `operator` module."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed() -> None:
    listed = set(SETUPTOOLS["packages"])
    found = set(SETUPTOOLS["package-dir"])
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    missing = sorted(found - listed)
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"


@pytest.mark.parametrize(
    ("module", "folder"),
    [
        ("kubeplex.placement", "placement"),
        ("kubeplex.autoscaler", "autoscaler"),
        ("kubeplex.operator", "operator"),
        ("kubeplex.runtime", "runtime_image"),
        ("kubeplex.crds", "crds"),
    ],
)
def test_folders_map_into_the_namespace(module: str, folder: str) -> None:
    imported = importlib.import_module(module)
    locations = {Path(p).resolve() for p in imported.__path__}
    assert (REPO / folder).resolve() in locations


def test_operator_folder_is_not_an_importable_top_level_package() -> None:
    # With an __init__.py, `python -m anything` run from the repo root would import
    # ./operator instead of the standard library module and crash.
    assert not (REPO / "operator" / "__init__.py").exists()
    assert importlib.import_module("kubeplex.operator._layout").PACKAGE == "kubeplex.operator"


def test_python_dash_m_from_repo_root_keeps_the_stdlib() -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--version"], cwd=REPO,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_stdlib_operator_is_not_shadowed_from_repo_root() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.add(2, 3), operator.__file__)"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out[0] == "5"
    assert not out[1].startswith(str(REPO)), out[1]


def test_console_scripts_are_declared() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) >= {"kubeplex", "kubeplex-runtime"}
    for target in scripts.values():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func))
