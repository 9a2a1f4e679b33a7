"""Run a processor over one batch: payloads → frames → inferences, errors per frame.

Frames are prepared as the processor declares (``needs``, ``luma_scale``,
``rgb_size``); a stateful processor's batches must reach :func:`run_batch` one at a
time and in frame order (the backends guarantee it, not this module).

Shared by the in-process backend and the worker processes, so a frame is turned
into a :class:`~fastext.vision.frames.Frame` and judged the same way wherever it runs.
Nothing here touches gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fastext._proto.extension_pb2 import MediaSample
from fastext._proto.inferencing_pb2 import Inference
from fastext.backend.shm import Arena, ArenaRef, ClientMemory, ShmRef
from fastext.errors import FastextError, FrameError
from fastext.outcomes import Outcome, Unprocessed
from fastext.processors.base import Processor
from fastext.vision.frames import Encoding, Frame, frame_from_encoded, frame_from_raw

__all__ = [
    "FrameFormat",
    "FrameResult",
    "fetch_payload",
    "frames_of",
    "make_frame",
    "run_batch",
    "serialized",
]

log = logging.getLogger("fastext.backend.execute")
_NOT_PROCESSED = Unprocessed(Outcome.ERROR, "not processed")  # every slot is set below

#: A frame's result: its inferences, or how it ended without them and why.
FrameResult = list[Inference] | Unprocessed


@dataclass(frozen=True, slots=True)
class FrameFormat:
    """What a payload holds (the part of a StreamSpec that frames need)."""

    encoding: int
    pixel_format: int
    width: int
    height: int
    stride: int


def make_frame(
    fmt: FrameFormat,
    payload: np.ndarray | bytes | memoryview,
    luma_scale: int = 1,
    *,
    needs: str = "luma",
    rgb_size: tuple[int, int] | None = None,
) -> Frame:
    """A RAW payload becomes a zero-copy view, whatever ``needs`` says (the processor
    converts what it reads); an encoded one is decoded as ``needs`` asks: to luma (at
    1/``luma_scale``), to RGB (no smaller than ``rgb_size``), or not at all (``"raw"``).
    """
    if fmt.encoding == Encoding.RAW:
        return frame_from_raw(payload, fmt.pixel_format, fmt.width, fmt.height, fmt.stride)
    return frame_from_encoded(
        payload, fmt.encoding, luma_scale=luma_scale, needs=needs, rgb_size=rgb_size
    )


def frames_of(
    fmt: FrameFormat, payloads: Sequence[np.ndarray | bytes | memoryview | Unprocessed]
) -> list[Frame | Unprocessed]:
    """Each payload as it arrived (a zero-copy view of RAW pixels, or the still encoded
    bytes), or why it cannot be read: what a model's one-pass preprocessing takes."""
    frames: list[Frame | Unprocessed] = []
    for payload in payloads:
        if isinstance(payload, Unprocessed):
            frames.append(payload)
            continue
        try:
            frames.append(make_frame(fmt, payload, needs="raw"))
        except FrameError as exc:
            frames.append(Unprocessed(Outcome.INVALID, str(exc)))
    return frames


def run_batch(
    processor: Processor,
    fmt: FrameFormat,
    payloads: Sequence[np.ndarray | bytes | memoryview | Unprocessed],
) -> list[FrameResult]:
    """One result per payload; a bad frame or a failing processor never raises.

    An :class:`Unprocessed` payload is a frame that could not even be fetched (a
    reference outside the file, a file cut short): it is that frame's result as it
    stands.  A frame that does not decode is INVALID (the client's); a processor that
    raises or miscounts its results makes its frames ERROR (the server's).
    """
    outcomes: list[FrameResult] = [_NOT_PROCESSED] * len(payloads)
    frames: list[Frame] = []
    index: list[int] = []
    needs, rgb_size = processor.needs, processor.rgb_size
    for i, payload in enumerate(payloads):
        if isinstance(payload, Unprocessed):
            outcomes[i] = payload
            continue
        try:
            frames.append(
                make_frame(fmt, payload, processor.luma_scale, needs=needs, rgb_size=rgb_size)
            )
            index.append(i)
        except FrameError as exc:
            outcomes[i] = Unprocessed(Outcome.INVALID, str(exc))
    if not frames:
        return outcomes
    try:
        results = processor.outcomes(frames)
        if len(results) != len(frames):
            raise RuntimeError(f"returned {len(results)} results for {len(frames)} frames")
    except Exception as exc:  # a user's model must not take the stream down
        log.exception("processor %r failed on a batch of %d frames", processor.name, len(frames))
        reason = Unprocessed(Outcome.ERROR, f"processor {processor.name!r} failed: {exc}")
        for i in index:
            outcomes[i] = reason
        return outcomes
    for i, inferences in zip(index, results, strict=True):
        outcomes[i] = inferences if isinstance(inferences, Unprocessed) else list(inferences)
    return outcomes


def serialized(outcomes: Sequence[FrameResult]) -> list[bytes | Unprocessed]:
    """Each frame's inferences as the bytes of a MediaSample holding only them (field 10,
    what the front splices into the ack; b"" for none), or how it ended without them."""
    return [
        o if isinstance(o, Unprocessed) else MediaSample(inferences=o).SerializeToString()
        for o in outcomes
    ]


def fetch_payload(
    payload: ShmRef | ArenaRef | memoryview, memory: ClientMemory | None, arena: Arena | None = None
) -> np.ndarray | memoryview | Unprocessed:
    """One frame's bytes where a batch runs, in place (no copy), or why they cannot be had:
    an INVALID :class:`Unprocessed`, which :func:`run_batch` makes that frame's result.  ``payload`` is embedded
    bytes, a region of the session's client file, or (in a worker) of the server's arena.
    The one fetch for both the worker processes and the in-process lane."""
    try:
        if isinstance(payload, ShmRef):
            if memory is None:
                raise FrameError("reference to a client file the session does not have")
            return memory.view(payload)  # checks the bounds and that the file still holds it
        if isinstance(payload, ArenaRef):
            if arena is None:
                raise FrameError("reference to an arena this process does not have")
            return arena.read(payload.offset, payload.size)
        return payload
    except (FastextError, OSError, ValueError) as exc:  # the file shrank, the session ended
        return Unprocessed(Outcome.INVALID, str(exc))
