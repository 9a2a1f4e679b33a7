"""fastext.vision.frames: pixel layouts, zero-copy RAW views, luma, and decoding encoded frames."""

from __future__ import annotations

import io
import mmap
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastext.errors import FastextError, FrameError
from fastext.vision import frames
from fastext.vision.frames import (
    LAYOUTS,
    MAX_DIMENSION,
    Encoding,
    Frame,
    PixelFormat,
    default_stride,
    frame_from_encoded,
    frame_from_raw,
    raw_frame_size,
    raw_view,
)
from tests.helpers import BYTE_ORDERS, PACKED, pack, place, random_rgb, subprocess_env

RGB_FORMATS = [*BYTE_ORDERS, *PACKED]

# (R, G, B), and whether the seed processor calls it dark (BT.601 mean < 127).
# Orange and azure are mirror images: swapping R and B flips light and dark.
COLOURS = {
    "blue": ((0, 0, 255), True),
    "red": ((255, 0, 0), True),
    "green": ((0, 255, 0), False),
    "orange": ((255, 100, 0), False),
    "azure": ((0, 100, 255), True),
    "near-black": ((12, 9, 20), True),
    "near-white": ((240, 250, 235), False),
}


def bt601(rgb: np.ndarray) -> np.ndarray:
    """Float64 BT.601 luma of an (..., 3) array."""
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def gradient_rgb(h: int, w: int) -> np.ndarray:
    """A smooth image: JPEG keeps it close to the original."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack(
        [x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], axis=-1
    ).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt, **options)
    return out.getvalue()


# -- the pixel-format table --------------------------------------------------------


def test_enums_match_the_contract_numbers() -> None:
    assert {f.name: int(f) for f in PixelFormat} == {
        "NONE": 0,
        "YUV420P": 20,
        "RGB565BE": 40,
        "RGB565LE": 41,
        "RGB555BE": 42,
        "RGB555LE": 43,
        "RGB24": 60,
        "BGR24": 61,
        "ARGB": 80,
        "RGBA": 81,
        "ABGR": 82,
        "BGRA": 83,
    }
    assert {e.name: int(e) for e in Encoding} == {"BMP": 0, "JPG": 1, "PNG": 2, "RAW": 3}


def test_layouts_cover_every_raw_format_but_none() -> None:
    assert set(LAYOUTS) == set(PixelFormat) - {PixelFormat.NONE}
    assert LAYOUTS[60] is LAYOUTS[PixelFormat.RGB24]  # plain ints work as keys
    for pixel_format, order in BYTE_ORDERS.items():
        layout = LAYOUTS[pixel_format]
        assert (layout.kind, layout.bytes_per_pixel) == ("rgb", len(order))
        assert (layout.r, layout.g, layout.b) == tuple(order.index(c) for c in "RGB")
    for pixel_format, (gbits, big_endian) in PACKED.items():
        layout = LAYOUTS[pixel_format]
        assert (layout.kind, layout.bytes_per_pixel) == (f"rgb5{gbits}5", 2)
        assert layout.big_endian is big_endian
    assert LAYOUTS[PixelFormat.YUV420P].kind == "yuv420p"


def test_default_stride_and_frame_size() -> None:
    assert default_stride(PixelFormat.RGB24, 416) == 1248
    assert default_stride(PixelFormat.BGRA, 10) == 40
    assert default_stride(PixelFormat.RGB565LE, 10) == 20
    assert default_stride(PixelFormat.YUV420P, 11) == 11
    assert raw_frame_size(PixelFormat.RGB24, 416, 416, 1280) == 1280 * 416
    assert raw_frame_size(PixelFormat.RGB24, 4, 3, 0) == 36  # stride 0: unpadded
    # YUV420P: Y plane, then U and V of ceil(stride/2) * ceil(height/2) each.
    assert raw_frame_size(PixelFormat.YUV420P, 1920, 1080, 1920) == 1920 * 1080 * 3 // 2
    assert raw_frame_size(PixelFormat.YUV420P, 5, 3, 7) == 7 * 3 + 2 * 4 * 2


@pytest.mark.parametrize(
    ("pixel_format", "width", "height", "stride", "reason"),
    [
        (PixelFormat.NONE, 4, 4, 0, "pixel format"),
        (99, 4, 4, 0, "pixel format"),
        (PixelFormat.RGB24, 0, 4, 0, "not positive"),
        (PixelFormat.RGB24, 4, -1, 0, "not positive"),
        (PixelFormat.RGB24, 4, 4, 11, "shorter than a row"),
        (PixelFormat.RGB24, 4, 4, -12, "shorter than a row"),
    ],
)
def test_bad_geometry_raises_frame_error(
    pixel_format: int, width: int, height: int, stride: int, reason: str
) -> None:
    with pytest.raises(FrameError, match=reason):
        raw_frame_size(pixel_format, width, height, stride)
    with pytest.raises(FrameError, match=reason):
        raw_view(bytes(1000), pixel_format, width, height, stride)


# -- raw_view --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "ndarray"])
def test_raw_view_is_zero_copy(kind: str) -> None:
    h, w, stride = 5, 7, 24
    backing = np.arange(stride * h, dtype=np.uint8)
    raw = backing.tobytes()
    buffers: dict[str, bytes | bytearray | memoryview | np.ndarray] = {
        "bytes": raw,
        "bytearray": bytearray(raw),
        "memoryview": memoryview(raw),
        "ndarray": backing,
    }
    buf = buffers[kind]
    view = raw_view(buf, PixelFormat.RGB24, w, h, stride)
    assert view.shape == (h, w * 3)
    assert view.strides == (stride, 1)
    assert np.shares_memory(view, np.frombuffer(buf, np.uint8))
    assert not view.flags.writeable
    np.testing.assert_array_equal(view, backing.reshape(h, stride)[:, : w * 3])


def test_raw_view_of_a_read_only_mapping_is_zero_copy(tmp_path: Path) -> None:
    # What the server does: the client's shared-memory file, mapped read-only.
    rows, _ = pack(random_rgb(6, 9), PixelFormat.BGRA)
    path = tmp_path / "shm"
    path.write_bytes(bytes(100) + place(rows, 40))
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
        whole = np.frombuffer(mapping, np.uint8)
        frame = frame_from_raw(whole[100:], PixelFormat.BGRA, 9, 6, 40)
        assert np.shares_memory(frame.data, whole)
        np.testing.assert_array_equal(frame.data, rows)
        del frame, whole  # release the exported buffer so the mapping can close


def test_raw_view_stride_zero_means_unpadded() -> None:
    view = raw_view(bytes(4 * 3 * 2), PixelFormat.RGB24, 4, 2, 0)
    assert view.shape == (2, 12)
    assert view.strides == (12, 1)


@pytest.mark.parametrize("pixel_format", list(LAYOUTS))
def test_raw_view_short_buffer_raises(pixel_format: int) -> None:
    w, h = 5, 3
    stride = default_stride(pixel_format, w) + 3
    need = raw_frame_size(pixel_format, w, h, stride)
    raw_view(bytes(need), pixel_format, w, h, stride)  # exactly enough is fine
    with pytest.raises(FrameError, match=f"got {need - 1} bytes, need {need}"):
        raw_view(bytes(need - 1), pixel_format, w, h, stride)
    with pytest.raises(FrameError, match=f"got 0 bytes, need {need}"):
        frame_from_raw(b"", pixel_format, w, h, stride)


def test_raw_view_never_reaches_past_the_frame() -> None:
    w, h, stride = 6, 4, 20
    buf = np.zeros(stride * h, np.uint8)
    view = raw_view(buf, PixelFormat.RGB24, w, h, stride)
    start = buf.__array_interface__["data"][0]
    low = view.__array_interface__["data"][0]
    high = low + (h - 1) * view.strides[0] + view.shape[1]  # one past the last byte
    assert (low, high) == (start, start + (h - 1) * stride + w * 3)
    assert high <= start + buf.nbytes


def test_raw_view_rejects_unusable_buffers() -> None:
    with pytest.raises(FrameError, match="dtype"):
        raw_view(np.zeros(100, np.uint16), PixelFormat.RGB24, 2, 2, 0)
    with pytest.raises(FrameError, match="contiguous"):
        raw_view(np.zeros(200, np.uint8)[::2], PixelFormat.RGB24, 2, 2, 0)
    with pytest.raises(FrameError, match="bytes-like"):
        raw_view(12345, PixelFormat.RGB24, 2, 2, 0)


# -- RAW frames: luma_mean and luma ----------------------------------------------------


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("colour", list(COLOURS))
@pytest.mark.parametrize("pixel_format", RGB_FORMATS, ids=lambda f: PixelFormat(f).name)
def test_luma_mean_of_solid_colours(pixel_format: int, colour: str, padded: bool) -> None:
    (rgb, dark) = COLOURS[colour]
    w, h = 7, 5
    rows, seen = pack(np.full((h, w, 3), rgb, np.uint8), pixel_format)
    stride = rows.shape[1] + (9 if padded else 0)
    frame = frame_from_raw(place(rows, stride), pixel_format, w, h, stride)
    expected = bt601(seen).mean()
    assert frame.luma_mean() == pytest.approx(expected, rel=1e-6)
    assert (frame.luma_mean() < 127) is dark


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("pixel_format", RGB_FORMATS, ids=lambda f: PixelFormat(f).name)
def test_luma_of_random_frames(pixel_format: int, padded: bool) -> None:
    w, h = 37, 11  # odd sizes: vector loops leave tails
    rows, seen = pack(random_rgb(h, w, seed=pixel_format), pixel_format)
    stride = rows.shape[1] + (13 if padded else 0)
    frame = frame_from_raw(place(rows, stride, tail=5), pixel_format, w, h, stride)
    assert (frame.width, frame.height, frame.layout) == (w, h, LAYOUTS[pixel_format])
    assert frame.luma_mean() == pytest.approx(bt601(seen).mean(), rel=1e-6)
    weighted = seen.astype(np.int64) @ np.array([299, 587, 114])
    luma = frame.luma()
    assert luma.shape == (h, w)
    assert luma.dtype == np.uint8
    np.testing.assert_array_equal(luma, (weighted + 500) // 1000)  # rounded BT.601


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_luma_of_rgb24_matches_pillow(padded: bool) -> None:
    rgb = random_rgb(48, 64, seed=7)
    rows, _ = pack(rgb, PixelFormat.RGB24)
    stride = rows.shape[1] + (64 if padded else 0)
    luma = frame_from_raw(place(rows, stride), PixelFormat.RGB24, 64, 48, stride).luma()
    pillow = np.asarray(Image.fromarray(rgb).convert("L")).astype(np.int16)
    assert np.abs(luma.astype(np.int16) - pillow).max() <= 1


def test_channel_order_matters() -> None:
    # One buffer, read as RGB24 and as BGR24: pure blue in one is pure red in the other.
    buf = bytes([0, 0, 255] * 16)
    as_rgb = frame_from_raw(buf, PixelFormat.RGB24, 4, 4, 0).luma_mean()
    as_bgr = frame_from_raw(buf, PixelFormat.BGR24, 4, 4, 0).luma_mean()
    assert as_rgb == pytest.approx(0.114 * 255)
    assert as_bgr == pytest.approx(0.299 * 255)


@pytest.mark.parametrize(("w", "h", "stride"), [(5, 3, 7), (6, 4, 6), (1, 1, 1), (33, 17, 40)])
def test_yuv420p_reads_the_y_plane_only(w: int, h: int, stride: int) -> None:
    y_plane = np.random.default_rng(w).integers(0, 256, (h, w), dtype=np.uint8)
    chroma = 2 * (-(-stride // 2)) * (-(-h // 2))
    buf = place(y_plane, stride, tail=chroma)  # padding and U/V planes are all PAD
    assert len(buf) == raw_frame_size(PixelFormat.YUV420P, w, h, stride)
    frame = frame_from_raw(buf, PixelFormat.YUV420P, w, h, stride)
    assert frame.data.shape == (h, w)
    assert frame.luma_mean() == pytest.approx(y_plane.mean(), rel=1e-12)
    luma = frame.luma()
    np.testing.assert_array_equal(luma, y_plane)
    assert np.shares_memory(luma, np.frombuffer(buf, np.uint8))  # the Y plane itself
    with pytest.raises(FrameError, match="need"):
        frame_from_raw(buf[:-1], PixelFormat.YUV420P, w, h, stride)


# -- encoded frames -----------------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return gradient_rgb(240, 320)


@pytest.fixture(scope="module")
def jpeg(photo: np.ndarray) -> bytes:
    return encode(photo, "JPEG", quality=92)


def pillow_luma(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


def test_jpeg_decodes_to_gray(jpeg: bytes) -> None:
    frame = frame_from_encoded(jpeg, Encoding.JPG)
    assert (frame.width, frame.height, frame.layout) == (320, 240, None)
    assert frame.data.shape == (240, 320)
    assert frame.luma() is frame.data
    assert frame.luma_mean() == pytest.approx(pillow_luma(jpeg).mean(), abs=0.5)


def test_jpeg_reduced_scale_keeps_the_mean(jpeg: bytes) -> None:
    full = frame_from_encoded(jpeg, Encoding.JPG)
    eighth = frame_from_encoded(jpeg, Encoding.JPG, luma_scale=8)
    half = frame_from_encoded(jpeg, Encoding.JPG, luma_scale=2)
    assert eighth.data.shape == (30, 40)
    assert half.data.shape == (120, 160)
    assert eighth.luma_mean() == pytest.approx(full.luma_mean(), abs=1.0)
    assert half.luma_mean() == pytest.approx(full.luma_mean(), abs=1.0)
    # libjpeg scales down by 1/8 at most; larger requests get 1/8.
    assert frame_from_encoded(jpeg, Encoding.JPG, luma_scale=64).data.shape == (30, 40)
    with pytest.raises(ValueError, match="luma_scale"):
        frame_from_encoded(jpeg, Encoding.JPG, luma_scale=0)


def test_jpeg_of_odd_size_and_gray_and_cmyk() -> None:
    rgb = gradient_rgb(7, 13)
    odd = frame_from_encoded(encode(rgb, "JPEG"), Encoding.JPG, luma_scale=8)
    assert odd.data.shape == (1, 2)  # ceil(7/8) x ceil(13/8)
    gray = encode(np.asarray(Image.fromarray(gradient_rgb(30, 40)).convert("L")), "JPEG")
    frame = frame_from_encoded(gray, Encoding.JPG)
    assert frame.luma_mean() == pytest.approx(pillow_luma(gray).mean(), abs=0.5)
    out = io.BytesIO()
    Image.fromarray(gradient_rgb(16, 16)).convert("CMYK").save(out, "JPEG", quality=95)
    assert 0 <= frame_from_encoded(out.getvalue(), Encoding.JPG).luma_mean() <= 255


def test_encoded_data_may_be_any_bytes_like(jpeg: bytes) -> None:
    expected = frame_from_encoded(jpeg, Encoding.JPG).luma_mean()
    shm = np.zeros(len(jpeg) + 100, np.uint8)  # as if at offset 37 of a mapping
    shm[37 : 37 + len(jpeg)] = np.frombuffer(jpeg, np.uint8)
    spaced = np.zeros(2 * len(jpeg), np.uint8)
    spaced[::2] = np.frombuffer(jpeg, np.uint8)
    for data in (memoryview(jpeg), bytearray(jpeg), shm[37 : 37 + len(jpeg)], spaced[::2]):
        assert frame_from_encoded(data, Encoding.JPG).luma_mean() == expected


def flip_middle(data: bytes, count: int = 16) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + count]) + data[mid + count :]


def sof_patched(jpeg: bytes, height: int, width: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming another size."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


@pytest.mark.parametrize("damage", ["truncated", "random", "flipped", "empty", "header-only"])
def test_corrupt_jpeg_raises_frame_error(jpeg: bytes, damage: str) -> None:
    data = {
        "truncated": jpeg[: len(jpeg) // 2],
        "random": np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "flipped": flip_middle(jpeg),
        "empty": b"",
        "header-only": jpeg[:2],
    }[damage]
    with pytest.raises(FrameError, match="JPG"):
        frame_from_encoded(data, Encoding.JPG)


def test_jpeg_bomb_is_refused_from_its_header(jpeg: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded a JPEG whose header is over the limit")

    monkeypatch.setattr(frames.simplejpeg, "decode_jpeg", no_decoding)
    with pytest.raises(FrameError, match="60000x60000, larger than the limit of 16384"):
        frame_from_encoded(sof_patched(jpeg, 60000, 60000), Encoding.JPG)
    with pytest.raises(FrameError, match="larger than the limit of 100"):
        frame_from_encoded(jpeg, Encoding.JPG, max_dimension=100)
    with pytest.raises(FrameError, match="JPG"):
        frame_from_encoded(sof_patched(jpeg, 0, 320), Encoding.JPG)


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_png_and_bmp_decode_like_pillow(photo: np.ndarray, fmt: str, mode: str) -> None:
    image = Image.fromarray(photo).convert(mode)
    out = io.BytesIO()
    image.save(out, fmt)
    data = out.getvalue()
    frame = frame_from_encoded(data, Encoding[fmt])
    assert (frame.width, frame.height) == (320, 240)
    np.testing.assert_array_equal(frame.data, pillow_luma(data))
    assert frame.luma_mean() == pytest.approx(pillow_luma(data).mean(), rel=1e-9)


def test_png_transparency_and_16_bit_gray() -> None:
    palette = Image.fromarray(gradient_rgb(8, 8)).convert("P")
    out = io.BytesIO()
    palette.save(out, "PNG", transparency=bytes([0, 128]))  # Pillow would warn on convert
    assert 0 <= frame_from_encoded(out.getvalue(), Encoding.PNG).luma_mean() <= 255
    deep = np.arange(0, 65535, 257, dtype=np.uint16).reshape(15, 17)
    out = io.BytesIO()
    Image.fromarray(deep).save(out, "PNG")
    frame = frame_from_encoded(out.getvalue(), Encoding.PNG)
    np.testing.assert_array_equal(frame.data, deep >> 8)  # scaled, not clipped at 255


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (valid CRC, one tiny IDAT)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_png_bomb_is_refused_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_opening(*args: object, **kwargs: object) -> None:
        raise AssertionError("opened a PNG whose header is over the limit")

    from PIL import Image

    monkeypatch.setattr(Image, "open", no_opening)
    with pytest.raises(FrameError, match="60000x60000, larger than the limit"):
        frame_from_encoded(png_with_size(60000, 60000), Encoding.PNG)
    with pytest.raises(FrameError, match="has size 0x5"):
        frame_from_encoded(png_with_size(0, 5), Encoding.PNG)
    # Inside max_dimension but over Pillow's pixel budget: refused, and no warning.
    with pytest.raises(FrameError, match="MAX_IMAGE_PIXELS"):
        frame_from_encoded(png_with_size(MAX_DIMENSION, MAX_DIMENSION), Encoding.PNG)


def test_bmp_bomb_is_refused_from_its_header(photo: np.ndarray) -> None:
    bmp = encode(photo, "BMP")
    for height in (60000, -60000):  # negative: a top-down BMP
        huge = bmp[:18] + struct.pack("<ii", 320, height) + bmp[26:]
        with pytest.raises(FrameError, match="larger than the limit"):
            frame_from_encoded(huge, Encoding.BMP)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "bad-crc", "no-iend", "random"])
def test_corrupt_png_raises_frame_error(photo: np.ndarray, damage: str) -> None:
    png = encode(photo, "PNG")
    data = {
        "truncated": png[: len(png) // 2],
        "flipped": flip_middle(png),  # Pillow alone decodes this to garbage
        "bad-crc": png[:29] + b"\0\0\0\0" + png[33:],
        "no-iend": png[:-12],
        "random": b"\x89PNG" + bytes(range(200)),
    }[damage]
    with pytest.raises(FrameError, match="PNG"):
        frame_from_encoded(data, Encoding.PNG)


def test_wrong_magic_and_unsupported_encodings(photo: np.ndarray, jpeg: bytes) -> None:
    png = encode(photo, "PNG")
    with pytest.raises(FrameError, match="PNG signature"):
        frame_from_encoded(jpeg, Encoding.PNG)
    with pytest.raises(FrameError, match="BMP signature"):
        frame_from_encoded(png, Encoding.BMP)
    with pytest.raises(FrameError, match="JPG"):
        frame_from_encoded(png, Encoding.JPG)
    with pytest.raises(FrameError, match="truncated"):
        frame_from_encoded(encode(photo, "BMP")[:5000], Encoding.BMP)
    with pytest.raises(FrameError, match="frame_from_raw"):
        frame_from_encoded(jpeg, Encoding.RAW)
    with pytest.raises(FrameError, match="unsupported encoding 9"):
        frame_from_encoded(jpeg, 9)
    with pytest.raises(FrameError, match="dtype"):
        frame_from_encoded(np.zeros(10, np.float32), Encoding.PNG)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP"])
def test_mangled_images_only_ever_raise_frame_error(photo: np.ndarray, fmt: str) -> None:
    encoding = {"JPEG": Encoding.JPG, "PNG": Encoding.PNG, "BMP": Encoding.BMP}[fmt]
    good = np.frombuffer(encode(photo[:40, :56], fmt), np.uint8)
    rng = np.random.default_rng(12)
    for _ in range(60):
        data = good.copy()
        spots = rng.integers(0, data.size, rng.integers(1, 6))
        data[spots] = rng.integers(0, 256, spots.size)
        data = data[: rng.integers(1, data.size + 1)]
        try:
            frame = frame_from_encoded(data, encoding)
        except FrameError as exc:
            assert isinstance(exc, FastextError)
            assert str(exc)
        else:
            assert isinstance(frame, Frame)
            assert 0 <= frame.luma_mean() <= 255


def test_frames_import_neither_grpc_nor_protobuf() -> None:
    code = (
        "import sys, fastext.vision.frames, fastext.vision.kernels, fastext.vision.warmup\n"
        "bad = [m for m in sys.modules if m.startswith(('grpc', 'google.protobuf'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=subprocess_env())
