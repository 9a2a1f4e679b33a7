"""Luma kernels: BT.601 luma means (byte channels, RGB565/RGB555, one-channel images)
and luma images.

Sums are exact integers (weights 299/587/114) divided once at the end.
"""

from __future__ import annotations

import numpy as np

from fastext.vision.kernels.common import (
    _check_packed_args,
    _check_rgb_args,
    _row_as_c,
    _unpack16,
    jit,
)

# BT.601 weights scaled by 1000; they sum to 1000.
_WR, _WG, _WB = 299, 587, 114
# Pixels whose weighted values are summed into one uint32: 255 * 1000 * 16384 < 2**32.
_CHUNK_PIXELS = 16384
# Bytes (or 8-bit channel values) summed into one uint32: 255 * 2**24 < 2**32.
_CHUNK_BYTES = 1 << 24


@jit
def luma_mean_rgb(view2d, bpp, r, g, b, width):  # type: ignore[no-untyped-def]
    """Mean BT.601 luma of ``width`` pixels per row, byte channels at offsets r, g, b.

    ``view2d`` has shape ``(height, >= width * bpp)``; bytes past ``width * bpp`` in a
    row are ignored. Returns NaN for an empty image.

    A row of the top half and one of the bottom half are summed in the same loop: on a
    frame not in cache (a client's frame, read once) two sequential streams keep more
    reads in flight than one, and the mean costs about what a plain read of the frame
    does (bench/_membw.py has the yardstick).
    """
    height = view2d.shape[0]
    row_bytes = width * bpp
    if bpp < 1 or width < 0 or row_bytes > view2d.shape[1]:
        raise ValueError("width * bpp exceeds the row")
    if not (0 <= r < bpp and 0 <= g < bpp and 0 <= b < bpp):
        raise ValueError("channel offset outside the pixel")
    if height * width == 0:
        return np.nan
    chunk = min(width, _CHUNK_PIXELS) * bpp
    weights = np.zeros(chunk, np.int16)
    for x in range(0, chunk, bpp):
        weights[x + r] = _WR
        weights[x + g] = _WG
        weights[x + b] = _WB
    total = np.int64(0)
    half = height // 2
    for y in range(half):
        top = view2d[y]
        bottom = view2d[y + half]
        for start in range(0, row_bytes, chunk):
            stop = min(start + chunk, row_bytes)
            seg_top = top[start:stop]
            seg_bottom = bottom[start:stop]
            acc_top = np.uint32(0)
            acc_bottom = np.uint32(0)
            for i in range(seg_top.shape[0]):
                weight = np.uint32(weights[i])
                acc_top = np.uint32(acc_top + np.uint32(seg_top[i]) * weight)
                acc_bottom = np.uint32(acc_bottom + np.uint32(seg_bottom[i]) * weight)
            total += acc_top
            total += acc_bottom
    if height % 2:  # the last row of an odd height, alone
        row = view2d[height - 1]
        for start in range(0, row_bytes, chunk):
            seg = row[start : min(start + chunk, row_bytes)]
            acc = np.uint32(0)
            for i in range(seg.shape[0]):
                acc = np.uint32(acc + np.uint32(seg[i]) * np.uint32(weights[i]))
            total += acc
    return total / (1000.0 * height * width)


