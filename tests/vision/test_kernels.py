"""fastext.vision.kernels against plain numpy references: random data, strided views, edge sizes."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from fastext.vision import kernels, warmup
from tests.helpers import subprocess_env

WEIGHTS = np.array([299, 587, 114])

# (bytes per pixel, r, g, b) of every byte-channel layout frames uses.
RGB_LAYOUTS = [(3, 0, 1, 2), (3, 2, 1, 0), (4, 1, 2, 3), (4, 0, 1, 2), (4, 3, 2, 1), (4, 2, 1, 0)]
PACKED = [(big_endian, is565) for big_endian in (False, True) for is565 in (True, False)]


def strided(rows: np.ndarray, pad: int, fill: int = 255) -> np.ndarray:
    """A read-only view of ``rows`` inside a buffer whose rows are ``pad`` bytes longer."""
    h, n = rows.shape
    buf = np.full((h, n + pad), fill, np.uint8)
    buf[:, :n] = rows
    view = buf[:, :n]
    view.flags.writeable = False
    return view


def random_rows(h: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, n), dtype=np.uint8)


def rgb_of(view: np.ndarray, bpp: int, r: int, g: int, b: int, width: int) -> np.ndarray:
    px = np.ascontiguousarray(view).reshape(view.shape[0], width, bpp).astype(np.int64)
    return px[..., [r, g, b]]


def unpack16(view: np.ndarray, width: int, big_endian: bool, is565: bool) -> np.ndarray:
    px = np.ascontiguousarray(view).reshape(view.shape[0], width, 2).astype(np.int64)
    word = (px[..., 0] << 8 | px[..., 1]) if big_endian else (px[..., 1] << 8 | px[..., 0])
    r5, b5 = (word >> (11 if is565 else 10)) & 31, word & 31
    g = (word >> 5) & (63 if is565 else 31)
    g8 = (g << 2 | g >> 4) if is565 else (g << 3 | g >> 2)
    return np.stack([r5 << 3 | r5 >> 2, g8, b5 << 3 | b5 >> 2], axis=-1)


def mean_ref(rgb: np.ndarray) -> float:
    return float((rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).mean())


def luma_ref(rgb: np.ndarray) -> np.ndarray:
    return ((rgb @ WEIGHTS + 500) // 1000).astype(np.uint8)


@pytest.mark.parametrize("pad", [0, 1, 64])
@pytest.mark.parametrize("layout", RGB_LAYOUTS)
@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 17), (13, 101), (2, 1000), (8, 5), (1081, 7)])
def test_rgb_kernels_match_numpy(
    h: int, w: int, layout: tuple[int, int, int, int], pad: int
) -> None:
    bpp, r, g, b = layout
    view = strided(random_rows(h, w * bpp, seed=w + pad), pad)
    rgb = rgb_of(view, bpp, r, g, b, w)
    assert kernels.luma_mean_rgb(view, bpp, r, g, b, w) == pytest.approx(mean_ref(rgb), rel=1e-12)
    out = np.empty((h, w), np.uint8)
    kernels.luma_rgb(view, bpp, r, g, b, w, out)
    np.testing.assert_array_equal(out, luma_ref(rgb))


@pytest.mark.parametrize("pad", [0, 3, 64])
@pytest.mark.parametrize(("big_endian", "is565"), PACKED)
@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 33), (9, 250)])
def test_packed16_kernels_match_numpy(
    h: int, w: int, big_endian: bool, is565: bool, pad: int
) -> None:
    view = strided(random_rows(h, 2 * w, seed=w), pad)
    rgb = unpack16(view, w, big_endian, is565)
    got = kernels.luma_mean_packed16(view, w, big_endian, is565)
    assert got == pytest.approx(mean_ref(rgb), rel=1e-12)
    out = np.empty((h, w), np.uint8)
    kernels.luma_packed16(view, w, big_endian, is565, out)
    np.testing.assert_array_equal(out, luma_ref(rgb))


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (7, 31), (64, 333)])
def test_mean_u8_matches_numpy(h: int, w: int, pad: int) -> None:
    view = strided(random_rows(h, w, seed=h), pad)
    assert kernels.mean_u8(view) == pytest.approx(view.astype(np.float64).mean(), rel=1e-12)


def test_kernels_ignore_bytes_past_the_row() -> None:
    # Black pixels, then white bytes in the same rows that are not part of the image.
    view = np.full((4, 20), 255, np.uint8)
    view[:, :12] = 0
    view.flags.writeable = False
    assert kernels.luma_mean_rgb(view, 3, 0, 1, 2, 4) == 0.0
    assert kernels.luma_mean_rgb(view, 4, 1, 2, 3, 3) == 0.0
    assert kernels.luma_mean_packed16(view, 6, False, True) == 0.0
    out = np.empty((4, 4), np.uint8)
    kernels.luma_rgb(view, 3, 0, 1, 2, 4, out)
    assert not out.any()
    kernels.luma_packed16(view, 4, True, False, out)
    assert not out.any()


@pytest.mark.parametrize("width", [16384, 20000])
def test_wide_rows_do_not_overflow(width: int) -> None:
    # 16384 is MAX_DIMENSION; 20000 crosses the per-row uint32 accumulator's chunk.
    white = np.full((2, 4 * width), 255, np.uint8)
    white.flags.writeable = False
    assert kernels.luma_mean_rgb(white, 4, 1, 2, 3, width) == 255.0
    assert kernels.luma_mean_packed16(white[:, : 2 * width], width, False, True) == 255.0
    assert kernels.mean_u8(white) == 255.0
    rows = random_rows(2, 3 * width, seed=width)
    view = strided(rows, 7)
    rgb = rgb_of(view, 3, 0, 1, 2, width)
    assert kernels.luma_mean_rgb(view, 3, 0, 1, 2, width) == pytest.approx(mean_ref(rgb), rel=1e-12)
    out = np.empty((2, width), np.uint8)
    kernels.luma_rgb(view, 3, 0, 1, 2, width, out)
    np.testing.assert_array_equal(out, luma_ref(rgb))


def test_writable_and_contiguous_arrays_work_too() -> None:
    rows = random_rows(6, 30, seed=3)  # writable, C-contiguous
    rgb = rgb_of(rows, 3, 2, 1, 0, 10)
    assert kernels.luma_mean_rgb(rows, 3, 2, 1, 0, 10) == pytest.approx(mean_ref(rgb), rel=1e-12)
    assert kernels.mean_u8(rows) == pytest.approx(rows.mean(), rel=1e-12)


def test_empty_images_have_no_mean() -> None:
    empty = strided(np.zeros((0, 12), np.uint8), 0)
    assert np.isnan(kernels.luma_mean_rgb(empty, 3, 0, 1, 2, 4))
    assert np.isnan(kernels.luma_mean_packed16(empty, 6, False, True))
    assert np.isnan(kernels.mean_u8(empty))


def test_bad_arguments_raise_instead_of_reading_out_of_bounds() -> None:
    view = strided(np.zeros((2, 12), np.uint8), 4)
    out = np.empty((2, 4), np.uint8)
    with pytest.raises(ValueError, match="exceeds the row"):
        kernels.luma_mean_rgb(view, 3, 0, 1, 2, 5)
    with pytest.raises(ValueError, match="channel offset"):
        kernels.luma_mean_rgb(view, 3, 0, 1, 3, 4)
    with pytest.raises(ValueError, match="exceeds the row"):
        kernels.luma_mean_packed16(view, 7, False, True)
    with pytest.raises(ValueError, match="out must have shape"):
        kernels.luma_rgb(view, 3, 0, 1, 2, 4, np.empty((2, 3), np.uint8))
    with pytest.raises(ValueError, match="bpp must be 3 or 4"):
        kernels.luma_rgb(view, 2, 0, 1, 1, 4, out)
    with pytest.raises(ValueError, match="out must have shape"):
        kernels.luma_packed16(view, 6, False, True, out)


def run_python(code: str) -> str:
    env = subprocess_env()
    done = subprocess.run(
        # 600 s: a bound for a hang, not a speed test; under qemu-user on a busy host the
        # warm-coverage run took over 120 s.
        [sys.executable, "-c", code],
        check=True,
        timeout=600,
        env=env,
        capture_output=True,
    )
    return done.stdout.decode()


KERNELS = ["luma_mean_rgb", "luma_mean_packed16", "mean_u8", "luma_rgb", "luma_packed16"]


def test_import_compiles_nothing() -> None:
    code = (
        "from fastext.vision import kernels\n"
        f"print(sum(len(getattr(kernels, k).signatures) for k in {KERNELS!r}))\n"
    )
    assert run_python(code).strip() == "0"


def test_warm_shared_leaves_nothing_to_compile_for_any_frame() -> None:
    # What a worker does before READY; then every kind of frame, every Frame method and
    # both built-in processors: no jitted function (helpers too) may gain a signature.
    code = """
