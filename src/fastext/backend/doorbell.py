"""A doorbell: the one-way wake-up from a child process to the event loop.

A pipe, both ends non-blocking.  The parent keeps the read end (:class:`Doorbell`),
watched with ``loop.add_reader(doorbell.fileno(), ...)``; the child gets the write end
(:class:`Ringer`, pickled into its arguments by ``spawn``) and calls
:meth:`Ringer.ring` after it has put something where the parent will look (a ring).
The bytes carry no meaning: one readable pipe means "look", however many rings it
took, so a full pipe is fine (the bell is already ringing) and the parent clears
everything at once.

Its own module, not the supervisor's: a child imports it to unpickle its ringer, and
it must not bring the supervisor's event-loop machinery into every worker.
"""

from __future__ import annotations

import os
from multiprocessing import reduction
from typing import Any

__all__ = ["Doorbell", "Ringer"]

_READ = 65536  # one read empties a default-sized pipe
_MAX_READS = 16  # bounded: a pipe made larger than 1 MiB leaves the rest for the next wake


class Ringer:
    """The child's side: :meth:`ring` writes one byte, never blocks.

    Picklable to a process being spawned (or over a multiprocessing connection): the
    file descriptor travels with it, as a ``multiprocessing.Connection``'s does.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def ring(self) -> None:
        """Wake the parent.  A full pipe holds unread rings already: nothing to add."""
        try:
            os.write(self._fd, b"\x01")
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Close this process's copy of the write end.  Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._fd < 0:
            raise ValueError("a closed Ringer cannot be sent to another process")
        return _attach_ringer, (reduction.DupFd(self._fd),)

    def __repr__(self) -> str:
        return f"<Ringer fd={self._fd}>"


def _attach_ringer(dup: Any) -> Ringer:
    return Ringer(dup.detach())


class Doorbell:
    """The parent's side: watch :meth:`fileno`, :meth:`clear` when it is readable.

    :attr:`ringer` is the write end, to hand to the child (in its spawn arguments);
    close the parent's copy (``doorbell.ringer.close()``) once the child is started.
    """

    __slots__ = ("_fd", "ringer")

    def __init__(self) -> None:
        read, write = os.pipe()  # both non-inheritable; spawn passes the ringer explicitly
        os.set_blocking(read, False)
        self._fd = read
        self.ringer = Ringer(write)

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def clear(self) -> int:
        """Read and discard every pending ring; returns how many there were.  Never
        blocks and never raises for an empty pipe (0 after :meth:`close` too).  One read
        when fewer than a read's worth are pending (the usual case: it runs per wake-up)."""
        fd = self._fd
        if fd < 0:
            return 0
        try:
            n = len(os.read(fd, _READ))
        except BlockingIOError:
            return 0
        if n < _READ:  # a short read (or end of file: every ringer closed): empty now
            return n
        return n + self._clear_more(fd)

    @staticmethod
    def _clear_more(fd: int) -> int:
        """The rest of a pipe that held a whole read's worth (bounded: _MAX_READS)."""
        total = 0
        for _ in range(_MAX_READS - 1):
            try:
                n = len(os.read(fd, _READ))
            except BlockingIOError:
                break
            total += n
            if n < _READ:
                break
        return total

    def close(self) -> None:
        """Close both ends held here (remove the loop's reader first).  Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        self.ringer.close()

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a Doorbell stays in its process: send its .ringer to the child")

    def __repr__(self) -> str:
        return f"<Doorbell fd={self._fd} ringer={self.ringer!r}>"
