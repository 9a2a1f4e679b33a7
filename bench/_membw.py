"""This machine's single-core read bandwidth and the cold read of one frame, measured
in the benchmark's own run so that a worker's CPU per frame has its yardstick beside it.

A *cold* read is of bytes last touched long enough ago that they are out of every
cache: the buffers below are many times the last-level cache, and a region is read
again only after the whole rest of its buffer.  Two kinds of memory are read:

- ``anon``: a numpy array (private anonymous memory; numpy asks for transparent huge
  pages for large arrays, so it may be mapped with 2 MiB pages);
- ``shm``: a ``/dev/shm`` file mapped shared, as a worker maps a client's file
  (tmpfs, 4 KiB pages unless the system's ``shmem_enabled`` says otherwise).

The reader is a numba loop summing 64-bit words (vectorized by LLVM): it does
nothing but load, so its time is the memory's.
"""

from __future__ import annotations

import mmap
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["ColdRead", "ColdReader", "sum_words"]


@njit(nogil=True, cache=False, boundscheck=False)
def sum_words(words):  # type: ignore[no-untyped-def]
    """The sum of a 1-D uint64 array (wrapping): a read of every byte, nothing else."""
    total = np.uint64(0)
    for i in range(words.shape[0]):
        total += words[i]
    return total


class ColdReader:
    """A buffer of ``frames`` frames, several times the last-level cache, written once;
    each :meth:`measure` reads it whole (bandwidth) and then frame by frame (the cold
    read of one frame), so it can be called between the rounds it is a yardstick for.

    ``kind`` "anon" is a numpy array; "shm" a ``/dev/shm`` file mapped shared, unlinked
    at once (nothing is left behind), as a worker maps a client's file.
    """

    def __init__(
        self, frame_bytes: int, frames: int = 40, kind: str = "shm", directory: str = "/dev/shm"
    ) -> None:
        self.kind = kind
        self.frame_words = frame_bytes // 8
        self.frames = frames
        size = self.frame_words * 8 * frames
        self._map: mmap.mmap | None = None
        if kind == "anon":
            self.words = np.empty(size // 8, np.uint64)
        else:
            path = os.path.join(directory, f"fastext_bench_membw_{os.getpid()}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.unlink(path)
                os.ftruncate(fd, size)
                self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            self.words = np.frombuffer(self._map, np.uint64)
        self.words[:] = 1  # every page present before anything is timed
        sum_words(self.words[:8])  # compiled before any clock starts

    def measure(self) -> ColdRead:
        start = time.perf_counter()
        sum_words(self.words)
        whole = time.perf_counter() - start
        per_frame = _read_frames(self.words, self.frame_words, self.frames, 1)
        return ColdRead(
            self.kind,
            self.words.nbytes / whole / 1e9,
            statistics.median(per_frame) * 1e6,
            self.frame_words * 8,
        )

    def close(self) -> None:
        del self.words
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> ColdReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ColdRead:
    kind: str  # "anon" or "shm"
    bandwidth_gb_s: float  # one core reading the whole buffer, cold: 1e9 bytes/s
    frame_us: float  # median time to read one cold frame of ``frame_bytes``
    frame_bytes: int


def _read_frames(words: np.ndarray, frame_words: int, frames: int, passes: int) -> list[float]:
    times = []
    for _ in range(passes):  # bounded: each pass reads every frame once, in order
        for k in range(frames):
            start = time.perf_counter()
            sum_words(words[k * frame_words : (k + 1) * frame_words])
            times.append(time.perf_counter() - start)
    return times
