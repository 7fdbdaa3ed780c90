"""kubeplex.api: the custom resources as typed Python objects, and offline validation.

``crds/*.yaml`` are the single source of truth. This package loads them, validates documents
the way the API server would (defaults, schema, CEL rules; :mod:`kubeplex.api._validate`) and
parses valid ones into frozen dataclasses (:mod:`kubeplex.api._types`)::

    from kubeplex.api import load_documents
    services, pools = load_documents(["examples/local-cpu.yaml"]).split()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeplex.api._crds import API_VERSION, GROUP, VERSION, crd_manifests, crd_text, schema_for
from kubeplex.api._files import read_yaml
from kubeplex.api._types import (
    SLO,
    Adapter,
    GPUPool,
    GPUPoolSpec,
    GPUSource,
    ModelService,
    ModelServiceSpec,
    ModelSource,
    ObjectMeta,
    Parallelism,
    Scaling,
    ServingGroup,
    ServingGroupModel,
    ServingGroupSpec,
    Toleration,
    WarmPoolPolicy,
    Workload,
    parse_spec,
)
from kubeplex.api._validate import apply_defaults, validate_object
from kubeplex.api.errors import ApiError, FieldError, FileError, ValidationError

__all__ = [
    "API_VERSION",
    "GROUP",
    "SLO",
    "VERSION",
    "Adapter",
    "ApiError",
    "CheckedDocument",
    "Documents",
    "FieldError",
    "FileError",
    "GPUPool",
    "GPUPoolSpec",
    "GPUSource",
    "ModelService",
    "ModelServiceSpec",
    "ModelSource",
    "ObjectMeta",
    "Parallelism",
    "Resource",
    "Scaling",
    "ServingGroup",
    "ServingGroupModel",
    "ServingGroupSpec",
    "Toleration",
    "ValidationError",
    "WarmPoolPolicy",
    "Workload",
    "apply_defaults",
    "check_documents",
    "crd_manifests",
    "crd_text",
    "foreign_kinds",
    "from_dict",
    "load_documents",
    "read_yaml",
    "schema_for",
    "validate_object",
]

Resource = ModelService | GPUPool | ServingGroup

_SPEC_TYPES: dict[str, tuple[type[Any], type[Any]]] = {
    "ModelService": (ModelService, ModelServiceSpec),
    "GPUPool": (GPUPool, GPUPoolSpec),
    "ServingGroup": (ServingGroup, ServingGroupSpec),
}


def from_dict(obj: Any, where: str = "object") -> Resource:
    """Validate, default and parse one object; :class:`ValidationError` lists every problem."""
    defaulted, errors = validate_object(obj)
    if errors:
        raise ValidationError(where, errors)
    return _parse(defaulted)


def _parse(defaulted: dict[str, Any]) -> Resource:
    outer, spec_type = _SPEC_TYPES[defaulted["kind"]]
    meta = dict(defaulted["metadata"])
    if defaulted["kind"] != "GPUPool":
        meta.setdefault("namespace", "default")
    resource: Resource = outer(ObjectMeta.from_dict(meta), parse_spec(spec_type, defaulted["spec"]))
    return resource


@dataclass(frozen=True)
class CheckedDocument:
    """One YAML document of a file and what validation found."""

    source: str
    index: int
    kind: str
    name: str
    errors: tuple[FieldError, ...]
    resource: Resource | None

    @property
    def where(self) -> str:
        return f"{self.source}[{self.index}] {self.kind}/{self.name}"


@dataclass(frozen=True)
class Documents:
    """The resources of a set of files, valid ones only."""

    resources: tuple[Resource, ...] = field(default_factory=tuple)

    def split(self) -> tuple[list[ModelService], list[GPUPool]]:
        services = [r for r in self.resources if isinstance(r, ModelService)]
        pools = [r for r in self.resources if isinstance(r, GPUPool)]
        return services, pools


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        elif path.exists():
            files.append(path)
        else:
            raise ApiError(f"{path}: no such file or directory")
    return files


def _foreign(doc: Any) -> bool:
    """Documents of other API groups (a Namespace beside the ModelServices) are not ours."""
    if not isinstance(doc, dict) or not isinstance(doc.get("apiVersion"), str):
        return False
    return not doc["apiVersion"].startswith(GROUP + "/")


def check_documents(paths: Sequence[str | Path]) -> list[CheckedDocument]:
    """Validate every kubeplex.io document of every file (directories: their YAML/JSON files).

    Documents of other API groups are skipped; everything else is checked and reported. A
    file that cannot be read as YAML (binary, too large, too deep, invalid) is reported as one
    invalid document naming the problem.
    """
    return _check(paths, report_files=True)


def _check(paths: Sequence[str | Path], report_files: bool) -> list[CheckedDocument]:
    checked = []
    for path in _expand(paths):
        try:
            docs = read_yaml(path)
        except FileError as exc:
            if not report_files:
                raise
            problem = str(exc).removeprefix(f"{path}: ")
            checked.append(CheckedDocument(str(path), 0, "?", "?", (FieldError("", problem),),
                                           None))
            continue
        for index, doc in enumerate(docs):
            if _foreign(doc):
                continue
            kind = str(doc.get("kind", "?")) if isinstance(doc, dict) else "?"
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            name = str(meta.get("name", "?")) if isinstance(meta, dict) else "?"
            defaulted, errors = validate_object(doc)
            resource = None if errors else _parse(defaulted)
            checked.append(CheckedDocument(str(path), index, kind, name, tuple(errors), resource))
    return checked


def foreign_kinds(paths: Sequence[str | Path]) -> list[str]:
    """``apiVersion kind`` of the documents :func:`check_documents` skipped as not kubeplex's
    (to say what a file holds instead, e.g. ``apps/v1 Deployment``)."""
    found = []
    for path in _expand(paths):
        try:
            docs = read_yaml(path)
        except FileError:
            continue
        found += [f"{doc['apiVersion']} {doc.get('kind', '?')}" for doc in docs if _foreign(doc)]
    return found


def load_documents(paths: Sequence[str | Path]) -> Documents:
    """Load and validate files; :class:`ValidationError` on the first invalid document."""
    resources = []
    for doc in _check(paths, report_files=False):
        if doc.errors:
            raise ValidationError(doc.where, list(doc.errors))
        if doc.resource is not None:
            resources.append(doc.resource)
    return Documents(tuple(resources))
