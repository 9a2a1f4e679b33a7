"""What several test modules share: contract messages built by hand, a server in this
process and calls on it, a ``fastext serve`` process, and pixel rows laid out by hand.

Test modules import from here (fixtures stay in conftest.py); a test module never
imports another test module or conftest (tests/test_architecture.py says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fastext import METHOD_PATH
from fastext._proto import extension_pb2, media_pb2
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions, stream_frames
from fastext.client.stream import StreamResult
from fastext.config import Config
from fastext.front.server import ExtensionServer
from fastext.vision.frames import PixelFormat

Msg = extension_pb2.MediaStreamMessage

# -- contract messages ------------------------------------------------------------------

# Swapping R and B flips these: a reader with the wrong channel order gets the wrong tag.
# "qemu-user" in the ARM64 stage (scripts/arm64-check sets it): the suite runs emulated,
# after the same suite ran natively on x86-64 in the same CI run.
EMULATED = os.environ.get("FASTEXT_TEST_EMULATED", "")


def proven_natively(why: str) -> pytest.MarkDecorator:
    """Skip under emulation a test whose fact does not depend on the architecture and
    that the native run (or the image build, earlier in the same stage) already paid
    for: ``why`` says where. Only for work that costs the emulated stage minutes."""
    return pytest.mark.skipif(bool(EMULATED), reason=f"proven natively: {why}")


def inline_and_workers(workers: int = 2) -> list[Any]:
    """Parameters for a server with frames in its own process (0) or in ``workers``
    processes. The in-process variant is ``portable``: its kernels are the ones the
    workers run, and what it adds is Python."""
    return [
        pytest.param(0, id="inline", marks=pytest.mark.portable),
        pytest.param(workers, id="workers"),
    ]


ORANGE = (255, 100, 0)  # BT.601 luma 134.9 -> light
AZURE = (0, 100, 255)  # luma 87.8 -> dark


def solid(rgb: tuple[int, int, int], width: int = 64, height: int = 48) -> np.ndarray:
    """An (height, width, 3) image of one colour."""
    return np.broadcast_to(np.array(rgb, np.uint8), (height, width, 3)).copy()


def descriptor(
    width: int = 64,
    height: int = 48,
    encoding: VF.Encoding = VF.RAW,
    pixel_format: VF.PixelFormat = VF.RGB24,
    stride: int = 0,
    seq: int = 1,
    shm: tuple[str, int] | None = None,
    config: str = "",
) -> Msg:
    """A session's first message; ``shm`` is (handle name, length) for shared memory."""
    desc = extension_pb2.MediaStreamDescriptor(
        graph_identifier=extension_pb2.GraphIdentifier(
            graph_instance_name="t", graph_node_name="n"
        ),
        extension_configuration=config,
        media_descriptor=media_pb2.MediaDescriptor(
            timescale=90000,
            video_frame_sample_format=VF(
                encoding=encoding,
                pixel_format=pixel_format,
                dimensions=media_pb2.Dimensions(width=width, height=height),
                stride_bytes=stride,
            ),
        ),
    )
    if shm is not None:
        desc.shared_memory_buffer_transfer_properties.handle_name = shm[0]
        desc.shared_memory_buffer_transfer_properties.length_bytes = shm[1]
    return Msg(sequence_number=seq, media_stream_descriptor=desc)


def embedded(seq: int, data: bytes, timestamp: int | None = None) -> Msg:
    """A sample carrying its bytes."""
    return Msg(
        sequence_number=seq,
        media_sample=extension_pb2.MediaSample(
            timestamp=seq * 3000 if timestamp is None else timestamp,
            content_bytes=media_pb2.ContentBytes(bytes=data),
        ),
    )


def referenced(seq: int, offset: int, length: int) -> Msg:
    """A sample pointing into the session's shared-memory file."""
    return Msg(
        sequence_number=seq,
        media_sample=extension_pb2.MediaSample(
            timestamp=seq * 3000,
            content_reference=media_pb2.ContentReference(
                address_offset=offset, length_bytes=length
            ),
        ),
    )


