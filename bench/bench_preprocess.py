"""Benchmarks of :func:`fastext.models.preprocess.prepare`: a 1080p RGB24 frame into a
640x640 float32 NCHW slot, letterboxed (area-averaged 3x shrink), side by side with its
yardstick and a naive baseline.

Run: ``PYTHONPATH=src python -m pytest bench/bench_preprocess.py --benchmark-only -p no:cacheprovider``

``preprocess 1920x1080 RGB24 -> 640 float32 NCHW`` compares, per frame:

- ``fastext cold``: :func:`~fastext.models.preprocess.prepare_raw` of frames read from
  a ``/dev/shm`` mapping of 40 frames (250 MB, far beyond the last-level cache), each
  round the next frame: every frame is read cold, as a worker reads a client's frame;
- ``fastext warm``: the same frame each round (in cache: the kernel's own cost);
- ``cold read + write``: the yardstick, a read of each cold frame (bench/_membw.py's
  reader) plus one write of the slot (``fill``), what no pass can go below;
- ``pillow + numpy``: the usual Python pipeline: Pillow's bilinear resize of the
  frame (antialiased, so not aliasing either), ``np.full`` pad, transpose, ``/ 255``.

``preprocess over cold read + write`` alternates a cold ``prepare_raw`` and a cold
read + write of another frame round by round (so load on the machine hits both alike)
and records both medians and their ratio in ``extra_info`` (target: ratio <= 1.5).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench._membw import ColdReader, sum_words
from fastext.models import preprocess
from fastext.models.preprocess import InputSpec, prepare_raw
from fastext.vision.frames import PixelFormat

WIDTH, HEIGHT = 1920, 1080
FRAME_BYTES = WIDTH * HEIGHT * 3
FRAMES = 40
SPEC = InputSpec(640, 640)
GROUP = "preprocess 1920x1080 RGB24 -> 640 float32 NCHW"


@pytest.fixture(scope="module", autouse=True)
def _warm_kernels() -> None:
    preprocess.warm()  # compile (or load) before timing, as workers do


@pytest.fixture(scope="module")
def shm_frames() -> Iterator[ColdReader]:
    """40 frames in a /dev/shm mapping (unlinked at once), bytes set to a pattern."""
    with ColdReader(FRAME_BYTES, FRAMES, "shm") as reader:
        reader.words.view(np.uint8)[:] = np.arange(reader.words.nbytes, dtype=np.uint32) % 251
        yield reader


def frame(reader: ColdReader, k: int) -> np.ndarray:
    """Frame ``k`` of the mapping, as the 1-D bytes a worker hands to prepare_raw."""
    words = reader.words[k * reader.frame_words : (k + 1) * reader.frame_words]
    return words.view(np.uint8)


def cycling(reader: ColdReader, fn: Callable[[int], object]) -> Callable[[], object]:
    """A call that runs ``fn`` on the next frame of the mapping each time."""
    state = {"k": 0}

    def call() -> object:
        k = state["k"]
        state["k"] = (k + 1) % FRAMES
        return fn(k)

    return call


def pillow_numpy(data: np.ndarray, out: np.ndarray) -> None:
    image = Image.frombuffer("RGB", (WIDTH, HEIGHT), data, "raw", "RGB", 0, 1)
    small = np.asarray(image.resize((640, 360), Image.Resampling.BILINEAR))
    canvas = np.full((640, 640, 3), 114, np.uint8)
    canvas[140:500] = small
    np.divide(canvas.transpose(2, 0, 1), np.float32(255), out=out, dtype=np.float32)


@pytest.mark.parametrize(
    "how", ["fastext cold", "fastext warm", "cold read + write", "pillow + numpy"]
)
def test_preprocess_1080p(benchmark: Any, shm_frames: ColdReader, how: str) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["frame_bytes"] = FRAME_BYTES
    out = np.empty(SPEC.slot_shape, np.float32)

    def prep(k: int) -> object:
        return prepare_raw(frame(shm_frames, k), PixelFormat.RGB24, WIDTH, HEIGHT, 0, out, SPEC)

    def read_write(k: int) -> None:
        sum_words(shm_frames.words[k * shm_frames.frame_words : (k + 1) * shm_frames.frame_words])
        out.fill(0.5)

    if how == "fastext cold":
        benchmark(cycling(shm_frames, prep))
        assert out[:, 140:500].std() > 0 and np.all(out[:, :140] == np.float32(114 / 255))
    elif how == "fastext warm":
        benchmark(prep, 0)
    elif how == "cold read + write":
        benchmark(cycling(shm_frames, read_write))
    else:
        benchmark(cycling(shm_frames, lambda k: pillow_numpy(frame(shm_frames, k), out)))


def test_preprocess_over_cold_read_and_write(benchmark: Any, shm_frames: ColdReader) -> None:
    """Both measured in one loop, alternating frames, so they see the same machine."""
    benchmark.group = "preprocess over cold read + write (1080p -> 640 float32 NCHW)"
    out = np.empty(SPEC.slot_shape, np.float32)
    times: dict[str, list[float]] = {"prepare": [], "read_write": []}

    def one_pair(k: int) -> None:
        start = time.perf_counter()
        prepare_raw(frame(shm_frames, k), PixelFormat.RGB24, WIDTH, HEIGHT, 0, out, SPEC)
        times["prepare"].append(time.perf_counter() - start)
        other = (k + FRAMES // 2) % FRAMES
        start = time.perf_counter()
        sum_words(
            shm_frames.words[other * shm_frames.frame_words : (other + 1) * shm_frames.frame_words]
        )
        out.fill(0.5)
        times["read_write"].append(time.perf_counter() - start)

    benchmark.pedantic(cycling(shm_frames, one_pair), rounds=2 * FRAMES, warmup_rounds=2)
    prepare_us = statistics.median(times["prepare"]) * 1e6
    read_write_us = statistics.median(times["read_write"]) * 1e6
    info = benchmark.extra_info
    info["prepare_us"] = round(prepare_us, 1)
    info["cold_read_write_us"] = round(read_write_us, 1)
    info["ratio"] = round(prepare_us / read_write_us, 2)
    print(
        f"\nprepare {prepare_us:.0f} us, cold read + write {read_write_us:.0f} us, "
        f"ratio {prepare_us / read_write_us:.2f} (target <= 1.5)"
    )
