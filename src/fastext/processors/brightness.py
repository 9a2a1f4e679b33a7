"""The seed's processor: a frame is ``dark`` when its BT.601 luma mean is below a threshold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastext._proto.inferencing_pb2 import Classification, Inference, Tag
from fastext.processors.base import Processor
from fastext.vision.frames import Frame

__all__ = ["Brightness"]


class Brightness(Processor):
    """Tags each frame ``dark`` (mean luma < threshold) or ``light``, confidence 1.0."""

    name = "brightness"
    luma_scale = 8  # the mean of a 1/8-scale DCT decode is the mean of the image

    def __init__(self, threshold: float = 127.0, **params: Any) -> None:
        super().__init__(**params)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"brightness threshold must be a number, got {threshold!r}")
        if not 0 <= threshold <= 256:
            raise ValueError(f"brightness threshold must be within 0..256, got {threshold}")
        self.threshold = float(threshold)

    def classify(self, mean: float) -> Inference:
        tag = "dark" if mean < self.threshold else "light"
        return Inference(
            type=Inference.InferenceType.CLASSIFICATION,
            classification=Classification(tag=Tag(value=tag, confidence=1.0)),
        )

    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        return [[self.classify(frame.luma_mean())] for frame in frames]
