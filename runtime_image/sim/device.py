"""The simulated GPU group that co-located sim engines share (time-slicing, step by step).

On a real GPU, two models hosted by one group share its compute: statistical multiplexing
(AlpaServe) pays because bursts rarely overlap, but when they do, the models slow each other
down. Sim engines model this with a :class:`SharedDevice`: a small file in the runtime's
directory that every sim engine of the group opens (``--shared-device FILE``, passed by the
supervisor). It holds, per device slot, the time (``CLOCK_MONOTONIC`` seconds, the event
loops' clock in every process) until which the device is booked.

Each engine step (a prefill and/or one decode iteration of a batch) books its slot: under an
exclusive ``flock`` of the file it reads when the slot is free, starts the step at
``max(wanted start, free)``, and books the slot until the step ends. So:

* one busy model alone is not slowed: its next step starts where its last one ended, which is
  when the slot became free anyway; an idle partner books nothing;
* two busy models interleave their steps in booking order (first come, first served), and each
  sees its step time stretched by the other's steps, as time-slicing on one GPU does.

Cost: one ``flock``, one 8-byte read and one write, and the unlock per step (no per-token IPC;
the lock is held for microseconds, never while a step "runs"). A killed engine leaves at most
one booking behind, which simply expires.

Slots: lane *i* of an engine (pipeline parallelism runs ``pp`` micro-batch lanes) books slot
*i*, so a model's own lanes never serialize each other, and co-located models (placement gives
them the same ``tp x pp``) share the ``pp`` slots lane for lane.

Limits of the model: interleaving is per whole step (a GPU time-slices in much finer
slices); no MPS-style overlap of two models' kernels (two memory-bound decode batches could
partly overlap on a real GPU, so two busy decoders are slowed a bit more here than there); no
context-switch cost; a long prefill is not chunked to make room for the partner's decodes; and
memory bandwidth, caches and the KV cache do not interfere beyond that (each engine's KV
capacity already follows its memory share).
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable

__all__ = ["SharedDevice"]

_SLOT = struct.Struct("<d")


class SharedDevice:
    """A booking file shared by the sim engines of one group (see the module doc)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def book(self, slot: int, wanted: float, step: Callable[[float], float | None]) -> None:
        """Book ``slot`` for one step: ``step(start)`` runs the step's scheduling at ``start``
        (``wanted``, or later when the slot is booked until then) and returns when it ends
        (None: nothing to run, nothing booked). Times are ``CLOCK_MONOTONIC`` seconds."""
        offset = slot * _SLOT.size
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fd, _SLOT.size, offset)
            free = _SLOT.unpack(raw)[0] if len(raw) == _SLOT.size else 0.0
            ends = step(max(wanted, free))
            if ends is not None:
                os.pwrite(self._fd, _SLOT.pack(ends), offset)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)
