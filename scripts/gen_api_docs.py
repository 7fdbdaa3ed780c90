"""Render docs/api.md from the CRDs (the single source). tests/unit/test_docs.py checks it.

Usage: python scripts/gen_api_docs.py > docs/api.md
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from kubeplex.api import crd_manifests, schema_for

HEADER = """# API reference (kubeplex.io/v1alpha1)

Generated from `crds/` by `python scripts/gen_api_docs.py > docs/api.md`; do not edit by hand.
Rules marked CEL are `x-kubernetes-validations` the API server enforces (and
`kubeplex validate` evaluates offline; rules on `oldSelf` need the previous object).
"""


def _type(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = schema.get("type", "object")
    if kind == "array":
        return f"[]{_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map[string]{_type(schema['additionalProperties'])}"
    return str(kind)


def _limits(schema: dict[str, Any]) -> str:
    parts = []
    if "enum" in schema:
        shown = [f"`{v}`" if v != "" else '`""`' for v in schema["enum"]]
        parts.append("one of " + ", ".join(shown))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None or high is not None:
        left = "(" if schema.get("exclusiveMinimum") else "["
        right = ")" if schema.get("exclusiveMaximum") else "]"
        parts.append(f"{left}{'' if low is None else low}, {'' if high is None else high}{right}")
    if "default" in schema:
        parts.append(f"default `{schema['default']}`")
    for rule in schema.get("x-kubernetes-validations", []):
        parts.append(f"CEL: {rule['message'].strip()}")
    return "; ".join(parts)


def _rows(schema: dict[str, Any], path: str, required: set[str]) -> Iterator[str]:
    for name, sub in schema.get("properties", {}).items():
        field = f"{path}.{name}" if path else name
        text = " ".join(str(sub.get("description", "")).split())
        need = " (required)" if name in required else ""
        yield f"| `{field}`{need} | {_type(sub)} | {text} | {_limits(sub)} |"
        inner = sub.get("items", sub) if sub.get("type") == "array" else sub
        suffix = "[]" if sub.get("type") == "array" else ""
        yield from _rows(inner, field + suffix, set(inner.get("required", [])))


def render() -> str:
    out = [HEADER]
    for kind, crd in crd_manifests().items():
        names = crd["spec"]["names"]
        schema = schema_for(kind)
        out.append(f"## {kind}\n")
        out.append(" ".join(str(schema.get("description", "")).split()) + "\n")
        short = ", ".join(names.get("shortNames", []))
        out.append(f"Scope: {crd['spec']['scope']}. Plural `{names['plural']}`"
                   + (f", short name `{short}`" if short else "") + ".\n")
        for part in ("spec", "status"):
            sub = schema["properties"][part]
            out.append(f"### {kind} {part}\n")
            out.append("| field | type | meaning | limits and rules |")
            out.append("|---|---|---|---|")
            out.extend(_rows(sub, part, set(sub.get("required", []))))
            for rule in sub.get("x-kubernetes-validations", []):
                out.append(f"| `{part}` | | | CEL: {rule['message'].strip()} |")
            if part == "spec":  # rules on the whole object (they see metadata.name)
                for rule in schema.get("x-kubernetes-validations", []):
                    where = rule.get("fieldPath", "").lstrip(".") or "(object)"
                    message = " ".join(rule["message"].split())
                    out.append(f"| `{where}` | | | CEL (on the object): {message} |")
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
