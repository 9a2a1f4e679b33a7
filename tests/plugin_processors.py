"""Processors for tests that must run in worker processes too, where a monkeypatched
registry does not reach: a test installs them through an entry point
(:func:`tests.helpers.install_entry_points`).  A module of its own (not a test module,
not helpers: a spawned worker imports it, so it imports nothing but numpy and fastext's
public processor API).

Each frame carries its mark in its first byte: the test decides which frames fail.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

from fastext.processors import Classification, Frame, Inference, Processor, Tag

#: A frame whose mark is this kills the process that reads it (see :class:`DieOnMark`).
POISON = 255


def mark(frame: Frame) -> int:
    """The frame's first byte (RAW frames: ``needs = "raw"`` keeps them as they came)."""
    return int(frame.data.flat[0])


def _ok() -> list[Inference]:
    return [
        Inference(type=Inference.CLASSIFICATION, classification=Classification(tag=Tag(value="ok")))
    ]


class FailEveryThird(Processor):
    """Raises on every batch that holds a frame whose mark is a multiple of 3 (at batch
    size 1: every third frame); tags every other frame "ok"."""

    name = "fail-every-third"
    needs = "raw"

    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        marks = [mark(f) for f in frames]
        failing = [m for m in marks if m % 3 == 0]
        if failing:
            raise RuntimeError(f"the model broke on frame mark {failing[0]}")
        return [_ok() for _ in frames]


class DieOnMark(Processor):
    """Kills its own process (SIGKILL) on a frame marked :data:`POISON`; tags every
    other frame "ok".  Only for worker processes: in the server process it would take
    the server down."""

    name = "die-on-mark"
    needs = "raw"

    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        if any(mark(f) == POISON for f in frames):
            os.kill(os.getpid(), signal.SIGKILL)
        return [_ok() for _ in frames]
