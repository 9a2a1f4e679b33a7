"""Serving ONNX models end to end (issue 18): known answers in every output layout, pixel
format, transport and backend; equivalence with a reference written here (numpy
letterbox, ONNX Runtime called directly, numpy NMS); batching across streams; bad
sessions, bad model files, a model that fails at run time, a worker killed holding
several sessions' frames; and the front process never loading the runtime.

Every model is a tiny one built here (fastext.models.toy and onnx.helper); frames are
small, so that the ARM64 stage under qemu runs this file in reasonable time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF  # noqa: E402
from fastext.client import StreamOptions, stream_frames  # noqa: E402
from fastext.client.synthetic import encode, to_pixel_format  # noqa: E402
from fastext.config import ModelSpec  # noqa: E402
from fastext.models.decode import Layout  # noqa: E402
from fastext.models.toy import colour_detector  # noqa: E402
from tests.helpers import (  # noqa: E402
    BYTE_ORDERS,
    PACKED,
    RunningServer,
    descriptor,
    exchange,
    failing_detector,
    free_port,
    inline_and_workers,
    maps_of_children,
    pack,
    place,
    run_stream,
    running_server,
    start_server,
    stop_server,
    subprocess_env,
)

SIZE, CELL = 64, 8
LAYOUTS = {
    "v8": Layout.YOLOV8,
    "v8t": Layout.YOLOV8_TRANSPOSED,
    "v5": Layout.YOLOV5,
    "e2e": Layout.END_TO_END,
}
RED, GREEN = (255, 0, 0), (0, 255, 0)
# The scene, in the tensor's pixels (x0, y0, x1, y1): a cell filled with red (scores 1.0
# as red) and the top half of another filled with green (0.5 as green; YOLOV5 squares
# it with the objectness: 0.25). Each box is the cell the object is in.
SCENE = (((24, 16, 32, 24), RED), ((40, 40, 48, 44), GREEN))
EXPECTED_CELLS = (("red", 1.0, (24, 16, 32, 24)), ("green", 0.5, (40, 40, 48, 48)))
# Frame sizes and their letterbox (scale, pad x, pad y): the model's own size, a wider
# frame shrunk by 2 (bilinear, padded above and below), a taller one shrunk by 3 (area
# averaging, padded left and right). The scene's edges fall on whole frame pixels.
GEOMETRIES = {
    "64x64": (64, 64, Fraction(1), 0, 0),
    "128x96": (128, 96, Fraction(1, 2), 0, 8),
    "96x192": (96, 192, Fraction(1, 3), 16, 0),
}


# -- the models ---------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def overlapping_detector() -> bytes:
    """colour_detector (YOLOV8) whose boxes are twice their cell's size, centred on it:
    neighbours overlap (IoU 1/3), so NMS decides what is kept."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(colour_detector(Layout.YOLOV8, size=SIZE, cell=CELL))
    for init in model.graph.initializer:
        if init.name == "cxcywh":
            boxes = numpy_helper.to_array(init).copy()
            boxes[:, 2:] *= 2
            init.CopyFrom(numpy_helper.from_array(boxes, "cxcywh"))
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("models")
    files = {
        name: _write(folder / f"{name}.onnx", colour_detector(layout, size=SIZE, cell=CELL))
        for name, layout in LAYOUTS.items()
    }
    files["overlap"] = _write(folder / "overlap.onnx", overlapping_detector())
    files["failing"] = _write(folder / "failing.onnx", failing_detector(SIZE, CELL))
    return files


def specs(files: dict[str, str]) -> tuple[ModelSpec, ...]:
    return tuple(ModelSpec(name, path) for name, path in files.items())


@pytest.fixture(scope="module", params=inline_and_workers())
def served(request: pytest.FixtureRequest, model_files: dict[str, str]) -> Iterator[RunningServer]:
    """One server per module and backend, serving every model of ``model_files``."""
    with running_server(
        workers=request.param,
        models=specs(model_files),
        metrics_port=free_port(),
        log_level="WARNING",
    ) as srv:
        yield srv


