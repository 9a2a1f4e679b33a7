"""Where the client's frames come from: synthetic patterns, images, folders, video.

Every source yields RGB frames as (height, width, 3) uint8 arrays.  Video files
and stream URLs are decoded by PyAV (FFmpeg; wheels for x86-64 and aarch64),
installed with the ``video`` extra.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fastext.client.synthetic import scene

__all__ = ["IMAGE_SUFFIXES", "PATTERNS", "SourceError", "frame_rate", "frames_from"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PATTERNS = ("dark-light", "gradient", "noise", "scene")
_SYNTHETIC_SIZE = (640, 480)


class SourceError(Exception):
    """A source that cannot be opened or read; the message says which and why."""


def frames_from(source: str, loop: int = 1, seed: int = 0) -> Iterator[np.ndarray]:
    """RGB frames of ``source``, played ``loop`` times (0: forever; synthetic: endless)."""
    if source.startswith("synthetic:"):
        return _synthetic(source.partition(":")[2], seed)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return _looped(lambda: (_image(p) for p in files), loop)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise SourceError(f"{source}: no such image file")
        return _looped(lambda: iter([_image(path)]), loop)
    if "://" not in source and not path.exists():
        raise SourceError(f"{source}: no such file")
    return _looped(lambda: _video(source), loop)


def frame_rate(source: str) -> float | None:
    """A video source's frame rate (frames/s, as its container states it); None for other
    sources, or when it cannot be read (the caller picks a default)."""
    if source.startswith("synthetic:") or Path(source).is_dir() \
            or Path(source).suffix.lower() in IMAGE_SUFFIXES:
        return None
    try:
        import av

        with av.open(source) as container:
            if not container.streams.video:
                return None
            rate = container.streams.video[0].average_rate or container.streams.video[0].base_rate
            return float(rate) if rate else None
    except Exception:  # noqa: BLE001 - no PyAV, or FFmpeg cannot open it: frames_from says why
        return None


def _looped(make: object, loop: int) -> Iterator[np.ndarray]:
    rounds = itertools.count() if loop == 0 else range(loop)
    for _ in rounds:
        yield from make()  # type: ignore[operator]


def _image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise SourceError(f"{path}: cannot read image ({exc})") from None


def _video(source: str) -> Iterator[np.ndarray]:
    try:
        import av
    except ImportError:
        raise SourceError("video sources need PyAV: pip install 'fastext[video]'") from None
    try:
        container = av.open(source)
    except Exception as exc:  # av raises its own error classes per FFmpeg errno
        raise SourceError(f"{source}: cannot open video ({exc})") from None
    with container:
        if not container.streams.video:
            raise SourceError(f"{source}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


#: Synthetic frames are rendered once and replayed: rendering a noisy scene costs
#: milliseconds, which would make the client, not the server, the bottleneck.
SYNTHETIC_CYCLE = 40


def _synthetic(pattern: str, seed: int) -> Iterator[np.ndarray]:
    if pattern not in PATTERNS:
        raise SourceError(f"synthetic:{pattern}: unknown pattern (one of {', '.join(PATTERNS)})")
    cycle = list(itertools.islice(_render(pattern, seed), SYNTHETIC_CYCLE))
    return itertools.cycle(cycle)


def _render(pattern: str, seed: int) -> Iterator[np.ndarray]:
    width, height = _SYNTHETIC_SIZE
    rng = np.random.default_rng(seed)
    cols = np.arange(width, dtype=np.int32)[None, :]
    rows = np.arange(height, dtype=np.int32)[:, None]
    for index in itertools.count():
        if pattern == "dark-light":
            # alternates every 10 frames: day scenes (light) and night scenes (dark)
            yield scene(width, height, index, light=(index // 10) % 2 == 0, seed=seed)
        elif pattern == "scene":
            yield scene(width, height, index, light=True, seed=seed)
        elif pattern == "gradient":
            shift = index * 8
            r = ((cols + shift) % 256).astype(np.uint8)
            g = ((rows + shift // 2) % 256).astype(np.uint8)
            b = np.full((height, width), (index * 3) % 256, np.uint8)
            yield np.dstack(np.broadcast_arrays(r, g, b))
        else:
            yield rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def expected_dark_light(index: int) -> str:
    """The tag ``synthetic:dark-light`` frame ``index`` (0-based) should get."""
    return "light" if (index // 10) % 2 == 0 else "dark"
