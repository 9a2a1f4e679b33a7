"""How a frame ended: one :class:`Outcome` per acknowledged frame.

Every frame is acknowledged, but not every acknowledgement means the same: the
client sent a bad sample, the server's processor failed, its worker died, the
server stopped, the stream was overloaded.  Each is a kind of its own, counted
under its own label (``fastext_frames_total{outcome=...}``) and logged at its own
level, so a broken model is never counted as a broken camera.  Imported by the
front and by the workers (nothing here touches gRPC).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

__all__ = ["Outcome", "Unprocessed"]


class Outcome(IntEnum):
    """The kinds of end a frame can have; the value is its code in a DONE record."""

    #: Processed, with inferences.  (Code 0 in a DONE record marks any processed
    #: frame, its serialized inferences following: none for EMPTY.)
    INFERRED = 0
    #: Processed, nothing found.
    EMPTY = 1
    #: The client's fault: a reference out of bounds, a frame too short, an image that
    #: does not decode, one larger than the arena.
    INVALID = 2
    #: The server's fault: the processor raised, or returned a wrong number of results.
    ERROR = 3
    #: Its worker died while holding it, every time it ran (placement's MAX_RUNS).
    LOST = 4
    #: The server stopped before the frame was processed.
    SHUTDOWN = 5
    #: The stream's window was full (overload policy ``drop``).
    DROPPED = 6

    @property
    def label(self) -> str:
        """Its ``outcome`` label in ``fastext_frames_total``."""
        return self.name.lower()


class Unprocessed(NamedTuple):
    """A frame acknowledged without a processing result: how it ended (never INFERRED
    or EMPTY) and why, for the log."""

    kind: Outcome
    reason: str
