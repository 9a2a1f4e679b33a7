"""Shared memory: the client's ``/dev/shm`` file, mapped read-only and bounds-checked.

The server never trusts a number from the wire: the handle must be a plain
file name (checked in :mod:`fastext.front.protocol`), the file is opened read-only
without following links, it must be a regular file of at least the declared
length, and every slice handed out lies inside the mapping (Python integers
cannot overflow, so ``offset + length`` near 2**64 is simply out of range).
"""

from __future__ import annotations

import bisect
import errno
import gc
import logging
import mmap
import os
import stat
from typing import NamedTuple

import numpy as np

from fastext.backend.segments import Segment
from fastext.errors import DescriptorError, FrameError, SampleError

__all__ = ["SHM_DIR", "Arena", "ArenaAllocator", "ArenaRef", "ClientMemory", "ShmRef"]

SHM_DIR = "/dev/shm"
log = logging.getLogger("fastext.backend.shm")


class ArenaRef(NamedTuple):
    """``size`` bytes at ``offset`` of the server's arena (a worker's view of an embedded frame)."""

    offset: int
    size: int


class ShmRef(NamedTuple):
    """A bounds-checked region of a session's shared memory: ``size`` bytes at ``offset``.
    (A tuple: made once per frame on the front's hot path, and cheap to make.)"""

    offset: int
    size: int


