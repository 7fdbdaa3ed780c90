"""``KUBEPLEX_ENDPOINT_GRACE_SECONDS``: how long a scale-down waits for the EndpointSlices to
drop a pod before the runtime drains it (two-phase scale-down, ``_executor``)."""

from __future__ import annotations

import pytest

from kubeplex.operator._settings import Settings
from kubeplex.operator.errors import ConfigError


def test_the_grace_defaults_to_two_seconds_and_refuses_negative_values() -> None:
    assert Settings.from_env({}).endpoint_grace_s == 2.0
    assert Settings.from_env({"KUBEPLEX_ENDPOINT_GRACE_SECONDS": "0.5"}).endpoint_grace_s == 0.5
    with pytest.raises(ConfigError, match="KUBEPLEX_ENDPOINT_GRACE_SECONDS"):
        Settings.from_env({"KUBEPLEX_ENDPOINT_GRACE_SECONDS": "-1"})
    with pytest.raises(ConfigError, match="KUBEPLEX_ENDPOINT_GRACE_SECONDS"):
        Settings.from_env({"KUBEPLEX_ENDPOINT_GRACE_SECONDS": "soon"})
