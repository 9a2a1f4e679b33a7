"""The public processor API: a batch of frames in, one list of inferences per frame out.

A processor never sees gRPC or shared memory: it gets :class:`fastext.vision.frames.Frame`
objects and returns the contract's ``Inference`` messages.  It declares what it
needs from a frame, so fastext prepares only that:

- ``needs = "luma"`` (the default): the BT.601 luma image or its mean
  (``frame.luma()``, ``frame.luma_mean()``); JPEG frames decode straight to gray,
  at 1/``luma_scale`` of their size;
- ``needs = "rgb"``: ``frame.rgb(self.rgb_size)``, an H x W x 3 uint8 RGB image,
  resized to ``rgb_size`` (width, height) when set; JPEG frames decode to RGB at the
  smallest DCT scale at least that big;
- ``needs = "raw"``: the frame as it arrived, a zero-copy view of RAW pixels
  (``frame.data``, ``frame.layout``) or the still-encoded bytes of a JPG/PNG/BMP.

Whatever it declares, every frame still offers ``luma()``, ``luma_mean()`` and
``rgb()``; the declaration only decides how encoded frames are decoded up front.

One instance serves exactly one session: parameters and any state belong to that
session alone.  A processor that keeps state from frame to frame (a background
model, a tracker) sets ``stateful = True``: the server then runs that session's
batches one at a time, in frame order, on that one instance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fastext._proto.inferencing_pb2 import Inference
from fastext.outcomes import Unprocessed
from fastext.vision.frames import NEEDS, Frame, check_size

__all__ = ["NEEDS", "Frame", "Inference", "Processor"]

_LUMA_SCALES = (1, 2, 4, 8)


class Processor(ABC):
    """Base class of every processor.

    Subclasses set :attr:`name` (and the declarations below when the defaults do
    not fit) and implement :meth:`process`.  Parameters come from the session's
    ``extension_configuration`` JSON as keyword arguments; reject bad ones in
    ``__init__`` with a ``ValueError`` naming the parameter (the session then ends
    with INVALID_ARGUMENT before any frame is read).
    """

    #: The name sessions select the processor by.
    name: ClassVar[str]
    #: What the processor reads from a frame: ``"luma"``, ``"rgb"`` or ``"raw"``.
    needs: ClassVar[str] = "luma"
    #: How far an encoded image may be scaled down (1, 2, 4 or 8) before a ``"luma"``
    #: processor sees it; decoding JPEG at 1/8 scale is several times faster when
    #: detail is not needed.
    luma_scale: ClassVar[int] = 1
    #: (width, height) a ``"rgb"`` processor wants its images at, or None for the
    #: frame's own size.  A class attribute, or set on the instance in ``__init__``
    #: when it depends on parameters (a model's input size).
    rgb_size: tuple[int, int] | None = None
    #: True when the instance keeps state across frames of its stream: the server
    #: then never runs two batches of the session at once, nor out of frame order.
    stateful: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Wrong declarations fail when the plug-in is imported, not on the first frame.
        if cls.needs not in NEEDS:
            raise TypeError(f"{cls.__name__}.needs must be one of {NEEDS}, got {cls.needs!r}")
        if cls.luma_scale not in _LUMA_SCALES:
            raise TypeError(f"{cls.__name__}.luma_scale must be one of {_LUMA_SCALES}")
        if cls.rgb_size is not None:
            try:
                check_size(cls.rgb_size, f"{cls.__name__}.rgb_size")
            except ValueError as exc:
                raise TypeError(str(exc)) from None

    def __init__(self, **params: Any) -> None:
        if params:
            raise ValueError(f"processor {self.name!r} takes no parameter {sorted(params)[0]!r}")

    @abstractmethod
    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        """Return one list of inferences per frame, in the order of ``frames``."""

    def outcomes(self, frames: Sequence[Frame]) -> list[list[Inference] | Unprocessed]:
        """:meth:`process`, where one frame may fail alone: each frame's inferences, or
        how it ended without them (a frame the processor could not read is
        ``Unprocessed(Outcome.INVALID, why)``). What fastext calls."""
        return list(self.process(frames))

    def rgb_batch(self, frames: Sequence[Frame]) -> np.ndarray:
        """The frames as one (N, height, width, 3) uint8 array at :attr:`rgb_size`.

        Frames of different sizes need ``rgb_size`` set (a model's input usually is).
        """
        batch = np.empty((len(frames), *self._batch_shape(frames)), np.uint8)
        for i, frame in enumerate(frames):
            batch[i] = frame.rgb(self.rgb_size)
        return batch

    def _batch_shape(self, frames: Sequence[Frame]) -> tuple[int, int, int]:
        if self.rgb_size is not None:
            return self.rgb_size[1], self.rgb_size[0], 3
        sizes = {(f.width, f.height) for f in frames}
        if len(sizes) > 1:
            raise ValueError(f"frames of sizes {sorted(sizes)} in one batch: set rgb_size")
        width, height = sizes.pop() if sizes else (0, 0)
        return height, width, 3

    def check(self) -> None:
        """Validate the instance's declarations (``rgb_size`` may be set in ``__init__``).

        Called by :func:`fastext.processors.create`; raises ``ValueError``.
        """
        if self.rgb_size is not None:
            check_size(self.rgb_size, f"processor {self.name!r} rgb_size")
