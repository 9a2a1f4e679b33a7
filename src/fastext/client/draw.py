"""Inferences drawn on a frame: what the model saw, and what it said about it.

Boxes (``ENTITY`` and ``MOTION``) are outlined in a color per label, with the
label and its confidence on a tab of that color; classification tags, texts and
events are listed in the top-left corner; the stream and the frame's timestamp
run along the bottom.  Pure functions of the frame and the sample (Pillow's
ImageDraw), so they can run on any thread.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fastext._proto import inferencing_pb2

__all__ = ["Box", "boxes_of", "draw_frame", "label_color", "line_width", "pixel_box"]

Inference = inferencing_pb2.Inference
Color = tuple[int, int, int]


def label_color(label: str) -> Color:
    """A bright, saturated color for ``label``, the same in every run (CRC-32 of the label
    picks the hue; ``hash()`` would change with the process's hash seed)."""
    hue = (zlib.crc32(label.encode("utf-8")) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


@dataclass(frozen=True)
class Box:
    """One box to draw: normalized ``l, t, w, h`` as the inference gave them."""

    label: str
    confidence: float  # 0: none given
    l: float  # noqa: E741 - the contract's field name
    t: float
    w: float
    h: float


def boxes_of(inferences: Iterable[Inference]) -> list[Box]:
    """The boxes among ``inferences``: entities (labelled by their tag) and motion regions."""
    out = []
    for inf in inferences:
        kind = inf.WhichOneof("value")
        if kind == "entity" and inf.entity.HasField("box"):
            tag, rect = inf.entity.tag, inf.entity.box
            label = tag.value or inf.subtype or "entity"
            if inf.entity.id:
                label = f"{label} #{inf.entity.id}"
            out.append(Box(label, tag.confidence, rect.l, rect.t, rect.w, rect.h))
        elif kind == "motion" and inf.motion.HasField("box"):
            rect = inf.motion.box
            out.append(Box(inf.subtype or "motion", 0.0, rect.l, rect.t, rect.w, rect.h))
    return out


def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box's outermost pixels (x0, y0, x1, y1), inclusive, clamped to the frame;
    None for a box with no area (or not a number)."""
    values = (box.l, box.t, box.w, box.h)
    if not all(math.isfinite(v) for v in values) or box.w <= 0 or box.h <= 0:
        return None
    # Boxes travel as float32: 0.9 arrives as 0.89999998, which must still mean row 45 of 50.
    eps = 1e-3
    x0 = min(max(math.floor(box.l * width + eps), 0), width - 1)
    y0 = min(max(math.floor(box.t * height + eps), 0), height - 1)
    x1 = min(max(math.ceil((box.l + box.w) * width - eps) - 1, x0), width - 1)
    y1 = min(max(math.ceil((box.t + box.h) * height - eps) - 1, y0), height - 1)
    return x0, y0, x1, y1


def line_width(width: int, height: int) -> int:
    """Outline thickness in pixels: 2 up to 480 lines, thicker for larger frames."""
    return max(2, min(width, height) // 200)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow ships a scalable default font when built with FreeType (its wheels are).
    return ImageFont.load_default(size=size)


def _text_size(height: int) -> int:
    return max(11, height // 30)


def _ink(background: Color) -> Color:
    """Black or white text, whichever reads better on ``background``."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _tab(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    fill: Color,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> int:
    """Text on a filled tab whose top-left is ``xy``; returns the tab's height."""
    left, _, right, bottom = (math.ceil(v) for v in draw.textbbox(xy, text, font=font))
    pad = 2
    draw.rectangle((left - pad, xy[1], right + pad, bottom + pad), fill=fill)
    draw.text(xy, text, fill=_ink(fill), font=font)
    return bottom + pad - xy[1] + 1


def _text_height(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> int:
    return math.ceil(draw.textbbox((0, 0), text, font=font)[3])


def _notes(inferences: Iterable[Inference]) -> list[str]:
    """What has no box: classification tags, texts, events (in the order given)."""
    notes = []
    for inf in inferences:
        kind = inf.WhichOneof("value")
        if kind == "classification":
            tag = inf.classification.tag
            notes.append(f"{tag.value} {tag.confidence:.2f}" if tag.confidence else tag.value)
        elif kind == "text":
            notes.append(f'"{inf.text.value}"')
        elif kind == "event":
            notes.append(f"event {inf.event.name}")
    return notes


def draw_frame(
    rgb: np.ndarray,
    inferences: Iterable[Inference],
    *,
    stream: int,
    timestamp: int,
    timescale: int = 90000,
) -> Image.Image:
    """A new RGB image: ``rgb`` (height, width, 3) with ``inferences`` drawn on it.
    ``rgb`` itself is left as it is (Pillow copies 24-bit pixels into its own layout)."""
    image = Image.fromarray(np.asarray(rgb, np.uint8))
    width, height = image.size
    draw = ImageDraw.Draw(image)
    font = _font(_text_size(height))
    inferences = list(inferences)
    thick = line_width(width, height)
    for box in boxes_of(inferences):
        corners = pixel_box(box, width, height)
        if corners is None:
            continue
        color = label_color(box.label)
        draw.rectangle(corners, outline=color, width=thick)
        text = f"{box.label} {box.confidence:.2f}" if box.confidence else box.label
        tab_h = _text_height(draw, text, font) + 3
        x0, y0 = corners[0], corners[1]
        # Above the box, or inside its top edge when the box touches the frame's top.
        _tab(draw, (x0 + 2, y0 - tab_h if y0 >= tab_h else y0 + thick), text, color, font)
    y = 2
    for note in _notes(inferences):
        y += _tab(draw, (4, y), note, (32, 32, 32), font)
    caption = f"stream {stream}  t {timestamp / (timescale or 90000):.3f} s  ({timestamp})"
    caption_h = _text_height(draw, caption, font) + 4
    _tab(draw, (4, height - caption_h), caption, (32, 32, 32), font)
    return image