# -- frames and answers -------------------------------------------------------------------


def scene_frame(geometry: str, scene: Any = SCENE) -> np.ndarray:
    """The frame (h, w, 3) that the letterbox turns into ``scene`` (black elsewhere)."""
    w, h, scale, px, py = GEOMETRIES[geometry]
    rgb = np.zeros((h, w, 3), np.uint8)
    for (x0, y0, x1, y1), colour in scene:
        fx0, fx1 = ((x0 - px) / scale, (x1 - px) / scale)
        fy0, fy1 = ((y0 - py) / scale, (y1 - py) / scale)
        assert all(v.denominator == 1 for v in (fx0, fx1, fy0, fy1))
        rgb[int(fy0) : int(fy1), int(fx0) : int(fx1)] = colour
    return rgb


def expected(
    geometry: str, layout: Layout, cells: Any = EXPECTED_CELLS
) -> list[tuple[str, float, tuple[float, float, float, float]]]:
    """(tag, score, (l, t, w, h)) of each detection of the scene, best first."""
    w, h, scale, px, py = GEOMETRIES[geometry]
    out = []
    for tag, score, (x0, y0, x1, y1) in cells:
        left, top = (x0 - px) / scale / w, (y0 - py) / scale / h
        width, height = (x1 - x0) / scale / w, (y1 - y0) / scale / h
        out.append(
            (
                tag,
                score * score if layout is Layout.YOLOV5 else score,
                (float(left), float(top), float(width), float(height)),
            )
        )
    return out


def detections(sample: Any) -> list[tuple[str, float, tuple[float, float, float, float]]]:
    found = []
    for inference in sample.inferences:
        assert inference.type == inference.InferenceType.ENTITY
        assert inference.subtype == "objectDetection"
        box = inference.entity.box
        found.append(
            (
                inference.entity.tag.value,
                inference.entity.tag.confidence,
                (box.l, box.t, box.w, box.h),
            )
        )
    return found


def assert_matches(
    found: list[Any], wanted: list[Any], score_tol: float = 1e-5, box_tol: float = 1e-6
) -> None:
    assert [f[0] for f in found] == [w[0] for w in wanted], (found, wanted)
    for (_, score, box), (_, want_score, want_box) in zip(found, wanted, strict=True):
        assert score == pytest.approx(want_score, abs=score_tol), (found, wanted)
        assert box == pytest.approx(want_box, abs=box_tol), (found, wanted)


def config(model: str, **params: Any) -> str:
    import json

    return json.dumps({"model": model, **params})


# -- known answers ------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("model", list(LAYOUTS))
def test_known_answer_in_every_layout_and_letterbox(served, model, geometry):
    w, h = GEOMETRIES[geometry][:2]
    frame = to_pixel_format(scene_frame(geometry), VF.RGB24)
    opts = StreamOptions(
        target=served.target,
        width=w,
        height=h,
        window=2,
        extension_configuration=config(model, threshold=0.2),
    )
    result = run_stream(opts, [frame] * 3)
    assert result.acked == result.sent == 3 and result.code == grpc.StatusCode.OK
    for seq in (2, 3, 4):
        assert_matches(detections(result.samples[seq]), expected(geometry, LAYOUTS[model]))


RAW_FORMATS = [*BYTE_ORDERS, *PACKED, VF.YUV420P]


def _raw_frame(rgb: np.ndarray, pixel_format: int) -> tuple[bytes, int]:
    """The frame in ``pixel_format`` with rows padded (by 24 bytes), and its stride."""
    h, w, _ = rgb.shape
    if pixel_format == VF.YUV420P:
        stride = w + 24
        return to_pixel_format(rgb, VF.YUV420P, stride=stride), stride
    rows, _ = pack(rgb, pixel_format)
    stride = rows.shape[1] + 24
    return place(rows, stride), stride


