"""fastext.models.repository: what a model file is (read in a child process), and the one
line that names a model which cannot be served."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fastext.config import ModelSpec  # noqa: E402
from fastext.errors import ConfigError  # noqa: E402
from fastext.models.decode import Layout  # noqa: E402
from fastext.models.repository import (  # noqa: E402
    CLASSIFY,
    DETECT,
    MAX_BATCH_CAP,
    ModelError,
    ModelInfo,
    inspect_spec,
    load_infos,
)
from fastext.models.toy import COLOURS, colour_classifier, colour_detector  # noqa: E402

# portable: reading a model's facts with onnx's Python (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable


def _file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("layout", list(Layout))
def test_a_detector_is_read_in_every_layout(tmp_path, layout):
    path = _file(tmp_path, "d", colour_detector(layout, size=64, cell=8))
    info = inspect_spec(ModelSpec("d", path))
    assert (info.kind, info.width, info.height, info.layout, info.dtype) == (
        DETECT,
        64,
        64,
        "NCHW",
        "float32",
    )
    assert info.output_layout == layout.value
    assert info.labels == COLOURS and info.num_classes == 3
    assert (info.fixed_batch, info.max_batch) == (None, MAX_BATCH_CAP)
    assert dict(info.defaults) == {
        "threshold": 0.25,
        "iou": 0.45,
        "max_detections": 100,
        "top_k": 1,
        "softmax": False,
    }
    assert ModelInfo.from_json(info.to_json()) == info


def test_a_classifier_and_a_fixed_batch_and_settings(tmp_path):
    info = inspect_spec(
        ModelSpec(
            "c",
            _file(tmp_path, "c", colour_classifier(size=32, batch=2)),
            (("threshold", 0.1), ("top_k", 2)),
        )
    )
    assert (info.kind, info.output_layout, info.fixed_batch, info.max_batch) == (
        CLASSIFY,
        None,
        2,
        2,
    )
    assert (info.default("threshold"), info.default("top_k")) == (0.1, 2)


def test_models_are_read_in_a_child_process(tmp_path):
    # (this process may have the runtime loaded by other tests: the child's answer is
    # what is checked, equal to reading the file here)
    specs = [
        ModelSpec("a", _file(tmp_path, "a", colour_detector(Layout.YOLOV5))),
        ModelSpec("b", _file(tmp_path, "b", colour_classifier())),
    ]
    assert load_infos(specs) == [inspect_spec(s) for s in specs]
    assert load_infos([]) == []


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "no such file"),
        ("corrupt", "ONNX Runtime cannot load it"),
        ("empty", "ONNX Runtime cannot load it"),
    ],
)
def test_a_file_that_cannot_be_read_is_named_with_its_reason(tmp_path, case, reason):
    path = str(tmp_path / "m.onnx")
    if case == "corrupt":
        Path(path).write_bytes(colour_detector(Layout.YOLOV8)[:300])
    elif case == "empty":
        Path(path).write_bytes(b"")
    with pytest.raises(ModelError) as caught:
        load_infos([ModelSpec("m", path)])
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError)
    assert message.startswith(f"model 'm' ({path}): {reason}")
    assert "\n" not in message


def test_bad_settings_and_names_are_refused(tmp_path):
    path = _file(tmp_path, "d", colour_detector(Layout.YOLOV8))
    cases = [
        (ModelSpec("d", path, (("threshold", 2),)), "setting 'threshold' must be a number"),
        (ModelSpec("d", path, (("colour", 1),)), "setting 'colour' is not one of"),
        (ModelSpec("d", path, (("output_layout", "yolov5"),)), "yolov5"),
        (
            ModelSpec("d", path, (("labels", ["a", "b"]),)),
            "with 2 classes does not fit any supported layout",
        ),
        (ModelSpec("motion", path), "the name is a built-in processor's"),
    ]
    for spec, message in cases:
        with pytest.raises(ModelError, match=None) as caught:
            load_infos([spec], reserved=("motion", "brightness"))
        assert message in str(caught.value), (spec, str(caught.value))
