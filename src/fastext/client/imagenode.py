"""The LVA image node: scale, then encode, as the pipeline did before the extension.

Scale modes follow LVA's: ``pad`` letterboxes or pillarboxes with black to the
exact size (LVA's default), ``preserveAspectRatio`` fits inside the size keeping
the aspect ratio (so one side may come out shorter), ``stretch`` ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client.synthetic import encode, to_pixel_format

__all__ = ["ENCODINGS", "PIXEL_FORMATS", "SCALE_MODES", "ImageNode"]

SCALE_MODES = ("pad", "preserveAspectRatio", "stretch")
ENCODINGS = {"raw": VF.RAW, "jpg": VF.JPG, "png": VF.PNG, "bmp": VF.BMP}
PIXEL_FORMATS = {
    name.lower(): VF.PixelFormat.Value(name) for name in VF.PixelFormat.keys() if name != "NONE"
}


@dataclass(frozen=True)
class ImageNode:
    width: int = 0  # 0: keep the source's (or derive it from the other side's aspect)
    height: int = 0
    scale: str = "pad"
    encoding: int = VF.RAW
    pixel_format: int = VF.RGB24
    jpeg_quality: int = 90

    def output_size(self, src_w: int, src_h: int) -> tuple[int, int]:
        """The (width, height) frames come out at, for a source of the given size."""
        w, h = self.width, self.height
        if not w and not h:
            return src_w, src_h
        if not w:
            return max(1, round(src_w * h / src_h)), h
        if not h:
            return w, max(1, round(src_h * w / src_w))
        if self.scale == "preserveAspectRatio":
            factor = min(w / src_w, h / src_h)
            return max(1, round(src_w * factor)), max(1, round(src_h * factor))
        return w, h

    def scale_frame(self, rgb: np.ndarray) -> np.ndarray:
        src_h, src_w = rgb.shape[:2]
        out_w, out_h = self.output_size(src_w, src_h)
        if (out_w, out_h) == (src_w, src_h):
            return rgb
        image = Image.fromarray(rgb, "RGB")
        if self.scale != "pad" or not (self.width and self.height):
            return np.asarray(image.resize((out_w, out_h), Image.Resampling.BILINEAR))
        factor = min(out_w / src_w, out_h / src_h)
        inner = (max(1, round(src_w * factor)), max(1, round(src_h * factor)))
        canvas = np.zeros((out_h, out_w, 3), np.uint8)  # black bars
        x, y = (out_w - inner[0]) // 2, (out_h - inner[1]) // 2
        canvas[y : y + inner[1], x : x + inner[0]] = np.asarray(
            image.resize(inner, Image.Resampling.BILINEAR)
        )
        return canvas

    def encode_frame(self, rgb: np.ndarray) -> bytes:
        return self.encode_scaled(self.scale_frame(rgb))

    def encode_scaled(self, scaled: np.ndarray) -> bytes:
        """Encode a frame :meth:`scale_frame` already brought to the output size."""
        if self.encoding == VF.RAW:
            return to_pixel_format(scaled, self.pixel_format)
        return encode(scaled, self.encoding, quality=self.jpeg_quality)
