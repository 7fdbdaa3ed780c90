"""The API library's exception tree."""

from __future__ import annotations

from dataclasses import dataclass

from kubeplex.errors import KubeplexError

__all__ = ["ApiError", "FieldError", "FileError", "ValidationError"]


class ApiError(KubeplexError):
    """Base class of every error :mod:`kubeplex.api` raises on purpose."""


class FileError(ApiError):
    """A file that cannot be read as YAML (missing, binary, too large, too deep); the message
    is one line naming the file."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field, named by its path (``spec.scaling.minReplicas``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(ApiError):
    """A document that does not satisfy its CRD (schema or CEL rules)."""

    def __init__(self, where: str, errors: list[FieldError]) -> None:
        self.where = where
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{where} is invalid:\n{lines}")
