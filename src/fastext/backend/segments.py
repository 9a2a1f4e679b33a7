"""The server's own POSIX shared-memory segments: names, create, attach, unlink, and the
removal of segments a dead server left behind.  The rings (:mod:`fastext.backend.ring`) and the
arena (:mod:`fastext.backend.shm`) both live in segments made here.

Every name is ``/fastext_<owner pid>_<tag>_<random>``: a segment whose owner died is
recognised by its pid and removed at the next start (:func:`cleanup_stale_segments`).
A client's own ``/dev/shm`` file is not a segment of ours: :class:`fastext.backend.shm.ClientMemory`
opens that one, read-only.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import secrets
from pathlib import Path

import posix_ipc

from fastext.errors import ShmFullError

__all__ = ["SEGMENT_PREFIX", "Segment", "cleanup_stale_segments", "mib", "segment_name", "shm_free"]

log = logging.getLogger("fastext.backend.segments")

SEGMENT_PREFIX = "fastext_"
_SHM_DIR = Path("/dev/shm")
_TAG_RE = re.compile(r"^[A-Za-z0-9.-]{1,64}$")


def segment_name(tag: str, pid: int | None = None) -> str:
    """A fresh POSIX shared-memory name (leading ``/``) owned by ``pid``."""
    if not _TAG_RE.match(tag):
        raise ValueError(f"segment tag must match {_TAG_RE.pattern}, not {tag!r}")
    owner = os.getpid() if pid is None else pid
    return f"/{SEGMENT_PREFIX}{owner}_{tag}_{secrets.token_hex(4)}"


class Segment:
    """A named segment mapped in this process; the creator (the owner) unlinks it."""

    def __init__(self, name: str, mapping: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.mapping = mapping
        self.owner = owner
        self._linked = owner

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """Create ``name`` (it must not exist) with ``size`` bytes, mapped read-write.

        Every page is backed now: on tmpfs a page of a sparse file gets its memory only
        when first touched, and with ``/dev/shm`` full that touch is a SIGBUS, in
        whichever process makes it.  No room: :class:`ShmFullError`, and nothing is left.
        """
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            try:
                _reserve(shm.fd, size)
            except BaseException:
                shm.close_fd()
                raise
            mapping = _map(shm, size, writable=True)
        except BaseException:
            shm.unlink()
            raise
        return cls(name, mapping, owner=True)

    @classmethod
    def attach(cls, name: str, *, at_least: int = 0, read_only: bool = False) -> Segment:
        """Map a segment another process created, whole; ``ValueError`` if it holds fewer
        than ``at_least`` bytes."""
        shm = posix_ipc.SharedMemory(name, read_only=read_only)
        size = shm.size
        if size < at_least:
            shm.close_fd()
            raise ValueError(f"segment {name} holds {size} bytes, fewer than {at_least}")
        return cls(name, _map(shm, size, writable=not read_only), owner=False)

    def unlink(self) -> None:
        """Remove the name now (the mapping stays usable).  Owner only; idempotent."""
        if self.owner and self._linked:
            self._linked = False
            try:
                posix_ipc.unlink_shared_memory(self.name)
            except posix_ipc.ExistentialError:
                log.warning("segment %s was already unlinked", self.name)

    def close(self) -> None:
        """Unmap (views of the mapping must be gone) and, for the owner, unlink."""
        try:
            if not self.mapping.closed:
                self.mapping.close()
        finally:
            self.unlink()


def cleanup_stale_segments(prefix: str = SEGMENT_PREFIX) -> list[str]:
    """Unlink ``/dev/shm/<prefix><pid>_…`` segments whose owner pid is gone.

    Returns the names removed.  A pid that exists (possibly reused) keeps its
    segments: this errs on the side of leaving a file behind.
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)_")
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(_SHM_DIR))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = pattern.match(entry)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            posix_ipc.unlink_shared_memory("/" + entry)
        except posix_ipc.ExistentialError:
            continue  # removed concurrently
        log.info("removed stale shared-memory segment %s", entry)
        removed.append(entry)
    return removed


def shm_free(directory: str | os.PathLike[str] = _SHM_DIR) -> int:
    """Bytes free for an unprivileged writer in ``directory`` (``/dev/shm``); 0 if unknown."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def mib(nbytes: int) -> str:
    """``nbytes`` for a message: ``"64.0 MiB"``."""
    return f"{nbytes / (1 << 20):.1f} MiB"


def _reserve(fd: int, size: int) -> None:
    """Back all ``size`` bytes of a new segment (tmpfs: allocate its pages, zeroed)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
            raise
        free = shm_free()
        raise ShmFullError(
            f"{_SHM_DIR} has {mib(free)} free, too little for a {mib(size)} segment", size, free
        ) from None


def _map(shm: posix_ipc.SharedMemory, size: int, writable: bool) -> mmap.mmap:
    """Map ``size`` bytes of the segment and close its descriptor."""
    try:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(shm.fd, size, mmap.MAP_SHARED, prot)
    finally:
        shm.close_fd()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we could own: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True
