"""The public processor API: a batch of frames in, one list of inferences per frame out.

A processor never sees gRPC or shared memory: it gets :class:`fastext.frames.Frame`
objects (zero-copy views of RAW frames, or decoded luma images) and returns the
contract's ``Inference`` messages.  One instance serves one session, so any state
it keeps (a background model, a counter) belongs to that session alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from fastext._proto.inferencing_pb2 import Inference
from fastext.frames import Frame

__all__ = ["Frame", "Inference", "Processor"]


class Processor(ABC):
    """Base class of every processor.

    Subclasses set :attr:`name` and implement :meth:`process`.  Parameters come
    from the session's ``extension_configuration`` JSON; reject bad ones in
    ``__init__`` with ``ValueError`` (the session then ends with INVALID_ARGUMENT).
    """

    #: The name sessions select the processor by.
    name: ClassVar[str]
    #: How far an encoded image may be scaled down (1, 2, 4 or 8) before this processor
    #: sees it; decoding JPEG at 1/8 scale is several times faster when detail is not needed.
    luma_scale: ClassVar[int] = 1

    def __init__(self, **params: Any) -> None:
        if params:
            raise ValueError(f"processor {self.name!r} takes no parameter {sorted(params)[0]!r}")

    @abstractmethod
    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        """Return one list of inferences per frame, in the order of ``frames``."""
