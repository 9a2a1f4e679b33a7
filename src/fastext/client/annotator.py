"""Acknowledged frames drawn off the event loop, for ``--annotate`` and ``--view``.

Why this shape:

- The event loop only files each ack (a dict pop and a list append under a lock).
  Drawing, PNG / H.264 encoding and the view's JPEGs run on at most two drawing
  threads of their own (Pillow's encoders, FFmpeg and libjpeg-turbo release the GIL
  while they work).
- ``--annotate`` must hold every acknowledged frame, so its frames are never
  dropped.  When drawing falls behind, the *sender* waits: a stream has at most
  ``window + BACKLOG`` frames between being sent and being written (``send_gate``),
  while its ack reader goes on reading.  So acks are never held back, their
  latencies stay true, and memory stays bounded (those frames' pixels); the run
  goes at the drawing's pace, the price of a file with every frame.  An unbounded
  spool would let the server's pace show but grow without limit (a 640x480 frame
  is 0.9 MB; fastext acks thousands a second).
- The live view alone drops frames: a stream keeps only its newest acknowledged
  frame for drawing, drawn at most ``VIEW_FPS`` times a second.
- A video needs its frames in order, and acks may come in any order (the contract
  allows it), so annotated frames are released in the order they were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from fastext._proto import extension_pb2, inferencing_pb2
from fastext.client.draw import draw_frame
from fastext.client.sinks import FrameSink, open_sink
from fastext.client.stream import Timed
from fastext.client.view import LiveView

__all__ = ["BACKLOG", "VIEW_FPS", "Annotator"]

log = logging.getLogger("fastext.client")

#: Frames a stream may have acknowledged but not yet written, beyond its window.
BACKLOG = 16
#: The live view's frames per stream and second, at most.
VIEW_FPS = 25.0
#: The most drawing threads (the machine's other cores run the client and the server).
PAINTERS = 2

Inference = inferencing_pb2.Inference
_Sent = bytes | Timed  # a frame as the stream sends it


@dataclass
class _Job:
    stream: int
    index: int  # the frame's place in the source (names its PNG)
    timestamp: int
    rgb: np.ndarray
    inferences: list[Inference]
    keep: bool  # for the --annotate file (never dropped); else for the view only


@dataclass
class _StreamState:
    """Loop-side bookkeeping of one stream (touched only on the event loop)."""

    last_rgb: np.ndarray | None = None  # the frame the source yielded last
    sent: int = 0
    held: dict[int, tuple[int, int, np.ndarray, float]] = field(default_factory=dict)  # seq ->
    order: deque[int] = field(default_factory=deque)  # seqs sent, not yet released, oldest first
    acked: dict[int, _Job] = field(default_factory=dict)  # acked, waiting for an older frame
    credits: asyncio.Semaphore | None = None


class _Painter:
    """One drawing thread and its work: every kept frame, and the newest view frame per stream."""

    def __init__(self, owner: Annotator, name: str) -> None:
        self.owner = owner
        self.cond = threading.Condition()
        self.queue: deque[_Job] = deque()
        self.latest: dict[int, _Job] = {}
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def put(self, job: _Job) -> None:
        with self.cond:
            if job.keep:
                self.queue.append(job)
            else:
                self.latest[job.stream] = job  # an older one not yet drawn is dropped
            self.cond.notify()

    def _take(self) -> _Job | None:
        with self.cond:
            while True:
                if self.queue:
                    return self.queue.popleft()
                now = time.monotonic()
                due = [s for s in self.latest if self.owner.view_due(s) <= now]
                if due:
                    return self.latest.pop(due[0])
                if self.stopping:
                    return None  # view frames still waiting are not worth drawing now
                waits = [self.owner.view_due(s) - now for s in self.latest]
                self.cond.wait(max(min(waits, default=1.0), 0.001))

    def _run(self) -> None:
        while (job := self._take()) is not None:
            self.owner.paint(job)


class Annotator:
    """Draws acknowledged frames for an ``--annotate`` path and/or a live view."""

    def __init__(
        self,
        streams: int,
        *,
        window: int,
        annotate: str = "",
        rate: float = 30.0,
        view: LiveView | None = None,
        timescale: int = 90000,
        sinks: Sequence[FrameSink] | None = None,
    ) -> None:
        """``sinks`` (one per stream) replaces the files ``annotate`` would open."""
        self.view, self.timescale = view, timescale
        if sinks is None:
            sinks = (
                [open_sink(annotate, k, streams, rate) for k in range(streams)] if annotate else []
            )
        self.sinks = list(sinks)
        self._broken: dict[int, str] = {}  # stream -> why its sink failed
        self._states = [_StreamState() for _ in range(streams)]
        if self.sinks:
            for state in self._states:
                state.credits = asyncio.Semaphore(max(1, window) + BACKLOG)
        self._painters = [
            _Painter(self, f"fastext-draw-{i}") for i in range(min(streams, PAINTERS))
        ]
        self._view_due = [0.0] * streams
        self._loop: asyncio.AbstractEventLoop | None = None
        self.written = [0] * streams

    # ---- the event loop's side -------------------------------------------------------

    def start(self) -> None:
        """Start the drawing threads (on the running event loop)."""
        self._loop = asyncio.get_running_loop()
        for painter in self._painters:
            painter.thread.start()

    def frames(self, stream: int, pairs: Iterator[tuple[np.ndarray, _Sent]]) -> Iterator[_Sent]:
        """The encoded frames to send (as they come: bytes, or Timed); each one's pixels
        are kept until its ack."""
        state = self._states[stream]
        for rgb, data in pairs:
            state.last_rgb = rgb
            yield data

    def on_send(self, stream: int) -> Callable[[int, int], None]:
        state = self._states[stream]

        def sent(seq: int, timestamp: int) -> None:
            assert state.last_rgb is not None  # the sender sends what frames() yielded last
            state.held[seq] = (state.sent, timestamp, state.last_rgb, time.monotonic())
            if self.sinks:
                state.order.append(seq)
            state.sent += 1

        return sent

    def send_gate(self, stream: int) -> Callable[[], Awaitable[object]] | None:
        """Holds the sender while the stream has ``window + BACKLOG`` frames unwritten."""
        credits = self._states[stream].credits
        return credits.acquire if credits is not None else None

    def on_ack(self, stream: int, seq: int, sample: extension_pb2.MediaSample | None) -> None:
        state = self._states[stream]
        entry = state.held.pop(seq, None)
        if entry is None:
            return
        index, timestamp, rgb, sent_at = entry
        inferences = list(sample.inferences) if sample is not None else []
        if self.view is not None:
            types = [
                inf.WhichOneof("value") or Inference.InferenceType.Name(inf.type).lower()
                for inf in inferences
            ]
            self.view.figures[stream].record(time.monotonic() - sent_at, types)
        job = _Job(stream, index, timestamp, rgb, inferences, keep=bool(self.sinks))
        if not job.keep:
            self._painter(stream).put(job)
            return
        state.acked[seq] = job
        while state.order and state.order[0] in state.acked:
            self._painter(stream).put(state.acked.pop(state.order.popleft()))

    async def finish(self) -> list[str]:
        """Write what was acknowledged, stop the threads, close the files; the errors met."""
        for stream, state in enumerate(self._states):
            for seq in state.order:  # frames never acked are not written
                if seq in state.acked:
                    self._painter(stream).put(state.acked.pop(seq))
            state.order.clear()
            state.held.clear()
        for painter in self._painters:
            with painter.cond:
                painter.stopping = True
                painter.cond.notify()
        await asyncio.to_thread(self._join_and_close)
        return [f"--annotate, stream {k}: {why}" for k, why in sorted(self._broken.items())]

    def _painter(self, stream: int) -> _Painter:
        return self._painters[stream % len(self._painters)]

    # ---- the drawing threads' side ---------------------------------------------------

    def view_due(self, stream: int) -> float:
        return self._view_due[stream]

    def paint(self, job: _Job) -> None:
        """Draw one frame, write it if kept, show it if the view is due (a drawing thread)."""
        try:
            now = time.monotonic()
            show = self.view is not None and now >= self._view_due[job.stream]
            if job.keep and job.stream in self._broken and not show:
                return
            image = draw_frame(
                job.rgb,
                job.inferences,
                stream=job.stream,
                timestamp=job.timestamp,
                timescale=self.timescale,
            )
            if job.keep and job.stream not in self._broken:
                try:
                    self.sinks[job.stream].write(job.index, image)
                    self.written[job.stream] += 1
                except Exception as exc:  # noqa: BLE001 - disk full, codec error: say which
                    self._broken[job.stream] = f"cannot write frame {job.index} ({exc})"
                    log.error("annotated frames of stream %d: %s", job.stream, exc)
            if show and self.view is not None:
                import simplejpeg

                self._view_due[job.stream] = now + 1.0 / VIEW_FPS
                jpeg = simplejpeg.encode_jpeg(np.asarray(image), quality=80, colorspace="RGB")
                self.view.publish(job.stream, jpeg, image.size)
        except Exception:  # a bug in drawing must not stall the run: log it, go on
            log.exception("drawing frame %d of stream %d failed", job.index, job.stream)
        finally:
            if job.keep:
                self._release(job.stream)

    def _release(self, stream: int) -> None:
        credits, loop = self._states[stream].credits, self._loop
        if credits is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(credits.release)

    def _join_and_close(self) -> None:
        for painter in self._painters:
            if painter.thread.is_alive():
                painter.thread.join()
        for k, sink in enumerate(self.sinks):
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                self._broken.setdefault(k, f"cannot finish the file ({exc})")
