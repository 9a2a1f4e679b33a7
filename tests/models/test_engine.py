"""fastext.models.engine: parameters checked against the model, and Engine.infer running
the frames of several sessions in one runtime call, each decoded with its own
parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fastext.config import ModelSpec  # noqa: E402
from fastext.models.decode import Layout  # noqa: E402
from fastext.models.engine import Engine, validate_params  # noqa: E402
from fastext.models.repository import ModelInfo, inspect_spec  # noqa: E402
from fastext.models.toy import colour_classifier, colour_detector  # noqa: E402
from fastext.outcomes import Outcome, Unprocessed  # noqa: E402
from fastext.vision.frames import Frame, PixelFormat, frame_from_raw  # noqa: E402
from tests.helpers import failing_detector  # noqa: E402


def _info(tmp_path: Path, data: bytes, name: str = "m") -> ModelInfo:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(data)
    return inspect_spec(ModelSpec(name, str(path)))


def _frame(rgb: np.ndarray) -> Frame:
    h, w, _ = rgb.shape
    return frame_from_raw(np.ascontiguousarray(rgb).reshape(-1), PixelFormat.RGB24, w, h, 0)


def _scene(cells: dict[tuple[int, int], tuple[int, int, int]], size: int = 32) -> np.ndarray:
    """A size x size frame: black, with whole 8x8 cells (column, row) of a colour."""
    rgb = np.zeros((size, size, 3), np.uint8)
    for (gx, gy), colour in cells.items():
        rgb[gy * 8 : gy * 8 + 8, gx * 8 : gx * 8 + 8] = colour
    return rgb


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _tags(outcome: object) -> list[tuple[str, float, tuple[float, ...]]]:
    assert isinstance(outcome, list)
    return [
        (
            i.entity.tag.value,
            round(i.entity.tag.confidence, 5),
            (i.entity.box.l, i.entity.box.t, i.entity.box.w, i.entity.box.h),
        )
        for i in outcome
    ]


def test_sessions_share_one_runtime_call_and_keep_their_parameters(tmp_path):
    info = _info(tmp_path, colour_detector(Layout.YOLOV8, size=32, cell=8))
    engine = Engine(info)
    scene = _scene({(0, 0): RED, (3, 1): GREEN, (2, 3): BLUE})
    every = validate_params(info, {"threshold": 0.5})
    only_green = validate_params(info, {"threshold": 0.5, "classes": ["green"]})
    one = validate_params(info, {"threshold": 0.5, "max_detections": 1})
    frames = [_frame(scene) for _ in range(3)]
    results = engine.infer([(every, frames[:2]), (only_green, frames[2:]), (one, frames[:1])])
    assert engine.take_runs()[0][0] == 4 and engine.take_runs() == []  # one call, 4 frames
    red = ("red", 1.0, (0.0, 0.0, 0.25, 0.25))
    green = ("green", 1.0, (0.75, 0.25, 0.25, 0.25))
    blue = ("blue", 1.0, (0.5, 0.75, 0.25, 0.25))
    assert [[_tags(o) for o in job] for job in results] == [
        [[red, green, blue]] * 2,
        [[green]],
        [[red]],
    ]


def test_a_bad_frame_is_invalid_alone_and_unfetched_frames_pass_through(tmp_path):
    info = _info(tmp_path, colour_detector(Layout.YOLOV8_TRANSPOSED, size=32, cell=8))
    engine = Engine(info)
    params = validate_params(info, {"threshold": 0.5})
    good = _frame(_scene({(1, 1): RED}))
    bad = Frame(32, 32, None, np.frombuffer(b"not a jpeg at all", np.uint8), None, 1)  # JPG
    gone = Unprocessed(Outcome.INVALID, "outside the file")
    (outcomes,) = engine.infer([(params, [good, bad, gone, good])])
    assert _tags(outcomes[0]) == _tags(outcomes[3]) == [("red", 1.0, (0.25, 0.25, 0.25, 0.25))]
    assert isinstance(outcomes[1], Unprocessed) and outcomes[1].kind is Outcome.INVALID
    assert outcomes[2] is gone
    assert [n for n, _ in engine.take_runs()] == [2]


def test_more_frames_than_the_batch_run_in_several_calls(tmp_path):
    fixed = _info(tmp_path, colour_detector(Layout.YOLOV5, size=32, cell=8, batch=2), "fixed")
    engine = Engine(fixed)
    assert engine.slots == 2
    params = validate_params(fixed, {"threshold": 0.5})
    frames = [_frame(_scene({(i % 4, 2): GREEN})) for i in range(5)]
    (outcomes,) = engine.infer([(params, frames)])
    assert [n for n, _ in engine.take_runs()] == [2, 2, 1]  # the last call padded to 2
    assert [_tags(o) for o in outcomes] == [
        [("green", 1.0, ((i % 4) * 0.25, 0.5, 0.25, 0.25))] for i in range(5)
    ]


@pytest.mark.parametrize("batch", [None, 2], ids=["dynamic", "fixed"])
def test_a_frame_the_runtime_fails_on_fails_alone(tmp_path, batch):
    # The failing model fails any call holding a frame whose top-left pixel is red: the
    # call of a bad frame and two sessions' good ones fails, then each runs alone.
    info = _info(tmp_path, failing_detector(32, 8, batch))
    engine = Engine(info)
    params = validate_params(info, {"threshold": 0.5})
    good = _scene({(2, 2): BLUE})
    bad = good.copy()
    bad[0, 0] = RED
    results = engine.infer([(params, [_frame(good), _frame(bad)]), (params, [_frame(good)])])
    blue = [("blue", 1.0, (0.5, 0.5, 0.25, 0.25))]
    assert _tags(results[0][0]) == _tags(results[1][0]) == blue
    failed = results[0][1]
    assert isinstance(failed, Unprocessed) and failed.kind is Outcome.ERROR
    assert failed.reason.startswith("model 'm' failed: ") and "Reshape" in failed.reason
    # Good frames after it, fewer than a fixed batch, run as they should.
    (after,) = engine.infer([(params, [_frame(good)])])
    assert _tags(after[0]) == blue


def test_a_classifier_reports_its_top_k(tmp_path):
    info = _info(tmp_path, colour_classifier(size=32))
    engine = Engine(info)
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 2] = 255  # blue: logit 4
    rgb[:16, :, 0] = 255  # red on half: logit 2
    (outcomes,) = engine.infer(
        [(validate_params(info, {"top_k": 2, "threshold": 0.0}), [_frame(rgb)])]
    )
    assert [
        (i.classification.tag.value, round(i.classification.tag.confidence, 5)) for i in outcomes[0]
    ] == [("blue", 4.0), ("red", 2.0)]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"threshold": 2}, "threshold must be a number in 0.0..1.0, got 2"),
        ({"threshold": True}, "threshold must be a number"),
        ({"iou": -0.1}, "iou must be a number in 0.0..1.0"),
        ({"max_detections": 0}, "max_detections must be a whole number in 1..10000"),
        ({"classes": ["red", "cat"]}, "has no class 'cat' (its labels: red, green, blue)"),
        ({"classes": []}, "classes must be a non-empty list of label names"),
        ({"top_k": 2}, "takes no parameter 'top_k'"),
        ({"path": "/tmp/x.onnx"}, "takes no parameter 'path'"),
    ],
)
def test_bad_parameters_are_named(tmp_path, params, message):
    info = _info(tmp_path, colour_detector(Layout.END_TO_END, size=32, cell=8))
    with pytest.raises(ValueError) as caught:
        validate_params(info, params)
    assert message in str(caught.value)
