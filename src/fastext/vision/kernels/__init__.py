"""Numba kernels behind :mod:`fastext.vision.frames` and the built-in processors.

BT.601 luma means and luma images (:mod:`.luma`); RGB images from every RAW format and
a bilinear resize (:mod:`.rgb`); RGB from planar 4:2:0 YCbCr (:mod:`.yuv`); the motion
detector's per-frame pass and its region grouping (:mod:`.motion`). What more than one
of them uses, the jit decorator first, is in :mod:`.common`.

Every kernel takes a 2-D ``uint8`` view whose rows may be padded (row stride larger
than the pixels it holds) and walks it row by row, so strided views of shared memory
run without copies and padding bytes are never read as pixels. Every kernel releases
the GIL.

Nothing is compiled at import. :mod:`fastext.vision.warmup` compiles (or loads from
numba's cache) every kernel for the argument types :mod:`fastext.vision.frames` uses,
in one process or shared among several; this package knows nothing of it.

Why the loops look the way they do (each measured on 1080p RGB24):

- explicit ``np.uint32`` casts: numba widens integer arithmetic to 64 bits,
  which halves or quarters the SIMD lanes;
- loops run ``range(n)`` over slices, never ``range(start, stop)``: a loop that may
  see a negative index keeps numba's wraparound check, which blocks vectorisation;
- a per-byte ``int16`` weight row turns interleaved channels into one contiguous
  multiply-add loop (``uint16`` weights are 3x slower: no signed 16-bit madd);
- interleaved loads of a strided row are only vectorised when the row is known to
  be contiguous, so strided rows are first copied to a scratch row (in L1).
"""

from __future__ import annotations

from fastext.vision.kernels.luma import (
    luma_mean_packed16,
    luma_mean_rgb,
    luma_packed16,
    luma_rgb,
    mean_u8,
)
from fastext.vision.kernels.motion import motion_cells, motion_regions
from fastext.vision.kernels.rgb import resize_bilinear, rgb_bytes, rgb_packed16
from fastext.vision.kernels.yuv import rgb_yuv420p

__all__ = [
    "luma_mean_packed16",
    "luma_mean_rgb",
    "luma_packed16",
    "luma_rgb",
    "mean_u8",
    "motion_cells",
    "motion_regions",
    "resize_bilinear",
    "rgb_bytes",
    "rgb_packed16",
    "rgb_yuv420p",
]
