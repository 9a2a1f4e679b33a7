"""The motion processor: boxes on synthetic moving objects, isolation, its reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fastext._proto.inferencing_pb2 import Inference
from fastext.backend.execute import FrameFormat, run_batch
from fastext.processors import create
from fastext.processors.motion import MotionDetector, threshold_for
from fastext.vision.frames import Encoding, PixelFormat
from tests.helpers import reference_motion

W, H = 320, 240
Box = tuple[float, float, float, float]


# -- scenes ------------------------------------------------------------------------------


def scene(
    squares: list[tuple[int, int]],
    size: int = 40,
    w: int = W,
    h: int = H,
    bg: int = 20,
    fg: int = 230,
) -> np.ndarray:
    """A dark frame with bright squares at the given top-left corners (clipped at edges)."""
    frame = np.full((h, w), bg, np.uint8)
    for x, y in squares:
        frame[y : y + size, x : x + size] = fg
    return frame


def covering(x0: int, y0: int, x1: int, y1: int, w: int = W, h: int = H) -> Box:
    """The normalized box of pixels x0..x1-1, y0..y1-1."""
    return (x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h)


def assert_box(got: Box, want: Box, tol: float = 0.01) -> None:
    assert got == pytest.approx(want, abs=tol), (got, want)


def run(detector: MotionDetector, frames: list[np.ndarray]) -> list[list[Box]]:
    return [detector.detect(f) for f in frames]


# -- behaviour ------------------------------------------------------------------------


def test_motion_first_frame_sets_the_background() -> None:
    detector = MotionDetector()
    assert detector.detect(scene([(100, 100)])) == []
    # Even a completely different second frame is compared with the first.
    assert len(detector.detect(scene([(200, 50)]))) == 2


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ((20, 0), covering(100, 100, 160, 140)),  # the middle did not change: two edges, one box
        ((0, 24), covering(100, 100, 140, 164)),
        ((12, 12), covering(100, 100, 152, 152)),
        ((-16, 10), covering(84, 100, 140, 150)),
    ],
)
def test_motion_box_covers_old_and_new_position(step: tuple[int, int], expected: Box) -> None:
    detector = create("motion")
    assert isinstance(detector, MotionDetector)
    first = scene([(100, 100)])
    second = scene([(100 + step[0], 100 + step[1])])
    boxes = run(detector, [first, second])
    assert boxes[0] == []
    assert len(boxes[1]) == 1
    assert_box(boxes[1][0], expected)


def test_motion_none_on_a_static_scene() -> None:
    detector = MotionDetector(sensitivity=1.0)  # the most sensitive: a 4-level threshold
    frame = scene([(30, 40), (200, 150)])
    assert run(detector, [frame] * 8) == [[]] * 8


def test_motion_none_on_noise_below_the_threshold_but_some_above() -> None:
    rng = np.random.default_rng(5)
    threshold = threshold_for(0.75)  # 28 levels
    quiet = [
        np.clip(128 + rng.integers(-12, 13, (H, W)), 0, 255).astype(np.uint8) for _ in range(10)
    ]
    # Any two quiet frames differ by at most 24 levels per pixel: never more than the threshold.
    assert 24 < threshold
    assert run(MotionDetector(sensitivity=0.75), quiet) == [[]] * 10
    loud = [np.clip(128 + rng.integers(-60, 61, (H, W)), 0, 255).astype(np.uint8) for _ in range(3)]
    assert all(run(MotionDetector(sensitivity=0.75), loud)[1:])


def test_motion_sensitivity_decides_what_counts() -> None:
    before = scene([(100, 100)], fg=60)
    after = scene([(100, 100)], fg=100)  # 40 levels brighter
    assert run(MotionDetector(sensitivity=0.75), [before, after])[1]  # threshold 28
    assert run(MotionDetector(sensitivity=0.4), [before, after])[1] == []  # threshold 61.6


def test_motion_separated_objects_make_separate_boxes() -> None:
    start = [(20, 20), (250, 30), (40, 180), (230, 170)]
    moved = [(30, 30), (262, 42), (30, 186), (240, 180)]
    boxes = run(MotionDetector(), [scene(start), scene(moved)])[1]
    assert len(boxes) == 4
    expected = [
        covering(20, 20, 70, 70),
        covering(250, 30, 302, 82),
        covering(230, 170, 280, 220),
        covering(30, 180, 80, 226),
    ]
    for got in boxes:
        assert any(got == pytest.approx(want, abs=0.01) for want in expected), got


def test_motion_min_area_drops_small_regions() -> None:
    frames = [scene([(100, 100)], size=6), scene([(104, 100)], size=6)]  # 48 changed pixels
    assert run(MotionDetector(min_area=0.001), frames)[1] == []  # 0.1 % of 320x240 is 76.8
    assert len(run(MotionDetector(min_area=0.0005), frames)[1]) == 1


def test_motion_boxes_stay_inside_the_frame_on_odd_sizes() -> None:
    w, h = 333, 251
    frames = [scene([(280, 200)], w=w, h=h), scene([(300, 220)], w=w, h=h)]
    (box,) = run(MotionDetector(), frames)[1]
    assert_box(box, covering(280, 200, 333, 251, w, h))
    left, top, bw, bh = box
    assert 0 <= left and 0 <= top and left + bw <= 1 and top + bh <= 1


def test_motion_at_1080p_uses_a_reduced_work_image() -> None:
    w, h = 1920, 1080
    frames = [scene([(600, 400)], 200, w, h), scene([(700, 430)], 200, w, h)]
    (box,) = run(MotionDetector(), frames)[1]
    assert_box(box, covering(600, 400, 900, 630, w, h), tol=0.005)


def test_motion_new_frame_size_starts_afresh() -> None:
    detector = MotionDetector()
    detector.detect(scene([(100, 100)]))
    assert detector.detect(scene([(50, 50)], w=160, h=120)) == []  # new size: background only
    assert len(detector.detect(scene([(60, 60)], w=160, h=120))) == 1
    detector.reset()
    assert detector.detect(scene([(90, 50)], w=160, h=120)) == []


def test_motion_ghost_fades_as_the_background_follows() -> None:
    detector = MotionDetector(alpha=0.5)
    frames = [scene([(100, 100)])] + [scene([(200, 100)])] * 8
    boxes = run(detector, frames)
    assert len(boxes[1]) == 2  # the old place and the new one
    assert boxes[-1] == []  # 205 levels * 0.5**n < 28 after 3 frames


def test_motion_sessions_do_not_share_state() -> None:
    moving = create("motion")
    still = create("motion")
    assert isinstance(moving, MotionDetector) and isinstance(still, MotionDetector)
    assert moving is not still
    frames_a = [scene([(10 + 15 * i, 100)]) for i in range(6)]
    frame_b = scene([(150, 60)])
    for i, frame in enumerate(frames_a):
        got_a = moving.detect(frame)
        got_b = still.detect(frame_b)
        assert (len(got_a) > 0) == (i > 0)
        assert got_b == []


def test_motion_matches_its_reference_on_random_scenes() -> None:
    rng = np.random.default_rng(11)
    for w, h, alpha in [(320, 240, 0.1), (333, 251, 0.3), (1000, 700, 0.05)]:
        squares = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
        frames = []
        for _ in range(6):
            squares = [
                (x + int(rng.integers(-25, 26)), y + int(rng.integers(-25, 26))) for x, y in squares
            ]
            noise = rng.integers(0, 8, (h, w), dtype=np.uint8)
            frames.append(scene([(max(0, x), max(0, y)) for x, y in squares], 50, w, h) + noise)
        fast = run(MotionDetector(alpha=alpha), frames)
        twin = reference_motion(frames, alpha=alpha)
        assert sum(map(len, fast)) > 0
        assert len(fast) == len(twin)
        for got, want in zip(fast, twin, strict=True):
            assert got == want  # the same arithmetic, float32 included: the same boxes


# -- through run_batch: inferences ------------------------------------------------------


def yuv420p(luma: np.ndarray) -> bytes:
    h, w = luma.shape
    return luma.tobytes() + bytes(2 * ((w + 1) // 2) * ((h + 1) // 2))


def test_motion_inferences_from_raw_frames_in_batches() -> None:
    processor = create("motion", {"sensitivity": 0.8})
    fmt = FrameFormat(Encoding.RAW, PixelFormat.YUV420P, W, H, 0)
    first = run_batch(processor, fmt, [yuv420p(scene([(100, 100)])), yuv420p(scene([(100, 100)]))])
    assert first == [[], []]
    (outcome,) = run_batch(processor, fmt, [yuv420p(scene([(120, 100)]))])
    assert isinstance(outcome, list) and len(outcome) == 1
    inference = outcome[0]
    assert inference.type == Inference.InferenceType.MOTION
    assert inference.WhichOneof("value") == "motion"
    box = inference.motion.box
    assert_box((box.l, box.t, box.w, box.h), covering(100, 100, 160, 140), tol=1e-6)


def test_motion_inferences_from_jpeg_frames() -> None:
    simplejpeg = pytest.importorskip("simplejpeg")
    processor = create("motion")
    fmt = FrameFormat(Encoding.JPG, 0, W, H, 0)

    def jpeg(x: int) -> bytes:
        rgb = np.repeat(scene([(x, 100)])[:, :, None], 3, axis=2)
        return bytes(simplejpeg.encode_jpeg(rgb, quality=90, colorspace="RGB"))

    outcomes = run_batch(processor, fmt, [jpeg(100), jpeg(100), jpeg(124)])
    assert outcomes[:2] == [[], []]
    assert isinstance(outcomes[2], list) and len(outcomes[2]) == 1
    box = outcomes[2][0].motion.box
    # Decoded at 1/4 scale (80x60): edges within a few pixels of the truth.
    assert_box((box.l, box.t, box.w, box.h), covering(100, 100, 164, 140), tol=0.03)


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"sensitivity": 1.5}, "sensitivity"),
        ({"sensitivity": -0.1}, "sensitivity"),
        ({"sensitivity": "high"}, "sensitivity"),
        ({"sensitivity": True}, "sensitivity"),
        ({"min_area": 2}, "min_area"),
        ({"min_area": float("nan")}, "min_area"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": 1.01}, "alpha"),
        ({"speed": 3}, "speed"),
    ],
)
def test_motion_bad_parameters_name_the_parameter(params: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        create("motion", params)


def test_motion_declares_its_needs() -> None:
    assert (MotionDetector.needs, MotionDetector.stateful) == ("luma", True)
    detector = create("motion", {"sensitivity": 0, "min_area": 0, "alpha": 1})
    assert isinstance(detector, MotionDetector)
    assert detector.threshold == 100.0


# -- through a real server: order and isolation of concurrent sessions --------------------


def test_motion_sessions_through_the_server_keep_order_and_state(server: Any) -> None:
    """Two sessions at once, motion and brightness: each motion ack is what one detector
    sees frame after frame (so batches ran in order on one instance), and the other
    session's configuration changes nothing."""
    import asyncio

    from fastext._proto import media_pb2
    from fastext.client import StreamOptions, stream_frames

    positions = [(10 + 9 * i, 60 + 5 * (i % 4)) for i in range(24)]
    lumas = [scene([p]) for p in positions]
    expected_detector = MotionDetector(sensitivity=0.8)
    expected = [expected_detector.detect(frame) for frame in lumas]
    acks: dict[str, dict[int, Any]] = {"motion": {}, "brightness": {}}

    def options(name: str, config: str) -> StreamOptions:
        def on_ack(seq: int, sample: Any) -> None:
            acks[name][seq] = None if sample is None else list(sample.inferences)

        return StreamOptions(
            target=server.target,
            width=W,
            height=H,
            window=8,
            on_ack=on_ack,
            pixel_format=media_pb2.VideoFrameSampleFormat.YUV420P,
            extension_configuration=config,
        )

    async def both() -> None:
        frames = [yuv420p(frame) for frame in lumas]
        await asyncio.gather(
            stream_frames(options("motion", '{"processor": "motion", "sensitivity": 0.8}'), frames),
            stream_frames(options("brightness", '{"threshold": 10}'), frames),
        )

    asyncio.run(both())
    got = [acks["motion"][seq] for seq in sorted(acks["motion"])]
    assert len(got) == len(expected)
    for inferences, want in zip(got, expected, strict=True):
        boxes = [
            (i.motion.box.l, i.motion.box.t, i.motion.box.w, i.motion.box.h)
            for i in inferences or []
        ]
        assert len(boxes) == len(want)
        for box, box_wanted in zip(boxes, want, strict=True):
            assert box == pytest.approx(box_wanted, abs=1e-6)  # float32 on the wire
    tags = {
        i.classification.tag.value
        for seq in acks["brightness"]
        for i in acks["brightness"][seq] or []
    }
    assert tags == {"light"}  # every frame's mean is above the threshold of 10