@pytest.mark.parametrize("shm", [False, True], ids=["embedded", "shm"])
@pytest.mark.parametrize(
    "pixel_format", RAW_FORMATS, ids=[VF.PixelFormat.Name(f) for f in RAW_FORMATS]
)
def test_known_answer_in_every_raw_pixel_format_with_padded_rows(served, pixel_format, shm):
    geometry = "128x96"
    data, stride = _raw_frame(scene_frame(geometry), pixel_format)
    opts = StreamOptions(
        target=served.target,
        width=128,
        height=96,
        pixel_format=pixel_format,
        stride=stride,
        shm=shm,
        window=2,
        extension_configuration=config("v8", threshold=0.2),
    )
    result = run_stream(opts, [data] * 2)
    assert result.acked == result.sent == 2 and result.code == grpc.StatusCode.OK
    # YUV420P's round trip (BT.601, integer planes) leaves red at 254/255.
    tol = 0.01 if pixel_format == VF.YUV420P else 1e-5
    for seq in (2, 3):
        assert_matches(
            detections(result.samples[seq]), expected(geometry, Layout.YOLOV8), score_tol=tol
        )


@pytest.mark.parametrize("shm", [False, True], ids=["embedded", "shm"])
def test_known_answer_through_jpeg(served, shm):
    # One red block filling a whole 16x16 MCU of the frame (one 8x8 cell of the tensor),
    # on black: JPEG's loss moves its score a little and never its box.
    rgb = scene_frame("128x96", (((24, 16, 32, 24), RED),))
    opts = StreamOptions(
        target=served.target,
        width=128,
        height=96,
        encoding=VF.JPG,
        pixel_format=VF.NONE,
        shm=shm,
        window=2,
        extension_configuration=config("v8", threshold=0.5),
    )
    result = run_stream(opts, [encode(rgb, VF.JPG, quality=95)] * 2)
    assert result.acked == result.sent == 2 and result.code == grpc.StatusCode.OK
    wanted = expected("128x96", Layout.YOLOV8, (("red", 1.0, (24, 16, 32, 24)),))
    for seq in (2, 3):
        assert_matches(detections(result.samples[seq]), wanted, score_tol=0.05)


# -- equivalence with a reference ---------------------------------------------------------


