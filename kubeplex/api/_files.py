"""Reading YAML files a user hands kubeplex, with bounds (hostile or mistaken input).

:func:`read_yaml` returns a file's documents or raises :class:`~kubeplex.api.errors.FileError`
with one line naming the file and the problem: not there, not a file, larger than
:data:`MAX_FILE_BYTES`, not UTF-8 text (a binary file), not YAML, nested deeper than
:data:`MAX_DEPTH`, or with aliases that expand to more than :data:`MAX_EXPANDED_VALUES`
values (a "billion laughs" file: each alias stands for its whole anchor wherever it is used,
so validating it would walk billions of values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubeplex.api.errors import FileError

__all__ = ["MAX_DEPTH", "MAX_EXPANDED_VALUES", "MAX_FILE_BYTES", "read_yaml"]

#: Largest YAML file read (bytes). Kubernetes keeps a whole object under 1.5 MiB (etcd's
#: request limit); a file of many objects gets ten times that.
MAX_FILE_BYTES = 16 * 1024**2
#: Deepest nesting of mappings and lists accepted. A ModelService is 5 levels deep; engine
#: arguments and tolerations add a few.
MAX_DEPTH = 64
#: Most values a file's aliases may expand to: a million is far past any manifest, and
#: walking it takes well under a second.
MAX_EXPANDED_VALUES = 1_000_000


class _TooDeep(yaml.YAMLError):
    """Nesting past MAX_DEPTH, found while composing (before the scanner, quadratic in the
    depth of flow collections, gets slow)."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than :data:`MAX_DEPTH` and counts aliases."""

    aliases = 0
    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH + 1:  # the document's top node is level 0
                raise _TooDeep()
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _expanded(value: Any, sizes: dict[int, int]) -> int:
    """How many values ``value`` stands for with every alias expanded (shared parts are
    counted once per use, computed once: linear in the file, not in the expansion)."""
    if not isinstance(value, dict | list):
        return 1
    known = sizes.get(id(value))
    if known is None:
        children = value.values() if isinstance(value, dict) else value
        known = sizes[id(value)] = 1 + sum(_expanded(child, sizes) for child in children)
    return known


def read_yaml(path: Path) -> list[Any]:
    """The documents of a YAML (or JSON) file, empty ones dropped; FileError if unreadable."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise FileError(f"{path}: not a file")
        if size > MAX_FILE_BYTES:
            raise FileError(f"{path}: {size} bytes is larger than the {MAX_FILE_BYTES} bytes "
                            "kubeplex reads from one file; split it")
        data = path.read_bytes()
    except OSError as err:
        raise FileError(f"{path}: cannot read it ({err.strerror or err})") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileError(f"{path}: not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x});"
                        " is it a binary file?") from err
    if "\x00" in text:
        raise FileError(f"{path}: contains NUL bytes; is it a binary file?")
    loader = _BoundedLoader(text)
    try:
        docs = []
        while loader.check_data():  # type: ignore[no-untyped-call]
            doc = loader.get_data()
            if doc is not None:
                docs.append(doc)
    except (_TooDeep, RecursionError) as err:
        raise FileError(f"{path}: nested deeper than {MAX_DEPTH} levels") from err
    except yaml.YAMLError as err:
        raise FileError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    finally:
        loader.dispose()
    if loader.aliases:
        sizes: dict[int, int] = {}
        if sum(_expanded(doc, sizes) for doc in docs) > MAX_EXPANDED_VALUES:
            raise FileError(f"{path}: its aliases (*name) expand to more than "
                            f"{MAX_EXPANDED_VALUES} values; write the values out instead")
    return docs
