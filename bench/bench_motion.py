"""Benchmarks of the motion processor against the same algorithm in plain numpy.

Run: ``PYTHONPATH=src python -m pytest bench/bench_motion.py --benchmark-only -p no:cacheprovider``

``motion <size>`` times one frame of a stream through each, on luma frames (a
gradient, sensor-like noise and three moving squares, so that every frame has
regions to find):

- ``numba``: :meth:`fastext.processors.motion.MotionDetector.detect` (what the
  processor runs per frame: the block-average/difference/background pass and the
  union-find over cells, both numba kernels);
- ``numpy``: ``bench.numpy_motion.NumpyMotion``, the straightforward numpy rendering
  of the same algorithm (vectorised passes, a Python union-find over the cells),
  checked to find exactly the same boxes.

The numpy row's ``extra_info["numba_speedup"]`` is numpy's mean time over numba's,
measured in the same run (also printed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bench.numpy_motion import NumpyMotion
from fastext.processors.motion import MotionDetector
from fastext.vision import warmup

SIZES = [(416, 416), (1920, 1080)]
FRAMES = 8
_means: dict[tuple[int, int, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def _warm_kernels() -> None:
    warmup.warm()


def stream(width: int, height: int) -> list[np.ndarray]:
    """Read-only luma frames: gradient + noise, three squares moving a little each frame."""
    rng = np.random.default_rng(width)
    y, x = np.mgrid[0:height, 0:width]
    base = (40 + 120 * x / width + 40 * y / height).astype(np.int16)
    side = max(8, width // 12)
    starts = [(width // 8, height // 6), (width // 2, height // 2), (width * 3 // 4, height // 8)]
    frames = []
    for i in range(FRAMES):
        frame = base + rng.integers(-4, 5, (height, width), dtype=np.int16)
        for j, (sx, sy) in enumerate(starts):
            px, py = sx + i * side // 4 * (1 if j % 2 else -1) % width, sy + i * side // 5
            frame[py % height : py % height + side, px % width : px % width + side] = 230
        luma = np.clip(frame, 0, 255).astype(np.uint8)
        luma.flags.writeable = False
        frames.append(luma)
    return frames


def cycle(detect: Callable[[np.ndarray], list[Any]], frames: list[np.ndarray]) -> Callable[[], int]:
    """One call = the stream's next frame (after a first pass that set the background)."""
    for frame in frames:
        detect(frame)
    state = {"i": 0}

    def step() -> int:
        state["i"] += 1
        return len(detect(frames[state["i"] % len(frames)]))

    return step


@pytest.mark.parametrize(("width", "height"), SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("how", ["numba", "numpy"])
def test_motion(benchmark: Any, how: str, width: int, height: int) -> None:
    frames = stream(width, height)
    fast, twin = MotionDetector(), NumpyMotion()
    found = [fast.detect(f) for f in frames]
    assert found == [twin.detect(f) for f in frames]  # the same algorithm, the same boxes
    assert all(found[1:])
    detector = MotionDetector() if how == "numba" else NumpyMotion()
    benchmark.group = f"motion {width}x{height} luma"
    benchmark.extra_info["pixels"] = width * height
    benchmark(cycle(detector.detect, frames))
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    _means[(width, height, how)] = stats.stats.mean
    numba_mean = _means.get((width, height, "numba"))
    if how == "numpy" and numba_mean:
        ratio = stats.stats.mean / numba_mean
        benchmark.extra_info["numba_speedup"] = round(ratio, 1)
        print(
            f"\nmotion {width}x{height}: numba {numba_mean * 1e6:.0f} us, "
            f"numpy {stats.stats.mean * 1e6:.0f} us: {ratio:.1f}x"
        )