import importlib
import io
import pkgutil
import numpy as np
from numba.core.dispatcher import Dispatcher
from PIL import Image
from fastext.vision import frames, kernels, warmup
from fastext.backend.execute import FrameFormat, run_batch
from fastext.processors import create
warmup.warm_shared()
modules = [importlib.import_module(f"{kernels.__name__}.{m.name}")
           for m in pkgutil.iter_modules(kernels.__path__)]
def signatures():  # every jitted function of the package, helpers too
    return {n: len(d.signatures) for m in modules for n, d in vars(m).items()
            if isinstance(d, Dispatcher)}
before = signatures()
assert {"_unpack16", "_check_rgb_out", "_to_u8", "_find"} <= set(before), sorted(before)
processors = [create("brightness"), create("motion")]
for fmt in frames.LAYOUTS:
    for width, pad in ((6, 0), (6, 8), (5, 0), (5, 1), (5, 2)):
        stride = frames.default_stride(fmt, width) + pad
        buf = bytes(range(256)) * (frames.raw_frame_size(fmt, width, 4, stride) // 256 + 1)
        for data in (buf, bytearray(buf), np.frombuffer(buf, np.uint8)):
            frame = frames.frame_from_raw(data, fmt, width, 4, stride)
            frame.luma_mean(), frame.luma(), frame.rgb(), frame.rgb((3, 2))
        for p in processors:
            outcome = run_batch(p, FrameFormat(frames.Encoding.RAW, fmt, width, 4, stride),
                                [np.frombuffer(buf, np.uint8)] * 2)
            assert all(isinstance(o, list) for o in outcome), outcome
for name, enc in (("JPEG", frames.Encoding.JPG), ("PNG", frames.Encoding.PNG),
                  ("BMP", frames.Encoding.BMP)):
    for mode in ("RGB", "L"):
        out = io.BytesIO()
        Image.new(mode, (9, 7), 90).save(out, name)
        for needs in ("luma", "rgb", "raw"):
            frame = frames.frame_from_encoded(out.getvalue(), enc, luma_scale=8, needs=needs)
            frame.luma_mean(), frame.luma(), frame.rgb(), frame.rgb((4, 3))
        for p in processors:
            run_batch(p, FrameFormat(enc, 0, 0, 0, 0), [out.getvalue()] * 2)
after = signatures()
print(before == after, {n: (before[n], after[n]) for n in before if before[n] != after[n]})
"""
    result = run_python(code)
    assert result.startswith("True"), result


def _fastext_warm(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastext", "warm", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(**env),
        timeout=600,  # a bound for a hang: a cold compile under qemu takes minutes
    )


@pytest.mark.portable
def test_warm_command_readies_every_kernel_in_each_process() -> None:
    # The cache this test's fastext uses (warm by now, or compiled here once, split):
    # every function ready in both processes, none compiled by more than one.
    every = set().union(*(u.functions for u in warmup.warm_units()))
    done = _fastext_warm("--jobs", "2")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"fastext warm: {len(every)} functions ready in "), line
    assert "with 2 process(es)" in line, line
    split = line.split("compiled ", 1)[1].split(",", 1)[0]
    assert sum(int(n) for n in split.split(" + ")) <= len(every), line
    assert f"cache: {warmup.cache_dir()}" in line, line


def package_functions() -> dict[str, Any]:
    """Every jitted function defined in a module of fastext.vision.kernels, by name."""
    from numba.core.dispatcher import Dispatcher

    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, Dispatcher) and value.py_func.__module__ == module.__name__:
                found[name] = value
    return found


def test_a_kernels_closure_follows_helpers_into_other_modules_of_the_package() -> None:
    # luma_rgb's checks live in common and in luma, found through luma's globals (the
    # _row_as_c overload is not cached, so not listed); rgb_packed16's _unpack16 calls
    # _expand5/6, found through common's own globals.
    assert warmup.jitted_closure(kernels.luma_rgb) == {
        "luma_rgb",
        "_check_rgb_args",
        "_check_out",
        "_round_1000",
    }
    assert warmup.jitted_closure(kernels.rgb_packed16) == {
        "rgb_packed16",
        "_check_packed_args",
        "_check_rgb_out",
        "_packed_rgb_row",
        "_unpack16",
        "_expand5",
        "_expand6",
    }
    helper = package_functions()["_check_rgb_args"]
    assert helper.py_func.__module__ == "fastext.vision.kernels.common"


def test_warm_units_cover_every_jitted_function_of_the_package() -> None:
    every = set().union(*(u.functions for u in warmup.warm_units()))
    assert every == set(package_functions())
    assert {"_unpack16", "_to_u8", "_bilinear_taps", "_find"} <= every


def test_a_closure_refuses_two_jitted_functions_of_one_name() -> None:
    # Locks and cache statistics go by name: two helpers named alike would share them.
    from numba import njit

    first: dict[str, object] = {"__name__": "one"}
    exec("def helper(x):\n    return x\n", first)
    second: dict[str, object] = {"__name__": "two", "other": njit(first["helper"])}
    exec("def helper(x):\n    return other(x)\n", second)
    with pytest.raises(ValueError, match="two jitted functions named helper"):
        warmup.jitted_closure(njit(second["helper"]))


def test_warm_command_reports_each_process_that_failed() -> None:
    done = _fastext_warm("--jobs", "2", NUMBA_DISABLE_JIT="1")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert [line.split(":", 2)[1] for line in lines] == [" process 1", " process 2"], lines
    assert all("NUMBA_DISABLE_JIT is set" in line for line in lines), lines
    assert done.stdout == ""