class ClientMemory:
    """A client's shared-memory file, mapped read-only once per session."""

    def __init__(self, name: str, length: int, directory: str = SHM_DIR) -> None:
        self.name = name
        self.length = length
        self._map: mmap.mmap | None = None
        self._fd = -1  # kept open: each view checks the file still holds its frame
        self._view = self._open(os.path.join(directory, name), length)

    def _open(self, path: str, length: int) -> np.ndarray:
        flags = (
            os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        )  # NONBLOCK: a FIFO must not hang us
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise DescriptorError("FAILED_PRECONDITION", self._open_error(path, exc)) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DescriptorError(
                    "FAILED_PRECONDITION", f"shared memory {path} is not a regular file"
                )
            if st.st_size < length:
                raise DescriptorError(
                    "FAILED_PRECONDITION",
                    f"shared memory {path} holds {st.st_size} bytes, fewer than the "
                    f"{length} bytes of length_bytes",
                )
            self._map = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return np.frombuffer(self._map, dtype=np.uint8)

    @staticmethod
    def _open_error(path: str, exc: OSError) -> str:
        if exc.errno == errno.ENOENT:
            return (
                f"shared memory file {path} does not exist (is the IPC namespace shared "
                "with the client, e.g. IpcMode container:<client> or host?)"
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"shared memory file {path}: permission denied opening it read-only"
        if exc.errno == errno.ELOOP:
            return f"shared memory {path} is a symbolic link; it must be a plain file"
        return f"shared memory file {path}: {exc.strerror}"

    def frame(self, offset: int, length: int, need: int) -> ShmRef:
        """The region of a RAW frame: ``need`` bytes at ``offset``.

        The reference must claim at least ``need`` bytes; only ``need`` are read,
        so a sloppy client that claims one byte past the file is still served.
        """
        if length < need:
            raise SampleError(f"content_reference covers {length} bytes, the frame needs {need}")
        if offset < self.length and need <= self.length - offset:  # _check, inlined: per frame
            return ShmRef(offset, need)
        return self._check(offset, need, length)  # raises

    def content(self, offset: int, length: int) -> ShmRef:
        """The region of an encoded image: all ``length`` bytes at ``offset``."""
        if length == 0:
            raise SampleError("content_reference.length_bytes is 0")
        return self._check(offset, length, length)

    def _check(self, offset: int, size: int, claimed: int) -> ShmRef:
        if offset >= self.length or size > self.length - offset:
            raise SampleError(
                f"content_reference offset {offset} + {claimed} bytes lies outside the "
                f"{self.length}-byte shared memory"
            )
        return ShmRef(offset, size)

    def view(self, ref: ShmRef) -> np.ndarray:
        """A zero-copy read-only view of a region (checked again: defence in depth).

        The file's size is checked too: a client that shrinks its file after the
        handshake would otherwise make reading the mapped pages past the new end raise
        SIGBUS (which kills the process).  The check is one fstat; a client that
        truncates in the microseconds between it and the read is not covered.
        """
        if self._map is None:
            raise SampleError("shared memory is closed")
        self._check(ref.offset, ref.size, ref.size)
        size = os.fstat(self._fd).st_size
        if ref.offset + ref.size > size:
            raise SampleError(
                f"shared memory {self.name} was cut to {size} bytes after the "
                f"handshake: the frame at {ref.offset}+{ref.size} is gone"
            )
        return self._view[ref.offset : ref.offset + ref.size]

    def close(self) -> None:
        """Unmap; views handed out must be gone (the session awaits its frames first)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._map is None:
            return
        mapping, self._map = self._map, None
        del self._view
        try:
            mapping.close()
        except BufferError:
            # A view may survive only inside a reference cycle (a traceback's frame, say):
            # collect once and retry before giving up.
            gc.collect()
            try:
                mapping.close()
            except BufferError:
                # The mapping is released when the last view is collected; reading stays safe.
                log.warning(
                    "shared memory %s: a frame view is still alive; unmap deferred", self.name
                )

    @property
    def closed(self) -> bool:
        return self._map is None


class ArenaAllocator:
    """Space in the arena: the lowest free stretch that fits (address-ordered first fit).

    Free space is a sorted list of extents; a freed block merges with its free
    neighbours at once, whatever order blocks come back in (workers finish out of
    order), so the arena is never "full" while a large enough stretch is free.
    Taking the lowest stretch keeps the pages ever written near the bytes in flight
    rather than the whole arena: a shared-memory page, once written, stays in RAM
    until the segment is removed, and frames land in memory the caches have just
    seen.  The lists hold about one extent per block in flight, so the scans are short.
    """

    ALIGN = 64  # cache-line aligned frames

    def __init__(self, size: int) -> None:
        self.size = size
        self._starts = [0]  # free extents, sorted by offset, never adjacent
        self._sizes = [size]
        self.used = 0  # bytes in live blocks
        self.high_water = 0  # end of the highest block ever handed out

    def alloc(self, nbytes: int) -> list[int] | None:
        """A block of at least ``nbytes`` (its offset is ``block[0]``), or None if full now."""
        need = max(self.ALIGN, -(-nbytes // self.ALIGN) * self.ALIGN)
        i = next((k for k, free in enumerate(self._sizes) if free >= need), -1)
        if i < 0:
            return None
        start, free = self._starts[i], self._sizes[i]
        if free == need:
            del self._starts[i], self._sizes[i]
        else:
            self._starts[i] += need
            self._sizes[i] -= need
        self.used += need
        self.high_water = max(self.high_water, start + need)
        return [start, need, 0]  # offset, size, freed

    def free(self, block: list[int]) -> None:
        """Return a block; its space is free again at once, merged with free neighbours."""
        if block[2]:
            raise ValueError("arena block freed twice")
        block[2] = 1
        start, size = block[0], block[1]
        starts, sizes = self._starts, self._sizes
        i = bisect.bisect_left(starts, start)
        joins_prev = i > 0 and starts[i - 1] + sizes[i - 1] == start
        joins_next = i < len(starts) and start + size == starts[i]
        if joins_prev and joins_next:
            sizes[i - 1] += size + sizes[i]
            del starts[i], sizes[i]
        elif joins_prev:
            sizes[i - 1] += size
        elif joins_next:
            starts[i] = start
            sizes[i] += size
        else:
            starts.insert(i, start)
            sizes.insert(i, size)
        self.used -= size


class Arena:
    """Server-owned shared memory for embedded frames: the front writes, workers read.

    The front copies each embedded frame into a block exactly once; the worker
    maps the same segment read-only by name and reads the frame in place.
    """

    def __init__(self, segment: Segment, size: int) -> None:
        self.name, self.size, self._segment = segment.name, size, segment
        self._map = segment.mapping
        self.view = np.frombuffer(segment.mapping, dtype=np.uint8)

    @property
    def owner(self) -> bool:
        return self._segment.owner

    @classmethod
    def create(cls, name: str, size: int) -> Arena:
        return cls(Segment.create(name, size), size)

    @classmethod
    def attach(cls, name: str, size: int) -> Arena:
        """Map the front's arena read-only (a worker)."""
        try:
            segment = Segment.attach(name, at_least=size, read_only=True)
        except ValueError as exc:
            raise FrameError(f"arena: {exc}") from None
        return cls(segment, size)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self._map[offset : offset + len(data)] = data

    def read(self, offset: int, size: int) -> np.ndarray:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise FrameError(f"arena reference {offset}+{size} outside the {self.size}-byte arena")
        return self.view[offset : offset + size]

    def unlink(self) -> None:
        """Remove the name now (owner only; the mapping stays usable).  Idempotent."""
        self._segment.unlink()

    def close(self) -> None:
        del self.view
        try:
            self._segment.close()
        except BufferError:
            gc.collect()
            self._segment.close()
