"""``fastext stream``: play a source through the LVA image node into any extension.

Opens ``--streams`` sessions (each with its own graph instance name and, with
``--shm``, its own ``/dev/shm`` file), writes one JSON line per acknowledged
frame to ``--output``, shows a live progress line on a terminal, and ends with
a summary.  With ``--annotate`` every acknowledged frame is also written with its
inferences drawn on it, and ``--view`` shows the streams live in a browser
(:mod:`fastext.client.annotator`, :mod:`fastext.client.view`).  Exit status 0
only when every frame sent was acknowledged (and, with ``--annotate``, written).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import grpc
import numpy as np

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client.annotator import Annotator
from fastext.client.imagenode import ImageNode
from fastext.client.shm import ShmSpaceError
from fastext.client.sinks import VIDEO_SUFFIXES, SinkError
from fastext.client.sources import SourceError, frame_rate, timed_frames_from
from fastext.client.stream import StreamError, StreamOptions, StreamResult, Timed, stream_frames
from fastext.client.view import LiveView, ViewError, parse_address
from fastext.contract.metadata import sample_to_dict
from fastext.malloc import KEEP_MB, keep_freed_memory

__all__ = ["StreamCommand", "run_stream_command"]


@dataclass
class StreamCommand:
    source: str
    target: str
    node: ImageNode = field(default_factory=ImageNode)
    streams: int = 1
    shm: bool = False
    shm_size_mb: int = 64
    window: int = 16
    fps: float | None = None  # 0: as fast as acks allow; None: that, or real time with a view
    loop: int = 1
    max_frames: int = 0  # per stream; 0: the whole source
    ext_config: str = ""
    auth: str = ""  # user:password
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    output: str = ""
    summary_json: str = ""
    ack_timeout_s: float = 30.0
    graph_instance: str = "fastext-stream"
    reconnect: int = 0  # new calls per stream after a lost one (UNAVAILABLE, connection lost)
    progress: bool | None = None  # None: on when stderr is a terminal
    annotate: str = ""  # FILE.mp4|.mkv or a folder: every acked frame, inferences drawn
    view: str = ""  # [HOST:]PORT of the live page ("": none)


def _credentials(cmd: StreamCommand) -> grpc.ChannelCredentials | None:
    if not (cmd.tls_ca or cmd.tls_cert):
        return None

    def read(path: str) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as fh:
            return fh.read()

    return grpc.ssl_channel_credentials(read(cmd.tls_ca), read(cmd.tls_key), read(cmd.tls_cert))


def _metadata(cmd: StreamCommand) -> tuple[tuple[str, str], ...]:
    if not cmd.auth:
        return ()
    if ":" not in cmd.auth:
        raise ValueError("--auth takes user:password")
    token = base64.b64encode(cmd.auth.encode()).decode()
    return (("x-ms-authentication", f"Basic {token}"),)


# Scaled pixels and what is sent: the encoded frame, with a video frame's own time.
Frames = Iterator[tuple[np.ndarray, bytes | Timed]]


def _encoded(cmd: StreamCommand, stream: int) -> tuple[Frames, int, int]:
    """The stream's frames (as scaled, and encoded), and the size they come out at."""
    raw = timed_frames_from(cmd.source, loop=cmd.loop, seed=stream)
    if cmd.max_frames:
        raw = itertools.islice(raw, cmd.max_frames)
    first = next(raw, None)
    if first is None:
        raise SourceError(f"{cmd.source}: no frames")
    width, height = cmd.node.output_size(first[0].shape[1], first[0].shape[0])
    frames = itertools.chain([first], raw)
    if cmd.source.startswith("synthetic:"):
        return _encode_once(cmd.node, (frame for frame, _ in frames)), width, height
    return _scaled_and_encoded(cmd.node, frames), width, height


def _scaled_and_encoded(
    node: ImageNode, frames: Iterator[tuple[np.ndarray, Fraction | None]]
) -> Frames:
    for frame, seconds in frames:
        scaled = node.scale_frame(frame)
        data = node.encode_scaled(scaled)
        yield scaled, data if seconds is None else Timed(data, seconds)


def _encode_once(node: ImageNode, frames: Iterator[np.ndarray]) -> Frames:
    """Synthetic sources replay the same arrays: scale and encode each one once."""
    cache: dict[int, tuple[np.ndarray, bytes | Timed]] = {}
    for frame in frames:
        pair = cache.get(id(frame))  # the source keeps every array alive, so ids are stable
        if pair is None:
            scaled = node.scale_frame(frame)
            pair = cache[id(frame)] = scaled, node.encode_scaled(scaled)
        yield pair