def tags(reply: Msg) -> list[str]:
    """The classification tags of an ack."""
    return tags_of(reply.media_sample)


def tags_of(sample: Any) -> list[str]:
    """The classification tags of a MediaSample."""
    return [i.classification.tag.value for i in sample.inferences]


# -- a server in this process ----


class RunningServer:
    """A server on its own event loop thread; ``port`` is where it listens."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server: ExtensionServer | None = None
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> RunningServer:
        self._thread.start()
        self.server = self.call(self._make())
        # Start-up includes warming the kernels: on an empty numba cache (a fresh CI
        # checkout, whichever test comes first) that is a cold compile, which on a busy
        # 2-core host ran past 30 s. The server's own bound on it is 180 s.
        self.port = self.call(self.server.start(), timeout=240.0)
        return self

    async def _make(self) -> ExtensionServer:
        return ExtensionServer(self.config)

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self.server is not None:
            self.call(self.server.stop(drain_s=2.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sessions(self) -> int:
        assert self.server is not None
        return self.server.active_sessions


@contextmanager
def running_server(**changes: Any) -> Iterator[RunningServer]:
    config = Config(bind="127.0.0.1:0", log_level="DEBUG", workers=0).replace(**changes)
    srv = RunningServer(config).start()
    try:
        yield srv
    finally:
        srv.stop()


# -- calls on a server ------------------------------------------------------------------


def run_stream(opts: StreamOptions, frames: Any) -> StreamResult:
    """Run the fastext client to completion in this thread."""
    return asyncio.run(stream_frames(opts, frames))


def open_call(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    """A raw ProcessMediaStream call on an aio channel, for tests that drive it by hand."""
    return channel.stream_stream(
        METHOD_PATH, request_serializer=Msg.SerializeToString, response_deserializer=Msg.FromString
    )()


def exchange(
    target: str,
    messages: list[Msg],
    timeout: float = 20.0,
    metadata: tuple[tuple[str, str], ...] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> tuple[list[Msg], grpc.StatusCode, str]:
    """Send raw messages (then half-close) and collect every reply and the final status."""
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        method = channel.stream_stream(
            METHOD_PATH,
            request_serializer=Msg.SerializeToString,
            response_deserializer=Msg.FromString,
        )
        replies: list[Msg] = []
        call = method(iter(messages), timeout=timeout, metadata=metadata)
        try:
            for reply in call:
                replies.append(reply)
        except grpc.RpcError as exc:
            return replies, exc.code(), exc.details() or ""
        return replies, call.code(), call.details() or ""


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that imports the fastext this test imports:
    the installed one in CI and in the ARM64 image, whose numba cache is the warm one
    (the source tree ahead of it would be a second copy, compiled cold)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


# -- `fastext serve` as a process -------------------------------------------------------


def start_server(
    *args: str,
    env: dict[str, str] | None = None,
    bind: str | None = "127.0.0.1:0",
    prefix: Sequence[str] = (),
) -> tuple[subprocess.Popen, int]:
    """``fastext serve`` on a free port (``bind=None``: where its environment says), run
    behind ``prefix`` (:func:`private_network`'s); the log lines read while waiting are
    kept in ``proc.startup_lines``."""
    flags = ["--bind", bind] if bind is not None else []
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "fastext", "serve", *flags, *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    proc.startup_lines = []  # type: ignore[attr-defined]
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        proc.startup_lines.append(line)  # type: ignore[attr-defined]
        match = re.search(r"fastext serving on \S+ \(port (\d+)", line)
        if match:
            return proc, int(match.group(1))
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stderr.read()}")


@dataclass(frozen=True)
class Image:
    """What a Dockerfile's runtime stage (its last) runs: from its own lines."""

    entrypoint: list[str]
    healthcheck: list[str]  # the HEALTHCHECK's CMD, exec form
    env: dict[str, str]  # every ENV of the stage


def read_image(path: str | os.PathLike[str]) -> Image:
    """The entry point, health check and environment a Dockerfile's image runs with, read
    by ``scripts/dockerfile.py`` (the reader ``scripts/arm64-check`` uses)."""
    spec = importlib.util.spec_from_file_location(
        "fastext_dockerfile", Path(__file__).resolve().parent.parent / "scripts/dockerfile.py"
    )
    assert spec is not None and spec.loader is not None
    reader = sys.modules.get(spec.name)
    if reader is None:
        reader = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = reader  # dataclasses look their module up by name
        spec.loader.exec_module(reader)
    runtime = reader.stages(reader.parse_file(path))[-1]
    (health,) = runtime.all("HEALTHCHECK")
    _, command = reader.split_flags(health.args)
    assert command.startswith("CMD "), command
    (entry,) = runtime.all("ENTRYPOINT")
    env = {k: v for ins in runtime.all("ENV") for k, v in reader.env_pairs(ins.args)}
    return Image(reader.exec_form(entry.args), reader.exec_form(command[4:]), env)


@contextmanager
def private_network() -> Iterator[list[str]]:
    """A network namespace of its own, only loopback up, kept by a sleeping process: yields
    the command prefix that runs a program inside it. Fixed ports (an image's own) collide
    there with nothing else on this machine. Skips the test unless this may (root)."""
    if os.geteuid() != 0:
        pytest.skip("a private network namespace needs root (unshare --net)")
    try:
        holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "600"])
    except OSError as exc:
        pytest.skip(f"no unshare: {exc}")
    try:
        ours, theirs = os.readlink("/proc/self/ns/net"), ""
        for _ in range(500):  # until unshare has moved it (then it execs sleep)
            with contextlib.suppress(OSError):
                theirs = os.readlink(f"/proc/{holder.pid}/ns/net")
            if (theirs and theirs != ours) or holder.poll() is not None:
                break
            time.sleep(0.01)
        if holder.poll() is not None or theirs == ours:
            pytest.skip("unshare --net is not permitted here")
        prefix = ["nsenter", "-t", str(holder.pid), "-n", "--"]
        subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True, timeout=30)
        yield prefix
    finally:
        holder.kill()
        holder.wait()


