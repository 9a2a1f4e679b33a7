"""Motion: frame differencing against a per-stream running-average background.

Each frame's BT.601 luma is averaged over s x s blocks into a *work image* (s is
chosen so that its longer side is at most 480 pixels: 4 for 1080p, 1 up to 480).
A work pixel has *changed* when it differs from the background by more than a
threshold set by ``sensitivity``; the background then moves towards the frame by
``alpha`` (an exponential running average, so a parked car becomes background and
a departed one stops showing after a while). The first frame of a stream, or the
first after its size changes, only sets the background: it never shows motion.

Changed pixels are counted per cell (the work image cut into about 40 cells along
its longer side); cells with enough of them *move*, and moving cells at most three
cells apart (7.5 % of the frame's longer side) form one region (a union-find), so
the two edges of a uniform object that moved less than its own size, whose middle
did not change, still make one box when they are that close. Farther apart they are
two boxes for a frame or two, until the background forgets the object's old place.
Each region whose changed pixels cover at least ``min_area`` of the frame becomes
one ``MOTION`` inference whose box bounds its changed pixels (normalized 0..1).
Both passes are numba kernels (:mod:`fastext.vision.kernels`) that release the GIL.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastext._proto.inferencing_pb2 import Inference, Motion, Rectangle
from fastext.processors.base import Processor
from fastext.vision.frames import Frame

__all__ = ["MotionDetector", "threshold_for"]

#: The work image's longer side is at most this many pixels.
WORK_SIZE = 480
#: Cells along the work image's longer side.
CELLS = 40
#: Moving cells at most this many cells apart (in x and in y) join one region.
LINK_RADIUS = 3


def threshold_for(sensitivity: float) -> float:
    """The luma difference (0..255) above which a pixel has changed: 100 at
    sensitivity 0, 4 at sensitivity 1 (about the noise of a good camera)."""
    return 100.0 - 96.0 * sensitivity


def _fraction(name: str, value: Any, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"motion {name} must be a number, got {value!r}")
    if value > 1 or value < 0 or (low_open and value == 0):
        bounds = "0 < {} <= 1" if low_open else "0 <= {} <= 1"
        raise ValueError(f"motion {name} must be within {bounds.format(name)}, got {value}")
    return float(value)


class MotionDetector(Processor):
    """``MOTION`` inferences, one box per moving region; none when the scene is still.

    Parameters: ``sensitivity`` (0..1, default 0.75: a threshold of 28 luma levels),
    ``min_area`` (the smallest region reported, as a fraction of the frame's area
    whose pixels changed; default 0.001) and ``alpha`` (how fast the background
    follows the scene, 0 < alpha <= 1; default 0.1, i.e. about 10 frames).
    """

    name = "motion"
    needs = "luma"
    luma_scale = 4  # a 1080p JPEG decodes at 480x270: the work image's size anyway
    stateful = True

    def __init__(
        self,
        sensitivity: float = 0.75,
        min_area: float = 0.001,
        alpha: float = 0.1,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        self.sensitivity = _fraction("sensitivity", sensitivity)
        self.min_area = _fraction("min_area", min_area)
        self.alpha = _fraction("alpha", alpha, low_open=True)
        self.threshold = threshold_for(self.sensitivity)
        self._shape: tuple[int, int] | None = None  # (height, width) of the stream's frames
        self._fresh = True  # the next frame sets the background
        # The server runs a stateful session's batches one at a time; the lock only keeps
        # the state whole if something else does not (it cannot restore frame order).
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget the background: the next frame starts the stream afresh."""
        with self._lock:
            self._shape = None
            self._fresh = True

    def _allocate(self, height: int, width: int) -> None:
        self._shape = (height, width)
        self._fresh = True
        s = max(1, -(-max(height, width) // WORK_SIZE))
        work_h, work_w = -(-height // s), -(-width // s)
        k = max(1, round(max(work_h, work_w) / CELLS))
        cells_h, cells_w = -(-work_h // k), -(-work_w // k)
        self._scale, self._cell = s, k
        self._min_count = max(1, k * k // 16)  # a few pixels, not one: sensor noise
        self._min_pixels = self.min_area * work_h * work_w
        self._background = np.zeros((work_h, work_w), np.float32)
        self._counts = np.zeros((cells_h, cells_w), np.int32)
        self._extents = np.zeros((cells_h, cells_w, 4), np.int32)
        self._boxes = np.zeros((cells_h * cells_w, 5), np.int64)

    def detect(self, luma: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Moving regions of the next frame as (left, top, width, height), normalized."""
        with self._lock:
            return self._detect(luma)

    def _detect(self, luma: np.ndarray) -> list[tuple[float, float, float, float]]:
        from fastext.vision import kernels  # on first use: the front never loads numba

        if luma.flags.writeable:  # one compiled kernel: read-only views, as frames give
            luma = luma.view()
            luma.flags.writeable = False
        height, width = luma.shape
        if self._shape != (height, width):
            self._allocate(height, width)
        fresh, self._fresh = self._fresh, False
        kernels.motion_cells(
            luma,
            self._scale,
            self._cell,
            self._background,
            self.threshold,
            self.alpha,
            fresh,
            self._counts,
            self._extents,
        )
        if fresh:
            return []
        found = kernels.motion_regions(
            self._counts, self._extents, self._min_count, LINK_RADIUS, self._boxes
        )
        s = self._scale
        regions = []
        for x0, y0, x1, y1, changed in self._boxes[:found].tolist():
            if changed < self._min_pixels:
                continue
            left, top = min(x0 * s, width) / width, min(y0 * s, height) / height
            right = min((x1 + 1) * s, width) / width
            bottom = min((y1 + 1) * s, height) / height
            regions.append((left, top, right - left, bottom - top))
        return regions

    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        return [
            [
                Inference(
                    type=Inference.InferenceType.MOTION,
                    motion=Motion(box=Rectangle(l=left, t=top, w=w, h=h)),
                )
                for left, top, w, h in self.detect(frame.luma())
            ]
            for frame in frames
        ]
