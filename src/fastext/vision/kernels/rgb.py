"""RGB image kernels: byte channels and RGB565/RGB555 to RGB, and a bilinear resize.

``out`` is always a writable C-contiguous (height, width, 3) uint8 array in R, G, B
order; sources are the same padded 2-D views the luma kernels take.
"""

from __future__ import annotations

import numpy as np

from fastext.vision.kernels.common import (
    _check_packed_args,
    _check_rgb_args,
    _check_rgb_out,
    _row_as_c,
    _unpack16,
    jit,
)


@jit
def rgb_bytes(view2d, bpp, r, g, b, width, out):  # type: ignore[no-untyped-def]
    """Fill ``out`` with the bytes at offsets r, g, b of each ``bpp``-byte pixel (3 or 4)."""
    height = view2d.shape[0]
    row_bytes = width * bpp
    _check_rgb_args(view2d, bpp, r, g, b, width)
    _check_rgb_out(out, height, width)
    scratch = np.empty(row_bytes, np.uint8)
    for y in range(height):
        row = _row_as_c(view2d[y][:row_bytes], scratch)
        # Flat 1-D indexing and a literal pixel size: interleaved groups LLVM vectorises.
        dst = out[y].reshape(3 * width)
        if bpp == 3:
            for x in range(width):
                dst[3 * x] = row[3 * x + r]
                dst[3 * x + 1] = row[3 * x + g]
                dst[3 * x + 2] = row[3 * x + b]
        else:
            for x in range(width):
                dst[3 * x] = row[4 * x + r]
                dst[3 * x + 1] = row[4 * x + g]
                dst[3 * x + 2] = row[4 * x + b]


@jit
def _packed_rgb_row(row, dst, hi, lo, is565):  # type: ignore[no-untyped-def]
    for x in range(dst.shape[0] // 3):
        pr, pg, pb = _unpack16(row[2 * x + lo], row[2 * x + hi], is565)
        dst[3 * x] = np.uint8(pr)
        dst[3 * x + 1] = np.uint8(pg)
        dst[3 * x + 2] = np.uint8(pb)


@jit
def rgb_packed16(view2d, width, big_endian, is565, out):  # type: ignore[no-untyped-def]
    """Fill ``out`` with the RGB of RGB565/RGB555 words, channels expanded by bit replication."""
    height = view2d.shape[0]
    row_bytes = 2 * width
    _check_packed_args(view2d, width)
    _check_rgb_out(out, height, width)
    scratch = np.empty(row_bytes, np.uint8)
    for y in range(height):
        row = _row_as_c(view2d[y][:row_bytes], scratch)
        dst = out[y].reshape(3 * width)
        if big_endian:
            if is565:
                _packed_rgb_row(row, dst, 0, 1, True)
            else:
                _packed_rgb_row(row, dst, 0, 1, False)
        elif is565:
            _packed_rgb_row(row, dst, 1, 0, True)
        else:
            _packed_rgb_row(row, dst, 1, 0, False)


# Bilinear weights in 11-bit fixed point (as OpenCV's INTER_LINEAR).
_WBITS = 11
_WONE = 1 << _WBITS


@jit
def _bilinear_taps(src_size, dst_size):  # type: ignore[no-untyped-def]
    """Per destination index: the two source indices and the weight of the second.

    Pixel centres are aligned (``src = (dst + 0.5) * scale - 0.5``), clamped at the edges.
    """
    i0 = np.empty(dst_size, np.int64)
    i1 = np.empty(dst_size, np.int64)
    w1 = np.empty(dst_size, np.int64)
    scale = src_size / dst_size
    for d in range(dst_size):
        s = (d + 0.5) * scale - 0.5
        if s < 0.0:
            s = 0.0
        lo = int(s)
        if lo > src_size - 1:
            lo = src_size - 1
        i0[d] = lo
        i1[d] = min(lo + 1, src_size - 1)
        w1[d] = int((s - lo) * _WONE + 0.5)
    return i0, i1, w1


@jit
def resize_bilinear(view2d, bpp, r, g, b, width, out):  # type: ignore[no-untyped-def]
    """Resize byte-channel pixels (as :func:`rgb_bytes` reads them) into ``out`` (h, w, 3).

    Bilinear, without a low-pass filter: shrinking by more than 2x skips pixels (as
    OpenCV's INTER_LINEAR does); fine for a model's input, and cheap.
    """
    height = view2d.shape[0]
    row_bytes = width * bpp
    if bpp < 3 or width < 1 or height < 1 or row_bytes > view2d.shape[1]:
        raise ValueError("bpp must be at least 3 and width * bpp fit in the row")
    if not (0 <= r < bpp and 0 <= g < bpp and 0 <= b < bpp):
        raise ValueError("channel offset outside the pixel")
    out_h = out.shape[0]
    out_w = out.shape[1]
    _check_rgb_out(out, out_h, out_w)
    xs0, xs1, wx = _bilinear_taps(width, out_w)
    ys0, ys1, wy = _bilinear_taps(height, out_h)
    for i in range(out_w):
        xs0[i] *= bpp
        xs1[i] *= bpp
    half = np.int64(1) << (2 * _WBITS - 1)
    for oy in range(out_h):
        top = view2d[ys0[oy]]
        bottom = view2d[ys1[oy]]
        fy = wy[oy]
        gy = _WONE - fy
        dst = out[oy].reshape(3 * out_w)
        for ox in range(out_w):
            a = xs0[ox]
            c = xs1[ox]
            fx = wx[ox]
            gx = _WONE - fx
            for ch in range(3):
                off = r
                if ch == 1:
                    off = g
                elif ch == 2:
                    off = b
                t = np.int64(top[a + off]) * gx + np.int64(top[c + off]) * fx
                u = np.int64(bottom[a + off]) * gx + np.int64(bottom[c + off]) * fx
                dst[3 * ox + ch] = np.uint8((t * gy + u * fy + half) >> (2 * _WBITS))
