"""Generated docs stay in sync with their sources; the README keeps its two commands."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_api_reference_is_generated_from_the_crds() -> None:
    spec = importlib.util.spec_from_file_location("gen_api_docs", REPO / "scripts/gen_api_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs/api.md").read_text() == module.render(), (
        "docs/api.md is stale: python scripts/gen_api_docs.py > docs/api.md")


def test_readme_has_the_two_commands_in_one_block() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert any("make demo" in b and "make test" in b for b in blocks)
    ci = (REPO / ".ci/run").read_text()
    assert "make test" in ci


def test_readme_links_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if "://" not in target:
            assert (REPO / target).exists(), f"README links to missing {target}"
