"""``fastext model inspect``: whether fastext can serve a model file, before deploying it.

:func:`inspect_model` opens the file with ONNX Runtime as a worker would (one thread,
no spinning) and reports what it found: the model's inputs and outputs, the layout
fastext recognises in them (or the reason it cannot serve the model, as ``fastext
serve`` would give it at start), the labels, the input fastext will feed (size, layout,
type, resize), the batch limit (a batch that large is run once: a model that cannot
run it is not servable), and the time of one batch of zeros plus the preprocessing of
one 1920x1080 RGB24 frame into the input. The caller prints the
lines; the status is 0 when the model can be served, 2 when it cannot.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastext.config import ModelSpec
from fastext.models.repository import CLASSIFY, SETTINGS, ModelError, ModelInfo, inspect_spec

__all__ = ["FRAME_SIZE", "MAX_RUNS", "Report", "inspect_model", "parse_settings"]

FRAME_SIZE = (1920, 1080)  # the frame whose preprocessing is timed (RGB24)
MAX_RUNS = 1000
MAX_BATCH = 256
LABELS_SHOWN = 20


@dataclass
class Report:
    """What :func:`inspect_model` found: the lines to print, and the exit status."""

    lines: list[str] = field(default_factory=list)
    status: int = 0  # 0: servable; 2: not (``reason`` says why)
    reason: str = ""
    info: ModelInfo | None = None

    def add(self, text: str) -> None:
        self.lines.append(text)

    def fail(self, reason: str) -> Report:
        self.status, self.reason = 2, reason
        self.add(f"not servable: {reason}")
        return self


def parse_settings(text: str) -> dict[str, Any]:
    """``--settings``: a JSON object of the model's repository settings (ValueError if not)."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--settings is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--settings must be a JSON object of settings ({', '.join(SETTINGS)})")
    return data


def _shape(dims: Any) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in dims) + "]"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _median_time(run: Callable[[], object], runs: int) -> float:
    """The median of ``runs`` timed calls of ``run``, after one untimed call (a first
    call allocates what the others reuse)."""
    run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _open(path: str, where: str) -> Any:
    """An ONNX Runtime session of ``path`` as a worker opens it (CPU, one thread, no
    spinning); ModelError with the reason when it cannot be opened."""
    if not os.path.isfile(path):
        raise ModelError(f"{where}: no such file")
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError(
            f"{where}: ONNX Runtime is not installed (pip install 'fastext[onnx]')"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # the runtime's own errors (corrupt, unsupported operator)
        reason = " ".join(str(exc).split())[:300]
        raise ModelError(f"{where}: ONNX Runtime cannot load it: {reason}") from None


def inspect_model(
    path: str,
    name: str = "",
    settings: Mapping[str, Any] | None = None,
    batch: int = 1,
    runs: int = 10,
) -> Report:
    """Inspect the model at ``path`` with ``settings`` (those of the ``--config`` file's
    ``models`` object); ``batch`` zeros are run ``runs`` times (after one untimed run)."""
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"--batch must be in 1..{MAX_BATCH}")
    if not 1 <= runs <= MAX_RUNS:
        raise ValueError(f"--runs must be in 1..{MAX_RUNS}")
    name = name or os.path.splitext(os.path.basename(path))[0] or "model"
    spec = ModelSpec(name, path, tuple(sorted((settings or {}).items())))
    report = Report()
    report.add(f"model {name!r}: {path}")
    try:
        session = _open(path, f"model {name!r} ({path})")
    except ModelError as exc:
        return report.fail(str(exc))
    report.add(f"  file: {os.path.getsize(path):,} bytes")
    for title, tensors in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        report.add(f"  {title}:")
        for tensor in tensors:
            report.add(f"    {tensor.name}: {_shape(tensor.shape)} {tensor.type}")
    names = session.get_modelmeta().custom_metadata_map.get("names")
    report.add(f"  metadata 'names': {'present' if names else 'absent'}")
    try:
        info = inspect_spec(spec, session)
    except ModelError as exc:
        return report.fail(str(exc))
    report.info = info
    _describe(report, info)
    slots = info.fixed_batch or info.max_batch
    try:
        # The largest batch a worker will run, once: an export that hard-codes a batch of
        # 1 inside a dynamic one fails here, not on a busy server.
        session.run(
            None, {info.input_name: np.zeros((slots, *_input_spec(info).slot_shape), info.dtype)}
        )
    except Exception as exc:  # the runtime's error running the graph: a worker would fail too
        reason = " ".join(str(exc).split())[:300]
        hint = (
            f" (a worker runs up to {slots} frames per call; the setting max_batch lowers that)"
            if slots > 1 and not info.fixed_batch
            else ""
        )
        return report.fail(
            f"model {name!r} ({path}): ONNX Runtime cannot run a batch of "
            f"{slots} zeros{hint}: {reason}"
        )
    _time_inference(report, info, session, batch, runs)
    _time_preprocessing(report, info, runs)
    report.add("servable: yes")
    return report


