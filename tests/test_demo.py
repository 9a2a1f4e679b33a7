"""`fastext demo`'s detection pass: the boxes of the demo's own ONNX detector must lie on
the car the synthetic scene drew, and the demo fails when they do not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastext.client.synthetic import car_box, scene
from fastext.demo import DETECT, DETECTOR_CELL, DETECTOR_SIZE, box_errors
from tests.helpers import subprocess_env

W, H = DETECT.width, DETECT.height


def normalized(
    left: float, top: float, width: float, height: float, label: str = "red"
) -> tuple[str, float, float, float, float]:
    return label, left / W, top / H, width / W, height / H


def test_demo_car_box_is_where_the_scene_draws_red() -> None:
    for index in (0, 7, 19):
        rgb = scene(W, H, index, light=index % 2 == 0).astype(int)
        redness = rgb[..., 0] - (rgb[..., 1] + rgb[..., 2]) // 2
        x, y, w, h = car_box(W, H, index)
        rows, cols = (redness > 40).nonzero()
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (y, y + h, x, x + w)


def test_demo_box_errors_accepts_boxes_on_the_car() -> None:
    x, y, w, h = car_box(W, H, 3)
    assert box_errors(3, W, H, [normalized(x, y, w, h)]) == []
    # cells of the detector that together cover the car, a little beyond its edges
    cell = DETECTOR_CELL * W / DETECTOR_SIZE
    halves = [normalized(x - cell, y, w / 2 + cell, h + cell), normalized(x + w / 2, y, w / 2, h)]
    assert box_errors(3, W, H, halves) == []


def test_demo_box_errors_finds_wrong_boxes() -> None:
    x, y, w, h = car_box(W, H, 3)
    assert box_errors(3, W, H, []) == [f"scene 3: no box; the car is at {x},{y} {w}x{h}"]
    assert len(box_errors(3, W, H, [normalized(x, y, w, h, "green")])) == 1
    off = box_errors(3, W, H, [normalized(x, y, w, h), normalized(x + w + 30, y, 20, 20)])
    assert len(off) == 1 and "is not on the car" in off[0]
    half = box_errors(3, W, H, [normalized(x, y, w / 2, h)])
    assert len(half) == 1 and "the boxes cover" in half[0]


def run_detection_pass(patch: str = "") -> subprocess.CompletedProcess[str]:
    """The demo's detection pass alone (no built-in passes), one worker, in a child."""
    code = (
        "import fastext.demo as demo\n"
        "from fastext.config import Config\n"
        f"{patch}\n"
        "raise SystemExit(demo.run_demo(Config(workers=1), frames=20, show=2, passes=()))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=240,
        env=subprocess_env(),
    )


def summary(out: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def test_demo_detection_pass_finds_the_car() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    done = run_detection_pass()
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary(done.stdout) == {
        "frames": 20,
        "acked": 20,
        "wrong_tags": 0,
        "wrong_boxes": 0,
        "ok": True,
    }
    shown = [line for line in done.stdout.splitlines() if line.startswith("   seq ")]
    assert len(shown) == 2
    for line in shown:
        seq = int(line.split()[1].rstrip(":"))
        x, y, w, h = car_box(W, H, (seq - 2) % 20)
        assert f"car at {x},{y} {w}x{h} (left,top wxh); " in line
        assert " red boxes covering " in line


@pytest.mark.portable
def test_demo_detection_pass_fails_when_the_boxes_are_not_on_the_car() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    # The truth moved to the top left corner: every frame's boxes are now wrong.
    done = run_detection_pass("demo.car_box = lambda width, height, index: (0, 0, 20, 20)")
    assert done.returncode == 1, done.stdout + done.stderr
    assert summary(done.stdout) == {
        "frames": 20,
        "acked": 20,
        "wrong_tags": 0,
        "wrong_boxes": 20,
        "ok": False,
    }
    assert "   wrong: scene 0: a red box" in done.stdout