def stop_server(proc: subprocess.Popen, timeout: float = 60) -> str:
    """SIGTERM, wait (bounded; killed past it) and return what it logged since start-up."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return str(err)


# -- pixel rows by hand -----------------------------------------------------------------

# Channel order of each byte format, written out independently of frames.LAYOUTS.
BYTE_ORDERS: dict[int, str] = {
    PixelFormat.RGB24: "RGB",
    PixelFormat.BGR24: "BGR",
    PixelFormat.ARGB: "ARGB",
    PixelFormat.RGBA: "RGBA",
    PixelFormat.ABGR: "ABGR",
    PixelFormat.BGRA: "BGRA",
}
PACKED: dict[int, tuple[int, bool]] = {  # format: (bits of green, big-endian)
    PixelFormat.RGB565BE: (6, True),
    PixelFormat.RGB565LE: (6, False),
    PixelFormat.RGB555BE: (5, True),
    PixelFormat.RGB555LE: (5, False),
}
ALPHA = 0x5A  # neither 0 nor 255: reading alpha as a colour gives a wrong luma
PAD = 255  # padding bytes: a kernel that reads them gets a wrong luma


def expand(value: np.ndarray, bits: int) -> np.ndarray:
    """Expand a ``bits``-bit channel to 8 bits by bit replication."""
    return (value << (8 - bits)) | (value >> (2 * bits - 8))


def pack(rgb: np.ndarray, pixel_format: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows (h, w * bpp) of an (h, w, 3) image, and the RGB those rows encode."""
    h, w, _ = rgb.shape
    if pixel_format in BYTE_ORDERS:
        order = BYTE_ORDERS[pixel_format]
        px = np.full((h, w, len(order)), ALPHA, np.uint8)
        for i, channel in enumerate(order):
            if channel != "A":
                px[..., i] = rgb[..., "RGB".index(channel)]
        return px.reshape(h, -1), rgb
    gbits, big_endian = PACKED[pixel_format]
    c = rgb.astype(np.uint32)
    r5, g, b5 = c[..., 0] >> 3, c[..., 1] >> (8 - gbits), c[..., 2] >> 3
    word = (r5 << (5 + gbits)) | (g << 5) | b5
    if gbits == 5:
        word |= 0x8000  # the unused top bit of RGB555 must be ignored
    hi, lo = (word >> 8).astype(np.uint8), (word & 0xFF).astype(np.uint8)
    px = np.stack([hi, lo] if big_endian else [lo, hi], axis=-1)
    seen = np.stack([expand(r5, 5), expand(g, gbits), expand(b5, 5)], axis=-1)
    return px.reshape(h, -1), seen


