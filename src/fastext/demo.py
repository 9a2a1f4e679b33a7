"""``fastext demo``: a server and a client in one command, on real-looking frames.

Starts fastext on a free loopback port, then streams day and night street
scenes through it — RAW by shared memory, RAW embedded, JPEG embedded, and
several streams at once — printing inferences and frames per second, and
checking every tag against the scene it was made from.

Then a detection pass: the demo builds a tiny ONNX detector of red, green and blue
(:func:`fastext.models.toy.colour_detector`, in a child process, into a temporary
directory), serves it as a model beside the built-in processors, streams the scenes
with ``{"model": ...}`` and checks that the boxes found are where the scene drew its
red car (:func:`fastext.client.synthetic.car_box`). The pass needs ONNX Runtime and
the ``onnx`` package (``pip install 'fastext[onnx]'``); without them it is skipped,
and says so.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions, stream_frames
from fastext.client.synthetic import car_box, encode, scenes, to_pixel_format
from fastext.config import Config, ModelSpec
from fastext.contract.metadata import sample_to_json
from fastext.front.server import ExtensionServer, new_event_loop

__all__ = ["run_demo"]


@dataclass(frozen=True)
class Pass:
    title: str
    width: int
    height: int
    encoding: int
    pixel_format: int
    shm: bool
    streams: int = 1


PASSES = (
    Pass("RAW RGB24 416x416, shared memory", 416, 416, VF.RAW, VF.RGB24, True),
    Pass("RAW BGR24 416x416, embedded", 416, 416, VF.RAW, VF.BGR24, False),
    Pass("JPEG 1280x720, embedded", 1280, 720, VF.JPG, VF.NONE, False),
    Pass("RAW BGRA 640x360, shared memory, 4 streams", 640, 360, VF.RAW, VF.BGRA, True, 4),
)


# The detection pass: 416x416 frames into a 128x128 detector whose cells are 4 pixels
# (one anchor per cell, 1024 in all); the car (69x52 pixels) covers about 5 x 4 cells.
DETECT = Pass(
    "RAW RGB24 416x416, shared memory, an ONNX detector", 416, 416, VF.RAW, VF.RGB24, True
)
DETECTOR_NAME = "demo-colours"
DETECTOR_SIZE, DETECTOR_CELL = 128, 4
# The car scores 0.65 as red by day and 0.28 by night (a cell it fills; the sky is
# blue, the ground green, neither red); only red boxes are asked for.
DETECT_PARAMS = {"threshold": 0.15, "classes": ["red"]}
DISTINCT, PERIOD = 20, 5  # distinct scenes of every pass, cycled; day and night every PERIOD


def detection_available() -> str:
    """ "" when the detection pass can run, else what is missing."""
    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    return " and ".join(missing)


def build_detector(path: str) -> None:
    """Write the demo's detector to ``path``, built in a child process (the ``onnx``
    package never loads in the server's front)."""
    code = (
        "import sys\n"
        "from fastext.models.decode import Layout\n"
        "from fastext.models.toy import colour_detector\n"
        "with open(sys.argv[1], 'wb') as fh:\n"
        f"    fh.write(colour_detector(Layout.YOLOV8, {DETECTOR_SIZE}, {DETECTOR_CELL}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"building the demo's detector failed: {tail}")


def box_errors(
    index: int, width: int, height: int, boxes: list[tuple[str, float, float, float, float]]
) -> list[str]:
    """What is wrong with the boxes found in scene ``index`` (``(label, left, top, width,
    height)``, normalized as the contract has them): every one must be red and lie on the
    car, and together they must cover it, each edge within 1.5 of the detector's cells."""
    x, y, w, h = car_box(width, height, index)
    slack = 1.5 * DETECTOR_CELL * max(width, height) / DETECTOR_SIZE  # a cell in frame pixels
    if not boxes:
        return [f"scene {index}: no box; the car is at {x},{y} {w}x{h}"]
    errors = []
    lows, highs = [], []
    for label, left, top, bw, bh in boxes:
        x0, y0, x1, y1 = left * width, top * height, (left + bw) * width, (top + bh) * height
        lows.append((x0, y0))
        highs.append((x1, y1))
        if (
            label != "red"
            or x0 < x - slack
            or y0 < y - slack
            or x1 > x + w + slack
            or (y1 > y + h + slack)
        ):
            errors.append(
                f"scene {index}: a {label} box {x0:.0f},{y0:.0f} {x1 - x0:.0f}x"
                f"{y1 - y0:.0f} is not on the car at {x},{y} {w}x{h}"
            )
    ux0, uy0 = min(p[0] for p in lows), min(p[1] for p in lows)
    ux1, uy1 = max(p[0] for p in highs), max(p[1] for p in highs)
    if ux0 > x + slack or uy0 > y + slack or ux1 < x + w - slack or uy1 < y + h - slack:
        errors.append(
            f"scene {index}: the boxes cover {ux0:.0f},{uy0:.0f} to {ux1:.0f},"
            f"{uy1:.0f}, not the car at {x},{y} to {x + w},{y + h}"
        )
    return errors


async def _detect_pass(port: int, frames_per_stream: int, show: int) -> tuple[int, int]:
    """Stream the scenes to the demo's detector; (frames acked, frames whose boxes are
    wrong), printing the boxes of ``show`` frames."""
    p = DETECT
    frames = _frames(p)
    opts = StreamOptions(
        target=f"127.0.0.1:{port}",
        width=p.width,
        height=p.height,
        encoding=p.encoding,
        pixel_format=p.pixel_format,
        shm=p.shm,
        graph_instance="demo-detect",
        extension_configuration=json.dumps({"model": DETECTOR_NAME, **DETECT_PARAMS}),
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await stream_frames(
        opts, (f for f, _ in itertools.islice(itertools.cycle(frames), frames_per_stream))
    )
    elapsed = loop.time() - started
    wrong = 0
    problems: list[str] = []
    found: dict[int, list[tuple[str, float, float, float, float]]] = {}
    for seq, sample in sorted(result.samples.items()):
        boxes = [
            (i.entity.tag.value, i.entity.box.l, i.entity.box.t, i.entity.box.w, i.entity.box.h)
            for i in sample.inferences
        ]
        found[seq] = boxes
        errors = box_errors((seq - 2) % len(frames), p.width, p.height, boxes)
        if errors:
            wrong += 1
            problems += errors
    print(
        f"\n== {p.title} ({DETECTOR_NAME}, {DETECTOR_SIZE}x{DETECTOR_SIZE}, "
        f"{json.dumps(DETECT_PARAMS)}): {result.acked} frames in {elapsed:.2f} s = "
        f"{result.acked / max(elapsed, 1e-9):.0f} frames/s, frames with wrong boxes {wrong}"
    )
    seqs = sorted(found)
    for seq in seqs[:: max(1, len(seqs) // max(1, show))][:show]:
        index = (seq - 2) % len(frames)
        x, y, w, h = car_box(p.width, p.height, index)
        boxes = found[seq]
        if boxes:  # the detector's boxes are its cells: their count and what they cover
            x0 = min(b[1] for b in boxes) * p.width
            y0 = min(b[2] for b in boxes) * p.height
            x1 = max(b[1] + b[3] for b in boxes) * p.width
            y1 = max(b[2] + b[4] for b in boxes) * p.height
            labels = sorted({b[0] for b in boxes})
            shown = (
                f"{len(boxes)} {'/'.join(labels)} boxes covering {x0:.0f},{y0:.0f} "
                f"{x1 - x0:.0f}x{y1 - y0:.0f}"
            )
        else:
            shown = "no box"
        print(f"   seq {seq}: car at {x},{y} {w}x{h} (left,top wxh); {shown}")
    for problem in problems[:5]:
        print(f"   wrong: {problem}")
    return result.acked, wrong


def _frames(p: Pass, distinct: int = DISTINCT) -> list[tuple[bytes, bool]]:
    made = []
    for rgb, light in scenes(p.width, p.height, distinct, period=PERIOD):
        data = (
            to_pixel_format(rgb, p.pixel_format)
            if p.encoding == VF.RAW
            else encode(rgb, p.encoding)
        )
        made.append((data, light))
    return made


async def _one_pass(port: int, p: Pass, frames_per_stream: int, show: int) -> tuple[int, int]:
    frames = _frames(p)
    expected = [("light" if light else "dark") for _, light in frames]
    opts = [
        StreamOptions(
            target=f"127.0.0.1:{port}",
            width=p.width,
            height=p.height,
            encoding=p.encoding,
            pixel_format=p.pixel_format,
            shm=p.shm,
            graph_instance=f"demo-{i}",
        )
        for i in range(p.streams)
    ]
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(
        *(
            stream_frames(
                o, (f for f, _ in itertools.islice(itertools.cycle(frames), frames_per_stream))
            )
            for o in opts
        )
    )
    elapsed = loop.time() - started
    wrong = 0
    for result in results:
        for seq, sample in result.samples.items():
            tags = [i.classification.tag.value for i in sample.inferences]
            if tags != [expected[(seq - 2) % len(frames)]]:
                wrong += 1
    acked = sum(r.acked for r in results)
    print(
        f"\n== {p.title}: {acked} frames in {elapsed:.2f} s = {acked / elapsed:.0f} frames/s, "
        f"p50 ack latency {statistics.median(t for r in results for t in r.latencies_s) * 1e3:.2f} ms, "
        f"wrong tags {wrong}"
    )
    first = results[0]
    seqs = sorted(first.samples)
    for seq in seqs[:: max(1, len(seqs) // max(1, show))][:show]:
        print(f"   seq {seq}: {sample_to_json(first.samples[seq])}")
    return acked, wrong


async def _demo(
    config: Config, frames: int, show: int, detect: bool, passes: Sequence[Pass]
) -> int:
    server = ExtensionServer(config)
    port = await server.start()
    print(
        f"fastext demo: server on 127.0.0.1:{port} (workers={config.workers}, "
        f"batch_size={config.batch_size})"
    )
    total = wrong = boxes_wrong = 0
    try:
        for p in passes:
            acked, bad = await _one_pass(port, p, frames, show)
            total += acked
            wrong += bad
        if detect:
            acked, boxes_wrong = await _detect_pass(port, frames, show)
            total += acked
    finally:
        await server.stop(drain_s=2.0)
    expected = sum(frames * p.streams for p in passes) + (frames if detect else 0)
    ok = total == expected and wrong == 0 and boxes_wrong == 0
    summary: dict[str, Any] = {"frames": expected, "acked": total, "wrong_tags": wrong}
    if detect:
        summary["wrong_boxes"] = boxes_wrong
    print("\n" + json.dumps({**summary, "ok": ok}))
    return 0 if ok else 1


def run_demo(
    config: Config,
    frames: int = 200,
    show: int = 3,
    detect: bool = True,
    passes: Sequence[Pass] = PASSES,
) -> int:
    """Run ``passes`` and the detection pass (``detect``, when ONNX Runtime and onnx are
    installed); exit status 0 when every frame was acked with the right tag and, in the
    detection pass, with boxes on the car."""
    config = config.replace(bind="127.0.0.1:0")
    missing = detection_available() if detect else ""
    if missing:
        print(
            f"fastext demo: the detection pass is skipped: {missing} not installed "
            "(pip install 'fastext[onnx]')",
            file=sys.stderr,
        )
        detect = False
    with tempfile.TemporaryDirectory(prefix="fastext-demo-") as tmp:
        if detect:
            path = os.path.join(tmp, "colours.onnx")
            try:
                build_detector(path)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"fastext demo: {exc}", file=sys.stderr)
                return 1
            config = config.replace(models=(*config.models, ModelSpec(DETECTOR_NAME, path)))
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_demo(config, frames, show, detect, passes))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(Config()))
