"""Loading the CRD manifests that ship inside the package (the API's single source of truth)."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

__all__ = ["API_VERSION", "GROUP", "VERSION", "crd_manifests", "crd_text", "schema_for"]

GROUP = "kubeplex.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Schema = dict[str, Any]


def crd_text() -> str:
    """Every CRD as one multi-document YAML stream, in a stable order."""
    files = sorted(
        (f for f in resources.files("kubeplex.crds").iterdir() if f.name.endswith(".yaml")),
        key=lambda f: f.name,
    )
    return "---\n".join(f.read_text(encoding="utf-8") for f in files)


@functools.cache
def crd_manifests() -> dict[str, dict[str, Any]]:
    """CRD manifests keyed by the kind they define."""
    docs = [d for d in yaml.safe_load_all(crd_text()) if d]
    return {d["spec"]["names"]["kind"]: d for d in docs}


def schema_for(kind: str) -> Schema:
    """The openAPIV3Schema of ``kind`` at :data:`VERSION`; KeyError for unknown kinds."""
    crd = crd_manifests()[kind]
    for version in crd["spec"]["versions"]:
        if version["name"] == VERSION:
            schema: Schema = version["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"{kind} has no version {VERSION}")
