"""`fastext model inspect`: a servable detector and classifier are described and timed
(exit 0); a model fastext cannot serve is refused with the reason (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastext.cli import main
from fastext.models.decode import Layout
from fastext.models.toy import colour_classifier, colour_detector

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["model", "inspect", *args])
    out, err = capsys.readouterr()
    return status, out, err


def write(path: Path, model: bytes) -> str:
    path.write_bytes(model)
    return str(path)


def reshapes(image: list[int | str], outputs: dict[str, list[int]]) -> bytes:
    """A model whose outputs are its image input reshaped to fixed shapes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["images", f"{name}_shape"], [name]) for name in outputs]
    inits = [
        numpy_helper.from_array(np.array(shape, np.int64), f"{name}_shape")
        for name, shape in outputs.items()
    ]
    graph = helper.make_graph(
        nodes,
        "reshapes",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, image)],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
            for name, shape in outputs.items()
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def test_inspect_servable_detector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "colours.onnx", colour_detector(Layout.YOLOV8, 32, 8))
    status, out, _ = inspect(capsys, path, "--runs", "3", "--batch", "2")
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0] == f"model 'colours': {path}"
    assert "    images: [N, 3, 32, 32] tensor(float)" in lines
    assert "    output0: [N, 7, 16] tensor(float)" in lines
    assert "  recognised: a detector, output layout yolov8, 3 classes" in lines
    assert "  labels (3): red, green, blue" in lines
    assert ("  fed: 32x32 NCHW float32 RGB, x/255, resize letterbox (input 'images')") in lines
    assert "  batch: dynamic; up to 16 frames per runtime call" in lines
    assert "  session defaults: iou 0.45, max_detections 100, threshold 0.25" in lines
    assert any(
        line.startswith("  inference: ") and "per batch of 2" in line and "median of 3 runs" in line
        for line in lines
    )
    assert any(
        line.startswith("  preprocessing: ") and "1920x1080 RGB24 into 32x32" in line
        for line in lines
    )
    assert lines[-1] == "servable: yes"


def test_inspect_settings_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The settings of the --config file change what is fed and what a session defaults to.
    path = write(tmp_path / "c.onnx", colour_detector(Layout.YOLOV8_TRANSPOSED, 32, 8))
    status, out, _ = inspect(
        capsys,
        path,
        "--name",
        "cars",
        "--runs",
        "1",
        "--settings",
        '{"labels": ["a", "b", "c"], "resize": "stretch", "max_batch": 4, "threshold": 0.5}',
    )
    assert status == 0, out
    assert "  labels (3): a, b, c" in out.splitlines()
    assert "resize stretch" in out
    assert "up to 4 frames per runtime call" in out
    assert "threshold 0.5" in out
    assert "output layout yolov8-transposed" in out


def test_inspect_servable_classifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "cls.onnx", colour_classifier(32, batch=2))
    status, out, _ = inspect(capsys, path, "--runs", "2")
    assert status == 0, out
    lines = out.splitlines()
    assert "    logits: [2, 3] tensor(float)" in lines
    assert "  recognised: a classifier, 3 classes (output [N, C])" in lines
    assert "  batch: fixed at 2 by the model" in lines
    assert "  session defaults: softmax False, threshold 0.25, top_k 1" in lines
    # --batch 1 cannot run a model fixed at 2: the batch of 2 is timed, and that is said.
    assert any(
        "per batch of 2" in line and "the model fixes the batch at 2" in line for line in lines
    )
    assert lines[-1] == "servable: yes"


def test_inspect_two_outputs_is_refused_naming_the_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a segmentation export has two outputs as well
    path = write(
        tmp_path / "seg.onnx", reshapes([1, 3, 32, 32], {"out0": [1, 48, 64], "out1": [1, 3, 1024]})
    )
    status, out, _ = inspect(capsys, path)
    assert status == 2
    lines = out.splitlines()
    # The model's tensors are listed before the reason, so the user sees what was found.
    assert "    out0: [1, 48, 64] tensor(float)" in lines
    assert "    out1: [1, 3, 1024] tensor(float)" in lines
    reason = lines[-1]
    assert reason.startswith(f"not servable: model 'seg' ({path}): a detector must have one output")
    assert "[1, 48, 64]" in reason and "[1, 3, 1024]" in reason
    assert "inference:" not in out and "servable: yes" not in out


def test_inspect_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "absent.onnx")
    status, out, _ = inspect(capsys, path)
    assert status == 2
    assert out.splitlines()[-1] == f"not servable: model 'absent' ({path}): no such file"


def test_inspect_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = colour_detector(Layout.YOLOV8, 32, 8)
    path = write(tmp_path / "cut.onnx", good[: len(good) // 2])
    status, out, _ = inspect(capsys, path)
    assert status == 2
    last = out.splitlines()[-1]
    assert last.startswith(f"not servable: model 'cut' ({path}): ONNX Runtime cannot load it: ")
    assert len(out.splitlines()) == 2  # the name, then the reason: nothing was read


def test_inspect_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "d.onnx", colour_detector(Layout.YOLOV8, 32, 8))
    status, out, err = inspect(capsys, path, "--settings", "{not json")
    assert (status, out) == (2, "")
    assert err.startswith("fastext model inspect: error: --settings is not JSON")
    status, out, _ = inspect(capsys, path, "--settings", '{"colour": 1}')
    assert status == 2
    assert out.splitlines()[-1].startswith(
        "not servable: model 'd': setting 'colour' is not one of kind, labels"
    )
    status, _, err = inspect(capsys, path, "--runs", "0")
    assert status == 2 and "--runs must be in 1..1000" in err


def test_inspect_a_model_that_cannot_run_the_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A dynamic batch axis, but a batch of 1 hard-coded inside (an export's Reshape): it
    # loads and its output fits a layout, yet a worker's batch of 16 would fail.
    path = write(tmp_path / "one.onnx", reshapes(["N", 3, 7, 4], {"output0": [1, 7, 12]}))
    status, out, _ = inspect(capsys, path, "--runs", "1")
    assert status == 2
    lines = out.splitlines()
    assert "  recognised: a detector, output layout yolov8, 3 classes" in lines
    assert lines[-1].startswith(
        f"not servable: model 'one' ({path}): ONNX Runtime cannot run a batch of 16 zeros (a "
        "worker runs up to 16 frames per call; the setting max_batch lowers that): "
    )
    assert "inference:" not in out
    # With max_batch 1 it is servable, and a larger --batch is timed at what a worker runs.
    status, out, _ = inspect(
        capsys, path, "--runs", "1", "--batch", "4", "--settings", '{"max_batch": 1}'
    )
    assert status == 0, out
    assert any(
        line.startswith("  inference: ")
        and "per batch of 1 " in line
        and line.endswith("(a worker runs at most 1 per call)")
        for line in out.splitlines()
    )