class _Report:
    """Progress, JSON lines and the summary, shared by every stream."""

    def __init__(self, cmd: StreamCommand, out: IO[str] | None) -> None:
        self.cmd, self.out = cmd, out
        self.results: list[StreamResult] = []
        self.empty = 0
        self.started = time.monotonic()

    def on_ack(self, stream: int, annotator: Annotator | None = None) -> Any:
        def record(seq: int, sample: Any) -> None:
            if annotator is not None:
                annotator.on_ack(stream, seq, sample)
            if sample is None or not sample.inferences:
                self.empty += 1
            if self.out is not None:
                line = sample_to_dict(sample) if sample is not None else {}
                line.setdefault("timestamp", 0)
                if self.cmd.streams > 1:
                    line["stream"] = stream
                self.out.write(json.dumps(line, separators=(",", ":")) + "\n")

        return record

    def progress_line(self) -> str:
        acked = sum(r.acked for r in self.results)
        sent = sum(r.sent for r in self.results)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return f"\rframes {acked}  {acked / elapsed:7.1f} fps  in flight {sent - acked:3d}"

    def summary(self, errors: list[str]) -> dict[str, Any]:
        sent = sum(r.sent for r in self.results)
        acked = sum(r.acked for r in self.results)
        elapsed = time.monotonic() - self.started
        lat = sorted(t for r in self.results for t in r.latencies_s)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return (
                round(statistics.quantiles(lat, n=100)[int(p) - 1] * 1e3, 3)
                if len(lat) > 1
                else round(lat[0] * 1e3, 3)
            )

        return {
            "target": self.cmd.target,
            "streams": self.cmd.streams,
            "sent": sent,
            "acked": acked,
            "without_inference": self.empty,
            "errors": errors,
            "seconds": round(elapsed, 3),
            "fps": round(acked / elapsed, 1) if elapsed else 0.0,
            "ack_latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99)},
            "reconnects": sum(r.reconnects for r in self.results),
            "resent": sum(r.resent for r in self.results),
            "instances": self.instances(),
            "per_stream": [_stream_summary(k, r) for k, r in enumerate(self.results)],
        }

    def instances(self) -> dict[str, int]:
        """Calls per serving instance (named by the server's x-fastext-instance)."""
        calls: dict[str, int] = {}
        for result in self.results:
            for call in result.calls:
                if call.instance:
                    calls[call.instance] = calls.get(call.instance, 0) + 1
        return dict(sorted(calls.items()))


def _stream_summary(k: int, result: StreamResult) -> dict[str, Any]:
    return {
        "stream": k,
        "sent": result.sent,
        "acked": result.acked,
        "reconnects": result.reconnects,
        "resent": result.resent,
        "calls": [
            {"instance": c.instance, "acked": c.acked, "resent": c.resent, "status": c.status}
            for c in result.calls
        ],
    }


def _served_by(result: StreamResult) -> str:
    """``a`` or ``a -> b`` (the instances of a stream's calls, in order), "?" where unnamed."""
    names = [c.instance or "?" for c in result.calls if c.instance or c.acked]
    return " -> ".join(names) if names else "?"


