"""The test control plane's ports: each component gets its own (a repeated port made one
component fail to bind, or answer another's health check)."""

from __future__ import annotations

import socket

from clusterkit import cluster_lib


def test_free_ports_are_distinct_and_bindable() -> None:
    names = [f"component-{i}" for i in range(32)]
    ports = cluster_lib.free_ports(*names)
    assert list(ports) == names
    assert len(set(ports.values())) == len(names)
    for port in ports.values():
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free when handed out: nothing holds it