def _resample_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of one axis: none at equal sizes, bilinear (pixel centres
    aligned, clamped at the edges) when shrinking by at most 2 or growing, area
    averaging beyond."""
    if src == dst:
        return np.eye(dst)
    weights = np.zeros((dst, src))
    scale = src / dst
    for d in range(dst):
        if src <= 2 * dst:
            s = min(max((d + 0.5) * scale - 0.5, 0.0), src - 1.0)
            i0 = int(np.floor(s))
            frac = s - i0
            weights[d, i0] += 1 - frac
            weights[d, min(i0 + 1, src - 1)] += frac
        else:
            a, b = d * scale, (d + 1) * scale
            for i in range(int(np.floor(a)), min(int(np.ceil(b)), src)):
                weights[d, i] = (min(b, i + 1) - max(a, i)) / scale
    return weights


def reference_letterbox(rgb: np.ndarray) -> tuple[np.ndarray, tuple[float, float, int, int]]:
    """The model's input (3, SIZE, SIZE) float64 in 0..1 and (scale x, scale y, pad x,
    pad y): each axis' scale is its content's size over the frame's (the content is
    rounded to whole pixels, so the two differ a little from the gain and each other)."""
    h, w, _ = rgb.shape
    r = min(SIZE / h, SIZE / w)
    new_w, new_h = max(1, min(SIZE, round(w * r))), max(1, min(SIZE, round(h * r)))
    left, top = round((SIZE - new_w) / 2 - 0.1), round((SIZE - new_h) / 2 - 0.1)
    # Rows, then columns: two small products (one three-operand einsum loops over every
    # output pixel times every input pixel: a minute per test under emulation).
    rows = np.tensordot(_resample_weights(h, new_h), rgb.astype(np.float64), axes=1)
    content = np.tensordot(_resample_weights(w, new_w), rows, axes=([1], [1])).transpose(1, 0, 2)
    canvas = np.full((SIZE, SIZE, 3), 114.0)
    canvas[top : top + new_h, left : left + new_w] = content
    return (canvas / 255.0).transpose(2, 0, 1), (new_w / w, new_h / h, left, top)


def reference_nms(
    output: np.ndarray, threshold: float, iou: float, max_det: int
) -> list[tuple[int, float, np.ndarray]]:
    """Greedy class-aware NMS of one YOLOV8 output ``[4+C, A]``: (class, score, x0 y0 x1
    y1) kept, best first."""
    rows = output.T.astype(np.float64)
    scores = rows[:, 4:].max(axis=1)
    classes = rows[:, 4:].argmax(axis=1)
    cx, cy, bw, bh = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    corners = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not scores[i] > threshold:
            break
        # The candidate against every kept box of its class at once (the greedy rule
        # itself is the loop: a box is kept when it overlaps none kept before it).
        same = np.array([k for k in kept if classes[k] == classes[i]], dtype=np.int64)
        if same.size:
            iw = np.minimum(corners[i, 2], corners[same, 2]) - np.maximum(
                corners[i, 0], corners[same, 0]
            )
            ih = np.minimum(corners[i, 3], corners[same, 3]) - np.maximum(
                corners[i, 1], corners[same, 1]
            )
            inter = np.maximum(iw, 0) * np.maximum(ih, 0)
            union = bw[i] * bh[i] + bw[same] * bh[same] - inter
            if (inter / union > iou).any():
                continue
        kept.append(int(i))
        if len(kept) == max_det:
            break
    return [(int(classes[k]), float(scores[k]), corners[k]) for k in kept]


def reference_detections(
    session: Any, rgb: np.ndarray, threshold: float, iou: float, max_det: int
) -> list[tuple[str, float, tuple[float, ...]]]:
    tensor, (sx, sy, left, top) = reference_letterbox(rgb)
    output = session.run(None, {"images": tensor[None].astype(np.float32)})[0][0]
    h, w, _ = rgb.shape
    labels = ("red", "green", "blue")
    found = []
    for c, score, (x0, y0, x1, y1) in reference_nms(output, threshold, iou, max_det):
        fx0, fx1 = (np.clip((x - left) / sx / w, 0, 1) for x in (x0, x1))
        fy0, fy1 = (np.clip((y - top) / sy / h, 0, 1) for y in (y0, y1))
        found.append(
            (labels[c], score, (float(fx0), float(fy0), float(fx1 - fx0), float(fy1 - fy0)))
        )
    return found


# Frame sizes: the model's, shrunk by 2 (bilinear), by a fraction (bilinear at uneven
# positions), by over 2 (area), and grown.
RANDOM_SIZES = [(64, 64), (128, 96), (90, 70), (200, 60), (40, 30)]


@pytest.mark.parametrize("size", RANDOM_SIZES, ids=[f"{w}x{h}" for w, h in RANDOM_SIZES])
def test_detections_equal_a_reference_on_random_frames(served, model_files, size):
    import onnxruntime as ort

    session = ort.InferenceSession(model_files["overlap"], providers=["CPUExecutionProvider"])
    w, h = size
    rng = np.random.default_rng(w * 1000 + h)
    # Noise in blocks of 5x5 pixels: after shrinking, cells still differ in colour.
    frames = [
        np.repeat(
            np.repeat(rng.integers(0, 256, (h // 5 + 1, w // 5 + 1, 3), dtype=np.uint8), 5, 0), 5, 1
        )[:h, :w]
        for _ in range(3)
    ]
    params = {"threshold": 0.02, "iou": 0.3, "max_detections": 12}
    opts = StreamOptions(
        target=served.target,
        width=w,
        height=h,
        window=3,
        extension_configuration=config("overlap", **params),
    )
    result = run_stream(opts, [to_pixel_format(f, VF.RGB24) for f in frames])
    assert result.acked == 3
    suppressed = 0
    for i, rgb in enumerate(frames):
        found = detections(result.samples[i + 2])
        wanted = reference_detections(
            session, rgb, params["threshold"], params["iou"], params["max_detections"]
        )
        assert len(wanted) >= 3  # the case has content
        assert_matches(found, wanted, score_tol=1e-3, box_tol=1e-3)
        everything = reference_detections(session, rgb, params["threshold"], 1.0, 1000)
        suppressed += len(everything) - len(wanted)
    assert suppressed > 0  # NMS (or the limit) decided what was kept


# -- batching across streams --------------------------------------------------------------


def _stream_scene(k: int) -> tuple[Any, tuple[Any, ...]]:
    """Stream ``k``'s scene (a red cell at its own place) and its expected cells."""
    x0, y0 = 8 * (1 + 2 * k), 8 * (2 + k)
    rect = (x0, y0, x0 + 8, y0 + 8)
    return ((rect, RED),), (("red", 1.0, rect),)


