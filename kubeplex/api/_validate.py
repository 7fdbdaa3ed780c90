"""Offline validation of kubeplex objects against their CRDs, the way the API server does it.

Three passes over one object, in the API server's order:

1. **Defaulting**: every ``default`` in the structural schema is applied where the field is
   absent, recursively (a defaulted ``{}`` receives its children's defaults).
2. **Schema**: types, ranges, enums, patterns, required and unknown fields (``kubectl``'s
   strict field validation refuses unknown fields, so this does too).
3. **CEL rules** (``x-kubernetes-validations``), evaluated with ``self`` bound to each node and
   values typed by the schema (a ``number`` is a CEL double even when written ``1``), with
   Kubernetes' list ``sum()``. Transition rules (those naming ``oldSelf``) need the previous
   object and are only evaluated when one is given.

Errors name the field by path:
``spec.scaling.minReplicas: minReplicas must be <= maxReplicas``.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from typing import Any, cast

import celpy
import jsonschema
from celpy import celtypes

from kubeplex.api._crds import API_VERSION, Schema, crd_manifests, schema_for
from kubeplex.api.errors import FieldError

__all__ = ["apply_defaults", "validate_object"]

#: metadata.name of namespaced and cluster objects: a DNS-1123 subdomain (Kubernetes' rule).
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_NAME = 253


def apply_defaults(value: Any, schema: Schema) -> Any:
    """Return ``value`` with the schema's defaults filled in (the input is not modified)."""
    value = copy.deepcopy(value)
    _default_in_place(value, schema)
    return value


