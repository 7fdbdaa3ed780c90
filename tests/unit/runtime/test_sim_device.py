"""The sim's shared device file: bookings per slot, first come first served."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kubeplex.runtime.sim.device import SharedDevice


def test_bookings_take_turns_per_slot(tmp_path: Path) -> None:
    path = str(tmp_path / "device")
    first, second = SharedDevice(path), SharedDevice(path)  # two engines of one group
    starts: list[float] = []

    def step(seconds: float | None) -> Callable[[float], float | None]:
        def run(at: float) -> float | None:
            starts.append(at)
            return None if seconds is None else at + seconds
        return run

    first.book(0, 10.0, step(1.0))  # free: starts when wanted
    second.book(0, 10.5, step(1.0))  # booked until 11: waits
    first.book(0, 11.0, step(0.5))  # its next step queues behind the partner's
    second.book(1, 10.5, step(1.0))  # another slot (pipeline lane) is free
    first.book(0, 20.0, step(None))  # nothing to run: books nothing ...
    second.book(0, 13.0, step(1.0))  # ... so the slot is free again from 12.5
    assert starts == [10.0, 11.0, 12.0, 10.5, 20.0, 13.0]
    first.close()
    second.close()
