"""Frames made on the spot: real-looking scenes, and every pixel format of the contract.

The encoders here are written independently of the server's decoders, so a
round trip through both checks one against the other.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF

__all__ = ["car_box", "encode", "scene", "scenes", "to_pixel_format"]

_CHANNELS: dict[int, str] = {  # pixel format -> order of R, G, B, A ("x") bytes
    VF.RGB24: "rgb",
    VF.BGR24: "bgr",
    VF.ARGB: "xrgb",
    VF.RGBA: "rgbx",
    VF.ABGR: "xbgr",
    VF.BGRA: "bgrx",
}


def car_box(width: int, height: int, index: int) -> tuple[int, int, int, int]:
    """Where :func:`scene` draws its car (a red box) in frame ``index``: ``(left, top,
    width, height)`` in pixels. It moves right by 1/40 of the width per frame."""
    bw, bh = max(1, width // 6), max(1, height // 8)
    x = (index * max(1, width // 40)) % max(1, width - bw)
    return x, int(height * 0.62), bw, bh


def scene(width: int, height: int, index: int, light: bool, seed: int = 0) -> np.ndarray:
    """A street-like picture: sky, ground, a moving car-sized box (red: :func:`car_box`),
    sensor noise.

    ``light`` scenes are daytime (mean luma well above 127), others night
    (well below).  Returns (height, width, 3) RGB uint8.
    """
    rng = np.random.default_rng(seed + index)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    if light:
        sky, ground = np.array([150, 200, 250], np.float32), np.array([120, 150, 110], np.float32)
    else:
        sky, ground = np.array([10, 14, 40], np.float32), np.array([25, 25, 20], np.float32)
    horizon = 0.55
    weight = np.clip((rows - horizon) * 8.0, 0.0, 1.0)[..., None]
    img = sky * (1 - weight) + ground * weight + (cols[..., None] - 0.5) * 20.0
    x, y, bw, bh = car_box(width, height, index)
    img[y : y + bh, x : x + bw] = [200, 40, 30] if light else [90, 20, 15]
    img += rng.normal(0.0, 4.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def scenes(
    width: int, height: int, count: int, period: int = 10
) -> Iterator[tuple[np.ndarray, bool]]:
    """``count`` scenes alternating day and night every ``period`` frames: (rgb, is_light)."""
    for index in range(count):
        light = (index // period) % 2 == 0
        yield scene(width, height, index, light), light


def to_pixel_format(
    rgb: np.ndarray, pixel_format: int, stride: int = 0, pad_value: int = 255
) -> bytes:
    """RGB (h, w, 3) uint8 → the bytes of one RAW frame in ``pixel_format``, rows ``stride`` apart."""
    h, w, _ = rgb.shape
    if pixel_format == VF.YUV420P:
        return _yuv420p(rgb, stride)
    if pixel_format in _CHANNELS:
        order = _CHANNELS[pixel_format]
        planes = {
            "r": rgb[..., 0],
            "g": rgb[..., 1],
            "b": rgb[..., 2],
            "x": np.full((h, w), 255, np.uint8),
        }
        pixels = np.stack([planes[c] for c in order], axis=-1).reshape(h, w * len(order))
    elif pixel_format in (VF.RGB565LE, VF.RGB565BE, VF.RGB555LE, VF.RGB555BE):
        r, g, b = (rgb[..., i].astype(np.uint16) for i in range(3))
        if pixel_format in (VF.RGB565LE, VF.RGB565BE):
            word = ((r >> 3) << 11) | ((g >> 2) << 5) | (b >> 3)
        else:
            word = ((r >> 3) << 10) | ((g >> 3) << 5) | (b >> 3)
        big = pixel_format in (VF.RGB565BE, VF.RGB555BE)
        pixels = word.astype(">u2" if big else "<u2").view(np.uint8).reshape(h, w * 2)
    else:
        raise ValueError(f"no RAW encoder for pixel format {pixel_format}")
    return _pad_rows(pixels, stride, pad_value)


def _pad_rows(pixels: np.ndarray, stride: int, pad_value: int) -> bytes:
    h, row = pixels.shape
    stride = stride or row
    if stride < row:
        raise ValueError("stride shorter than a row")
    out = np.full((h, stride), pad_value, np.uint8)
    out[:, :row] = pixels
    return out.tobytes()


def _yuv420p(rgb: np.ndarray, stride: int) -> bytes:
    h, w, _ = rgb.shape
    f = rgb.astype(np.float32)
    y = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    u = 128.0 - 0.168736 * f[..., 0] - 0.331264 * f[..., 1] + 0.5 * f[..., 2]
    v = 128.0 + 0.5 * f[..., 0] - 0.418688 * f[..., 1] - 0.081312 * f[..., 2]
    stride = stride or w
    ch, cw, cs = (h + 1) // 2, (w + 1) // 2, (stride + 1) // 2
    luma = _pad_rows(np.clip(np.rint(y), 0, 255).astype(np.uint8), stride, 16)
    chroma = b""
    for plane in (u, v):
        sub = np.clip(np.rint(plane[::2, ::2]), 0, 255).astype(np.uint8)[:ch, :cw]
        chroma += _pad_rows(sub, cs, 128)
    return luma + chroma


def encode(rgb: np.ndarray, encoding: int, quality: int = 85) -> bytes:
    """RGB → JPG/PNG/BMP bytes (JPEG by libjpeg-turbo through simplejpeg; PNG/BMP by Pillow)."""
    if encoding == VF.JPG:
        import simplejpeg

        return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB")
    if encoding in (VF.PNG, VF.BMP):
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buf, format="PNG" if encoding == VF.PNG else "BMP")
        return buf.getvalue()
    raise ValueError(f"no encoder for encoding {encoding}")
