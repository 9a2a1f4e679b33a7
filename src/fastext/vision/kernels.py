"""Numba kernels behind :mod:`fastext.vision.frames` and the built-in processors.

BT.601 luma means and luma images; RGB images from every RAW format and a bilinear
resize; the motion detector's per-frame pass and its region grouping.

Every kernel takes a 2-D ``uint8`` view whose rows may be padded (row stride larger
than the pixels it holds) and walks it row by row, so strided views of shared memory
run without copies and padding bytes are never read as pixels. Sums are exact
integers (weights 299/587/114) divided once at the end.

Nothing is compiled at import; :func:`warm` compiles (or loads from numba's cache,
located by numba's own ``NUMBA_CACHE_DIR``) every kernel for the argument types
:mod:`fastext.vision.frames` uses; :func:`warm_shared` does the same in several worker
processes at once while compiling each function in one of them only (a cold compile
of the whole set costs tens of CPU seconds; two workers doing it side by side each
paid it in full). Every kernel releases the GIL.

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, types
from numba.core.dispatcher import Dispatcher
from numba.extending import overload

from fastext.vision.warmup import Unit, run_units

__all__ = [
    "cache_dir",
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
    "warm",
    "warm_shared",
    "warm_units",
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
def _check_rgb_args(view2d, bpp, r, g, b, width):  # type: ignore[no-untyped-def]
    """The checks every byte-channel kernel makes before it reads a pixel."""
    if (bpp != 3 and bpp != 4) or width < 0 or width * bpp > view2d.shape[1]:
        raise ValueError("bpp must be 3 or 4 and width * bpp fit in the row")
    if not (0 <= r < bpp and 0 <= g < bpp and 0 <= b < bpp):
        raise ValueError("channel offset outside the pixel")


@_jit
def _check_packed_args(view2d, width):  # type: ignore[no-untyped-def]
    """The check every RGB565/RGB555 kernel makes before it reads a pixel."""
    if width < 0 or 2 * width > view2d.shape[1]:
        raise ValueError("2 * width exceeds the row")


@_jit
def _check_out(out, height, width):  # type: ignore[no-untyped-def]
    if out.shape[0] != height or out.shape[1] != width:
        raise ValueError("out must have shape (height, width)")


@_jit
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


def _warm_views() -> list[np.ndarray]:
    """Tiny read-only views of both layouts frames hand to kernels: contiguous, padded."""
    contiguous = np.zeros((2, 8), np.uint8)
    padded = np.zeros((2, 12), np.uint8)[:, :8]
    for view in (contiguous, padded):
        view.flags.writeable = False
    return [contiguous, padded]


def warm() -> None:
    """Compile, or load from numba's cache, every kernel for the types used at run time.

    Those types: ``uint8`` 2-D read-only views, C-contiguous or strided; Python ints,
    floats and bools; ``out`` and the motion state writable C-contiguous arrays.
    """
    for unit in warm_units():
        unit.run()


@dataclass(frozen=True)
class WarmReport:
    """What one process's warm-up did: every cached function it made ready, and of those
    the ones compiled here or loaded (a function may have signatures of each kind; a
    helper compiled into its caller's cache entry is in neither)."""

    functions: list[str]
    compiled: list[str]
    loaded: list[str]


def warm_shared() -> WarmReport:
    """:func:`warm`, sharing the compile work with other processes warming at once.

    Every process still ends with every kernel (so any frame finds its kernel ready),
    but each numba function is compiled by one process only; the others load it from
    numba's cache once it is there (see :mod:`fastext.vision.warmup` for why and how).
    Without a writable cache directory, each process compiles what it needs itself.
    """
    units = warm_units()
    run_units(units, cache_dir(), prefix="kernels.")
    functions = sorted(set().union(*(u.functions for u in units)))
    stats = {name: globals()[name].stats for name in functions}
    return WarmReport(
        functions=functions,
        compiled=[n for n in functions if sum(stats[n].cache_misses.values())],
        loaded=[n for n in functions if sum(stats[n].cache_hits.values())],
    )


def cache_dir() -> str | None:
    """Where numba keeps this module's cache: NUMBA_CACHE_DIR, else ``__pycache__`` next
    to this file, else a per-user directory; None when it found none writable."""
    path = mean_u8.stats.cache_path
    return path if isinstance(path, str) and path else None


def warm_units() -> list[Unit]:
    """The warm-up as independent units: one per public kernel (motion's two together).

    Costliest first, by cold compile time measured on x86-64 (the RGB565/555 kernels,
    four literal-specialised loops each, take longest). A unit's functions are the
    kernel and every jitted helper it calls, found from the code itself.
    """
    out = np.zeros((2, 2), np.uint8)
    rgb = np.zeros((2, 2, 3), np.uint8)
    views = _warm_views()

    def unit(name: str, kernels: tuple[Any, ...], call: Callable[[np.ndarray], object]) -> Unit:
        def run() -> None:
            for view in views:
                call(view)

        functions = frozenset().union(*(_jitted_closure(k) for k in kernels))
        return Unit(name, run, functions)

    return [
        unit(
            "luma_mean_packed16",
            (luma_mean_packed16,),
            lambda v: luma_mean_packed16(v, 2, False, True),
        ),
        unit("luma_packed16", (luma_packed16,), lambda v: luma_packed16(v, 2, False, True, out)),
        unit("motion", (motion_cells, motion_regions), _warm_motion),
        unit("rgb_packed16", (rgb_packed16,), lambda v: rgb_packed16(v, 2, False, True, rgb)),
        unit("rgb_yuv420p", (rgb_yuv420p,), _warm_yuv420p),
        unit("luma_rgb", (luma_rgb,), lambda v: luma_rgb(v, 4, 0, 1, 2, 2, out)),
        unit("rgb_bytes", (rgb_bytes,), lambda v: rgb_bytes(v, 4, 0, 1, 2, 2, rgb)),
        unit("luma_mean_rgb", (luma_mean_rgb,), lambda v: luma_mean_rgb(v, 4, 0, 1, 2, 2)),
        unit(
            "resize_bilinear", (resize_bilinear,), lambda v: resize_bilinear(v, 4, 0, 1, 2, 2, rgb)
        ),
        unit("mean_u8", (mean_u8,), mean_u8),
    ]


def _warm_yuv420p(y_plane: np.ndarray) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb_yuv420p(y_plane, y_plane, y_plane, True, rgb)
    # An odd width with one byte of padding pads the Y rows but not the half-width
    # chroma rows (ceil(stride / 2) == ceil(width / 2)): padded Y, contiguous chroma.
    contiguous = _warm_views()[0]
    rgb_yuv420p(y_plane, contiguous, contiguous, True, rgb)


def _jitted_closure(kernel: Any) -> frozenset[str]:
    """Names of ``kernel`` and of every cached jitted function it calls, transitively.

    Those are the functions whose cache files compiling ``kernel`` may write. Overloads
    (``_row_as_c``) are not cached and so not listed.
    """
    found: set[str] = set()
    todo = [kernel]
    while todo:
        fn = todo.pop()
        if fn.__name__ in found:
            continue
        found.add(fn.__name__)
        module_globals = fn.py_func.__globals__
        todo += [
            module_globals[n]
            for n in fn.py_func.__code__.co_names
            if isinstance(module_globals.get(n), Dispatcher)
        ]
    return frozenset(found)


def _warm_motion(luma: np.ndarray) -> None:
    # The types fastext.processors.motion passes: see MotionDetector.
    background = np.zeros((1, 4), np.float32)
    counts = np.zeros((1, 1), np.int32)
    extents = np.zeros((1, 1, 4), np.int32)
    boxes = np.zeros((1, 5), np.int64)
    motion_cells(luma, 2, 4, background, 10.0, 0.1, True, counts, extents)
    motion_regions(counts, extents, 1, 2, boxes)


# -- RGB images ---------------------------------------------------------------------
#
# ``out`` is always a writable C-contiguous (height, width, 3) uint8 array in R, G, B
# order; sources are the same padded 2-D views the luma kernels take.


@_jit
def _check_rgb_out(out, height, width):  # type: ignore[no-untyped-def]
    if out.shape[0] != height or out.shape[1] != width or out.shape[2] != 3:
        raise ValueError("out must have shape (height, width, 3)")


@_jit
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


@_jit
def _packed_rgb_row(row, dst, hi, lo, is565):  # type: ignore[no-untyped-def]
    for x in range(dst.shape[0] // 3):
        pr, pg, pb = _unpack16(row[2 * x + lo], row[2 * x + hi], is565)
        dst[3 * x] = np.uint8(pr)
        dst[3 * x + 1] = np.uint8(pg)
        dst[3 * x + 2] = np.uint8(pb)


@_jit
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


@_jit
def _to_u8(v):  # type: ignore[no-untyped-def]
    """A 16.16 fixed-point value (rounding already added) clamped to 0..255."""
    return np.uint8(min(max(np.int32(v) >> 16, 0), 255))


@_jit
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


# Bilinear weights in 11-bit fixed point (as OpenCV's INTER_LINEAR).
_WBITS = 11
_WONE = 1 << _WBITS


@_jit
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


@_jit
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


# -- motion -------------------------------------------------------------------------


@_jit
def _block_row_sums(acc, s, out_w, sums):  # type: ignore[no-untyped-def]
    """``sums[j]`` = sum of ``acc[j*s : j*s+s]`` (the last block may be short)."""
    width = acc.shape[0]
    full = width // s
    # Literal block sizes let LLVM vectorise the common cases.
    if s == 1:
        for j in range(full):
            sums[j] = np.uint32(acc[j])
    elif s == 2:
        for j in range(full):
            sums[j] = np.uint32(acc[2 * j]) + np.uint32(acc[2 * j + 1])
    elif s == 4:
        for j in range(full):
            sums[j] = (
                np.uint32(acc[4 * j])
                + np.uint32(acc[4 * j + 1])
                + np.uint32(acc[4 * j + 2])
                + np.uint32(acc[4 * j + 3])
            )
    else:
        for j in range(full):
            t = np.uint32(0)
            base = j * s
            for i in range(s):
                t += np.uint32(acc[base + i])
            sums[j] = t
    if full < out_w:
        t = np.uint32(0)
        for i in range(full * s, width):
            t += np.uint32(acc[i])
        sums[full] = t


@_jit
def _cell_row(changed, words, cell_of, wy, cy, counts, extents):  # type: ignore[no-untyped-def]
    """Add the changed pixels of work row ``wy`` (flags in ``changed``, also seen as
    64-bit ``words``) to their cells of cell row ``cy``: counts and extents."""
    for w in range(words.shape[0]):
        if words[w] == 0:  # eight unchanged pixels at once: most of a frame
            continue
        for x in range(8 * w, 8 * w + 8):
            if changed[x] == 0:
                continue
            cx = cell_of[x]
            if counts[cy, cx] == 0:
                extents[cy, cx, 0] = x
                extents[cy, cx, 1] = wy
                extents[cy, cx, 2] = x
            else:
                extents[cy, cx, 0] = min(extents[cy, cx, 0], x)
                extents[cy, cx, 2] = max(extents[cy, cx, 2], x)
            extents[cy, cx, 3] = wy
            counts[cy, cx] += 1


@_jit
def motion_cells(luma, s, k, background, threshold, alpha, init, counts, extents):  # type: ignore[no-untyped-def]
    """Compare one luma frame with the background; count changed pixels per cell.

    ``luma`` (H, W) is averaged over s x s blocks into the work image, whose shape
    ``background`` (ceil(H/s), ceil(W/s)) float32 has. A work pixel has changed when
    it differs from the background by more than ``threshold``; the background then
    moves towards it by ``alpha`` (with ``init``, it is set to it and nothing changes).
    Cells are k x k work pixels: ``counts`` (cells) gets the changed pixels of each,
    ``extents`` (cells, 4) their bounding box in work pixels (x0, y0, x1, y1 inclusive).
    """
    height, width = luma.shape
    work_h, work_w = background.shape
    if s < 1 or s > 257 or k < 1:
        raise ValueError("s must be within 1..257 and k positive")
    if work_h != (height + s - 1) // s or work_w != (width + s - 1) // s:
        raise ValueError("background must have shape (ceil(H/s), ceil(W/s))")
    cells_h = (work_h + k - 1) // k
    cells_w = (work_w + k - 1) // k
    if counts.shape[0] != cells_h or counts.shape[1] != cells_w:
        raise ValueError("counts must have shape (cells high, cells wide)")
    counts[:] = 0
    a = np.float32(alpha)
    thr = np.float32(threshold)
    acc = np.empty(width, np.uint16)  # s <= 257: s * 255 fits
    sums = np.empty(work_w, np.uint32)
    inv = np.empty(work_w, np.float32)
    changed = np.zeros(-(-work_w // 8) * 8, np.uint8)  # padded to whole words, tail zero
    words = changed.view(np.uint64)
    cell_of = np.empty(work_w, np.int64)
    for wx in range(work_w):
        cell_of[wx] = wx // k
    inv_rows = 0
    for wy in range(work_h):
        y0 = wy * s
        rows = min(s, height - y0)
        src = luma[y0]
        for x in range(width):
            acc[x] = src[x]
        for dy in range(1, rows):
            src = luma[y0 + dy]
            for x in range(width):
                acc[x] = np.uint16(acc[x] + np.uint16(src[x]))
        _block_row_sums(acc, s, work_w, sums)
        if rows != inv_rows:  # only the last work row may have fewer rows
            inv_rows = rows
            for wx in range(work_w):
                inv[wx] = np.float32(1.0 / (rows * min(s, width - wx * s)))
        bg = background[wy]
        if init:
            for wx in range(work_w):
                bg[wx] = np.float32(sums[wx]) * inv[wx]
            continue
        # Branch-free, so it vectorises; the changed pixels are gathered per cell after.
        any_changed = False
        for wx in range(work_w):
            v = np.float32(sums[wx]) * inv[wx]
            d = v - bg[wx]
            bg[wx] = bg[wx] + a * d
            c = abs(d) > thr
            changed[wx] = c
            any_changed |= c
        if any_changed:
            _cell_row(changed, words, cell_of, wy, wy // k, counts, extents)


@_jit
def _find(parent, i):  # type: ignore[no-untyped-def]
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@_jit
def motion_regions(counts, extents, min_count, radius, boxes):  # type: ignore[no-untyped-def]
    """Group moving cells into regions; return how many rows of ``boxes`` it filled.

    A cell moves when ``counts`` >= ``min_count``; moving cells at most ``radius``
    cells apart (horizontally, vertically or diagonally) belong to one region (a
    union-find). ``boxes`` (cells, 5) int64 gets per region, in order of each region's
    first cell in row-major order: x0, y0, x1, y1 (inclusive, work pixels) and the
    number of changed work pixels.
    """
    cells_h, cells_w = counts.shape
    n = cells_h * cells_w
    parent = np.empty(n, np.int64)
    for i in range(n):
        parent[i] = i
    for cy in range(cells_h):
        for cx in range(cells_w):
            if counts[cy, cx] < min_count:
                continue
            here = cy * cells_w + cx
            # Only neighbours after this cell in row-major order: each pair once.
            for dy in range(radius + 1):
                ny = cy + dy
                if ny >= cells_h:
                    break
                for dx in range(-radius, radius + 1):
                    nx = cx + dx
                    if (dy == 0 and dx <= 0) or nx < 0 or nx >= cells_w:
                        continue
                    if counts[ny, nx] >= min_count:
                        ra = _find(parent, here)
                        rb = _find(parent, ny * cells_w + nx)
                        if ra != rb:
                            # The smaller index stays root: regions keep row-major order.
                            if ra < rb:
                                parent[rb] = ra
                            else:
                                parent[ra] = rb
    slot = np.full(n, -1, np.int64)
    found = 0
    for cy in range(cells_h):
        for cx in range(cells_w):
            if counts[cy, cx] < min_count:
                continue
            root = _find(parent, cy * cells_w + cx)
            j = slot[root]
            if j < 0:
                j = found
                slot[root] = j
                found += 1
                boxes[j, 0] = extents[cy, cx, 0]
                boxes[j, 1] = extents[cy, cx, 1]
                boxes[j, 2] = extents[cy, cx, 2]
                boxes[j, 3] = extents[cy, cx, 3]
                boxes[j, 4] = counts[cy, cx]
            else:
                boxes[j, 0] = min(boxes[j, 0], extents[cy, cx, 0])
                boxes[j, 1] = min(boxes[j, 1], extents[cy, cx, 1])
                boxes[j, 2] = max(boxes[j, 2], extents[cy, cx, 2])
                boxes[j, 3] = max(boxes[j, 3], extents[cy, cx, 3])
                boxes[j, 4] += counts[cy, cx]
    return found
