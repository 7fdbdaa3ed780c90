"""The CRDs are the contract: the Python types mirror them and the schemas are complete."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

import pytest

from kubeplex.api import GPUPoolSpec, ModelServiceSpec, ServingGroupSpec, crd_manifests, schema_for
from kubeplex.api._types import json_key

SPECS = {"ModelService": ModelServiceSpec, "GPUPool": GPUPoolSpec, "ServingGroup": ServingGroupSpec}


def dataclass_tree(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    tree: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        inner = args[0]
        if typing.get_origin(inner) is tuple:
            inner = typing.get_args(inner)[0]
        tree[json_key(f)] = dataclass_tree(inner) if dataclasses.is_dataclass(inner) else None
    return tree


def schema_tree(schema: dict[str, Any]) -> dict[str, Any] | None:
    if schema.get("type") == "array":
        return schema_tree(schema["items"])
    props = schema.get("properties")
    if not props:
        return None
    return {k: schema_tree(v) for k, v in props.items()}


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_python_types_match_the_crd(kind: str) -> None:
    assert dataclass_tree(SPECS[kind]) == schema_tree(schema_for(kind)["properties"]["spec"])


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_every_spec_field_is_described(kind: str) -> None:
    spec = schema_for(kind)["properties"]["spec"]
    missing = [p for p, s in walk(spec, "spec") if "description" not in s
               and not p.endswith("[]") and not p.endswith("{}")]
    assert not missing, f"fields without a description: {missing}"


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_lists_and_strings_are_bounded_for_cel_cost(kind: str) -> None:
    # The API server estimates the cost of CEL rules from maxItems/maxLength; unbounded lists
    # and strings under a rule make it reject the CRD.
    spec = schema_for(kind)["properties"]["spec"]
    unbounded = [p for p, s in walk(spec, "spec")
                 if (s.get("type") == "array" and "maxItems" not in s)
                 or (s.get("type") == "string" and not ({"maxLength", "enum"} & set(s)))]
    assert not unbounded, f"unbounded: {unbounded}"


def test_crds_declare_the_documented_names_and_subresources() -> None:
    crds = crd_manifests()
    ms = crds["ModelService"]["spec"]
    assert ms["names"]["shortNames"] == ["msvc"] and "kubeplex" in ms["names"]["categories"]
    (version,) = ms["versions"]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.scaling.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Ready", "TTFT", "SLO", "Status", "Age"} <= columns
    assert crds["GPUPool"]["spec"]["scope"] == "Cluster"
    assert crds["ServingGroup"]["spec"]["scope"] == "Namespaced"
    for crd in crds.values():
        assert "status" in crd["spec"]["versions"][0]["subresources"]
