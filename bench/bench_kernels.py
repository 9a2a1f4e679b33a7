"""Benchmarks of the luma kernels and of JPEG decoding, each group printed side by side.

Run: ``PYTHONPATH=src python -m pytest bench/bench_kernels.py --benchmark-only -p no:cacheprovider``

``luma_mean <size>`` compares, on one read-only RGB24 view of a frame:

- ``numba``: :func:`fastext.vision.kernels.luma_mean_rgb` (what ``Frame.luma_mean`` runs);
- ``numba padded``: the same frame with 64 bytes of padding per row (a strided view);
- ``numpy``: the straightforward ``(px[..., 0] * 0.299 + ...).mean()``;
- ``memcpy``: ``np.copyto`` of the same frame, the bandwidth ceiling of one pass.

Targets: numba at least 5x numpy and at least half of memcpy's bandwidth
(``extra_info["bytes"]`` holds the frame size, to turn times into GB/s).

``jpeg decode 1920x1080`` compares a full RGB decode, a decode straight to gray, and
the 1/8-scale gray decode the brightness processor uses (both through fastext.vision.frames),
next to Pillow's decode + ``convert("L")``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from fastext.vision import kernels, warmup
from fastext.vision.frames import Encoding, PixelFormat, frame_from_encoded, raw_view

SIZES = [(416, 416), (1920, 1080)]
PAD = 64


@pytest.fixture(scope="module", autouse=True)
def _warm_kernels() -> None:
    warmup.warm()  # compile (or load) before timing, as workers do


def rgb_frame(width: int, height: int, pad: int = 0) -> np.ndarray:
    """A read-only RGB24 view of random pixels, rows ``pad`` bytes longer than needed."""
    stride = width * 3 + pad
    buf = np.random.default_rng(width).integers(0, 256, stride * height, dtype=np.uint8)
    return raw_view(buf.tobytes(), PixelFormat.RGB24, width, height, stride)


def numpy_luma_mean(view: np.ndarray) -> float:
    px = view.reshape(view.shape[0], -1, 3)
    return float((px[..., 0] * 0.299 + px[..., 1] * 0.587 + px[..., 2] * 0.114).mean())


def run(benchmark: Any, group: str, fn: Callable[..., Any], *args: object, **kwargs: object) -> Any:
    benchmark.group = group
    return benchmark(fn, *args, **kwargs)


@pytest.mark.parametrize(("width", "height"), SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("how", ["numba", "numba padded", "numpy", "memcpy"])
def test_luma_mean(benchmark: Any, how: str, width: int, height: int) -> None:
    view = rgb_frame(width, height, PAD if how == "numba padded" else 0)
    benchmark.extra_info["bytes"] = width * height * 3
    group = f"luma_mean {width}x{height} RGB24"
    if how.startswith("numba"):
        got = run(benchmark, group, kernels.luma_mean_rgb, view, 3, 0, 1, 2, width)
        assert got == pytest.approx(numpy_luma_mean(np.ascontiguousarray(view)), rel=1e-9)
    elif how == "numpy":
        run(benchmark, group, numpy_luma_mean, view)
    else:
        dst = np.empty_like(view)
        run(benchmark, group, np.copyto, dst, view)
        assert np.array_equal(dst, view)


@pytest.fixture(scope="module")
def jpeg_1080p() -> bytes:
    """A 1080p camera-like JPEG (about 200 KB): gradients, mild noise, quality 85.

    Entropy decoding dominates JPEG decode time and grows with detail, so the 1/8
    scale gains less on noisier frames (measured: 25 % at 90 KB, 6 % at 1 MB).
    """
    y, x = np.mgrid[0:1080, 0:1920].astype(np.float32)
    rng = np.random.default_rng(0)
    base = np.stack([x / 1919 * 255, y / 1079 * 255, (x + y) / 2998 * 255], axis=-1)
    image = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    return bytes(simplejpeg.encode_jpeg(image, quality=85))


def pillow_gray(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


@pytest.mark.parametrize("how", ["full rgb", "gray", "gray 1/8", "pillow L"])
def test_jpeg_decode(benchmark: Any, jpeg_1080p: bytes, how: str) -> None:
    group = "jpeg decode 1920x1080"
    if how == "full rgb":
        out = run(benchmark, group, simplejpeg.decode_jpeg, jpeg_1080p)
        assert np.shape(out) == (1080, 1920, 3)
    elif how == "pillow L":
        out = run(benchmark, group, pillow_gray, jpeg_1080p)
        assert np.shape(out) == (1080, 1920)
    else:
        scale = 8 if how == "gray 1/8" else 1
        frame = run(
            benchmark, group, frame_from_encoded, jpeg_1080p, Encoding.JPG, luma_scale=scale
        )
        assert frame.data.shape == ((135, 240) if scale == 8 else (1080, 1920))