async def _run(cmd: StreamCommand, report: _Report, annotator: Annotator | None) -> list[str]:
    credentials, metadata = _credentials(cmd), _metadata(cmd)
    sessions = []
    for k in range(cmd.streams):
        pairs, width, height = _encoded(cmd, k)
        frames = annotator.frames(k, pairs) if annotator else (data for _, data in pairs)
        window = max(1, cmd.window)
        slot = 0
        if cmd.shm and cmd.node.encoding != VF.RAW:  # encoded images vary in size
            slot = max(1, cmd.shm_size_mb * 1024 * 1024 // window)
        opts = StreamOptions(
            target=cmd.target,
            width=width,
            height=height,
            encoding=cmd.node.encoding,
            pixel_format=cmd.node.pixel_format if cmd.node.encoding == VF.RAW else VF.NONE,
            shm=cmd.shm,
            shm_slot_bytes=slot,
            window=window,
            fps=cmd.fps or 0.0,
            extension_configuration=cmd.ext_config,
            graph_instance=cmd.graph_instance if cmd.streams == 1 else f"{cmd.graph_instance}-{k}",
            ack_timeout_s=cmd.ack_timeout_s,
            metadata=metadata,
            credentials=credentials,
            tls_server_name=cmd.tls_server_name,
            on_ack=report.on_ack(k, annotator),
            on_send=annotator.on_send(k) if annotator else None,
            send_gate=annotator.send_gate(k) if annotator else None,
            reconnect=cmd.reconnect,
        )
        result = StreamResult()
        report.results.append(result)
        sessions.append(stream_frames(opts, frames, result))
    show = sys.stderr.isatty() if cmd.progress is None else cmd.progress
    ticker = asyncio.create_task(_progress(report)) if show else None
    outcomes = await asyncio.gather(*sessions, return_exceptions=True)
    if ticker is not None:
        ticker.cancel()
        sys.stderr.write(report.progress_line() + "\n")
    errors = []
    for k, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            prefix = f"stream {k}: " if cmd.streams > 1 else ""
            errors.append(
                prefix
                + (
                    str(outcome)
                    if isinstance(outcome, StreamError | SourceError | ShmSpaceError)
                    else repr(outcome)
                )
            )
    return errors


async def _progress(report: _Report) -> None:
    while True:
        await asyncio.sleep(0.5)
        sys.stderr.write(report.progress_line())
        sys.stderr.flush()


def _playback_fps(cmd: StreamCommand) -> float:
    """``--fps``; unset, as fast as acks allow, except with a live view: there the source
    plays in real time, so what is watched moves as it would (a view of a run at thousands
    of frames/s would show a random sample of them)."""
    if cmd.fps is not None:
        return cmd.fps
    return (frame_rate(cmd.source) or 30.0) if cmd.view else 0.0


def run_stream_command(cmd: StreamCommand) -> int:
    """Run every stream to its end; print the summary; 0 when every frame was acked."""
    cmd = dataclasses.replace(cmd, fps=_playback_fps(cmd))
    # Each frame is a fresh message-sized allocation here too: with glibc's defaults
    # ~150 page faults per 1080p JPEG frame (`/usr/bin/time` on `fastext stream`, 1,000
    # frames: 178k faults vs 24k with a 64 MiB version of this setting).
    keep_freed_memory(KEEP_MB)
    out = open(cmd.output, "w", encoding="utf-8") if cmd.output else None  # noqa: SIM115
    report = _Report(cmd, out)
    view = None
    try:
        if cmd.view:
            view = LiveView(
                *parse_address(cmd.view),
                streams=cmd.streams,
                title=f"fastext stream {cmd.source} → {cmd.target}",
            )
            print(f"live view: {view.url} (until the run ends)", file=sys.stderr, flush=True)
        errors = asyncio.run(_main(cmd, report, view))
    except (SourceError, SinkError, ViewError, ValueError, OSError) as exc:
        errors = [str(exc)]
    finally:
        if out is not None:
            out.close()
        if view is not None:
            view.close()
    summary = report.summary(errors)
    lat = summary["ack_latency_ms"]
    print(
        f"sent {summary['sent']}, acked {summary['acked']} "
        f"({summary['without_inference']} without inference), {summary['fps']} frames/s, "
        f"ack latency p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms"
    )
    if summary["reconnects"] or cmd.reconnect:
        print(f"reconnects {summary['reconnects']}, frames resent {summary['resent']}")
    if summary["instances"]:
        print(
            "calls per instance: "
            + ", ".join(f"{name} {n}" for name, n in summary["instances"].items())
        )
        if len(report.results) <= _STREAMS_LISTED:
            for k, result in enumerate(report.results):
                print(f"stream {k}: {_served_by(result)}")
    for error in errors:
        print(f"fastext stream: error: {error}", file=sys.stderr)
    if cmd.summary_json:
        with open(cmd.summary_json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1)
    return 0 if not errors and summary["sent"] == summary["acked"] else 1


_STREAMS_LISTED = 32  # more streams: the per-stream lines are in --summary-json only


async def _main(cmd: StreamCommand, report: _Report, view: LiveView | None) -> list[str]:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:  # SIGTERM unwinds like Ctrl-C: shared-memory files are unlinked
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    annotator = None
    if cmd.annotate or view is not None:
        video = Path(cmd.annotate).suffix.lower() in VIDEO_SUFFIXES
        rate = (frame_rate(cmd.source) if video else None) or cmd.fps or 30.0
        annotator = Annotator(
            cmd.streams, window=cmd.window, annotate=cmd.annotate, rate=rate, view=view
        )
        annotator.start()
    try:
        errors = await _run(cmd, report, annotator)
    except asyncio.CancelledError:
        errors = ["interrupted"]
    finally:  # also when interrupted: what was acked is written, a video file is finished
        drawing = await annotator.finish() if annotator is not None else []
    return errors + drawing