def place(rows: np.ndarray, stride: int, tail: int = 0) -> bytes:
    """Rows laid out ``stride`` bytes apart, padding and ``tail`` extra bytes set to PAD."""
    h, row_bytes = rows.shape
    buf = np.full(stride * h + tail, PAD, np.uint8)
    buf[: stride * h].reshape(h, stride)[:, :row_bytes] = rows
    return buf.tobytes()


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An (h, w, 3) image of uniform noise."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def owned_segments(pid: int) -> set[str]:
    """Shared memory a server process owns (named fastext_<pid>_...)."""
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"fastext_{pid}_")}


def scrape(port: int) -> dict[str, float]:
    """Every sample of a server's Prometheus endpoint, by name (with labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def install_entry_points(directory: str, group: str, entries: dict[str, str]) -> None:
    """Make ``importlib.metadata`` find entry points (``name: "module:attr"``) of ``group``
    in every process whose ``sys.path`` holds ``directory`` (a spawned worker gets its
    parent's): a minimal installed distribution written there."""
    dist = os.path.join(directory, "fastext_test_plugins-1.0.dist-info")
    os.makedirs(dist, exist_ok=True)
    with open(os.path.join(dist, "METADATA"), "w") as fh:
        fh.write("Metadata-Version: 2.1\nName: fastext-test-plugins\nVersion: 1.0\n")
    with open(os.path.join(dist, "entry_points.txt"), "w") as fh:
        fh.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


# -- models -----------------------------------------------------------------------------


def failing_detector(size: int = 32, cell: int = 8, batch: int | None = None) -> bytes:
    """fastext.models.toy's colour_detector (YOLOV8) that ONNX Runtime fails on any call
    holding a frame whose top-left tensor pixel is bright red: a Reshape of a one-element
    tensor to a shape read from that pixel (``[1]`` when dark, ``[2]`` when bright)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fastext.models.decode import Layout
    from fastext.models.toy import colour_detector

    model = onnx.load_from_string(colour_detector(Layout.YOLOV8, size, cell, batch))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["detections" if o == "output0" else o for o in node.output]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0, 0, 0], np.int64), "mark_start"),
            numpy_helper.from_array(np.array([1, 1, 1], np.int64), "mark_end"),
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "mark_axes"),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
            numpy_helper.from_array(np.array([1], np.int64), "one_i"),
            numpy_helper.from_array(np.ones(1, np.float32), "one_f"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Slice", ["images", "mark_start", "mark_end", "mark_axes"], ["mark"]),
            helper.make_node("ReduceMax", ["mark"], ["mark_max"], keepdims=0),
            helper.make_node("Round", ["mark_max"], ["mark_round"]),
            helper.make_node("Cast", ["mark_round"], ["mark_int"], to=TensorProto.INT64),
            helper.make_node("Unsqueeze", ["mark_int", "axis0"], ["mark_1d"]),
            helper.make_node("Add", ["mark_1d", "one_i"], ["bad_shape"]),
            helper.make_node("Reshape", ["one_f", "bad_shape"], ["factor"]),
            helper.make_node("Mul", ["detections", "factor"], ["output0"]),
        ]
    )
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


# -- oracles ------------------------------------------------------------------------------


def expected_dark_light(index: int) -> str:
    """The tag ``synthetic:dark-light`` frame ``index`` (0-based) should get."""
    return "light" if (index // 10) % 2 == 0 else "dark"


MotionBox = tuple[float, float, float, float]


def reference_motion(
    frames: Sequence[np.ndarray],
    sensitivity: float = 0.75,
    min_area: float = 0.001,
    alpha: float = 0.1,
) -> list[list[MotionBox]]:
    """The boxes MotionDetector should find in each luma frame, by its algorithm written
    for reading, not speed: a test's oracle (bench/numpy_motion.py is the bench's
    baseline, vectorized; benchmarks never import tests, tests never import bench).

    Block means on the work grid (float32, as the detector computes them), a running
    background, changed pixels counted per cell, cells with enough of them joined when
    within LINK_RADIUS cells of each other (a flood fill here, union-find there), and
    one box per region large enough, regions in the order of their first cell."""
    from fastext.processors.motion import CELLS, LINK_RADIUS, WORK_SIZE, threshold_for

    threshold, rate = np.float32(threshold_for(sensitivity)), np.float32(alpha)
    background: np.ndarray | None = None
    result: list[list[MotionBox]] = []
    for luma in frames:
        h, w = luma.shape
        s = max(1, -(-max(h, w) // WORK_SIZE))
        wh, ww = -(-h // s), -(-w // s)
        padded = np.zeros((wh * s, ww * s), np.uint32)
        padded[:h, :w] = luma
        pixels = np.minimum(s, h - np.arange(wh) * s)[:, None] * np.minimum(
            s, w - np.arange(ww) * s
        )
        work = padded.reshape(wh, s, ww, s).sum(axis=(1, 3)).astype(np.float32) * (
            1.0 / pixels
        ).astype(np.float32)
        if background is None or background.shape != work.shape:
            background = work
            result.append([])
            continue
        diff = work - background
        background = background + rate * diff
        changed = np.abs(diff) > threshold
        k = max(1, round(max(wh, ww) / CELLS))
        ch, cw = -(-wh // k), -(-ww // k)
        points: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for y, x in zip(*np.nonzero(changed), strict=True):
            points.setdefault((int(y) // k, int(x) // k), []).append((int(y), int(x)))
        moving = {c for c, p in points.items() if len(p) >= max(1, k * k // 16)}
        seen: set[tuple[int, int]] = set()
        boxes: list[MotionBox] = []
        for first in sorted(moving):  # row-major
            if first in seen:
                continue
            region, todo = [], [first]
            seen.add(first)
            while todo:
                cy, cx = todo.pop()
                region.append((cy, cx))
                for ny in range(max(0, cy - LINK_RADIUS), min(ch, cy + LINK_RADIUS + 1)):
                    for nx in range(max(0, cx - LINK_RADIUS), min(cw, cx + LINK_RADIUS + 1)):
                        if (ny, nx) in moving and (ny, nx) not in seen:
                            seen.add((ny, nx))
                            todo.append((ny, nx))
            inside = [p for c in region for p in points[c]]
            if len(inside) < min_area * wh * ww:
                continue
            ys, xs = [p[0] for p in inside], [p[1] for p in inside]
            left, top = min(min(xs) * s, w) / w, min(min(ys) * s, h) / h
            right, bottom = min((max(xs) + 1) * s, w) / w, min((max(ys) + 1) * s, h) / h
            boxes.append((left, top, right - left, bottom - top))
        result.append(boxes)
    return result


def maps_of_children(pid: int) -> str:
    """The memory maps of every child of ``pid`` (a server's workers), as one text: what
    libraries they loaded (a child gone meanwhile is skipped)."""
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        children = fh.read().split()
    text = ""
    for child in children:
        try:
            with open(f"/proc/{child}/maps") as fh:
                text += fh.read()
        except OSError:
            pass
    return text