def _describe(report: Report, info: ModelInfo) -> None:
    if info.kind == CLASSIFY:
        report.add(f"  recognised: a classifier, {info.num_classes} classes (output [N, C])")
    else:
        classes = f", {info.num_classes} classes" if info.num_classes else ""
        report.add(f"  recognised: a detector, output layout {info.output_layout}{classes}")
    shown = ", ".join(info.labels[:LABELS_SHOWN]) + (
        ", ..." if len(info.labels) > LABELS_SHOWN else ""
    )
    report.add(f"  labels ({len(info.labels)}): {shown or 'none (named class 0, class 1, ...)'}")
    scale = "x/255" if info.dtype == "float32" else "pixel values 0..255"
    if info.mean is not None:
        scale = f"(x/255 - mean {list(info.mean)}) / std {list(info.std or ())}"
    report.add(
        f"  fed: {info.width}x{info.height} {info.layout} {info.dtype} {info.channels}, "
        f"{scale}, resize {info.resize} (input {info.input_name!r})"
    )
    if info.fixed_batch:
        report.add(f"  batch: fixed at {info.fixed_batch} by the model")
    else:
        report.add(f"  batch: dynamic; up to {info.max_batch} frames per runtime call")
    defaults = ", ".join(
        f"{k} {v}"
        for k, v in info.defaults
        if k
        in (
            ("threshold", "top_k", "softmax")
            if info.kind == CLASSIFY
            else ("threshold", "iou", "max_detections")
        )
    )
    report.add(f"  session defaults: {defaults}")


def _input_spec(info: ModelInfo) -> Any:
    from fastext.models.preprocess import InputSpec

    return InputSpec(
        info.width,
        info.height,
        info.layout,
        info.dtype,
        info.channels,
        info.resize,
        info.mean,
        info.std,
    )


def _time_inference(report: Report, info: ModelInfo, session: Any, batch: int, runs: int) -> None:
    note = ""
    if info.fixed_batch and batch != info.fixed_batch:
        note = f" (the model fixes the batch at {info.fixed_batch})"
        batch = info.fixed_batch
    elif batch > info.max_batch:
        note = f" (a worker runs at most {info.max_batch} per call)"
        batch = info.max_batch
    tensor = np.zeros((batch, *_input_spec(info).slot_shape), info.dtype)
    feed = {info.input_name: tensor}
    took = _median_time(lambda: session.run(None, feed), runs)
    report.add(
        f"  inference: {_ms(took)} per batch of {batch} ({_ms(took / batch)} a frame), "
        f"median of {runs} runs, ONNX Runtime on 1 thread{note}"
    )


def _time_preprocessing(report: Report, info: ModelInfo, runs: int) -> None:
    from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
    from fastext.models.preprocess import prepare_raw, warm

    spec = _input_spec(info)
    warm()
    width, height = FRAME_SIZE
    frame = np.zeros(width * height * 3, np.uint8)
    frame[::7] = 200  # not all one value
    slot = np.zeros(spec.slot_shape, info.dtype)
    took = _median_time(lambda: prepare_raw(frame, VF.RGB24, width, height, 0, slot, spec), runs)
    report.add(
        f"  preprocessing: {_ms(took)} a frame ({width}x{height} RGB24 into "
        f"{info.width}x{info.height} {info.layout} {info.dtype}, {info.resize}), "
        f"median of {runs} runs"
    )
