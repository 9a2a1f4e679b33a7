"""Shared-memory record rings between the front and its workers.

The one Python front of :mod:`fastext._native._ring` (:mod:`fastext.contract.wire` is
the front of ``_native._wire``; tests/test_architecture.py holds both).  A :class:`Ring` is a
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
from types import TracebackType

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
from fastext.backend.segments import Segment, segment_name

__all__ = [
    "HEADER_SIZE",
    "MAX_CAPACITY",
    "MIN_CAPACITY",
    "RecordTooLarge",
    "Ring",
    "RingCorrupt",
    "RingError",
    "RingPair",
    "SharedRing",
    "required_size",
]

log = logging.getLogger("fastext.backend.ring")


class SharedRing:
    """A :class:`Ring` in its own named POSIX shared-memory segment.

    Use :meth:`create` in the owner (it formats the ring and unlinks the
    segment on :meth:`close`) and :meth:`attach` in a peer process.  A
    ``SharedRing`` is not picklable; hand :attr:`name` to the other process.
    """

    def __init__(self, segment: Segment, ring: Ring) -> None:
        self._segment = segment
        self._ring = ring

    @classmethod
    def create(cls, capacity: int, *, tag: str = "ring", spin: int = 0) -> SharedRing:
        """Create a segment for a ring of ``capacity`` data bytes and format it."""
        segment = Segment.create(segment_name(tag), required_size(capacity))
        try:
            ring = Ring.init(segment.mapping, capacity, spin=spin)
        except BaseException:
            segment.close()
            raise
        return cls(segment, ring)

    @classmethod
    def attach(cls, name: str, *, spin: int = 0) -> SharedRing:
        """Attach to a ring another process created; raises RingCorrupt if the
        segment does not hold a valid ring."""
        try:
            segment = Segment.attach(name, at_least=HEADER_SIZE)
        except ValueError as exc:
            raise RingCorrupt(f"{exc}: not a ring") from None
        try:
            ring = Ring(segment.mapping, spin=spin)
        except BaseException:
            segment.close()
            raise
        return cls(segment, ring)

    @property
    def name(self) -> str:
        """The POSIX name (with leading ``/``) a peer passes to :meth:`attach`."""
        return self._segment.name

    @property
    def ring(self) -> Ring:
        """The ring itself."""
        return self._ring

    @property
    def owner(self) -> bool:
        """True in the process that created (and will unlink) the segment."""
        return self._segment.owner

    def unlink(self) -> None:
        """Remove the name now (the mapping stays usable).  Owner only; idempotent."""
        self._segment.unlink()

    def close(self) -> None:
        """Release the ring, unmap, and (owner) unlink.  Idempotent."""
        self._ring.close()
        self._segment.close()

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
        role = "owner" if self.owner else "attached"
        return f"<SharedRing {self.name} {role} closed={self._ring.closed}>"


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
