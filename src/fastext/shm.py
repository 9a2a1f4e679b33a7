"""Shared memory: the client's ``/dev/shm`` file, mapped read-only and bounds-checked.

The server never trusts a number from the wire: the handle must be a plain
file name (checked in :mod:`fastext.protocol`), the file is opened read-only
without following links, it must be a regular file of at least the declared
length, and every slice handed out lies inside the mapping (Python integers
cannot overflow, so ``offset + length`` near 2**64 is simply out of range).
"""

from __future__ import annotations

import errno
import gc
import logging
import mmap
import os
import stat

import numpy as np

from fastext.errors import DescriptorError, SampleError

__all__ = ["SHM_DIR", "ClientMemory"]

SHM_DIR = "/dev/shm"
log = logging.getLogger("fastext.shm")


class ClientMemory:
    """A client's shared-memory file, mapped read-only once per session."""

    def __init__(self, name: str, length: int, directory: str = SHM_DIR) -> None:
        self.name = name
        self.length = length
        self._map: mmap.mmap | None = None
        self._view = self._open(os.path.join(directory, name), length)

    def _open(self, path: str, length: int) -> np.ndarray:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us
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
        finally:
            os.close(fd)
        return np.frombuffer(self._map, dtype=np.uint8)

    @staticmethod
    def _open_error(path: str, exc: OSError) -> str:
        if exc.errno == errno.ENOENT:
            return (f"shared memory file {path} does not exist (is the IPC namespace shared "
                    "with the client, e.g. IpcMode container:<client> or host?)")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"shared memory file {path}: permission denied opening it read-only"
        if exc.errno == errno.ELOOP:
            return f"shared memory {path} is a symbolic link; it must be a plain file"
        return f"shared memory file {path}: {exc.strerror}"

    def frame(self, offset: int, length: int, need: int) -> np.ndarray:
        """A zero-copy view of ``need`` bytes at ``offset`` (RAW frames).

        The reference must claim at least ``need`` bytes; only ``need`` are read,
        so a sloppy client that claims one byte past the file is still served.
        """
        if length < need:
            raise SampleError(f"content_reference covers {length} bytes, the frame needs {need}")
        return self._slice(offset, need, length)

    def content(self, offset: int, length: int) -> np.ndarray:
        """A zero-copy view of all ``length`` bytes at ``offset`` (encoded images)."""
        if length == 0:
            raise SampleError("content_reference.length_bytes is 0")
        return self._slice(offset, length, length)

    def _slice(self, offset: int, size: int, claimed: int) -> np.ndarray:
        if self._map is None:
            raise SampleError("shared memory is closed")
        if offset >= self.length or size > self.length - offset:
            raise SampleError(
                f"content_reference offset {offset} + {claimed} bytes lies outside the "
                f"{self.length}-byte shared memory"
            )
        return self._view[offset : offset + size]

    def close(self) -> None:
        """Unmap; views handed out must be gone (the session awaits its frames first)."""
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
                log.warning("shared memory %s: a frame view is still alive; unmap deferred",
                            self.name)

    @property
    def closed(self) -> bool:
        return self._map is None
