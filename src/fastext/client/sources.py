"""Where the client's frames come from: synthetic patterns, images, folders, video.

Every source yields RGB frames as (height, width, 3) uint8 arrays.  Video files
and stream URLs are decoded by PyAV (FFmpeg; wheels for x86-64 and aarch64),
installed with the ``video`` extra; :func:`timed_frames_from` gives each video frame
its own presentation time as well.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from fastext.client.synthetic import scene

__all__ = [
    "IMAGE_SUFFIXES",
    "PATTERNS",
    "SourceError",
    "frame_rate",
    "frames_from",
    "timed_frames_from",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PATTERNS = ("dark-light", "gradient", "noise", "scene")
_SYNTHETIC_SIZE = (640, 480)


class SourceError(Exception):
    """A source that cannot be opened or read; the message says which and why."""


def frames_from(source: str, loop: int = 1, seed: int = 0) -> Iterator[np.ndarray]:
    """RGB frames of ``source``, played ``loop`` times (0: forever; synthetic: endless)."""
    return (frame for frame, _ in timed_frames_from(source, loop, seed))


Timed = tuple[np.ndarray, Fraction | None]


def timed_frames_from(source: str, loop: int = 1, seed: int = 0) -> Iterator[Timed]:
    """:func:`frames_from`'s frames, each with its presentation time in seconds: a video
    frame's own (``pts * time_base``, exact; each further pass goes on from where the last
    one ended), None for images and synthetic frames (the caller stamps those by a rate)."""
    if source.startswith("synthetic:"):
        return ((frame, None) for frame in _synthetic(source.partition(":")[2], seed))
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return _looped(lambda: ((_image(p), None) for p in files), loop)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise SourceError(f"{source}: no such image file")
        return _looped(lambda: iter([(_image(path), None)]), loop)
    if "://" not in source and not path.exists():
        raise SourceError(f"{source}: no such file")
    return _video_passes(source, loop)


def frame_rate(source: str) -> float | None:
    """A video source's frame rate (frames/s, as its container states it); None for other
    sources, or when it cannot be read (the caller picks a default)."""
    if (
        source.startswith("synthetic:")
        or Path(source).is_dir()
        or Path(source).suffix.lower() in IMAGE_SUFFIXES
    ):
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


def _looped(make: Callable[[], Iterator[Timed]], loop: int) -> Iterator[Timed]:
    rounds = itertools.count() if loop == 0 else range(loop)
    for _ in rounds:
        yield from make()


def _video_passes(source: str, loop: int) -> Iterator[Timed]:
    """The video ``loop`` times (0: forever), its times going on across passes: a pass
    starts one frame duration after the previous one's last frame. Times are counted
    from the first frame's when that is negative (an edit list can do that)."""
    rounds = itertools.count() if loop == 0 else range(loop)
    offset: Fraction | None = None  # added to this pass's times
    for _ in rounds:
        first = last = step = None
        for rgb, seconds, duration in _video(source):
            if offset is None:
                offset = -min(seconds, Fraction(0))
            if first is None:
                first = seconds
            last, step = seconds, duration
            yield rgb, seconds + offset
        if first is None or last is None or step is None or offset is None:
            return  # no frames: nothing to loop
        offset += last - first + step


def _image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise SourceError(f"{path}: cannot read image ({exc})") from None


def _video(source: str) -> Iterator[tuple[np.ndarray, Fraction, Fraction]]:
    """Each frame with its presentation time and duration, in seconds (exact): ``pts *
    time_base``; a frame without a pts (some raw streams) comes one duration after the
    previous one, a duration the container does not state is one period of its rate."""
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
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        period = 1 / Fraction(rate) if rate else Fraction(1, 30)
        seconds: Fraction | None = None
        for frame in container.decode(stream):
            base = frame.time_base or stream.time_base
            duration = Fraction(frame.duration) * base if frame.duration and base else period
            if frame.pts is not None and base:
                seconds = frame.pts * Fraction(base)
            else:
                seconds = Fraction(0) if seconds is None else seconds + duration
            yield frame.to_ndarray(format="rgb24"), seconds, duration


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
