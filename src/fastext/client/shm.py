"""The client's shared-memory file: frames written into slots, reused only after their ack."""

from __future__ import annotations

import errno
import itertools
import mmap
import os

__all__ = ["ShmSpaceError", "SlotWriter"]

_counter = itertools.count()


class ShmSpaceError(OSError):
    """The directory (``/dev/shm``) has no room for the slots file: one line a user can
    act on.  (The client's own: it imports nothing of the server's errors.)"""


class SlotWriter:
    """A ``/dev/shm`` file cut into equal slots; a slot is free again once its frame is acked.

    With ``reuse``, a slot remembers the ``bytes`` object last written into it, and a
    write of that same object (``is``: immutable, so its bytes are still there) takes
    that slot when it is free, without copying: a source that repeats its frames
    writes each slot once and then costs one message per frame.
    """

    def __init__(
        self, slot_bytes: int, slots: int, directory: str = "/dev/shm", reuse: bool = False
    ) -> None:
        if slot_bytes <= 0 or slots <= 0:
            raise ValueError("slot size and slot count must be positive")
        self.slot_bytes = slot_bytes
        self.reuse = reuse
        self.copies = 0  # frames copied into a slot (a reused slot is not counted)
        # reuse: the bytes object each slot holds (kept alive: its id is never recycled)
        self._held: list[bytes | None] = [None] * slots
        self.length = slot_bytes * slots
        self.name = f"fastext_client_{os.getpid()}_{next(_counter)}"
        self.path = os.path.join(directory, self.name)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, self.length)
            self._reserve(fd, directory, slot_bytes, slots)
            self._map = mmap.mmap(
                fd, self.length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)
        self._free = list(range(slots - 1, -1, -1))

    def _reserve(self, fd: int, directory: str, slot_bytes: int, slots: int) -> None:
        """Back every page now: on tmpfs a full ``/dev/shm`` would otherwise be a SIGBUS
        at the first write into a page never touched, not an error."""
        try:
            os.posix_fallocate(fd, 0, self.length)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
                raise
            try:
                st = os.statvfs(directory)
                free = f"{st.f_bavail * st.f_frsize / (1 << 20):.1f} MiB"
            except OSError:
                free = "an unknown amount of space"
            raise ShmSpaceError(
                f"{directory} has {free} free, too little for the {self.length / (1 << 20):.1f} "
                f"MiB shared-memory file ({slots} slots of {slot_bytes} bytes: --window x "
                "the frame size, --shm-size-mb for encoded images); give it more room (docker "
                "run --shm-size), lower --window or --shm-size-mb, or send frames embedded "
                "(without --shm)"
            ) from None

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def write(self, data: bytes | memoryview) -> tuple[int, int]:
        """Copy a frame into a free slot; returns (slot, offset). Raises if none is free."""
        if len(data) > self.slot_bytes:
            raise ValueError(f"frame of {len(data)} bytes exceeds the {self.slot_bytes}-byte slot")
        if not self._free:
            raise RuntimeError(
                "no free shared-memory slot (a frame is being written before an ack)"
            )
        if self.reuse:
            slot = self._reuse_slot(data)
            if slot >= 0:
                return slot, slot * self.slot_bytes
        slot = self._free.pop()
        offset = slot * self.slot_bytes
        self._map[offset : offset + len(data)] = data
        self.copies += 1
        if self.reuse:
            self._held[slot] = data if type(data) is bytes else None
        return slot, offset

    def _reuse_slot(self, data: bytes | memoryview) -> int:
        """Take the free slot already holding ``data`` (-1: none), or else put a slot
        never written on top of the free list, so a slot holding a frame is kept."""
        free, held = self._free, self._held
        for i in range(len(free) - 1, -1, -1):  # bounded by the slot count
            if held[free[i]] is data:
                return free.pop(i)
        for i in range(len(free) - 1, -1, -1):
            if held[free[i]] is None:
                free.append(free.pop(i))
                break
        return -1

    def release(self, slot: int) -> None:
        """Return a slot once the server acknowledged the frame in it."""
        self._free.append(slot)

    def close(self) -> None:
        """Unmap and unlink (idempotent)."""
        if not self._map.closed:
            self._map.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> SlotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