def _default_in_place(value: Any, schema: Schema) -> None:
    if isinstance(value, dict):
        properties: dict[str, Schema] = schema.get("properties", {})
        for key, sub in properties.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            if key in properties:
                _default_in_place(item, properties[key])
            elif isinstance(schema.get("additionalProperties"), dict):
                _default_in_place(item, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default_in_place(item, schema["items"])


# ---- schema pass ----------------------------------------------------------------------------

def _to_json_schema(schema: Schema) -> Schema:
    """Translate an OpenAPI v3.0 structural schema into JSON Schema (draft 7)."""
    out: Schema = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("default", "description", "nullable"):
            continue
        if key == "properties":
            out[key] = {k: _to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_to_json_schema(v) for v in value]
        else:
            out[key] = value
    # OpenAPI 3.0 spells exclusive bounds as booleans beside minimum/maximum.
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(bound) is True:
            out[bound] = out.pop(limit)
        elif out.get(bound) is False:
            del out[bound]
    if schema.get("type") == "object" and "properties" in schema and not (
        "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    return out


@functools.cache
def _validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_to_json_schema(schema_for(kind)))


def _path(parts: Iterator[Any] | list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _schema_errors(kind: str, obj: dict[str, Any]) -> list[FieldError]:
    errors = []
    for err in sorted(_validator(kind).iter_errors(obj), key=lambda e: list(e.absolute_path)):
        parts = list(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            errors += [FieldError(_path([*parts, k]), "unknown field") for k in extra]
            continue
        if err.validator == "required":
            missing = re.match(r"'([^']+)'", err.message)
            name = missing.group(1) if missing else "?"
            errors.append(FieldError(_path([*parts, name]), "required field is missing"))
            continue
        message = err.message
        if err.validator == "pattern":
            hint = _description(kind, parts) or f"pattern {err.validator_value}"
            message = f"{err.instance!r} has the wrong format ({hint})"
        elif err.validator == "type":
            message = f"must be of type {err.validator_value}, got {err.instance!r}"
        errors.append(FieldError(_path(parts), message))
    return errors


def _description(kind: str, parts: list[Any]) -> str | None:
    node: Schema = schema_for(kind)
    for part in parts:
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part, {})
    text = node.get("description")
    return " ".join(text.split()).rstrip(".") if isinstance(text, str) else None


# ---- CEL pass -------------------------------------------------------------------------------

def _cel_sum(values: celtypes.ListType) -> Any:
    """Kubernetes' ``<list>.sum()`` (its CEL list library); cel-python lacks it."""
    items: list[Any] = list(values)
    if not items:
        return celtypes.IntType(0)
    total: Any = items[0]
    for item in items[1:]:
        total = total + item
    return total


_CEL_FUNCTIONS = {"sum": _cel_sum}
_CEL_ENV = celpy.Environment()


@functools.cache
def _program(rule: str) -> Any:
    return _CEL_ENV.program(_CEL_ENV.compile(rule), functions=_CEL_FUNCTIONS)


def _to_cel(value: Any, schema: Schema) -> Any:
    """A JSON value as the CEL value Kubernetes would bind for this schema."""
    kind = schema.get("type")
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if kind == "number" and isinstance(value, int | float):
        return celtypes.DoubleType(float(value))
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, list):
        item_schema = schema.get("items", {})
        return celtypes.ListType([_to_cel(v, item_schema) for v in value])
    if isinstance(value, dict):
        properties: dict[str, Schema] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        fallback: Schema = extra if isinstance(extra, dict) else {}
        return celtypes.MapType({
            celtypes.StringType(k): _to_cel(v, properties.get(k, fallback))
            for k, v in value.items()
        })
    return value


def _walk(value: Any, schema: Schema, path: list[Any]) -> Iterator[tuple[Any, Schema, list[Any]]]:
    yield value, schema, path
    if isinstance(value, dict):
        properties: dict[str, Schema] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from _walk(item, sub, [*path, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _walk(item, schema["items"], [*path, index])


def _cel_errors(obj: dict[str, Any], schema: Schema, old: dict[str, Any] | None
                ) -> list[FieldError]:
    errors = []
    for value, node, path in _walk(obj, schema, []):
        rules = node.get("x-kubernetes-validations", [])
        if not rules:
            continue
        old_value = _lookup(old, path) if old is not None else _MISSING
        for rule in rules:
            expression: str = rule["rule"]
            transition = "oldSelf" in expression
            if transition and old_value is _MISSING:
                continue
            activation = {"self": _to_cel(value, node)}
            if transition:
                activation["oldSelf"] = _to_cel(old_value, node)
            # fieldPath is relative (".minReplicas"); a rule on the object root has no prefix.
            field_path = (_path(path) + rule.get("fieldPath", "")).lstrip(".")
            try:
                ok = _program(expression).evaluate(activation)
            except Exception as exc:  # celpy raises several unrelated types
                errors.append(FieldError(field_path, f"rule {expression!r} failed: {exc}"))
                continue
            if isinstance(ok, Exception) or not bool(ok):
                errors.append(FieldError(field_path, rule.get("message")
                                         or f"failed rule: {expression}"))
    return errors


_MISSING: Any = object()


def _lookup(obj: Any, path: list[Any]) -> Any:
    for part in path:
        try:
            obj = obj[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return obj


# ---- entry point ----------------------------------------------------------------------------

def validate_object(obj: Any, old: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Any], list[FieldError]]:
    """Default and validate one object; returns the defaulted object and every error found."""
    if not isinstance(obj, dict):
        found = type(obj).__name__
        return {}, [FieldError("", f"expected a mapping (a Kubernetes object), got {found}")]
    kinds = crd_manifests()
    kind = obj.get("kind")
    if kind not in kinds:
        known = ", ".join(sorted(kinds))
        return obj, [FieldError("kind", f"unknown kind {kind!r}; kubeplex defines {known}")]
    if obj.get("apiVersion") != API_VERSION:
        got = obj.get("apiVersion")
        return obj, [FieldError("apiVersion", f"must be {API_VERSION}, got {got!r}")]
    schema = schema_for(kind)
    defaulted = cast(dict[str, Any], apply_defaults(obj, schema))
    errors = _metadata_errors(defaulted, kinds[kind]["spec"]["scope"] == "Namespaced")
    errors += _schema_errors(kind, defaulted)
    errors += _cel_errors(defaulted, schema, old)
    return defaulted, errors


def _metadata_errors(obj: dict[str, Any], namespaced: bool) -> list[FieldError]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [FieldError("metadata", "required field is missing")]
    errors = []
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.append(FieldError("metadata.name", "required field is missing"))
    elif len(name) > _MAX_NAME or not _DNS_SUBDOMAIN.match(name):
        errors.append(FieldError("metadata.name", f"{name!r} must be a lowercase RFC 1123 "
                                 "subdomain (a-z, 0-9, '-', '.'; at most 253 characters)"))
    if not namespaced and meta.get("namespace"):
        errors.append(FieldError("metadata.namespace",
                                 "must be empty: this kind is cluster-scoped"))
    return errors
