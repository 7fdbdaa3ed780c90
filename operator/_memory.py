"""Keep the operator's resident memory close to its live Python heap (glibc; a no-op elsewhere).

Measured with ``benchmarks/operator/scale.py --tracemalloc`` (docs/benchmarks.md, Operator):
at 200 ModelServices the live Python heap is about 85 MiB (half of it imported code), yet the
process held 250-380 MiB. The rest is memory freed but kept by the C allocator: the operator
parses every watch event and API answer (JSON) on many threads (kopf's workers, the pool cycles,
the writer pool), glibc gives each thread its own malloc arena (up to 8 per core) and returns
an arena's free pages to the system only from its top. Two knobs fix most of it:

* :func:`limit_arenas` (``mallopt(M_ARENA_MAX, n)``) at start-up, before the threads exist:
  threads share a few arenas, so freed blocks are reused instead of stranded (what
  ``MALLOC_ARENA_MAX`` does; set here because the operator cannot set its own environment);
* :func:`trim` (``malloc_trim(0)``) after each pool cycle: gives free pages back from inside
  the arenas too (glibc >= 2.8 releases whole free pages anywhere in a heap). It costs a walk
  over the free lists (well under a millisecond at these sizes), once per cycle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform

__all__ = ["ARENAS", "limit_arenas", "trim"]

log = logging.getLogger("kubeplex.operator")

#: Malloc arenas the operator's threads share (glibc's default: 8 per core).
ARENAS = 2
#: ``M_ARENA_MAX`` of glibc's <malloc.h>.
_M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before starting threads); False where not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_ARENA_MAX, arenas))
    if not ok:
        log.warning("mallopt(M_ARENA_MAX, %d) failed; memory may grow with threads", arenas)
    return ok


def trim() -> bool:
    """Return free heap pages to the system; True when glibc released some."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
