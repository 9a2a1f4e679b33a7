"""`fastext stream --annotate`: every acknowledged frame written, its boxes drawn where they are."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastext._proto import extension_pb2
from fastext._proto import inferencing_pb2 as inf
from fastext.client.annotator import BACKLOG, Annotator
from fastext.client.draw import boxes_of, draw_frame, label_color, pixel_box
from fastext.client.figures import StreamFigures
from fastext.client.imagenode import ImageNode
from fastext.client.sinks import sink_path
from fastext.client.synthetic import scene

# portable: drawing results on frames (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

MOTION = json.dumps({"processor": "motion"})
W, H = 320, 240


def stream_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastext", "stream", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def as_sent(index: int) -> np.ndarray:
    """Frame ``index`` of synthetic:scene (stream 0) as the image node sent it at W x H."""
    return ImageNode(width=W, height=H).scale_frame(scene(640, 480, index, light=True))


def boxes(line: dict) -> list[tuple[float, float, float, float]]:
    out = []
    for i in line.get("inferences", []):
        box = i.get("motion", i.get("entity", {})).get("box")
        if box is not None:  # the JSON form leaves out fields that are 0
            out.append(tuple(box.get(k, 0.0) for k in "ltwh"))
    return out


def edge_points(box: tuple[float, float, float, float]) -> list[list[tuple[int, int]]]:
    """For each side of ``box`` (left, right, top, bottom), the pixels (x, y) within one pixel
    of where that side lies, across the side's middle: computed here from the JSON alone."""
    left, top, w, h = box
    x0, x1 = math.floor(left * W), min(math.ceil((left + w) * W) - 1, W - 1)
    y0, y1 = math.floor(top * H), min(math.ceil((top + h) * H) - 1, H - 1)
    xm, ym = (x0 + x1) // 2, (y0 + y1) // 2

    def near(c: int, limit: int) -> range:
        return range(max(c - 1, 0), min(c + 2, limit))

    return [
        [(x, ym) for x in near(x0, W)],
        [(x, ym) for x in near(x1, W)],
        [(xm, y) for y in near(y0, H)],
        [(xm, y) for y in near(y1, H)],
    ]