def _streams_in_a_thread(
    target: str,
    name: str,
    streams: int,
    frames_each: int,
    window: int,
    acks: dict[int, list[int]],
    shm_parity: int,
    **options: Any,
) -> tuple[threading.Thread, list[Any]]:
    """``streams`` streams of stream ``k``'s scene to model ``v8``, run in a thread (the
    test's own thread watches the server meanwhile): by shared memory where ``k % 2 ==
    shm_parity``, each ack's sequence number appended to ``acks[k]``. The list gets the
    streams' results when they end."""
    outcome: list[Any] = []

    async def all_streams() -> list[Any]:
        return await asyncio.gather(
            *(
                stream_frames(
                    StreamOptions(
                        target=target,
                        width=64,
                        height=64,
                        window=window,
                        shm=k % 2 == shm_parity,
                        graph_instance=f"{name}-{k}",
                        extension_configuration=config("v8", threshold=0.5),
                        on_ack=lambda seq, _, k=k: acks[k].append(seq),
                        **options,
                    ),
                    [to_pixel_format(scene_frame("64x64", _stream_scene(k)[0]), VF.RGB24)]
                    * frames_each,
                )
                for k in range(streams)
            )
        )

    runner = threading.Thread(target=lambda: outcome.append(asyncio.run(all_streams())))
    runner.start()
    return runner, outcome


@contextlib.contextmanager
def _model_held(srv: RunningServer, workers: int) -> Iterator[None]:
    """Nothing runs the model meanwhile: its worker stopped, or (in process) its lock held."""
    if workers:
        (pid,) = srv.server.backend.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)
        return
    from fastext.models import engine as engines

    engine = engines.get("v8")
    assert engine is not None
    with engine._lock:
        yield


