"""Materialize the installed layout of the `kubeplex` package under a folder.

The source tree maps top-level folders into the `kubeplex` namespace (pyproject's
`package-dir`). Tools that read files instead of importing (mypy, import-linter's grimp)
need the installed shape, so `make lint` copies the Python files into `build/pkgview/kubeplex`
and points them there. Error paths then read `build/pkgview/kubeplex/placement/x.py` for
`placement/x.py`.

Usage: python scripts/package_view.py OUT_DIR
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = {".py", ".pyi", ".typed"}


def main(out: Path) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = config["package-dir"]
    if out.exists():
        shutil.rmtree(out)
    for package, folder in mapping.items():
        target = out.joinpath(*package.split("."))
        source = ROOT / folder
        for path in source.rglob("*"):
            if path.suffix not in SUFFIXES or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(source)
            # A nested folder that is itself mapped elsewhere is copied by its own entry.
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
