"""glibc's allocator, set for a process that receives one large message after another.

Every embedded frame reaches the server as fresh heap memory: grpc's read buffers,
then the bytes object grpc copies the message into.  With glibc's defaults the heap
is handed back to the kernel (trimmed) as soon as a few hundred KiB at its top are
free, so the next frame's memory is new pages again: measured here, 33-49 page
faults per 270 KB JPEG frame in the server process, ~100-150 us of its CPU per frame
(a third of the front's cost).  Keeping up to ``keep_mb`` of freed heap makes that
memory reused instead (under 3 faults per frame).  The price is resident memory: the
front keeps up to its high-water mark of in-flight messages (+15 MiB in the 1080p
JPEG benchmark), never more than it once used.

Only the server process calls this; workers read frames from shared memory and do
not churn their heap.  On a C library other than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import platform

__all__ = ["keep_freed_memory"]

log = logging.getLogger("fastext.malloc")
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_MMAP_MAX_BYTES = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit


def keep_freed_memory(keep_mb: int) -> bool:
    """Keep up to ``keep_mb`` MiB of freed heap for reuse; 0 leaves glibc's defaults.

    Two settings: allocations up to 32 MiB come from the heap (not one mmap each,
    which glibc otherwise does above a threshold it adjusts as it goes), and the heap
    is trimmed only when more than ``keep_mb`` is free at its top.  Returns whether
    they were applied.
    """
    if keep_mb <= 0:
        return False
    if platform.libc_ver()[0] != "glibc":
        log.debug("not glibc: allocator left as it is")
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    keep = min(keep_mb, 2047) << 20
    applied = bool(mallopt(_M_MMAP_THRESHOLD, min(keep, _MMAP_MAX_BYTES)))
    applied = bool(mallopt(_M_TRIM_THRESHOLD, keep)) and applied
    return applied