@pytest.mark.parametrize("workers", inline_and_workers(1))
def test_streams_are_batched_together_and_keep_their_own_results_in_order(model_files, workers):
    streams, frames_each, window = 4, 8, 4
    with running_server(
        workers=workers,
        models=(ModelSpec("v8", model_files["v8"]),),
        metrics_port=free_port(),
        log_level="WARNING",
    ) as srv:
        backend = srv.server.backend
        metrics = srv.server.metrics
        acks: dict[int, list[int]] = {k: [] for k in range(streams)}
        # The model held while every stream fills its window: their batches wait together
        # (in the worker's ring, or in process for the model), and run as one call when
        # it goes on.
        with _model_held(srv, workers):
            runner, outcome = _streams_in_a_thread(
                srv.target, "batch", streams, frames_each, window, acks, shm_parity=1
            )
            deadline = time.monotonic() + 240  # a hang catcher: qemu is slow
            while (
                metrics.value("fastext_frames_in_flight") < streams * window
                or (workers and backend.queued())
            ) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert metrics.value("fastext_frames_in_flight") == streams * window
            assert not workers or backend.queued() == 0  # every batch is in the worker's ring
        runner.join(120)
        assert not runner.is_alive() and len(outcome) == 1
        results = outcome[0]
        for k, result in enumerate(results):
            assert result.acked == result.sent == frames_each
            assert acks[k] == list(range(2, 2 + frames_each))  # in order, each once
            wanted = expected("64x64", Layout.YOLOV8, _stream_scene(k)[1])
            for seq in acks[k]:
                assert_matches(detections(result.samples[seq]), wanted)
        labels = {"model": "v8"}
        calls = metrics.value("fastext_model_batch_frames_count", labels)
        assert metrics.value("fastext_model_batch_frames_sum", labels) == streams * frames_each
        bucket = "fastext_model_batch_frames_bucket"
        if workers:
            # The 16 frames waiting (4 per stream) ran as one call: more than any one
            # stream's window, so of several streams.
            assert metrics.value(bucket, {**labels, "le": "16"}) == calls  # at most 16 a call
            assert metrics.value(bucket, {**labels, "le": "12"}) < calls
        else:
            # In process, the call that took the model's lock first may hold one stream's
            # batch; the others waited together: a call larger than any stream's window.
            assert metrics.value(bucket, {**labels, "le": "4"}) < calls
        assert metrics.value("fastext_model_inference_seconds_count", labels) == calls


