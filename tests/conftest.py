"""Shared pytest configuration. Area-specific fixtures live beside their tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from promstack import PromStack, missing_binaries

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def promstack(tmp_path: Path) -> Iterator[Callable[..., PromStack]]:
    """Factory for a started real Prometheus + Alertmanager (tests/promstack.py); every stack
    it made is stopped after the test. Skips, naming them, when the binaries are absent."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH; `make setup` installs them "
                    "(scripts/ensure-prometheus.sh)")
    stacks: list[PromStack] = []

    def make(**kwargs: Any) -> PromStack:
        stack = PromStack(tmp_path / f"promstack-{len(stacks)}", **kwargs)
        stacks.append(stack)
        stack.start()
        return stack

    yield make
    for stack in stacks:
        stack.stop()