def distance(a: np.ndarray, b: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - np.array(b, np.float64)))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_annotate_png_folder_draws_each_box_where_the_jsonl_says(make_server, tmp_path):
    srv = make_server(workers=0)
    out, summary, folder = tmp_path / "r.jsonl", tmp_path / "s.json", tmp_path / "frames"
    proc = stream_cli(
        "synthetic:scene",
        "--target",
        srv.target,
        "--ext-config",
        MOTION,
        "--width",
        str(W),
        "--height",
        str(H),
        "--max-frames",
        "30",
        "--output",
        str(out),
        "--summary-json",
        str(summary),
        "--annotate",
        str(folder),
    )
    assert proc.returncode == 0, proc.stderr
    acked = json.loads(summary.read_text())["acked"]
    lines = read_jsonl(out)
    assert acked == len(lines) == 30
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.png" for i in range(acked)]
    color = label_color("motion")
    checked = 0
    for line in lines:
        index = line["timestamp"] * 30 // 90000
        drawn = np.asarray(Image.open(folder / f"{index:06d}.png").convert("RGB"))
        original = as_sent(index)
        assert drawn.shape == original.shape == (H, W, 3)
        for box in boxes(line):
            for side in edge_points(box):
                assert any(tuple(drawn[y, x]) == color for x, y in side), (index, box, side)
                assert all(tuple(original[y, x]) != color for x, y in side)  # drawn, not there
            checked += 1
        if not boxes(line):  # no box: the scene itself is untouched above the caption
            assert np.array_equal(drawn[: H * 3 // 4], original[: H * 3 // 4]), index
    assert checked >= 25  # the moving car gives (nearly) every frame a box


def test_annotate_video_per_stream_holds_every_acked_frame(make_server, tmp_path):
    av = pytest.importorskip("av")
    srv = make_server(workers=0)
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    proc = stream_cli(
        "synthetic:scene",
        "--target",
        srv.target,
        "--ext-config",
        MOTION,
        "--width",
        str(W),
        "--height",
        str(H),
        "--max-frames",
        "20",
        "--streams",
        "2",
        "--output",
        str(out),
        "--summary-json",
        str(summary),
        "--annotate",
        str(tmp_path / "a.mp4"),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(summary.read_text())["acked"] == 40
    lines = read_jsonl(out)
    color = label_color("motion")
    checked = 0
    for k in range(2):
        path = sink_path(str(tmp_path / "a.mp4"), k, 2)
        assert path.name == f"a-{k}.mp4"
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            assert video.average_rate == 30 and (video.width, video.height) == (W, H)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video)]
        mine = sorted((line for line in lines if line["stream"] == k), key=lambda x: x["timestamp"])
        assert len(frames) == len(mine) == 20
        if k:  # stream 1 plays another seed of the scene; its pixels are checked through stream 0
            continue
        for index, (frame, line) in enumerate(zip(frames, mine, strict=True)):
            assert line["timestamp"] * 30 // 90000 == index
            original = as_sent(index)
            for box in boxes(line):
                left = edge_points(box)[0]
                before = min(distance(original[y, x], color) for x, y in left)
                if before < 100:
                    continue  # the car's own red is too near the label's for a lossy check
                # H.264 at crf 18 mostly keeps the line's color within ~15 levels, but a 2-pixel
                # line across two chroma blocks comes out paler: ask for a clear move towards it.
                after = min(distance(frame[y, x], color) for x, y in left)
                assert after < before - 60, (index, box, before, after)
                checked += 1
    assert checked >= 10


def _sample(*inferences: inf.Inference) -> extension_pb2.MediaSample:
    return extension_pb2.MediaSample(inferences=list(inferences))


def _entity(label: str, l: float, t: float, w: float, h: float) -> inf.Inference:  # noqa: E741
    return inf.Inference(
        type=inf.Inference.ENTITY,
        entity=inf.Entity(
            tag=inf.Tag(value=label, confidence=0.9), box=inf.Rectangle(l=l, t=t, w=w, h=h)
        ),
    )


def test_draw_frame_outlines_labels_notes_and_leaves_the_input_alone():
    rgb = np.full((120, 160, 3), 128, np.uint8)
    before = rgb.copy()
    tag = inf.Inference(
        type=inf.Inference.CLASSIFICATION,
        classification=inf.Classification(tag=inf.Tag(value="dark", confidence=1)),
    )
    image = np.asarray(
        draw_frame(rgb, [_entity("car", 0.5, 0.5, 0.25, 0.25), tag], stream=3, timestamp=45000)
    )
    assert np.array_equal(rgb, before)
    assert tuple(image[60 + 15, 80]) == label_color("car")  # left edge, middle row
    assert tuple(image[60 + 15, 119]) == label_color("car")  # right edge: (0.5 + 0.25) * 160 - 1
    assert tuple(image[60 + 15, 100]) == (128, 128, 128)  # inside: not filled
    assert (image[:20, :40] != 128).any()  # the classification note, top left
    assert (image[-15:, :60] != 128).any()  # the caption, bottom left


def test_label_color_is_stable_and_tells_labels_apart():
    # Pinned: a color must not change between runs (hash() would, with the hash seed).
    assert label_color("motion") == (255, 38, 67)
    colors = {label_color(x) for x in ("person", "car", "bicycle", "dog", "truck", "motion")}
    assert len(colors) == 6


def test_pixel_box_clamps_and_rejects_empty_boxes():
    (box,) = boxes_of([_entity("x", -0.2, 0.9, 0.5, 0.5)])
    assert pixel_box(box, 100, 50) == (0, 45, 29, 49)
    (flat,) = boxes_of([_entity("x", 0.1, 0.1, 0.0, 0.5)])
    assert pixel_box(flat, 100, 50) is None
    (nan,) = boxes_of([_entity("x", float("nan"), 0.1, 0.2, 0.2)])
    assert pixel_box(nan, 100, 50) is None


class GatedSink:
    """Takes frames only while ``open`` is set: a drawing side that has fallen behind."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.indices: list[int] = []

    def write(self, index: int, image: Image.Image) -> None:
        assert self.open.wait(30), "the test never opened the sink"
        self.indices.append(index)

    def close(self) -> None:
        pass


def test_annotator_holds_the_sender_not_the_acks_and_writes_in_send_order():
    async def scenario() -> tuple[list[int], bool, bool]:
        sink, window = GatedSink(), 4
        annotator = Annotator(1, window=window, sinks=[sink])
        annotator.start()
        frame = np.zeros((24, 32, 3), np.uint8)
        pairs = iter([(frame, b"x")] * 100)
        frames = annotator.frames(0, pairs)
        sent, gate = annotator.on_send(0), annotator.send_gate(0)
        assert gate is not None
        credits = window + BACKLOG
        for seq in range(2, 2 + credits):  # as many as the gate lets through
            await asyncio.wait_for(gate(), 5)
            next(frames)
            sent(seq, seq * 3000)
        # Acks in reverse order, every one filed at once though the sink takes nothing.
        for seq in reversed(range(2, 2 + credits)):
            annotator.on_ack(0, seq, _sample(_entity("car", 0.1, 0.1, 0.2, 0.2)))
        held = asyncio.ensure_future(gate())
        done, _ = await asyncio.wait({held}, timeout=0.3)
        blocked = not done  # the sender waits for the drawing side
        sink.open.set()
        await asyncio.wait_for(held, 10)
        errors = await annotator.finish()
        assert errors == []
        return sink.indices, blocked, held.done()

    indices, blocked, released = asyncio.run(scenario())
    assert blocked and released
    assert indices == list(range(20))  # sent order, though acked in reverse


def test_stream_figures_over_the_recent_span():
    now = [100.0]
    figures = StreamFigures(span_s=5.0, clock=lambda: now[0])
    for i in range(100):  # one ack every 1/8 s (exact in binary), latencies 1..100 ms
        now[0] = 100.0 + i * 0.125
        figures.record(
            latency_s=(i + 1) / 1000, types=["motion", "motion"] if i % 2 else ["entity"]
        )
    snap = figures.snapshot()  # at 112.375 the last 5 s hold acks 59..99: 41 acks
    assert snap["acked"] == 100
    assert snap["fps"] == 8.2
    assert snap["latency_ms"] == {"p50": 80.0, "p99": 100.0}  # nearest rank: 21st and 41st
    assert snap["inferences_per_s"] == {"entity": 4.0, "motion": 8.4}  # 20 and 42 in 5 s
    now[0] += 60
    assert StreamFigures().snapshot()["latency_ms"] == {"p50": None, "p99": None}
    assert figures.snapshot()["fps"] == 0.0


class FailingSink:
    def write(self, index: int, image: Image.Image) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        pass


def test_annotator_reports_a_sink_that_fails_and_keeps_the_sender_going():
    async def scenario() -> list[str]:
        annotator = Annotator(1, window=1, sinks=[FailingSink()])
        annotator.start()
        frames = annotator.frames(0, iter([(np.zeros((8, 8, 3), np.uint8), b"x")] * 40))
        sent, gate = annotator.on_send(0), annotator.send_gate(0)
        assert gate is not None
        for seq in range(2, 42):  # more frames than the gate's credits (1 + BACKLOG)
            await asyncio.wait_for(gate(), 10)  # credits come back though nothing is written
            next(frames)
            sent(seq, 0)
            annotator.on_ack(0, seq, None)
        return await annotator.finish()

    errors = asyncio.run(scenario())
    assert errors == [
        "--annotate, stream 0: cannot write frame 0 ([Errno 28] No space left on device)"
    ]


def test_stream_figures_count_from_the_first_ack_not_from_start_up():
    now = [50.0]
    figures = StreamFigures(span_s=5.0, clock=lambda: now[0])
    now[0] = 58.0  # eight seconds of connecting and rendering before the first ack
    for i in range(20):  # then 10 acks a second for 2 s
        now[0] = 58.0 + i * 0.1
        figures.record(0.001, [])
    now[0] = 60.0
    assert figures.snapshot()["fps"] == 10.0