# -- bad sessions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configuration", "message"),
    [
        (
            '{"model": "nope"}',
            "unknown model 'nope': this server has e2e, failing, overlap, v5, v8, v8t",
        ),
        ('{"model": "/tmp/x.onnx"}', "unknown model '/tmp/x.onnx'"),
        (
            '{"model": "v8", "threshold": 2}',
            "model 'v8': threshold must be a number in 0.0..1.0, got 2",
        ),
        (
            '{"model": "v8", "classes": ["red", "cat"]}',
            "model 'v8' has no class 'cat' (its labels: red, green, blue)",
        ),
        (
            '{"model": "v8", "speed": 3}',
            "model 'v8' (detect) takes no parameter 'speed' (it "
            "takes threshold, iou, max_detections, classes)",
        ),
    ],
    ids=["unknown-name", "path", "threshold", "unknown-class", "unknown-key"],
)
def test_bad_sessions_are_refused_with_the_reason(served, configuration, message):
    replies, code, details = exchange(served.target, [descriptor(config=configuration)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    assert replies == []


def _serve_once(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastext", "serve", "--bind", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )


def _rank4_model() -> bytes:
    """A model whose one output is the image itself: no detector layout fits it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["output0"])],
        "rank4",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 3, 32, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.portable
@pytest.mark.parametrize("case", ["missing", "corrupt", "layout"])
def test_a_model_that_cannot_be_served_stops_the_start_with_one_line(tmp_path, case):
    path = tmp_path / f"{case}.onnx"
    if case == "corrupt":
        path.write_bytes(colour_detector(Layout.YOLOV8)[:200])
    elif case == "layout":
        path.write_bytes(_rank4_model())
    proc = _serve_once("--model", f"x={path}")
    assert proc.returncode == 2, proc.stderr
    # One error line, the last (as every start failure: log lines may come before it).
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("fastext: error:")]
    assert errors == [lines[-1]] and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith(f"fastext: error: model 'x' ({path}): ")
    reason = errors[0].split(f"({path}): ", 1)[1]
    assert {
        "missing": "no such file",
        "corrupt": "ONNX Runtime cannot load it",
        "layout": "output",
    }[case] in reason


# -- failures while serving ---------------------------------------------------------------


def _options_64(target: str, model: str, window: int) -> StreamOptions:
    """A stream of 64x64 frames to ``model`` (threshold 0.2), ``window`` frames in flight."""
    return StreamOptions(
        target=target,
        width=64,
        height=64,
        window=window,
        extension_configuration=config(model, threshold=0.2),
    )


def test_a_model_that_raises_on_some_frames_fails_only_those(served):
    metrics = served.server.metrics
    before = {
        o: metrics.value("fastext_frames_total", {"outcome": o})
        for o in ("inferred", "error", "invalid")
    }
    good = scene_frame("64x64")
    bad = good.copy()
    bad[0, 0] = RED  # the top-left pixel the failing model reads: its Reshape fails
    poisoned = {3, 6}
    frames = [to_pixel_format(bad if i in poisoned else good, VF.RGB24) for i in range(8)]
    # Several frames in flight: a worker runs them in one call, which fails; then it
    # runs each alone, and only the bad ones fail.
    result = run_stream(_options_64(served.target, "failing", window=4), frames)
    assert result.acked == result.sent == 8 and result.code == grpc.StatusCode.OK
    for i in range(8):
        found = detections(result.samples[i + 2])
        if i in poisoned:
            assert found == []
        else:
            assert_matches(found, expected("64x64", Layout.YOLOV8))
    after = {o: metrics.value("fastext_frames_total", {"outcome": o}) for o in before}
    assert {o: after[o] - before[o] for o in before} == {"inferred": 6, "error": 2, "invalid": 0}


@pytest.mark.portable  # in-process: Python over the kernels and runtime the workers run
def test_an_in_process_fault_outside_the_model_answers_its_frames_and_the_queue_goes_on(
    model_files, monkeypatch
):
    from fastext.models import engine as engines

    with running_server(
        workers=0,
        models=(ModelSpec("v8", model_files["v8"]),),
        metrics_port=free_port(),
        log_level="CRITICAL",
    ) as srv:
        engine = engines.get("v8")
        assert engine is not None
        take_runs, calls = engine.take_runs, []

        def fails_once() -> list[tuple[int, float]]:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a fault after the model ran")
            return take_runs()

        monkeypatch.setattr(engine, "take_runs", fails_once)
        frame = to_pixel_format(scene_frame("64x64"), VF.RGB24)
        result = run_stream(_options_64(srv.target, "v8", window=1), [frame] * 3)
        # The first frame's batch is answered (no inferences, an ERROR) rather than left
        # waiting; the next ones run as usual.
        assert result.acked == result.sent == 3 and result.code == grpc.StatusCode.OK
        assert detections(result.samples[2]) == []
        for seq in (3, 4):
            assert_matches(detections(result.samples[seq]), expected("64x64", Layout.YOLOV8))
        metrics = srv.server.metrics
        assert metrics.value("fastext_frames_total", {"outcome": "error"}) == 1
        assert metrics.value("fastext_frames_total", {"outcome": "inferred"}) == 2


@contextlib.contextmanager
def _batches_held_at_each_death() -> Iterator[list[int]]:
    """How many batches a worker held when its death was handled, read from the log line."""
    held: list[int] = []

    class _Deaths(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if str(record.msg).startswith("worker %d died holding") and record.args:
                held.append(int(record.args[1]))  # type: ignore[index]

    handler, logger = _Deaths(), logging.getLogger("fastext.backend.pipeline")
    logger.addHandler(handler)
    try:
        yield held
    finally:
        logger.removeHandler(handler)


def test_a_worker_killed_holding_several_sessions_frames_loses_none(model_files):
    streams, frames_each, window = 4, 6, 3
    with (
        _batches_held_at_each_death() as held_at_death,
        running_server(
            workers=2,
            models=(ModelSpec("v8", model_files["v8"]),),
            metrics_port=free_port(),
            log_level="WARNING",
        ) as srv,
    ):
        backend = srv.server.backend
        metrics = srv.server.metrics
        victim, other = (slot.process.pid for slot in backend._supervisor.slots)

        async def kill_when_holding_several_sessions() -> tuple[int, set[int]]:
            """On the loop, so that no batch is placed between the look and the kill."""
            jobs = list(backend._placement.workers[0].jobs.values())
            sessions = {j.lane.session for j in jobs}
            if len(sessions) >= 2 and len(jobs) >= 4:
                os.kill(victim, signal.SIGKILL)
            return len(jobs), sessions

        # Both workers take batches and run none: every window fills, and placement (the
        # least loaded worker) deals the batches of all the streams to both in turn. With
        # the other worker running, a quick one could take nearly every batch and leave
        # the victim a single session's. It goes on once the death is handled, so the
        # batches the victim held are the only ones run twice.
        os.kill(victim, signal.SIGSTOP)
        os.kill(other, signal.SIGSTOP)
        acks: dict[int, list[int]] = {k: [] for k in range(streams)}
        runner, outcome = _streams_in_a_thread(
            srv.target, "kill", streams, frames_each, window, acks, shm_parity=0, ack_timeout_s=120
        )
        deadline = time.monotonic() + 240  # a hang catcher: qemu is slow
        batches_held, sessions = 0, set()
        try:
            while len(sessions) < 2 or batches_held < 4:
                assert time.monotonic() < deadline, "the stopped worker never held 2 sessions"
                time.sleep(0.02)
                batches_held, sessions = srv.call(kill_when_holding_several_sessions())
            while backend.retried < batches_held:
                assert time.monotonic() < deadline, "the killed worker's batches were never re-run"
                time.sleep(0.02)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
            raise
        finally:
            os.kill(other, signal.SIGCONT)
        runner.join(180)
        assert not runner.is_alive() and len(outcome) == 1
        for k, result in enumerate(outcome[0]):
            assert result.acked == result.sent == frames_each, k
            assert acks[k] == list(range(2, 2 + frames_each))  # each acked once, in order
            wanted = expected("64x64", Layout.YOLOV8, _stream_scene(k)[1])
            for seq in acks[k]:
                assert_matches(detections(result.samples[seq]), wanted)
        # Every frame ran once: the killed worker ran none, so each of its frames ran
        # once elsewhere, and none of the others twice.
        labels = {"model": "v8"}
        assert metrics.value("fastext_model_batch_frames_sum", labels) == streams * frames_each
        # Between the kill and the handling of the death, placement may deal the victim more
        # batches (it is not known dead yet): every batch it held then ran again, once.
        assert len(held_at_death) == 1 and held_at_death[0] >= batches_held
        assert backend.retried == held_at_death[0] and backend.abandoned == 0
        assert (
            metrics.value("fastext_frames_total", {"outcome": "inferred"}) == streams * frames_each
        )
        assert metrics.value("fastext_frames_total", {"outcome": "lost"}) == 0


# -- where the runtime loads --------------------------------------------------------------


@pytest.mark.portable
def test_the_front_never_loads_onnxruntime_while_its_worker_does(model_files):
    proc, port = start_server("--workers", "1", "--model", f"v8={model_files['v8']}")
    try:
        opts = StreamOptions(
            target=f"127.0.0.1:{port}",
            width=128,
            height=96,
            extension_configuration=config("v8", threshold=0.2),
        )
        result = run_stream(opts, [to_pixel_format(scene_frame("128x96"), VF.RGB24)] * 3)
        assert result.acked == 3
        assert_matches(detections(result.samples[2]), expected("128x96", Layout.YOLOV8))
        with open(f"/proc/{proc.pid}/maps") as fh:
            maps = fh.read()
        assert "onnxruntime" not in maps
        assert "onnxruntime" in maps_of_children(proc.pid)
    finally:
        stop_server(proc)
