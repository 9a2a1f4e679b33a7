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

__all__ = ["ColdRead", "cold_reads", "sum_words"]


@njit(nogil=True, cache=False, boundscheck=False)
def sum_words(words):  # type: ignore[no-untyped-def]
    """The sum of a 1-D uint64 array (wrapping): a read of every byte, nothing else."""
    total = np.uint64(0)
    for i in range(words.shape[0]):
        total += words[i]
    return total


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
            sum_words(words[k * frame_words:(k + 1) * frame_words])
            times.append(time.perf_counter() - start)
    return times


def _measure(kind: str, words: np.ndarray, frame_bytes: int, frames: int, passes: int) -> ColdRead:
    frame_words = frame_bytes // 8
    sum_words(words[:frame_words])  # compiled before any clock starts
    words[:] = 1  # every page present before it is timed (not a page fault per 4 KiB)
    whole = []
    for _ in range(passes):
        start = time.perf_counter()
        sum_words(words)
        whole.append(time.perf_counter() - start)
    per_frame = _read_frames(words, frame_words, frames, passes)
    return ColdRead(kind, words.nbytes / min(whole) / 1e9,
                    statistics.median(per_frame) * 1e6, frame_words * 8)


def cold_reads(frame_bytes: int, frames: int = 40, passes: int = 3,
               directory: str = "/dev/shm") -> list[ColdRead]:
    """Bandwidth and one frame's cold read, for anonymous memory and for a /dev/shm file,
    each over a buffer of ``frames`` frames (make it several times the last-level cache)."""
    size = frame_bytes // 8 * 8 * frames
    results = [_measure("anon", np.empty(size // 8, np.uint64), frame_bytes, frames, passes)]
    path = os.path.join(directory, f"fastext_bench_membw_{os.getpid()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.unlink(path)  # nothing left behind, whatever happens next
        os.ftruncate(fd, size)
        mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    try:
        words = np.frombuffer(mapping, np.uint64)
        results.append(_measure("shm", words, frame_bytes, frames, passes))
        del words
    finally:
        mapping.close()
    return results
