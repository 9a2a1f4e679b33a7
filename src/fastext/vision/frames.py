"""Frames as processors see them: zero-copy views of RAW pixels, or decoded images.

A RAW frame is a run of rows, ``stride`` bytes apart, in a pixel format of the
contract; :func:`raw_view` maps it without copying (the bytes usually live in the
client's shared memory). JPG/PNG/BMP frames are decoded as the processor needs
(:data:`NEEDS`): straight to 8-bit luma, to RGB, or not at all. Every
:class:`Frame` offers ``luma_mean()`` and ``luma()``, both BT.601
(``Y = 0.299 R + 0.587 G + 0.114 B``, what Pillow's ``convert("L")`` computes), and
``rgb(size)``.

This module must not import grpc or protobuf: worker processes import it.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np
import simplejpeg

from fastext.errors import FrameError

__all__ = [
    "LAYOUTS",
    "MAX_DIMENSION",
    "NEEDS",
    "Encoding",
    "Frame",
    "PixelFormat",
    "PixelLayout",
    "check_size",
    "default_stride",
    "frame_from_encoded",
    "frame_from_raw",
    "raw_bytes",
    "raw_frame_size",
    "raw_view",
]

#: Largest width or height accepted from an encoded image (decompression bombs).
MAX_DIMENSION = 16384
#: libjpeg scales by at most 1/8 while decoding.
_MAX_JPEG_SCALE = 8


def _kernels() -> ModuleType:
    """:mod:`fastext.vision.kernels`, imported on first use: numba and llvmlite (~57 MiB of a
    process's memory) load only where a kernel runs, never in a front whose frames go
    to worker processes (tests/backend/test_pipeline.py checks its memory maps)."""
    from fastext.vision import kernels

    return kernels


class PixelFormat(IntEnum):
    """RAW pixel formats, numbered as in the contract's ``MediaDescriptor`` enum."""

    NONE = 0
    YUV420P = 20
    RGB565BE = 40
    RGB565LE = 41
    RGB555BE = 42
    RGB555LE = 43
    RGB24 = 60
    BGR24 = 61
    ARGB = 80
    RGBA = 81
    ABGR = 82
    BGRA = 83


class Encoding(IntEnum):
    """Frame encodings, numbered as in the contract."""

    BMP = 0
    JPG = 1
    PNG = 2
    RAW = 3


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """How one RAW pixel format lays out a pixel.

    ``kind`` is ``"rgb"`` (one byte per channel at offsets ``r``, ``g``, ``b``),
    ``"yuv420p"`` (planar; the first plane is luma, one byte per pixel), ``"rgb565"``
    or ``"rgb555"`` (16-bit words, ``big_endian`` or not).
    """

    name: str
    bytes_per_pixel: int
    kind: str
    r: int = 0
    g: int = 0
    b: int = 0
    big_endian: bool = False


def _rgb(name: str, bpp: int, r: int, g: int, b: int) -> PixelLayout:
    return PixelLayout(name, bpp, "rgb", r, g, b)


#: The layout of every RAW pixel format except ``NONE``.
LAYOUTS: Mapping[int, PixelLayout] = MappingProxyType(
    {
        PixelFormat.YUV420P: PixelLayout("YUV420P", 1, "yuv420p"),
        PixelFormat.RGB565BE: PixelLayout("RGB565BE", 2, "rgb565", big_endian=True),
        PixelFormat.RGB565LE: PixelLayout("RGB565LE", 2, "rgb565", big_endian=False),
        PixelFormat.RGB555BE: PixelLayout("RGB555BE", 2, "rgb555", big_endian=True),
        PixelFormat.RGB555LE: PixelLayout("RGB555LE", 2, "rgb555", big_endian=False),
        PixelFormat.RGB24: _rgb("RGB24", 3, 0, 1, 2),
        PixelFormat.BGR24: _rgb("BGR24", 3, 2, 1, 0),
        PixelFormat.ARGB: _rgb("ARGB", 4, 1, 2, 3),
        PixelFormat.RGBA: _rgb("RGBA", 4, 0, 1, 2),
        PixelFormat.ABGR: _rgb("ABGR", 4, 3, 2, 1),
        PixelFormat.BGRA: _rgb("BGRA", 4, 2, 1, 0),
    }
)


def _layout(pixel_format: int) -> PixelLayout:
    try:
        return LAYOUTS[pixel_format]
    except (KeyError, TypeError):
        raise FrameError(f"unsupported RAW pixel format {pixel_format!r}") from None


def default_stride(pixel_format: int, width: int) -> int:
    """Bytes in a row without padding: ``width * bytes_per_pixel`` (YUV420P: ``width``)."""
    return width * _layout(pixel_format).bytes_per_pixel


def _geometry(pixel_format: int, width: int, height: int, stride: int) -> tuple[PixelLayout, int]:
    """Validated layout and effective stride; stride 0 means unpadded rows."""
    layout = _layout(pixel_format)
    if width <= 0 or height <= 0:
        raise FrameError(f"RAW frame size {width}x{height} is not positive")
    row_bytes = width * layout.bytes_per_pixel
    if stride == 0:
        stride = row_bytes
    elif stride < row_bytes:
        raise FrameError(f"stride {stride} is shorter than a row of {row_bytes} bytes")
    return layout, stride


def _frame_size(layout: PixelLayout, height: int, stride: int) -> int:
    size = stride * height
    if layout.kind == "yuv420p":
        size += 2 * (-(-stride // 2)) * (-(-height // 2))
    return size


def raw_frame_size(pixel_format: int, width: int, height: int, stride: int) -> int:
    """Bytes a RAW frame covers: ``stride * height`` (YUV420P adds the U and V planes).

    A ``stride`` of 0 means ``default_stride``. Raises :class:`FrameError` for an
    unknown format, a non-positive size or a stride shorter than a row.
    """
    layout, stride = _geometry(pixel_format, width, height, stride)
    return _frame_size(layout, height, stride)


def _byte_array(buf: Any, *, copy_ok: bool) -> np.ndarray:
    """``buf`` as a 1-D contiguous uint8 array, without copying when it already is one."""
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8:
            raise FrameError(f"frame buffer has dtype {buf.dtype}, expected uint8")
        if buf.ndim == 1 and buf.flags.c_contiguous:
            return buf
        if not copy_ok:
            raise FrameError("frame buffer must be a 1-D contiguous uint8 array")
        return np.ascontiguousarray(buf).reshape(-1)
    try:
        return np.frombuffer(buf, np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise FrameError(f"frame buffer is not a contiguous bytes-like object: {exc}") from None


@functools.lru_cache(maxsize=256)
def _raw_geometry(
    pixel_format: int, width: int, height: int, stride: int
) -> tuple[PixelLayout, int, int]:
    """Layout, effective stride and size of a RAW frame, validated once per geometry (a
    stream's frames all share one)."""
    layout, stride = _geometry(pixel_format, width, height, stride)
    return layout, stride, _frame_size(layout, height, stride)


def raw_bytes(
    buf: Any, pixel_format: int, width: int, height: int, stride: int
) -> tuple[PixelLayout, np.ndarray, int]:
    """The bytes of a RAW frame held in ``buf`` from index 0: its layout, a read-only 1-D
    uint8 view exactly :func:`raw_frame_size` long (no copy), and its row stride.

    Raises :class:`FrameError` for an unknown format, a bad size or stride, or a ``buf``
    shorter than the frame.
    """
    layout, stride, need = _raw_geometry(pixel_format, width, height, stride)
    data = _byte_array(buf, copy_ok=False)
    if data.shape[0] < need:
        raise FrameError(
            f"RAW {layout.name} {width}x{height} frame truncated: "
            f"got {data.shape[0]} bytes, need {need}"
        )
    span = data[:need]
    # Read-only always: frames are immutable and kernels are warmed for read-only views.
    span.flags.writeable = False
    return layout, span, stride


def raw_view(buf: Any, pixel_format: int, width: int, height: int, stride: int) -> np.ndarray:
    """A read-only, zero-copy 2-D view of a RAW frame held in ``buf`` from index 0.

    Shape ``(height, width * bytes_per_pixel)`` with rows ``stride`` bytes apart
    (stride 0 means unpadded); for YUV420P, the Y plane ``(height, width)``.
    Raises :class:`FrameError` when ``buf`` is shorter than the frame; never reads
    past the frame's end.
    """
    layout, span, stride = raw_bytes(buf, pixel_format, width, height, stride)
    view = np.ndarray(
        shape=(height, width * layout.bytes_per_pixel),
        dtype=np.uint8,
        buffer=span,
        offset=0,
        strides=(stride, 1),
    )
    view.flags.writeable = False
    return view


#: What a processor may ask frames to be (:attr:`fastext.processors.Processor.needs`).
NEEDS = ("luma", "rgb", "raw")


def check_size(size: Any, what: str = "size") -> tuple[int, int]:
    """``size`` as a (width, height) tuple of positive ints, else ValueError naming ``what``."""
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        or not all(0 < v <= MAX_DIMENSION for v in size)
    ):
        raise ValueError(
            f"{what} must be (width, height), each within 1..{MAX_DIMENSION}; got {size!r}"
        )
    return int(size[0]), int(size[1])


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One image ready for a processor, in one of three forms (all read-only):

    - RAW: ``layout`` is set and ``data`` is the zero-copy 2-D view :func:`raw_view`
      returns (for YUV420P the Y plane, with the U and V planes in ``chroma``);
    - decoded: ``layout`` is ``None`` and ``data`` is a ``(height, width)`` luma or a
      ``(height, width, 3)`` RGB image; ``encoding`` says what it was decoded from;
    - still encoded (a processor that ``needs = "raw"`` on a JPG/PNG/BMP stream):
      ``data`` is the 1-D bytes of the image, ``width``/``height`` come from its
      header, and :meth:`luma`, :meth:`luma_mean` and :meth:`rgb` decode it on each call.

    ``luma()``, ``luma_mean()`` and ``rgb()`` work on every form.
    """

    width: int
    height: int
    layout: PixelLayout | None
    data: np.ndarray = field(repr=False)
    chroma: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    encoding: int = Encoding.RAW

    def _decoded(self, needs: str, size: tuple[int, int] | None = None) -> Frame:
        return frame_from_encoded(self.data, self.encoding, needs=needs, rgb_size=size)

    def luma_mean(self) -> float:
        """Mean BT.601 luma over the image (row padding excluded), in 0..255."""
        layout = self.layout
        if layout is None:
            if self.data.ndim == 1:
                return self._decoded("luma").luma_mean()
            if self.data.ndim == 3:
                return float(_kernels().luma_mean_rgb(self._rgb_rows(), 3, 0, 1, 2, self.width))
            return float(_kernels().mean_u8(self.data))
        if layout.kind == "yuv420p":
            return float(_kernels().mean_u8(self.data))
        if layout.kind == "rgb":
            return float(
                _kernels().luma_mean_rgb(
                    self.data, layout.bytes_per_pixel, layout.r, layout.g, layout.b, self.width
                )
            )
        return float(
            _kernels().luma_mean_packed16(
                self.data, self.width, layout.big_endian, layout.kind == "rgb565"
            )
        )

    def luma(self) -> np.ndarray:
        """``(height, width)`` uint8 BT.601 luma, rounded to nearest.

        A read-only view for YUV420P and luma-decoded frames; a new array otherwise.
        """
        layout = self.layout
        if layout is None:
            if self.data.ndim == 1:
                return self._decoded("luma").data
            if self.data.ndim == 2:
                return self.data
        elif layout.kind == "yuv420p":
            return self.data
        out = np.empty((self.height, self.width), np.uint8)
        if layout is None:
            _kernels().luma_rgb(self._rgb_rows(), 3, 0, 1, 2, self.width, out)
        elif layout.kind == "rgb":
            _kernels().luma_rgb(
                self.data, layout.bytes_per_pixel, layout.r, layout.g, layout.b, self.width, out
            )
        else:
            _kernels().luma_packed16(
                self.data, self.width, layout.big_endian, layout.kind == "rgb565", out
            )
        return out

    def rgb(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """``(height, width, 3)`` uint8 R, G, B; with ``size`` = (width, height), resized to it.

        RGB24 at its own size is a zero-copy read-only view (strided when rows are
        padded), an image decoded to RGB at its own size is returned as it is (read-only);
        every other case is a new C-contiguous array. Resizing stretches
        (no letterbox) with bilinear interpolation. YUV420P is read as BT.601 full
        range (JFIF levels, as the luma path assumes), each chroma sample covering
        2x2 pixels; RGB565/555 channels are expanded by bit replication; alpha is dropped.
        """
        target = None if size is None else check_size(size)
        if target == (self.width, self.height):
            target = None
        layout = self.layout
        if layout is None and self.data.ndim == 1:
            return self._decoded("rgb", target).rgb(target)
        if layout is not None and layout.kind == "rgb":
            # Byte formats resize straight from the view: no full-size copy first.
            bpp, r, g, b = layout.bytes_per_pixel, layout.r, layout.g, layout.b
            if target is None and (bpp, r, g, b) == (3, 0, 1, 2):
                return _read_only(self.data.reshape(self.height, self.width, 3))
            source = self.data
        else:
            full = self._full_rgb()
            if target is None:
                return full
            bpp, r, g, b = 3, 0, 1, 2
            source = _read_only(full.reshape(self.height, self.width * 3))
        if target is None:
            out = np.empty((self.height, self.width, 3), np.uint8)
            _kernels().rgb_bytes(source, bpp, r, g, b, self.width, out)
        else:
            out = np.empty((target[1], target[0], 3), np.uint8)
            _kernels().resize_bilinear(source, bpp, r, g, b, self.width, out)
        return out

    def _rgb_rows(self) -> np.ndarray:
        """A decoded RGB image as (height, width * 3) rows, the kernels' view."""
        return self.data.reshape(self.height, self.width * 3)

    def _full_rgb(self) -> np.ndarray:
        """RGB at full size for decoded, packed 16-bit and YUV420P frames."""
        layout = self.layout
        if layout is None:
            if self.data.ndim == 3:
                return self.data
            return np.repeat(self.data[:, :, np.newaxis], 3, axis=2)
        out = np.empty((self.height, self.width, 3), np.uint8)
        if layout.kind == "yuv420p":
            assert self.chroma is not None
            _kernels().rgb_yuv420p(self.data, self.chroma[0], self.chroma[1], True, out)
        else:
            _kernels().rgb_packed16(
                self.data, self.width, layout.big_endian, layout.kind == "rgb565", out
            )
        return out


def _chroma_planes(buf: Any, width: int, height: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only views of the U and V planes of a YUV420P frame (already bounds-checked)."""
    data = _byte_array(buf, copy_ok=False)
    c_stride, c_height, c_width = -(-stride // 2), -(-height // 2), -(-width // 2)
    planes = []
    for index in range(2):
        offset = stride * height + index * c_stride * c_height
        plane = np.ndarray(
            shape=(c_height, c_width),
            dtype=np.uint8,
            buffer=data,
            offset=offset,
            strides=(c_stride, 1),
        )
        planes.append(_read_only(plane))
    return planes[0], planes[1]


def frame_from_raw(buf: Any, pixel_format: int, width: int, height: int, stride: int) -> Frame:
    """A :class:`Frame` over a RAW frame in ``buf`` (see :func:`raw_view`); no copy."""
    view = raw_view(buf, pixel_format, width, height, stride)
    layout = LAYOUTS[pixel_format]
    chroma = None
    if layout.kind == "yuv420p":
        chroma = _chroma_planes(buf, width, height, stride or width)
    # Plain ints: kernels are compiled per argument type (numpy int32 would recompile).
    return Frame(int(width), int(height), layout, view, chroma)


def _check_dimensions(kind: str, width: int, height: int, max_dimension: int) -> None:
    if width <= 0 or height <= 0:
        raise FrameError(f"{kind} image has size {width}x{height}")
    if width > max_dimension or height > max_dimension:
        raise FrameError(
            f"{kind} image is {width}x{height}, larger than the limit of {max_dimension}"
        )


def _jpeg_size(data: np.ndarray, max_dimension: int) -> tuple[int, int]:
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except Exception as exc:  # noqa: BLE001 - any failure is the frame's; ValueError usually
        raise FrameError(f"JPG header unreadable: {exc}") from None
    _check_dimensions("JPG", width, height, max_dimension)
    return width, height


def _decode_jpeg(
    data: np.ndarray,
    luma_scale: int,
    max_dimension: int,
    rgb: bool = False,
    rgb_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Gray (h, w) at 1/``luma_scale``, or RGB (h, w, 3) at least ``rgb_size`` big."""
    width, height = _jpeg_size(data, max_dimension)
    # simplejpeg picks the smallest DCT scale whose output is at least min_height x
    # min_width; without them it ignores min_factor and decodes at full size.
    size_hint = {}
    if rgb:
        if rgb_size is not None:
            size_hint = {
                "min_height": min(rgb_size[1], height),
                "min_width": min(rgb_size[0], width),
            }
    elif luma_scale > 1:
        scale = min(luma_scale, _MAX_JPEG_SCALE)
        size_hint = {"min_height": -(-height // scale), "min_width": -(-width // scale)}
    try:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB" if rgb else "GRAY", strict=True, **size_hint
        )
    except Exception as exc:  # noqa: BLE001 - any failure is the frame's
        raise FrameError(f"JPG decode failed: {exc}") from None
    return pixels if rgb else pixels.reshape(pixels.shape[0], pixels.shape[1])


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(head: bytes) -> tuple[int, int]:
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise FrameError("PNG signature or IHDR chunk missing")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _check_png_chunks(data: np.ndarray) -> None:
    """Walk every chunk and verify its CRC.

    Pillow checks no CRC of image data, so without this a PNG with flipped bytes
    decodes to garbage that would be classified; one crc32 pass costs a few percent
    of the decode.
    """
    raw = memoryview(data.data)
    end = raw.nbytes
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= end:
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        stop = pos + 8 + length
        if stop + 4 > end:
            break
        chunk_type = bytes(raw[pos + 4 : pos + 8])
        (crc,) = struct.unpack(">I", raw[stop : stop + 4])
        if zlib.crc32(raw[pos + 4 : stop]) != crc:
            name = chunk_type.decode("ascii", "replace")
            raise FrameError(f"PNG chunk {name} at byte {pos} is corrupt (CRC mismatch)")
        if chunk_type == b"IEND":
            return
        pos = stop + 4
    raise FrameError("PNG truncated: no IEND chunk")


def _bmp_size(head: bytes) -> tuple[int, int]:
    if len(head) < 26 or head[:2] != b"BM":
        raise FrameError("BMP signature missing")
    (header_size,) = struct.unpack("<I", head[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack("<HH", head[18:22])
    else:  # BITMAPINFOHEADER and later: signed; negative height means top-down
        width, height = struct.unpack("<ii", head[18:26])
        height = abs(height)
    return width, height


def _pillow_size(data: np.ndarray, kind: str, max_dimension: int) -> tuple[int, int]:
    head = data[:32].tobytes()
    width, height = _png_size(head) if kind == "PNG" else _bmp_size(head)
    # Checked from our own header read, before Pillow sees the data: Image.open would
    # warn (or raise) about large images itself, and warnings are process-global.
    _check_dimensions(kind, width, height, max_dimension)
    return width, height


def _decode_pillow(
    data: np.ndarray, kind: str, max_dimension: int, rgb: bool = False
) -> np.ndarray:
    """Gray (h, w), or with ``rgb`` (h, w, 3)."""
    from PIL import Image  # PNG and BMP only: Pillow is not loaded for RAW or JPEG

    width, height = _pillow_size(data, kind, max_dimension)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise FrameError(
            f"{kind} image is {width}x{height}, more than PIL.Image.MAX_IMAGE_PIXELS ({limit})"
        )
    if kind == "PNG":
        _check_png_chunks(data)
    try:
        # BytesIO copies the bytes; Pillow decodes only from file objects.
        with Image.open(io.BytesIO(data.data), formats=[kind]) as image:
            if image.size != (width, height):
                raise FrameError(f"{kind} header size {width}x{height} != {image.size}")
            # Alpha is not luma; dropping it also keeps Pillow's palette warnings quiet.
            image.info.pop("transparency", None)
            if image.mode.startswith("I;16"):
                gray = (np.asarray(image) >> 8).astype(np.uint8)
                return np.repeat(gray[:, :, np.newaxis], 3, axis=2) if rgb else gray
            return np.asarray(image.convert("RGB" if rgb else "L"))
    except FrameError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, zlib.error, ...
        raise FrameError(f"{kind} decode failed: {exc}") from None


def frame_from_encoded(
    data: Any,
    encoding: int,
    *,
    luma_scale: int = 1,
    max_dimension: int = MAX_DIMENSION,
    needs: str = "luma",
    rgb_size: tuple[int, int] | None = None,
) -> Frame:
    """A :class:`Frame` of a JPG, PNG or BMP image, decoded as ``needs`` asks.

    ``data`` may be bytes, a memoryview or a uint8 array (e.g. a view of shared
    memory); it is not copied for JPG. ``needs``:

    - ``"luma"``: decoded straight to 8-bit luma; ``luma_scale`` > 1 lets JPG decode at
      a reduced scale (up to 1/8, by DCT scaling), which keeps the mean;
    - ``"rgb"``: decoded to RGB; with ``rgb_size`` (width, height) a JPG decodes at the
      smallest DCT scale still at least that big (the processor resizes the rest);
    - ``"raw"``: not decoded: a frame over the bytes, sized from the header.

    PNG and BMP always decode at full size. Images with a side above
    ``max_dimension`` are refused from their header, before any pixel is decoded.
    Every failure is a :class:`FrameError`.
    """
    if not isinstance(luma_scale, int) or luma_scale < 1:
        raise ValueError(f"luma_scale must be an int >= 1, got {luma_scale!r}")
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {', '.join(NEEDS)}; got {needs!r}")
    if rgb_size is not None:
        rgb_size = check_size(rgb_size, "rgb_size")
    try:
        kind = Encoding(encoding)
    except ValueError:
        raise FrameError(f"unsupported encoding {encoding!r}") from None
    if kind is Encoding.RAW:
        raise FrameError("RAW frames need a pixel format: use frame_from_raw")
    array = _byte_array(data, copy_ok=True)
    if array.shape[0] == 0:
        raise FrameError(f"{kind.name} image is empty")
    if needs == "raw":
        if kind is Encoding.JPG:
            width, height = _jpeg_size(array, max_dimension)
        else:
            width, height = _pillow_size(array, kind.name, max_dimension)
        view = array.view()
        view.flags.writeable = False
        return Frame(width, height, None, view, None, kind)
    if kind is Encoding.JPG:
        pixels = _decode_jpeg(array, luma_scale, max_dimension, needs == "rgb", rgb_size)
    else:
        pixels = _decode_pillow(array, kind.name, max_dimension, rgb=needs == "rgb")
    pixels.flags.writeable = False
    return Frame(pixels.shape[1], pixels.shape[0], None, pixels, None, kind)
