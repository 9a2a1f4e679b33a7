"""Shared-memory record rings between the front and its workers.

The only module that imports :mod:`fastext._native`.  A :class:`Ring` is a
single-producer/single-consumer queue of byte records living in a writable
buffer; :class:`SharedRing` puts one in a named POSIX shared-memory segment
that the front creates and a spawned worker attaches to by name, and
:class:`RingPair` is the two rings one worker needs (submissions in,
completions out).  Design and guarantees: ``docs/ring.md``.

Hot-path results are plain values: a full ring is ``False`` from
``try_push``/``push``, an empty one is ``None`` from ``try_pop``/``pop``.
Errors are :class:`RingError` (a :class:`~fastext.errors.FastextError`),
:class:`RingCorrupt` and :class:`RecordTooLarge`.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import secrets
from pathlib import Path
from types import TracebackType

import posix_ipc

from fastext._native._ring import (
    HEADER_SIZE,
    MAX_CAPACITY,
    MIN_CAPACITY,
    RecordTooLarge,
    Ring,
    RingCorrupt,
    RingError,
    required_size,
)

__all__ = [
    "HEADER_SIZE",
    "MAX_CAPACITY",
    "MIN_CAPACITY",
    "SEGMENT_PREFIX",
    "RecordTooLarge",
    "Ring",
    "RingCorrupt",
    "RingError",
    "RingPair",
    "SharedRing",
    "cleanup_stale_segments",
    "required_size",
    "segment_name",
]

log = logging.getLogger("fastext.ring")

#: Every server-owned segment is named ``fastext_<owner pid>_<tag>_<random>``,
#: so a segment whose owner died can be recognised and removed.
SEGMENT_PREFIX = "fastext_"
_SHM_DIR = Path("/dev/shm")
_TAG_RE = re.compile(r"^[A-Za-z0-9.-]{1,64}$")


def segment_name(tag: str, pid: int | None = None) -> str:
    """A fresh POSIX shared-memory name (leading ``/``) owned by ``pid``."""
    if not _TAG_RE.match(tag):
        raise ValueError(f"segment tag must match {_TAG_RE.pattern}, not {tag!r}")
    owner = os.getpid() if pid is None else pid
    return f"/{SEGMENT_PREFIX}{owner}_{tag}_{secrets.token_hex(4)}"


class SharedRing:
    """A :class:`Ring` in its own named POSIX shared-memory segment.

    Use :meth:`create` in the owner (it formats the ring and unlinks the
    segment on :meth:`close`) and :meth:`attach` in a peer process.  A
    ``SharedRing`` is not picklable; hand :attr:`name` to the other process.
    """

    def __init__(self, name: str, mapping: mmap.mmap, ring: Ring, *, owner: bool) -> None:
        self._name = name
        self._mapping = mapping
        self._ring = ring
        self._owner = owner
        self._linked = owner

    @classmethod
    def create(cls, capacity: int, *, tag: str = "ring", spin: int = 0) -> SharedRing:
        """Create a segment for a ring of ``capacity`` data bytes and format it."""
        size = required_size(capacity)
        name = segment_name(tag)
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            mapping = _map(shm)
            try:
                ring = Ring.init(mapping, capacity, spin=spin)
            except BaseException:
                mapping.close()
                raise
        except BaseException:
            shm.unlink()
            raise
        return cls(name, mapping, ring, owner=True)

    @classmethod
    def attach(cls, name: str, *, spin: int = 0) -> SharedRing:
        """Attach to a ring another process created; raises RingCorrupt if the
        segment does not hold a valid ring."""
        shm = posix_ipc.SharedMemory(name)
        if shm.size < HEADER_SIZE:
            shm.close_fd()
            raise RingCorrupt(f"segment {name} holds {shm.size} bytes: not a ring")
        mapping = _map(shm)
        try:
            ring = Ring(mapping, spin=spin)
        except BaseException:
            mapping.close()
            raise
        return cls(name, mapping, ring, owner=False)

    @property
    def name(self) -> str:
        """The POSIX name (with leading ``/``) a peer passes to :meth:`attach`."""
        return self._name

    @property
    def ring(self) -> Ring:
        """The ring itself."""
        return self._ring

    @property
    def owner(self) -> bool:
        """True in the process that created (and will unlink) the segment."""
        return self._owner

    def unlink(self) -> None:
        """Remove the name now (the mapping stays usable).  Owner only; idempotent."""
        if self._owner and self._linked:
            self._linked = False
            try:
                posix_ipc.unlink_shared_memory(self._name)
            except posix_ipc.ExistentialError:
                log.warning("segment %s was already unlinked", self._name)

    def close(self) -> None:
        """Release the ring, unmap, and (owner) unlink.  Idempotent."""
        self._ring.close()
        if not self._mapping.closed:
            self._mapping.close()
        self.unlink()

    def __enter__(self) -> SharedRing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a SharedRing cannot be pickled: pass .name and attach() in the child")

    def __repr__(self) -> str:
        role = "owner" if self._owner else "attached"
        return f"<SharedRing {self._name} {role} closed={self._ring.closed}>"


class RingPair:
    """The two rings of one worker: ``submit`` (front -> worker) and
    ``completion`` (worker -> front).  The front creates, the worker attaches."""

    def __init__(self, submit: SharedRing, completion: SharedRing) -> None:
        self.submit = submit
        self.completion = completion

    @classmethod
    def create(cls, capacity: int, *, tag: str = "w", spin: int = 0) -> RingPair:
        """Create both rings, each with ``capacity`` data bytes."""
        submit = SharedRing.create(capacity, tag=f"{tag}-sub", spin=spin)
        try:
            completion = SharedRing.create(capacity, tag=f"{tag}-cpl", spin=spin)
        except BaseException:
            submit.close()
            raise
        return cls(submit, completion)

    def unsignalled_wakeups(self) -> int:
        """Sleeps on either ring that ran out at the cap and found progress nobody
        signalled: lost wake-ups the bounded sleep rescued (0 when all is well)."""
        total = 0
        for ring in (self.submit.ring, self.completion.ring):
            stats = ring.stats()
            total += stats["producer_unsignalled"] + stats["consumer_unsignalled"]
        return total

    @classmethod
    def attach(cls, names: tuple[str, str], *, spin: int = 0) -> RingPair:
        """Attach to the ``(submit, completion)`` names from :attr:`names`."""
        submit = SharedRing.attach(names[0], spin=spin)
        try:
            completion = SharedRing.attach(names[1], spin=spin)
        except BaseException:
            submit.close()
            raise
        return cls(submit, completion)

    @property
    def names(self) -> tuple[str, str]:
        """``(submit, completion)`` segment names, for the worker's arguments."""
        return (self.submit.name, self.completion.name)

    def unlink(self) -> None:
        """Remove both names now (owner only; the mappings stay usable).  Idempotent."""
        self.submit.unlink()
        self.completion.unlink()

    def close(self) -> None:
        """Close both rings (the owner also unlinks them).  Idempotent."""
        try:
            self.submit.close()
        finally:
            self.completion.close()

    def __enter__(self) -> RingPair:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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


def _map(shm: posix_ipc.SharedMemory) -> mmap.mmap:
    """Map the whole segment read-write and close its descriptor."""
    try:
        return mmap.mmap(shm.fd, shm.size)
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
