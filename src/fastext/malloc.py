"""glibc's allocator, set for a process that receives one large message after another.

Every embedded frame reaches the server as fresh heap memory: grpc's read buffers,
then the bytes object grpc copies the message into.  With glibc's defaults, memory
of that size is mapped for each message and handed back after it (or trimmed off a
heap as soon as a few hundred KiB are free), so the next frame faults in new pages:
33-49 page faults per 270 KB JPEG frame in the server (counted from /proc with the
front under load).  Three settings make it reused instead: messages up to 1 MiB come
from the heap, a heap keeps up to ``keep_mb`` free at its top, and at most two heaps
(arenas) serve the process's threads, so what is kept stays bounded.  Measured here
(bench/bench_e2e.py::bench_malloc_keep, embedded 1080p JPEG): front CPU per frame
-8 % to -13 % against the setting off; the front's PSS after scripts/footprint's
traffic median 95 vs 89 MiB over 4 runs each (an earlier try that kept 64 MiB in
every arena, with no arena cap, cost +40 MiB).

Only the server process and the client call this; workers read frames from shared
memory and do not churn their heap.  On a C library other than glibc it does nothing.

A process that opens a model (a worker; the server itself with ``--workers 0``) calls
:func:`release_freed_memory` after opening it and after its warm-up run: ONNX
Runtime's graph optimizer builds every transformed weight beside the original and
frees the originals, and glibc keeps the holes.  Handing them back took a worker's
PSS for the 640 bench model from +56 to +25 MiB over its runtime import
(bench/model_memory.py).
"""

from __future__ import annotations

import ctypes
import logging
import platform

__all__ = ["KEEP_MB", "keep_freed_memory", "release_freed_memory"]

log = logging.getLogger("fastext.malloc")
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_HEAP_UP_TO = 1 << 20  # every JPEG frame, RAW RGB24 up to ~590x590
_ARENAS = 2
KEEP_MB = 8  # the default of --malloc-keep-mb


def keep_freed_memory(keep_mb: int) -> bool:
    """Reuse freed heap for the next message; 0 leaves glibc's defaults.

    Call before the process starts threads (grpc's): the arena cap applies to arenas
    created afterwards.  Returns whether the settings were applied.
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
    settings = (
        (_M_ARENA_MAX, _ARENAS),
        (_M_MMAP_THRESHOLD, _HEAP_UP_TO),
        (_M_TRIM_THRESHOLD, min(keep_mb, 2047) << 20),
    )
    return all([bool(mallopt(option, value)) for option, value in settings])


def release_freed_memory() -> bool:
    """Hand the free pages of every heap back to the system (``malloc_trim(0)``).

    For a one-off burst of allocations that will not come again, such as opening a
    model; milliseconds.  Returns whether it ran and released something.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
