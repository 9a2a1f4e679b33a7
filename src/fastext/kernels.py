"""Numba kernels behind :mod:`fastext.frames`: BT.601 luma means and luma images.

Every kernel takes a 2-D ``uint8`` view whose rows may be padded (row stride larger
than the pixels it holds) and walks it row by row, so strided views of shared memory
run without copies and padding bytes are never read as pixels. Sums are exact
integers (weights 299/587/114) divided once at the end.

Nothing is compiled at import; :func:`warm` compiles (or loads from numba's cache,
located by numba's own ``NUMBA_CACHE_DIR``) every kernel for the argument types
:mod:`fastext.frames` uses. Every kernel releases the GIL.

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

from typing import Any

import numpy as np
from numba import njit, types
from numba.extending import overload

__all__ = [
    "luma_mean_packed16",
    "luma_mean_rgb",
    "luma_packed16",
    "luma_rgb",
    "mean_u8",
    "warm",
]

# BT.601 weights scaled by 1000; they sum to 1000.
_WR, _WG, _WB = 299, 587, 114
# Pixels whose weighted values are summed into one uint32: 255 * 1000 * 16384 < 2**32.
_CHUNK_PIXELS = 16384
# Bytes (or 8-bit channel values) summed into one uint32: 255 * 2**24 < 2**32.
_CHUNK_BYTES = 1 << 24

_jit = njit(nogil=True, cache=True, boundscheck=False)
# Typed as Any: numba's stub of jit_options lacks boundscheck, which it accepts.
_OVERLOAD_OPTIONS: Any = {"nogil": True, "boundscheck": False}


def _row_as_c(row, scratch):  # type: ignore[no-untyped-def]
    """``row`` itself when numba knows it is contiguous, else a copy in ``scratch``."""
    raise NotImplementedError("only callable from numba kernels")


@overload(_row_as_c, jit_options=_OVERLOAD_OPTIONS)
def _row_as_c_impl(row, scratch):  # type: ignore[no-untyped-def]
    if isinstance(row, types.Array) and row.layout == "C":
        return lambda row, scratch: row

    def copy(row, scratch):  # type: ignore[no-untyped-def]
        n = row.shape[0]
        for i in range(n):
            scratch[i] = row[i]
        return scratch[:n]

    return copy


@_jit
def luma_mean_rgb(view2d, bpp, r, g, b, width):  # type: ignore[no-untyped-def]
    """Mean BT.601 luma of ``width`` pixels per row, byte channels at offsets r, g, b.

    ``view2d`` has shape ``(height, >= width * bpp)``; bytes past ``width * bpp`` in a
    row are ignored. Returns NaN for an empty image.
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
    for y in range(height):
        row = view2d[y]
        for start in range(0, row_bytes, chunk):
            seg = row[start : min(start + chunk, row_bytes)]
            acc = np.uint32(0)
            for i in range(seg.shape[0]):
                acc = np.uint32(acc + np.uint32(seg[i]) * np.uint32(weights[i]))
            total += acc
    return total / (1000.0 * height * width)


@_jit
def _expand5(v):  # type: ignore[no-untyped-def]
    return np.uint32(np.uint32(v << 3) | np.uint32(v >> 2))


@_jit
def _expand6(v):  # type: ignore[no-untyped-def]
    return np.uint32(np.uint32(v << 2) | np.uint32(v >> 4))


@_jit
def _unpack16(lo_byte, hi_byte, is565):  # type: ignore[no-untyped-def]
    """8-bit (R, G, B) of one RGB565/RGB555 word, expanded by bit replication."""
    # Every intermediate is truncated to 32 bits so LLVM keeps 32-bit SIMD lanes.
    word = np.uint32(np.uint32(np.uint32(hi_byte) << 8) | np.uint32(lo_byte))
    b = _expand5(np.uint32(word & 31))
    if is565:
        r = _expand5(np.uint32(word >> 11))
        g = _expand6(np.uint32(np.uint32(word >> 5) & 63))
    else:
        r = _expand5(np.uint32(np.uint32(word >> 10) & 31))
        g = _expand5(np.uint32(np.uint32(word >> 5) & 31))
    return r, g, b


@_jit
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


@_jit
def luma_mean_packed16(view2d, width, big_endian, is565):  # type: ignore[no-untyped-def]
    """Mean BT.601 luma of ``width`` RGB565 (``is565``) or RGB555 pixels per row.

    Pixels are 16-bit words, big- or little-endian. Returns NaN for an empty image.
    """
    height = view2d.shape[0]
    row_bytes = 2 * width
    if width < 0 or row_bytes > view2d.shape[1]:
        raise ValueError("2 * width exceeds the row")
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


@_jit
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


@_jit
def _round_1000(v):  # type: ignore[no-untyped-def]
    """``round(v / 1000)`` as uint8, for a weighted pixel sum of at most 255 * 1000."""
    return np.uint8(np.uint32(v + np.uint32(500)) // np.uint32(1000))


@_jit
def _check_out(out, height, width):  # type: ignore[no-untyped-def]
    if out.shape[0] != height or out.shape[1] != width:
        raise ValueError("out must have shape (height, width)")


@_jit
def luma_rgb(view2d, bpp, r, g, b, width, out):  # type: ignore[no-untyped-def]
    """Fill ``out`` (height, width) with rounded BT.601 luma; ``bpp`` is 3 or 4."""
    height = view2d.shape[0]
    row_bytes = width * bpp
    if (bpp != 3 and bpp != 4) or width < 0 or row_bytes > view2d.shape[1]:
        raise ValueError("bpp must be 3 or 4 and width * bpp fit in the row")
    if not (0 <= r < bpp and 0 <= g < bpp and 0 <= b < bpp):
        raise ValueError("channel offset outside the pixel")
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


@_jit
def _packed_luma_row(row, dst, hi, lo, is565):  # type: ignore[no-untyped-def]
    for x in range(dst.shape[0]):
        pr, pg, pb = _unpack16(row[2 * x + lo], row[2 * x + hi], is565)
        dst[x] = _round_1000(np.uint32(pr * _WR + pg * _WG + pb * _WB))


@_jit
def luma_packed16(view2d, width, big_endian, is565, out):  # type: ignore[no-untyped-def]
    """Fill ``out`` (height, width) with rounded BT.601 luma of RGB565/RGB555 pixels."""
    height = view2d.shape[0]
    row_bytes = 2 * width
    if width < 0 or row_bytes > view2d.shape[1]:
        raise ValueError("2 * width exceeds the row")
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


def _warm_views() -> list[np.ndarray]:
    """Tiny read-only views of both layouts frames hand to kernels: contiguous, padded."""
    contiguous = np.zeros((2, 8), np.uint8)
    padded = np.zeros((2, 12), np.uint8)[:, :8]
    for view in (contiguous, padded):
        view.flags.writeable = False
    return [contiguous, padded]


def warm() -> None:
    """Compile, or load from numba's cache, every kernel for the types used at run time.

    Those types: ``uint8`` 2-D read-only views, C-contiguous or strided; Python ints;
    Python bools; ``out`` a writable C-contiguous ``uint8`` array.
    """
    out = np.zeros((2, 2), np.uint8)
    for view in _warm_views():
        luma_mean_rgb(view, 4, 0, 1, 2, 2)
        luma_mean_packed16(view, 2, False, True)
        mean_u8(view)
        luma_rgb(view, 4, 0, 1, 2, 2, out)
        luma_packed16(view, 2, False, True, out)
