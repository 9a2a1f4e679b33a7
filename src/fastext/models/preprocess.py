"""A model's input from a frame, in one fused numba pass per frame.

:func:`prepare` reads a frame as it was received (any RAW pixel format of the contract,
rows padded or not, straight from its buffer) or an image decoded to RGB (or luma), and
writes that frame's slot of a batch's input tensor: letterboxed or stretched to the
model's size, resized, converted to RGB or BGR, normalised, laid out NCHW or NHWC, as
float32 or uint8. No RGB copy of the frame at its own size is made; Python touches the
frame once, the kernel every pixel.

Letterbox, as Ultralytics' ``LetterBox`` (centred): ``r = min(H / h, W / w)``, content
``round(w * r) x round(h * r)``, padding ``round(d - 0.1)`` before and ``round(d + 0.1)``
after (``d`` half the free space), filled with 114. Stretch fills the whole tensor.

Resampling is separable and chosen per axis (source size ``S``, content size ``D``):

- ``D == S``: none, the pixels are converted only (exactly: a lookup table of the
  256 normalised values, computed in float64 and rounded once);
- ``S <= 2 D``: bilinear, pixel centres aligned (``s = (d + 0.5) * S / D - 0.5``,
  clamped at the edges), what OpenCV's ``INTER_LINEAR`` and so Ultralytics compute;
- ``S > 2 D``: area averaging, each output pixel the mean of the source it covers
  (fractional pixels weighted by coverage, as OpenCV's ``INTER_AREA``): bilinear
  would skip pixels there, and a 1080p frame shrunk to 320 would alias.

Each output row first sums its source rows, whole rows of bytes at a time (contiguous
loops LLVM vectorises, alpha bytes included); the row's pixels then sum their taps of
that one row. A whole-number shrink (equal weights at a fixed step on both axes) sums
exactly in uint16, splits the summed row into one plane per byte channel, and sums
each output pixel's window of its plane straight into the tensor's row (normalised, for
float32 NCHW; through a row of means otherwise). Packed 16-bit and YUV420P rows are converted to RGB once each, into a
small ring of rows, before they are summed (YUV420P as :mod:`fastext.vision.frames` reads it:
BT.601 full range, each chroma sample covering 2x2 pixels).

:class:`Transform` maps tensor coordinates back to the frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fastext.errors import FrameError
from fastext.vision.frames import (
    Encoding,
    Frame,
    PixelLayout,
    check_size,
    frame_from_encoded,
    frame_from_raw,
    raw_bytes,
)
from fastext.vision.kernels.common import jit, jit_inline, prefetch
from fastext.vision.warmup import Unit, jitted_closure

__all__ = [
    "PAD_VALUE",
    "InputSpec",
    "Transform",
    "geometry",
    "prepare",
    "prepare_raw",
    "warm",
    "warm_units",
]

#: Ultralytics' letterbox grey.
PAD_VALUE = 114

_LAYOUTS = ("NCHW", "NHWC")
_DTYPES = ("float32", "uint8")
_CHANNELS = ("RGB", "BGR")
_RESIZE = ("letterbox", "stretch")

# Source kinds the kernel reads.
_BYTES, _PACKED16, _YUV420P = 0, 1, 2


@dataclass(frozen=True, slots=True)
class InputSpec:
    """What a model's input tensor expects of one image.

    ``width`` x ``height``: the tensor's spatial size. ``layout``: ``"NCHW"`` (a slot is
    ``(3, height, width)``) or ``"NHWC"`` (``(height, width, 3)``). ``dtype``:
    ``"float32"``, ``x / 255`` or, with ``mean`` and ``std`` (three each, on the 0..1
    scale, in the tensor's channel order), ``(x / 255 - mean) / std``; or ``"uint8"``,
    the pixel values themselves. ``channels``: ``"RGB"`` or ``"BGR"``. ``resize``:
    ``"letterbox"`` or ``"stretch"``. ``pad_value``: the letterbox's grey, before
    normalisation.
    """

    width: int
    height: int
    layout: str = "NCHW"
    dtype: str = "float32"
    channels: str = "RGB"
    resize: str = "letterbox"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    pad_value: int = PAD_VALUE

    def __post_init__(self) -> None:
        check_size((self.width, self.height), "input size")
        for name, value, allowed in (
            ("layout", self.layout, _LAYOUTS),
            ("dtype", self.dtype, _DTYPES),
            ("channels", self.channels, _CHANNELS),
            ("resize", self.resize, _RESIZE),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both or neither")
        if self.mean is not None and self.std is not None:
            if self.dtype == "uint8":
                raise ValueError("mean and std apply to float32 tensors only")
            for name, values in (("mean", self.mean), ("std", self.std)):
                if not isinstance(values, tuple) or len(values) != 3:
                    raise ValueError(f"{name} must be a tuple of 3 numbers; got {values!r}")
            if not all(np.isfinite(v) for v in self.mean + self.std) or min(self.std) <= 0:
                raise ValueError(f"std must be positive and finite; got {self.std!r}")
        if not isinstance(self.pad_value, int) or not 0 <= self.pad_value <= 255:
            raise ValueError(f"pad_value must be an int within 0..255; got {self.pad_value!r}")

    @property
    def slot_shape(self) -> tuple[int, int, int]:
        """The shape of one image's slot of the tensor."""
        if self.layout == "NCHW":
            return (3, self.height, self.width)
        return (self.height, self.width, 3)


@dataclass(frozen=True, slots=True)
class Transform:
    """How a tensor's pixels relate to its frame's: ``tensor = frame * scale + pad``.

    Coordinates are continuous, pixel edges at integers (x right, y down), so
    ``frame_x = (tensor_x - pad_x) / scale_x``. ``width`` x ``height`` is the frame's size.
    """

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    width: int
    height: int

    def to_frame(self, x: float, y: float) -> tuple[float, float]:
        """A point of the tensor in frame coordinates."""
        return (x - self.pad_x) / self.scale_x, (y - self.pad_y) / self.scale_y

    def to_tensor(self, x: float, y: float) -> tuple[float, float]:
        """A point of the frame in tensor coordinates."""
        return x * self.scale_x + self.pad_x, y * self.scale_y + self.pad_y

    def boxes_to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """``(n, 4)`` boxes ``x0, y0, x1, y1`` of the tensor in frame coordinates, clipped
        to the frame (a new float64 array)."""
        out = np.array(boxes, np.float64, copy=True).reshape(-1, 4)
        out[:, 0::2] = np.clip((out[:, 0::2] - self.pad_x) / self.scale_x, 0, self.width)
        out[:, 1::2] = np.clip((out[:, 1::2] - self.pad_y) / self.scale_y, 0, self.height)
        return out


def geometry(width: int, height: int, spec: InputSpec) -> tuple[int, int, int, int]:
    """Where a ``width`` x ``height`` frame lands in the tensor: content width and
    height, left and top padding (Ultralytics' centred letterbox, or the whole tensor)."""
    if spec.resize == "stretch":
        return spec.width, spec.height, 0, 0
    r = min(spec.height / height, spec.width / width)
    # At least one pixel: a 1 x 16384 frame would otherwise round to nothing.
    new_w = max(1, min(spec.width, int(round(width * r))))
    new_h = max(1, min(spec.height, int(round(height * r))))
    left = int(round((spec.width - new_w) / 2 - 0.1))
    top = int(round((spec.height - new_h) / 2 - 0.1))
    return new_w, new_h, left, top


@functools.lru_cache(maxsize=64)
def _tables(spec: InputSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per tensor channel: the 256 normalised values, multiplier, offset and pad value
    (read-only float32; for uint8 tensors the multiplier is unused)."""
    mean = np.zeros(3) if spec.mean is None else np.array(spec.mean, np.float64)
    std = np.ones(3) if spec.std is None else np.array(spec.std, np.float64)
    if spec.dtype == "uint8":
        lut = np.tile(np.arange(256, dtype=np.float64), (3, 1))
        mul, add = np.ones(3), np.zeros(3)
    else:
        lut = (np.arange(256)[np.newaxis, :] / 255.0 - mean[:, np.newaxis]) / std[:, np.newaxis]
        mul, add = 1.0 / (255.0 * std), -mean / std
    tables = (lut, mul, add, lut[:, spec.pad_value].copy())
    out = []
    for table in tables:
        array = np.ascontiguousarray(table, np.float32)
        array.flags.writeable = False
        out.append(array)
    return out[0], out[1], out[2], out[3]


def _flat(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """A read-only 1-D view over exactly the bytes a 2-D uint8 array of rows spans, and
    its row stride (a copy only where rows are not runs of bytes)."""
    if rows.strides[1] != 1 or rows.strides[0] < rows.shape[1]:
        rows = np.ascontiguousarray(rows)
    stride = int(rows.strides[0]) if rows.shape[0] > 1 else int(rows.shape[1])
    span = (rows.shape[0] - 1) * stride + rows.shape[1]
    flat = np.lib.stride_tricks.as_strided(rows, shape=(span,), strides=(1,), writeable=False)
    return flat, stride


# The placeholder for the tensor argument of the dtype not written (see _prepare).
_EMPTY_F32 = np.empty((0, 0, 0), np.float32)
_EMPTY_U8 = np.empty((0, 0, 0), np.uint8)


def _check_out(out: Any, spec: InputSpec) -> None:
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != spec.slot_shape or out.dtype != np.dtype(spec.dtype):
        raise ValueError(
            f"out must be {spec.dtype} {spec.slot_shape} ({spec.layout}); "
            f"got {out.dtype} {out.shape}"
        )
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writable C-contiguous array (one slot of a batch)")


def prepare(frame: Frame | np.ndarray, out: np.ndarray, spec: InputSpec) -> Transform:
    """Write ``frame`` into ``out``, its slot of a batch's input tensor, as ``spec`` says.

    ``frame``: a :class:`~fastext.vision.frames.Frame` (RAW, decoded to RGB or luma, or still
    encoded: then decoded here, a JPG at the smallest DCT scale still as big as the
    content) or a ``(height, width, 3)`` uint8 RGB array. ``out``: a writable
    C-contiguous array of ``spec.slot_shape`` and ``spec.dtype``, e.g. ``batch[i]``;
    every value of it is written. Returns the :class:`Transform` from the tensor back to
    the frame. A frame that cannot be read raises :class:`FrameError`; a wrong ``out``
    raises ValueError. Releases the GIL while the kernel runs.
    """
    _check_out(out, spec)
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
            raise FrameError(
                f"an image must be (height, width, 3) uint8; got {frame.dtype} {frame.shape}"
            )
        frame = Frame(frame.shape[1], frame.shape[0], None, frame, None, Encoding.BMP)
    width, height = frame.width, frame.height
    plan = _plan(width, height, spec)
    new_w, new_h = plan.new_w, plan.new_h
    layout = frame.layout
    data = frame.data
    src_w, src_h = width, height
    if layout is None and data.ndim == 1:
        decoded = frame_from_encoded(data, frame.encoding, needs="rgb", rgb_size=(new_w, new_h))
        data, src_w, src_h = decoded.data, decoded.width, decoded.height
    ubuf = vbuf = None
    cstride = 0
    if layout is None:
        kind, bpp, r, g, b, big_endian, is565 = _BYTES, 3, 0, 1, 2, False, False
        if data.ndim == 2:  # luma: one byte per pixel, read as grey RGB
            bpp, r, g, b = 1, 0, 0, 0
        rows = data.reshape(data.shape[0], -1) if data.ndim == 2 else _rgb_rows(data)
    else:
        rows = data
        kind, bpp, r, g, b, big_endian, is565 = _layout_args(layout)
        if kind == _YUV420P:
            assert frame.chroma is not None
            ubuf, cstride = _flat(frame.chroma[0])
            vbuf, vstride = _flat(frame.chroma[1])
            if vstride != cstride:
                raise FrameError("U and V planes have different strides")
    ybuf, ystride = _flat(rows)
    _run(
        ybuf,
        ystride,
        ybuf if ubuf is None else ubuf,
        ybuf if vbuf is None else vbuf,
        cstride,
        (kind, bpp, r, g, b, big_endian, is565),
        src_w,
        src_h,
        plan,
        out,
    )
    return plan.transform


def _layout_args(layout: PixelLayout) -> tuple[int, int, int, int, int, bool, bool]:
    """The kernel's arguments for a RAW layout: kind, bytes per pixel, the R, G, B byte
    offsets, and the two flags of 16-bit formats (big-endian, RGB565)."""
    if layout.kind == "rgb":
        return _BYTES, layout.bytes_per_pixel, layout.r, layout.g, layout.b, False, False
    if layout.kind == "yuv420p":
        return _YUV420P, 1, 0, 0, 0, False, False
    return _PACKED16, 2, 0, 0, 0, layout.big_endian, layout.kind == "rgb565"


class _Plan(NamedTuple):
    """What one frame size and one spec fix for the kernel: :func:`geometry`'s answer,
    the :class:`Transform` back to the frame, and the spec's tables and flags."""

    new_w: int
    new_h: int
    left: int
    top: int
    transform: Transform
    lut: np.ndarray
    mul: np.ndarray
    add: np.ndarray
    pad: np.ndarray
    to_u8: bool
    nchw: bool
    bgr: bool


@functools.lru_cache(maxsize=256)
def _plan(width: int, height: int, spec: InputSpec) -> _Plan:
    """The :class:`_Plan` of a ``width`` x ``height`` frame: made once for a stream's frames
    (on a cold frame it saves a worker about 15 µs of Python a frame)."""
    new_w, new_h, left, top = geometry(width, height, spec)
    transform = Transform(new_w / width, new_h / height, left, top, width, height)
    lut, mul, add, pad = _tables(spec)
    return _Plan(
        new_w,
        new_h,
        left,
        top,
        transform,
        lut,
        mul,
        add,
        pad,
        spec.dtype == "uint8",
        spec.layout == "NCHW",
        spec.channels == "BGR",
    )


def _run(
    ybuf: np.ndarray,
    ystride: int,
    ubuf: np.ndarray,
    vbuf: np.ndarray,
    cstride: int,
    args: tuple[int, int, int, int, int, bool, bool],
    src_w: int,
    src_h: int,
    plan: _Plan,
    out: np.ndarray,
) -> None:
    """The kernel over a frame's bytes."""
    kind, bpp, r, g, b, big_endian, is565 = args
    to_u8 = plan.to_u8
    try:
        _prepare(
            ybuf,
            ystride,
            ubuf,
            vbuf,
            cstride,
            kind,
            bpp,
            r,
            g,
            b,
            big_endian,
            is565,
            src_w,
            src_h,
            _EMPTY_F32 if to_u8 else out,
            out if to_u8 else _EMPTY_U8,
            plan.nchw,
            to_u8,
            plan.bgr,
            plan.lut,
            plan.mul,
            plan.add,
            plan.pad,
            plan.left,
            plan.top,
            plan.new_w,
            plan.new_h,
        )
    except ValueError as exc:  # the kernel's own bounds checks: a frame it will not read
        raise FrameError(f"frame cannot be preprocessed: {exc}") from None


def _rgb_rows(image: np.ndarray) -> np.ndarray:
    """An (h, w, 3) uint8 image as (h, w * 3) rows, without a copy where rows are runs."""
    h, w, _ = image.shape
    if image.strides[2] == 1 and image.strides[1] == 3 and image.strides[0] >= 3 * w:
        return np.lib.stride_tricks.as_strided(
            image, shape=(h, 3 * w), strides=(image.strides[0], 1), writeable=False
        )
    return np.ascontiguousarray(image).reshape(h, 3 * w)


def prepare_raw(
    buf: Any,
    pixel_format: int,
    width: int,
    height: int,
    stride: int,
    out: np.ndarray,
    spec: InputSpec,
) -> Transform:
    """:func:`prepare` of a RAW frame in ``buf`` (bytes-like, from index 0), as
    :func:`fastext.vision.frames.raw_view` reads it; stride 0 means unpadded rows.

    Frames of one plane go to the kernel straight from their bytes, without a
    :class:`Frame` (a worker's path: measured on a cold 1080p frame, about 40 µs of
    Python less, a tenth of a cold read of it).
    """
    layout, span, ystride = raw_bytes(buf, pixel_format, width, height, stride)
    if layout.kind == "yuv420p":
        return prepare(frame_from_raw(buf, pixel_format, width, height, stride), out, spec)
    _check_out(out, spec)
    plan = _plan(width, height, spec)
    _run(span, ystride, span, span, 0, _layout_args(layout), width, height, plan, out)
    return plan.transform


# -- kernels ---------------------------------------------------------------------------
#
# Every buffer is a read-only 1-D uint8 array (a frame's bytes, rows ``stride`` apart):
# one type for padded and unpadded frames, and each row a contiguous slice.

# BT.601 YCbCr -> RGB, full range, 16.16 fixed point: the arithmetic of
# fastext.vision.kernels.rgb_yuv420p, so a frame at the model's size converts exactly as
# Frame.rgb() does (tests/test_models_preprocess.py compares them).
_FIX = 1 << 16
_KR, _KGU, _KGV, _KB = (
    round(1.402 * _FIX),
    round(0.344136 * _FIX),
    round(0.714136 * _FIX),
    round(1.772 * _FIX),
)


@jit
def _pp_clamp_u8(v):  # type: ignore[no-untyped-def]
    return np.uint8(min(max(np.int32(v) >> 16, 0), 255))


@jit
def _pp_yuv_row(ybuf, yoff, ubuf, vbuf, coff, width, dst):  # type: ignore[no-untyped-def]
    """One row of RGB bytes (``dst``, 3 * width) from its Y row and its chroma rows."""
    yrow = ybuf[yoff : yoff + width]
    urow = ubuf[coff : coff + (width + 1) // 2]
    vrow = vbuf[coff : coff + (width + 1) // 2]
    half = np.int32(1 << 15)
    for x in range(width):
        luma = np.int32(np.int32(yrow[x]) << 16)
        cb = np.int32(urow[x >> 1]) - np.int32(128)
        cr = np.int32(vrow[x >> 1]) - np.int32(128)
        dst[3 * x] = _pp_clamp_u8(luma + np.int32(_KR * cr + half))
        dst[3 * x + 1] = _pp_clamp_u8(luma + np.int32(half - _KGU * cb - _KGV * cr))
        dst[3 * x + 2] = _pp_clamp_u8(luma + np.int32(_KB * cb + half))


@jit
def _pp_packed_row_order(src, dst, width, hi, lo, is565):  # type: ignore[no-untyped-def]
    for x in range(width):
        word = np.uint32(np.uint32(np.uint32(src[2 * x + hi]) << 8) | np.uint32(src[2 * x + lo]))
        b5 = np.uint32(word & 31)
        if is565:
            r5 = np.uint32(word >> 11)
            g6 = np.uint32(np.uint32(word >> 5) & 63)
            g8 = np.uint32(np.uint32(g6 << 2) | np.uint32(g6 >> 4))
        else:
            r5 = np.uint32(np.uint32(word >> 10) & 31)
            g5 = np.uint32(np.uint32(word >> 5) & 31)
            g8 = np.uint32(np.uint32(g5 << 3) | np.uint32(g5 >> 2))
        dst[3 * x] = np.uint8(np.uint32(r5 << 3) | np.uint32(r5 >> 2))
        dst[3 * x + 1] = np.uint8(g8)
        dst[3 * x + 2] = np.uint8(np.uint32(b5 << 3) | np.uint32(b5 >> 2))


@jit
def _pp_packed_row(src, dst, width, big_endian, is565):  # type: ignore[no-untyped-def]
    """One row of RGB bytes from RGB565/RGB555 words, channels widened by bit replication."""
    # Literal arguments in each branch let LLVM specialise the inlined loop.
    if big_endian:
        if is565:
            _pp_packed_row_order(src, dst, width, 0, 1, True)
        else:
            _pp_packed_row_order(src, dst, width, 0, 1, False)
    elif is565:
        _pp_packed_row_order(src, dst, width, 1, 0, True)
    else:
        _pp_packed_row_order(src, dst, width, 1, 0, False)


@jit
def _pp_window(start, w, d, src, i, weight):  # type: ignore[no-untyped-def]
    """Add ``weight`` for source index ``i`` to output ``d``'s window of taps."""
    w[d, min(max(i - start[d], 0), w.shape[1] - 1)] += np.float32(weight)


@jit
def _pp_taps(src, dst):  # type: ignore[no-untyped-def]
    """Resampling taps of one axis: per output index, the first source index of a window
    of k consecutive ones (within the source) and their k float32 weights.

    Identity when the sizes match; bilinear (centres aligned, clamped) up to a 2x
    shrink; beyond it area averaging, weights from exact integer coverage (in units of
    1 / dst source pixels).
    """
    start = np.empty(dst, np.int64)
    if src == dst or src == 1:
        for d in range(dst):
            start[d] = d if src == dst else 0
        return start, np.ones((dst, 1), np.float32)
    if src <= 2 * dst:
        w = np.zeros((dst, 2), np.float32)
        scale = src / dst
        for d in range(dst):
            s = (d + 0.5) * scale - 0.5
            if s < 0.0:
                s = 0.0
            lo = min(int(s), src - 1)
            frac = s - lo
            start[d] = min(lo, src - 2)
            _pp_window(start, w, d, src, lo, 1.0 - frac)
            _pp_window(start, w, d, src, min(lo + 1, src - 1), frac)
        return start, w
    k = 0
    for d in range(dst):
        k = max(k, ((d + 1) * src + dst - 1) // dst - d * src // dst)
    w = np.zeros((dst, k), np.float32)
    for d in range(dst):
        lo = d * src
        hi = (d + 1) * src
        first = lo // dst
        stop = (hi + dst - 1) // dst
        start[d] = min(first, src - k)
        for i in range(first, stop):
            _pp_window(start, w, d, src, i, (min((i + 1) * dst, hi) - max(i * dst, lo)) / src)
    return start, w


@jit
def _pp_vsum(buf, starts, weights, n, acc):  # type: ignore[no-untyped-def]
    """``acc[:n]`` = the sum over taps k of ``weights[k] * buf[starts[k]:starts[k] + n]``."""
    first = buf[starts[0] : starts[0] + n]
    w0 = weights[0]
    taps = starts.shape[0]
    if taps == 1:
        for i in range(n):
            acc[i] = np.float32(first[i]) * w0
        return
    second = buf[starts[1] : starts[1] + n]
    w1 = weights[1]
    for i in range(n):
        acc[i] = np.float32(first[i]) * w0 + np.float32(second[i]) * w1
    for k in range(2, taps):
        wk = weights[k]
        if wk == 0:
            continue
        row = buf[starts[k] : starts[k] + n]
        for i in range(n):
            acc[i] += np.float32(row[i]) * wk


@jit
def _pp_hsum_taps(acc, xbase, xw, bpp, o0, o1, o2, l0, l1, l2, taps):  # type: ignore[no-untyped-def]
    for x in range(xbase.shape[0]):
        p = xbase[x]
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        for k in range(taps):
            wk = xw[x, k]
            s0 += wk * acc[p + o0]
            s1 += wk * acc[p + o1]
            s2 += wk * acc[p + o2]
            p += bpp
        l0[x] = s0
        l1[x] = s1
        l2[x] = s2


@jit
def _pp_hsum(acc, xbase, xw, bpp, offs, line):  # type: ignore[no-untyped-def]
    """``line[t, x]``: output pixel x of tensor channel t, from the taps of one summed
    row (``xbase``: byte offset of each window's first pixel)."""
    o0, o1, o2 = offs[0], offs[1], offs[2]
    l0, l1, l2 = line[0], line[1], line[2]
    # All three channels share each window's offset and weights (loaded once); a
    # literal tap count unrolls the window (the common counts: 2 bilinear, 3 to 7 area
    # from 2x to 6x).
    # Three-byte pixels (RGB24, BGR24, decoded and converted rows) get a literal size too.
    taps = xw.shape[1]
    if bpp == 3 and 2 <= taps <= 7:
        if taps == 2:
            _pp_hsum_taps(acc, xbase, xw, 3, o0, o1, o2, l0, l1, l2, 2)
        elif taps == 3:
            _pp_hsum_taps(acc, xbase, xw, 3, o0, o1, o2, l0, l1, l2, 3)
        elif taps == 4:
            _pp_hsum_taps(acc, xbase, xw, 3, o0, o1, o2, l0, l1, l2, 4)
        elif taps == 5:
            _pp_hsum_taps(acc, xbase, xw, 3, o0, o1, o2, l0, l1, l2, 5)
        elif taps == 6:
            _pp_hsum_taps(acc, xbase, xw, 3, o0, o1, o2, l0, l1, l2, 6)
        else:
            _pp_hsum_taps(acc, xbase, xw, 3, o0, o1, o2, l0, l1, l2, 7)
    elif taps == 2:
        _pp_hsum_taps(acc, xbase, xw, bpp, o0, o1, o2, l0, l1, l2, 2)
    elif taps == 3:
        _pp_hsum_taps(acc, xbase, xw, bpp, o0, o1, o2, l0, l1, l2, 3)
    elif taps == 4:
        _pp_hsum_taps(acc, xbase, xw, bpp, o0, o1, o2, l0, l1, l2, 4)
    else:
        _pp_hsum_taps(acc, xbase, xw, bpp, o0, o1, o2, l0, l1, l2, taps)


@jit
def _pp_step(start, w):  # type: ignore[no-untyped-def]
    """The step between windows when every window has the same weights and starts
    ``step`` source pixels after the one before (whole-number shrinks: area 3x, 6x,
    bilinear 2x); else 0."""
    n, taps = w.shape
    if n < 2:
        return 0
    step = start[1] - start[0]
    if step < 1:
        return 0
    for x in range(1, n):
        if start[x] - start[x - 1] != step:
            return 0
        for k in range(taps):
            if w[x, k] != w[0, k]:
                return 0
    return step


@jit
def _pp_hsum_regular(acc, tmp, x0, step, weights, bpp, offs, line):  # type: ignore[no-untyped-def]
    """:func:`_pp_hsum` for windows ``step`` pixels apart with shared ``weights``: every
    window's sum at every byte first (shifted contiguous rows: vectorised), then every
    ``step``-th pixel of it."""
    taps = weights.shape[0]
    n = acc.shape[0] - (taps - 1) * bpp
    w0 = weights[0]
    head = acc[:n]
    for i in range(n):
        tmp[i] = head[i] * w0
    for k in range(1, taps):
        wk = weights[k]
        shifted = acc[k * bpp : k * bpp + n]
        for i in range(n):
            tmp[i] += shifted[i] * wk
    stride = step * bpp
    for t in range(3):
        dst = line[t]
        src = tmp[x0 * bpp + offs[t] :]
        for x in range(dst.shape[0]):
            dst[x] = src[x * stride]


@jit
def _pp_equal(w):  # type: ignore[no-untyped-def]
    """Whether every window's weights are the same one value (a plain mean of taps)."""
    for k in range(w.shape[1]):
        if w[0, k] != w[0, 0]:
            return False
    return True


@jit
def _pp_vsum_whole(buf, starts, n, acc):  # type: ignore[no-untyped-def]
    """:func:`_pp_vsum` with equal weights: the exact uint16 sum of the rows (16 lanes
    a vector where float32 has 8)."""
    first = buf[starts[0] : starts[0] + n]
    if starts.shape[0] == 1:
        for i in range(n):
            acc[i] = np.uint16(first[i])
        return
    second = buf[starts[1] : starts[1] + n]
    for i in range(n):
        acc[i] = np.uint16(np.uint16(first[i]) + np.uint16(second[i]))
    for k in range(2, starts.shape[0]):
        row = buf[starts[k] : starts[k] + n]
        for i in range(n):
            acc[i] = np.uint16(acc[i] + np.uint16(row[i]))


@jit
def _pp_split_at(acc, planes, bpp):  # type: ignore[no-untyped-def]
    for x in range(planes.shape[1]):
        for j in range(bpp):
            planes[j, x] = acc[x * bpp + j]


@jit
def _pp_split(acc, planes, bpp):  # type: ignore[no-untyped-def]
    """Each byte channel of a summed row into its own plane: ``planes[j, x] = acc[x *
    bpp + j]``. A literal pixel size makes it a shuffle. (Summing the rows and then
    splitting once measured 0.77x the time of splitting each row as it is added.)"""
    if bpp == 3:
        _pp_split_at(acc, planes, 3)
    elif bpp == 4:
        _pp_split_at(acc, planes, 4)
    else:
        _pp_split_at(acc, planes, bpp)


@jit
def _pp_hsum_planes_at(planes, x0, step, offs, scale, shift, d0, d1, d2):  # type: ignore[no-untyped-def]
    for t in range(3):
        src = planes[offs[t]][x0:]
        dst = d0 if t == 0 else (d1 if t == 1 else d2)
        m = scale[t]
        a = shift[t]
        for x in range(dst.shape[0]):
            s = np.uint16(0)
            for k in range(step):
                s = np.uint16(s + src[x * step + k])
            dst[x] = np.float32(s) * m + a


@jit
def _pp_hsum_planes(planes, x0, step, offs, scale, shift, d0, d1, d2):  # type: ignore[no-untyped-def]
    """:func:`_pp_hsum_regular` for windows of ``step`` pixels ``step`` apart with equal
    weights (area shrinks by a whole number, bilinear 2x), over the planes of
    :func:`_pp_split`: each output pixel sums its window of one plane, exactly in
    uint16, and ``d0``, ``d1``, ``d2`` (the tensor's three channels) get ``sum * scale[t] +
    shift[t]``: the mean (``scale`` one over the taps of both axes), or for a float32
    NCHW tensor the normalised value itself, written straight into its rows (measured
    on a cold 1080p RGB24 frame to 640, 0.88x the time of a mean emitted afterwards).

    Literal steps for the common ones let LLVM vectorise the strided reads (measured
    on RGB24 at 3x: 4x faster than the same loops with runtime sizes).
    """
    if step == 2:
        _pp_hsum_planes_at(planes, x0, 2, offs, scale, shift, d0, d1, d2)
    elif step == 3:
        _pp_hsum_planes_at(planes, x0, 3, offs, scale, shift, d0, d1, d2)
    elif step == 4:
        _pp_hsum_planes_at(planes, x0, 4, offs, scale, shift, d0, d1, d2)
    elif step == 6:
        _pp_hsum_planes_at(planes, x0, 6, offs, scale, shift, d0, d1, d2)
    else:
        _pp_hsum_planes_at(planes, x0, step, offs, scale, shift, d0, d1, d2)


_CHUNK = 64  # output pixels a chunk in :func:`_pp_rgb_thirds`


@jit_inline
def _pp_sum3(a, b, c, dst):  # type: ignore[no-untyped-def]
    """``dst = a + b + c``, bytes summed exactly in uint16."""
    for i in range(dst.shape[0]):
        dst[i] = np.uint16(np.uint16(a[i]) + np.uint16(b[i]) + np.uint16(c[i]))


@jit_inline
def _pp_planes3(src, p0, p1, p2):  # type: ignore[no-untyped-def]
    """Each channel of 3-channel ``src`` in its plane."""
    for x in range(p0.shape[0]):
        p0[x] = src[3 * x]
        p1[x] = src[3 * x + 1]
        p2[x] = src[3 * x + 2]


@jit_inline
def _pp_thirds(p, dst, mul, add):  # type: ignore[no-untyped-def]
    """Each ``dst[x]``: the sum of ``p[3x : 3x + 3]``, times ``mul``, plus ``add``."""
    for x in range(dst.shape[0]):
        total = np.uint16(np.uint16(p[3 * x] + p[3 * x + 1]) + p[3 * x + 2])
        dst[x] = np.float32(total) * mul + add


@jit
def _pp_rgb_thirds(buf, ystride, y0, x0b, offs, new_w, new_h, scale, shift, out, top, left):  # type: ignore[no-untyped-def]
    """A 3x area shrink of 3-byte pixels (RGB24/BGR24, 1080p to 640) into a float32 NCHW
    tensor, the commonest case, with every size but the frame's fixed. ``scale`` and
    ``shift`` are per tensor channel; ``offs[t]`` is the byte channel of tensor channel t.

    Each output row is made chunk by chunk (64 output pixels) while the next row's
    three source rows are summed for the same chunk, and the chunk of the row after
    that is prefetched: the reads from memory overlap the arithmetic. Measured on cold
    1080p frames from ``/dev/shm``: the prefetch alone 0.86x the time of the same pass
    without it; the same loops written in this body instead of the inlined helpers
    1.2x slower (LLVM vectorised them less well).
    """
    sums = np.empty((2, new_w * 9), np.uint16)
    planes = np.empty((3, _CHUNK * 3), np.uint16)
    chan = np.empty(3, np.int64)  # the tensor channel of each byte channel
    for t in range(3):
        chan[offs[t]] = t
    c0, c1, c2 = chan[0], chan[1], chan[2]
    s = y0 * ystride + x0b
    _pp_sum3(
        buf[s : s + new_w * 9],
        buf[s + ystride : s + ystride + new_w * 9],
        buf[s + 2 * ystride : s + 2 * ystride + new_w * 9],
        sums[0],
    )
    for oy in range(new_h):
        cur = sums[oy & 1]
        nxt = sums[(oy + 1) & 1]
        more = oy + 1 < new_h
        r = (y0 + 3 * (oy + 1)) * ystride + x0b
        y = top + oy
        d0 = out[c0, y][left : left + new_w]
        d1 = out[c1, y][left : left + new_w]
        d2 = out[c2, y][left : left + new_w]
        m0, m1, m2 = scale[c0], scale[c1], scale[c2]
        a0, a1, a2 = shift[c0], shift[c1], shift[c2]
        for first in range(0, new_w, _CHUNK):
            n = min(_CHUNK, new_w - first)
            at = first * 9
            nb = n * 9
            if oy + 2 < new_h:  # the chunk of the row after next, into the cache
                ahead = r + 3 * ystride + at
                for k in range(3):
                    for line in range(0, nb, 64):
                        prefetch(buf, ahead + k * ystride + line)
            if more:
                q = r + at
                _pp_sum3(
                    buf[q : q + nb],
                    buf[q + ystride : q + ystride + nb],
                    buf[q + 2 * ystride : q + 2 * ystride + nb],
                    nxt[at : at + nb],
                )
            _pp_planes3(
                cur[at : at + nb], planes[0, : 3 * n], planes[1, : 3 * n], planes[2, : 3 * n]
            )
            _pp_thirds(planes[0, : 3 * n], d0[first : first + n], m0, a0)
            _pp_thirds(planes[1, : 3 * n], d1[first : first + n], m1, a1)
            _pp_thirds(planes[2, : 3 * n], d2[first : first + n], m2, a2)


@jit
def _pp_emit(line, out, y, left, nchw, to_u8, mul, add):  # type: ignore[no-untyped-def]
    """Write one row of resampled values (``line``, channels x width) into the tensor."""
    n = line.shape[1]
    if nchw:
        for t in range(3):
            src = line[t]
            dst = out[t, y][left : left + n]
            if to_u8:
                for x in range(n):
                    dst[x] = np.uint8(min(np.int32(src[x] + np.float32(0.5)), 255))
            else:
                m = mul[t]
                a = add[t]
                for x in range(n):
                    dst[x] = src[x] * m + a
        return
    dst = out[y].reshape(-1)[3 * left : 3 * (left + n)]
    if to_u8:
        for x in range(n):
            for t in range(3):
                dst[3 * x + t] = np.uint8(min(np.int32(line[t, x] + np.float32(0.5)), 255))
    else:
        m0, m1, m2 = mul[0], mul[1], mul[2]
        a0, a1, a2 = add[0], add[1], add[2]
        for x in range(n):
            dst[3 * x] = line[0, x] * m0 + a0
            dst[3 * x + 1] = line[1, x] * m1 + a1
            dst[3 * x + 2] = line[2, x] * m2 + a2


@jit
def _pp_emit_lut(row, bpp, offs, out, y, left, width, nchw, lut):  # type: ignore[no-untyped-def]
    """Write one row of source pixels, unresampled, through the lookup table."""
    if nchw:
        for t in range(3):
            o = offs[t]
            table = lut[t]
            dst = out[t, y][left : left + width]
            for x in range(width):
                dst[x] = table[row[x * bpp + o]]
        return
    dst = out[y].reshape(-1)[3 * left : 3 * (left + width)]
    t0, t1, t2 = lut[0], lut[1], lut[2]
    o0, o1, o2 = offs[0], offs[1], offs[2]
    for x in range(width):
        dst[3 * x] = t0[row[x * bpp + o0]]
        dst[3 * x + 1] = t1[row[x * bpp + o1]]
        dst[3 * x + 2] = t2[row[x * bpp + o2]]


@jit
def _pp_fill(out, nchw, pad, left, top, new_w, new_h):  # type: ignore[no-untyped-def]
    """Fill everything outside the content rectangle with the pad value."""
    if nchw:
        height, width = out.shape[1], out.shape[2]
        for t in range(3):
            v = pad[t]
            plane = out[t]
            for y in range(height):
                row = plane[y]
                if top <= y < top + new_h:
                    row[:left] = v
                    row[left + new_w :] = v
                else:
                    row[:] = v
        return
    height, width = out.shape[0], out.shape[1]
    for y in range(height):
        row = out[y]
        if top <= y < top + new_h:
            for x in range(left):
                row[x, 0] = pad[0]
                row[x, 1] = pad[1]
                row[x, 2] = pad[2]
            for x in range(left + new_w, width):
                row[x, 0] = pad[0]
                row[x, 1] = pad[1]
                row[x, 2] = pad[2]
        else:
            for x in range(width):
                row[x, 0] = pad[0]
                row[x, 1] = pad[1]
                row[x, 2] = pad[2]


@jit
def _pp_check(  # type: ignore[no-untyped-def]
    ybuf,
    ystride,
    ubuf,
    vbuf,
    cstride,
    kind,
    bpp,
    r,
    g,
    b,
    width,
    height,
    out_shape,
    nchw,
    left,
    top,
    new_w,
    new_h,
):
    """Every check made before a byte is read or written: nothing outside a buffer."""
    if width < 1 or height < 1:
        raise ValueError("frame size is not positive")
    if kind == 0:
        if bpp < 1 or not (0 <= r < bpp and 0 <= g < bpp and 0 <= b < bpp):
            raise ValueError("channel offset outside the pixel")
        row_bytes = width * bpp
    elif kind == 1:
        row_bytes = 2 * width
    else:
        row_bytes = width
    if ystride < row_bytes or (height - 1) * ystride + row_bytes > ybuf.shape[0]:
        raise ValueError("frame rows exceed its buffer")
    if kind == 2:
        cw = (width + 1) // 2
        need = ((height + 1) // 2 - 1) * cstride + cw
        if cstride < cw or need > ubuf.shape[0] or need > vbuf.shape[0]:
            raise ValueError("chroma rows exceed their buffer")
    if nchw:
        out_h, out_w, channels = out_shape[1], out_shape[2], out_shape[0]
    else:
        out_h, out_w, channels = out_shape[0], out_shape[1], out_shape[2]
    if channels != 3:
        raise ValueError("out must have 3 channels")
    if new_w < 1 or new_h < 1 or left < 0 or top < 0 or left + new_w > out_w or top + new_h > out_h:
        raise ValueError("content rectangle outside the tensor")


@jit
def _prepare(  # type: ignore[no-untyped-def]
    ybuf,
    ystride,
    ubuf,
    vbuf,
    cstride,
    kind,
    bpp,
    r,
    g,
    b,
    big_endian,
    is565,
    width,
    height,
    out_f,
    out_u,
    nchw,
    to_u8,
    bgr,
    lut,
    mul,
    add,
    pad,
    left,
    top,
    new_w,
    new_h,
):
    """The whole pass: pad, then each content row resampled (or converted) and written.

    ``kind`` 0: byte channels at offsets r, g, b of ``bpp``-byte pixels; 1: RGB565
    (``is565``) or RGB555 words; 2: YUV420P (chroma in ``ubuf``/``vbuf``, rows
    ``cstride`` apart). Rows of ``ybuf`` are ``ystride`` apart.

    The tensor is ``out_u`` (uint8) when ``to_u8``, else ``out_f`` (float32); the other
    is an empty placeholder. Both arrive so that this one signature serves both tensor
    dtypes: compiled once (about a third of the cold compile), only the small writers
    of the tensor twice.
    """
    _pp_check(
        ybuf,
        ystride,
        ubuf,
        vbuf,
        cstride,
        kind,
        bpp,
        r,
        g,
        b,
        width,
        height,
        out_u.shape if to_u8 else out_f.shape,
        nchw,
        left,
        top,
        new_w,
        new_h,
    )
    offs = np.empty(3, np.int64)
    if kind == 0:
        ebpp = bpp
        offs[0], offs[1], offs[2] = r, g, b
    else:  # converted rows hold R, G, B bytes
        ebpp = 3
        offs[0], offs[1], offs[2] = 0, 1, 2
    if bgr:
        offs[0], offs[2] = offs[2], offs[0]
    if to_u8:
        _pp_fill(out_u, nchw, pad, left, top, new_w, new_h)
    else:
        _pp_fill(out_f, nchw, pad, left, top, new_w, new_h)
    row_bytes = width * ebpp
    rgb_row = np.empty(width * 3, np.uint8)
    if new_w == width and new_h == height:
        for y in range(height):
            if kind == 0:
                src = ybuf[y * ystride : y * ystride + row_bytes]
                if to_u8:
                    _pp_emit_lut(src, ebpp, offs, out_u, top + y, left, width, nchw, lut)
                else:
                    _pp_emit_lut(src, ebpp, offs, out_f, top + y, left, width, nchw, lut)
                continue
            if kind == 1:
                _pp_packed_row(
                    ybuf[y * ystride : y * ystride + 2 * width], rgb_row, width, big_endian, is565
                )
            else:
                _pp_yuv_row(ybuf, y * ystride, ubuf, vbuf, (y // 2) * cstride, width, rgb_row)
            if to_u8:
                _pp_emit_lut(rgb_row, ebpp, offs, out_u, top + y, left, width, nchw, lut)
            else:
                _pp_emit_lut(rgb_row, ebpp, offs, out_f, top + y, left, width, nchw, lut)
        return
    xbase, xw = _pp_taps(width, new_w)
    ystart, yw = _pp_taps(height, new_h)
    step = _pp_step(xbase, xw)
    x0 = xbase[0]
    for i in range(new_w):
        xbase[i] *= ebpp
    taps_x = xw.shape[1]
    taps_y = yw.shape[1]
    # Whole-number shrinks (area 2x, 3x, 6x..., bilinear exactly 2x) are plain means of
    # windows at a fixed step on both axes: summed exactly in uint16 (255 * 257 fits).
    whole = (
        step > 0
        and step == taps_x
        and _pp_equal(xw)
        and _pp_step(ystart, yw) > 0
        and _pp_equal(yw)
        and taps_x * taps_y <= 257
    )
    inv = np.float32(1.0 / (taps_x * taps_y))
    mean_scale = np.full(3, inv, np.float32)
    no_shift = np.zeros(3, np.float32)
    norm_scale = np.empty(3, np.float32)
    for t in range(3):
        norm_scale[t] = inv * mul[t]
    thirds = whole and step == 3 and taps_y == 3 and _pp_step(ystart, yw) == 3
    if kind == 0 and ebpp == 3 and thirds and nchw and not to_u8:  # 1080p RGB24 to 640
        _pp_rgb_thirds(
            ybuf, ystride, ystart[0], x0 * 3, offs, new_w, new_h, norm_scale, add, out_f, top, left
        )
        return
    tmp = np.empty(row_bytes, np.float32)
    acc = np.empty(row_bytes, np.float32)
    planes16 = np.empty((ebpp, width), np.uint16)
    acc16 = np.empty(row_bytes, np.uint16)
    line = np.empty((3, new_w), np.float32)
    starts = np.empty(taps_y, np.int64)
    # Converted rows: a ring of taps_y rows, row i in slot i % taps_y. One output row's
    # taps are consecutive rows, so they never evict each other; each row is converted
    # once while output rows move down the frame.
    ring = np.empty((taps_y, row_bytes if kind != 0 else 1), np.uint8)
    ring_flat = ring.reshape(-1)
    tags = np.full(taps_y, -1, np.int64)
    for oy in range(new_h):
        if kind == 0:
            for k in range(taps_y):
                starts[k] = (ystart[oy] + k) * ystride
            if whole:
                _pp_vsum_whole(ybuf, starts, row_bytes, acc16)
            else:
                _pp_vsum(ybuf, starts, yw[oy], row_bytes, acc)
        else:
            for k in range(taps_y):
                sy = ystart[oy] + k
                slot = sy % taps_y
                if tags[slot] != sy:
                    dst = ring[slot]
                    if kind == 1:
                        _pp_packed_row(
                            ybuf[sy * ystride : sy * ystride + 2 * width],
                            dst,
                            width,
                            big_endian,
                            is565,
                        )
                    else:
                        _pp_yuv_row(ybuf, sy * ystride, ubuf, vbuf, (sy // 2) * cstride, width, dst)
                    tags[slot] = sy
                starts[k] = slot * row_bytes
            if whole:
                _pp_vsum_whole(ring_flat, starts, row_bytes, acc16)
            else:
                _pp_vsum(ring_flat, starts, yw[oy], row_bytes, acc)
        if whole:
            _pp_split(acc16, planes16, ebpp)
            if nchw and not to_u8:  # normalised straight into the tensor's rows
                y = top + oy
                _pp_hsum_planes(
                    planes16,
                    x0,
                    step,
                    offs,
                    norm_scale,
                    add,
                    out_f[0, y][left : left + new_w],
                    out_f[1, y][left : left + new_w],
                    out_f[2, y][left : left + new_w],
                )
                continue
            _pp_hsum_planes(
                planes16, x0, step, offs, mean_scale, no_shift, line[0], line[1], line[2]
            )
        elif step:
            _pp_hsum_regular(acc, tmp, xbase[0] // ebpp, step, xw[0], ebpp, offs, line)
        else:
            _pp_hsum(acc, xbase, xw, ebpp, offs, line)
        if to_u8:
            _pp_emit(line, out_u, top + oy, left, nchw, True, mul, add)
        else:
            _pp_emit(line, out_f, top + oy, left, nchw, False, mul, add)


# -- warm-up ---------------------------------------------------------------------------


def warm_units() -> list[Unit]:
    """The warm-up as one unit: :func:`prepare`'s kernel for both tensor dtypes (its
    other arguments have one type each: read-only 1-D buffers, ints, bools, tables).

    Hook it in beside :func:`fastext.vision.warmup.warm_units`, with its own lock prefix
    (``run_units(warm_units(), cache_dir, prefix="preprocess.")``).
    """

    def run() -> None:
        image = np.zeros((2, 2, 3), np.uint8)
        for dtype in _DTYPES:
            spec = InputSpec(1, 1, dtype=dtype)
            prepare(image, np.empty(spec.slot_shape, spec.dtype), spec)

    return [Unit("preprocess", run, jitted_closure(_prepare))]


def warm() -> None:
    """Compile, or load from numba's cache, every kernel :func:`prepare` runs."""
    for unit in warm_units():
        unit.run()
