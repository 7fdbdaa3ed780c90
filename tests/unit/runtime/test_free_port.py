"""``free_port`` never hands out a port twice in a row, even when the kernel offers it again
(two engines spawned together once got one port: the second one's health check reached the
first engine, and its requests were answered "model does not exist")."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from kubeplex.runtime import supervisor


class _Probe:
    """A socket whose bind(0) gets the next port of a scripted kernel."""

    offers: Iterator[int] = iter(())

    def __init__(self, *_: Any) -> None:
        self.port = 0

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def bind(self, _address: tuple[str, int]) -> None:
        self.port = next(self.offers)

    def getsockname(self) -> tuple[str, int]:
        return "127.0.0.1", self.port


def test_a_port_the_kernel_offers_again_is_not_handed_out_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "_recent_ports", type(supervisor._recent_ports)(
        maxlen=supervisor.RECENT_PORTS))
    monkeypatch.setattr(_Probe, "offers", iter([41001, 41001, 41001, 41002]))
    monkeypatch.setattr(socket, "socket", _Probe)
    assert [supervisor.free_port(), supervisor.free_port()] == [41001, 41002]


def test_a_kernel_that_offers_nothing_new_is_an_error_that_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "_recent_ports", type(supervisor._recent_ports)(
        [41001], maxlen=supervisor.RECENT_PORTS))
    monkeypatch.setattr(_Probe, "offers", iter([41001] * supervisor.PORT_ATTEMPTS))
    monkeypatch.setattr(socket, "socket", _Probe)
    with pytest.raises(OSError, match="ip_local_port_range"):
        supervisor.free_port()


def test_real_ports_are_distinct_and_bindable() -> None:
    ports = [supervisor.free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
