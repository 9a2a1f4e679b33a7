"""Planar 4:2:0 BT.601 YCbCr (a decoded JPEG's planes) to an RGB image."""

from __future__ import annotations

import numpy as np

from fastext.vision.kernels.common import _check_rgb_out, jit

# BT.601 YCbCr -> RGB in 16.16 fixed point. Full range (JFIF: Y, Cb, Cr all 0..255)
# and limited range (Y 16..235, Cb/Cr 16..240, as most broadcast video is).
_FIX = 1 << 16
_FULL_KY, _FULL_Y0 = _FIX, 0
_FULL_KR, _FULL_KGU, _FULL_KGV, _FULL_KB = (
    round(1.402 * _FIX),
    round(0.344136 * _FIX),
    round(0.714136 * _FIX),
    round(1.772 * _FIX),
)
_LIM_KY, _LIM_Y0 = round(255 / 219 * _FIX), 16
_LIM_KR, _LIM_KGU, _LIM_KGV, _LIM_KB = (
    round(1.402 * 255 / 224 * _FIX),
    round(0.344136 * 255 / 224 * _FIX),
    round(0.714136 * 255 / 224 * _FIX),
    round(1.772 * 255 / 224 * _FIX),
)


@jit
def _to_u8(v):  # type: ignore[no-untyped-def]
    """A 16.16 fixed-point value (rounding already added) clamped to 0..255."""
    return np.uint8(min(max(np.int32(v) >> 16, 0), 255))


@jit
def rgb_yuv420p(y_plane, u_plane, v_plane, full_range, out):  # type: ignore[no-untyped-def]
    """Fill ``out`` (height, width, 3) from planar 4:2:0 BT.601 YCbCr.

    ``y_plane`` is (height, >= width); ``u_plane`` and ``v_plane`` are
    (ceil(height/2), >= ceil(width/2)). Each chroma sample covers a 2x2 block of
    pixels (no interpolation). ``full_range``: JFIF levels; otherwise limited (16..235).
    """
    height = out.shape[0]
    width = out.shape[1]
    if y_plane.shape[0] < height or y_plane.shape[1] < width:
        raise ValueError("Y plane smaller than the image")
    ch = (height + 1) // 2
    cw = (width + 1) // 2
    if (
        u_plane.shape[0] < ch
        or u_plane.shape[1] < cw
        or v_plane.shape[0] < ch
        or v_plane.shape[1] < cw
    ):
        raise ValueError("chroma plane smaller than half the image")
    _check_rgb_out(out, height, width)
    if full_range:
        ky, y0 = np.int32(_FULL_KY), np.int32(_FULL_Y0)
        kr, kgu, kgv, kb = (
            np.int32(_FULL_KR),
            np.int32(_FULL_KGU),
            np.int32(_FULL_KGV),
            np.int32(_FULL_KB),
        )
    else:
        ky, y0 = np.int32(_LIM_KY), np.int32(_LIM_Y0)
        kr, kgu, kgv, kb = (
            np.int32(_LIM_KR),
            np.int32(_LIM_KGU),
            np.int32(_LIM_KGV),
            np.int32(_LIM_KB),
        )
    half = np.int32(1 << 15)
    # Chroma terms of a row pair, spread to every pixel; then R, G, B rows; then interleave:
    # three simple loops LLVM vectorises, where one fused loop would not be.
    add_r = np.empty(width, np.int32)
    add_g = np.empty(width, np.int32)
    add_b = np.empty(width, np.int32)
    planes = np.empty((3, width), np.uint8)
    red, green, blue = planes[0], planes[1], planes[2]
    for y in range(height):
        if y % 2 == 0:
            urow = u_plane[y // 2]
            vrow = v_plane[y // 2]
            for x in range(width):
                cb = np.int32(urow[x >> 1]) - np.int32(128)
                cr = np.int32(vrow[x >> 1]) - np.int32(128)
                add_r[x] = np.int32(kr * cr + half)
                add_g[x] = np.int32(half - kgu * cb - kgv * cr)
                add_b[x] = np.int32(kb * cb + half)
        yrow = y_plane[y]
        for x in range(width):
            luma = np.int32((np.int32(yrow[x]) - y0) * ky)
            red[x] = _to_u8(luma + add_r[x])
            green[x] = _to_u8(luma + add_g[x])
            blue[x] = _to_u8(luma + add_b[x])
        dst = out[y].reshape(3 * width)
        for x in range(width):
            dst[3 * x] = red[x]
            dst[3 * x + 1] = green[x]
            dst[3 * x + 2] = blue[x]