@jit
def _packed_sums(seg, hi, lo, is565):  # type: ignore[no-untyped-def]
    """Sums of the expanded R, G, B of the two-byte pixels of a contiguous ``seg``."""
    sr = np.uint32(0)
    sg = np.uint32(0)
    sb = np.uint32(0)
    for x in range(seg.shape[0] // 2):
        pr, pg, pb = _unpack16(seg[2 * x + lo], seg[2 * x + hi], is565)
        sr = np.uint32(sr + pr)
        sg = np.uint32(sg + pg)
        sb = np.uint32(sb + pb)
    return sr, sg, sb


@jit
def luma_mean_packed16(view2d, width, big_endian, is565):  # type: ignore[no-untyped-def]
    """Mean BT.601 luma of ``width`` RGB565 (``is565``) or RGB555 pixels per row.

    Pixels are 16-bit words, big- or little-endian. Returns NaN for an empty image.
    """
    height = view2d.shape[0]
    row_bytes = 2 * width
    _check_packed_args(view2d, width)
    if height * width == 0:
        return np.nan
    scratch = np.empty(row_bytes, np.uint8)
    sr = np.int64(0)
    sg = np.int64(0)
    sb = np.int64(0)
    for y in range(height):
        row = _row_as_c(view2d[y][:row_bytes], scratch)
        for start in range(0, row_bytes, _CHUNK_BYTES):
            seg = row[start : start + _CHUNK_BYTES]
            # Literal arguments in each branch let LLVM specialise the inlined loop.
            if big_endian:
                if is565:
                    pr, pg, pb = _packed_sums(seg, 0, 1, True)
                else:
                    pr, pg, pb = _packed_sums(seg, 0, 1, False)
            elif is565:
                pr, pg, pb = _packed_sums(seg, 1, 0, True)
            else:
                pr, pg, pb = _packed_sums(seg, 1, 0, False)
            sr += pr
            sg += pg
            sb += pb
    return (_WR * sr + _WG * sg + _WB * sb) / (1000.0 * height * width)


@jit
def mean_u8(view2d):  # type: ignore[no-untyped-def]
    """Mean of a 2-D ``uint8`` array whose rows may be strided; NaN when empty."""
    height, width = view2d.shape
    if height * width == 0:
        return np.nan
    total = np.int64(0)
    for y in range(height):
        row = view2d[y]
        for start in range(0, width, _CHUNK_BYTES):
            seg = row[start : start + _CHUNK_BYTES]
            acc = np.uint32(0)
            for i in range(seg.shape[0]):
                acc = np.uint32(acc + np.uint32(seg[i]))
            total += acc
    return total / (height * width)


@jit
def _round_1000(v):  # type: ignore[no-untyped-def]
    """``round(v / 1000)`` as uint8, for a weighted pixel sum of at most 255 * 1000."""
    return np.uint8(np.uint32(v + np.uint32(500)) // np.uint32(1000))


@jit
def _check_out(out, height, width):  # type: ignore[no-untyped-def]
    if out.shape[0] != height or out.shape[1] != width:
        raise ValueError("out must have shape (height, width)")


@jit
def luma_rgb(view2d, bpp, r, g, b, width, out):  # type: ignore[no-untyped-def]
    """Fill ``out`` (height, width) with rounded BT.601 luma; ``bpp`` is 3 or 4."""
    height = view2d.shape[0]
    row_bytes = width * bpp
    _check_rgb_args(view2d, bpp, r, g, b, width)
    _check_out(out, height, width)
    w = np.zeros(4, np.uint32)
    w[r] = _WR
    w[g] = _WG
    w[b] = _WB
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    scratch = np.empty(row_bytes, np.uint8)
    for y in range(height):
        row = _row_as_c(view2d[y][:row_bytes], scratch)
        dst = out[y]
        # A literal pixel size makes the loads an interleaved group LLVM vectorises.
        if bpp == 3:
            for x in range(width):
                v = np.uint32(
                    np.uint32(row[3 * x]) * w0
                    + np.uint32(row[3 * x + 1]) * w1
                    + np.uint32(row[3 * x + 2]) * w2
                )
                dst[x] = _round_1000(v)
        else:
            for x in range(width):
                v = np.uint32(
                    np.uint32(row[4 * x]) * w0
                    + np.uint32(row[4 * x + 1]) * w1
                    + np.uint32(row[4 * x + 2]) * w2
                    + np.uint32(row[4 * x + 3]) * w3
                )
                dst[x] = _round_1000(v)


@jit
def _packed_luma_row(row, dst, hi, lo, is565):  # type: ignore[no-untyped-def]
    for x in range(dst.shape[0]):
        pr, pg, pb = _unpack16(row[2 * x + lo], row[2 * x + hi], is565)
        dst[x] = _round_1000(np.uint32(pr * _WR + pg * _WG + pb * _WB))


@jit
def luma_packed16(view2d, width, big_endian, is565, out):  # type: ignore[no-untyped-def]
    """Fill ``out`` (height, width) with rounded BT.601 luma of RGB565/RGB555 pixels."""
    height = view2d.shape[0]
    row_bytes = 2 * width
    _check_packed_args(view2d, width)
    _check_out(out, height, width)
    scratch = np.empty(row_bytes, np.uint8)
    for y in range(height):
        row = _row_as_c(view2d[y][:row_bytes], scratch)
        dst = out[y]
        if big_endian:
            if is565:
                _packed_luma_row(row, dst, 0, 1, True)
            else:
                _packed_luma_row(row, dst, 0, 1, False)
        elif is565:
            _packed_luma_row(row, dst, 1, 0, True)
        else:
            _packed_luma_row(row, dst, 1, 0, False)
