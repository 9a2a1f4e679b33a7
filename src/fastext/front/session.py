"""One ``ProcessMediaStream`` call: handshake, batching, in-order acks, cleanup.

A *reader* task validates each sample, turns it into a payload (a checked
reference into shared memory, or the embedded bytes) and groups payloads into
batches that it submits to the session's lane.  The backend hands each batch's
results back through :meth:`Session._deliver` on the event loop; the call's own
task is the *writer*: it writes one ack per sample, in order, as soon as the
oldest batch's results are in.  The writer wakes once per delivery that
completes the oldest batch, not once per frame, and no future is made per batch:
this is the front's hot path.  At most ``max_inflight`` samples are read ahead of
their acks: past that the reader stops reading, and gRPC flow control pushes
back on the client.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastext._proto.extension_pb2 import MediaSample, MediaStreamMessage
from fastext.backend.execute import FrameFormat
from fastext.backend.pipeline import Backend, Lane, LaneSpec, Payload, Result
from fastext.backend.shm import ClientMemory, ShmRef
from fastext.config import Config
from fastext.contract.wire import (
    CONTENT_BYTES,
    CONTENT_REFERENCE,
    encode_ack,
    encode_acks,
    parse_sample,
)
from fastext.errors import DescriptorError, FastextError, ProtocolViolation, SampleError
from fastext.front.protocol import (
    StreamSpec,
    Unparsed,
    descriptor_reply,
    parse_request,
    validate_descriptor,
)
from fastext.metrics import MetricsSink, NullMetrics
from fastext.outcomes import Outcome, Unprocessed
from fastext.processors import from_configuration

__all__ = ["Session", "SessionEnd"]

log = logging.getLogger("fastext.front.session")
Write = Callable[[bytes], Awaitable[None]]  # one serialized MediaStreamMessage
Requests = AsyncIterator[bytes]  # the call's messages as they came (raw bytes)
_LOUD = 10  # frames per session and outcome logged at WARNING/ERROR; the rest at DEBUG
_CLEANUP_WAIT_S = 30.0  # bound on waiting for running batches before unmapping
DROPPED = Unprocessed(Outcome.DROPPED, "the stream's window was full (overload policy drop)")
_LABELS = tuple(kind.label for kind in Outcome)  # fastext_frames_total's, by Outcome code
_STATUS_CHARS = 512  # a status quotes client input: keep it far below gRPC's 8 KiB metadata cap


class SessionEnd(FastextError):
    """End the call with a gRPC status (``code`` is a ``grpc.StatusCode`` name)."""

    def __init__(self, code: str, message: str) -> None:
        if len(message) > _STATUS_CHARS:
            message = (
                f"{message[:_STATUS_CHARS]}... ({len(message) - _STATUS_CHARS} more characters)"
            )
        super().__init__(message)
        self.code = code


#: One sample read and not yet acked, a plain tuple (one is made per frame, and a tuple is
#: the cheapest object to make): (sequence number, timestamp, how and why it gets no
#: inference (invalid, dropped) or None when its result comes from the lane, whether it
#: holds a window permit (a dropped frame does not), time.monotonic() when read (0.0 with
#: metrics off)).
_Sample = tuple[int, int, Unprocessed | None, bool, float]
#: _Sample's fields by position, for reading one field (module ints: a read costs what a
#: literal index does, where a NamedTuple's attribute costs a descriptor call per frame).
#: Made and unpacked whole in this field order.
_SEQ, _TIMESTAMP, _OUTCOME, _PERMIT, _ARRIVED = range(5)


#: One batch not yet acked, a two-item list (made per frame at --batch-size 1; a list is
#: the cheapest mutable object to make): [its samples, its results (one per sample without
#: an error) or None until the lane delivers them].
_Batch = list[Any]
#: _Batch's items by position.
_SAMPLES, _RESULTS = 0, 1
#: ShmRef(offset, size) without the Python-level __new__ a NamedTuple call runs.
_shm_ref: Callable[[tuple[int, int]], ShmRef] = functools.partial(tuple.__new__, ShmRef)


class Session:
    """The state of one call; :meth:`serve` runs it to the end."""

    def __init__(
        self, config: Config, backend: Backend, peer: str = "", metrics: MetricsSink | None = None
    ) -> None:
        self.config = config
        self._metrics = metrics if metrics is not None else NullMetrics()
        self.peer = peer
        self._backend = backend
        self._loop = asyncio.get_running_loop()
        self._max_inflight = config.max_inflight
        self._batch_size = config.batch_size
        self._inflight = 0  # window permits held: samples read and not yet acked
        self._window: asyncio.Future[None] | None = None  # the reader waits for a permit
        self._order: deque[_Batch] = deque()  # every batch not yet acked, oldest first
        self._running: dict[int, _Batch] = {}  # submitted to the lane, results not in
        self._tokens = itertools.count(1)
        self._pending: list[_Sample] = []
        self._payloads: list[Payload] = []
        self._wake: asyncio.Future[None] | None = None  # the writer waits for results
        self._idle: asyncio.Future[None] | None = None  # cleanup waits for running batches
        self._input_done = False
        self._client_done = False  # the client half-closed: every message was read
        self._closed = False  # cleanup has begun: nothing more goes to the lane
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._memory: ClientMemory | None = None
        self._spec: StreamSpec | None = None
        self._lane: Lane | None = None
        self._processor_name = "-"
        self._raw = False
        self._frame_bytes = 0
        # The largest offset at which a RAW frame fits in the client's file (-1: no RAW
        # frames by shared memory in this session): the per-frame bounds check is one compare.
        self._last_offset = -1
        self._out_seq = 0
        self._last_in_seq = 0
        self._received = 0  # messages read from the call: a message's position in it
        self._draining = False
        self.frames = 0
        self.acked = 0
        self.invalid = 0  # bad samples: the client's fault
        self.dropped = 0
        self.failed = 0  # processing errors: the server's fault (its processor)
        self.lost = 0  # frames whose worker died every time they ran
        self.stopped = 0  # frames the server stopped before processing

    # -- the call -------------------------------------------------------------

    async def serve(self, requests: Requests, write: Write) -> None:
        """Run the session; raises :class:`SessionEnd` when it must end with a status."""
        started = time.monotonic()
        reason = "client closed the stream"
        counted = -1  # shared-memory bytes reported at stream start; -1: not started
        try:
            first = await anext(requests, None)
            if first is None:
                reason = "client closed before sending a descriptor"
                return
            self._received = 1
            spec = self._handshake(parse_request(first))
            reply = descriptor_reply(self._next_seq(), self._last_in_seq, spec)
            await write(reply.SerializeToString())
            self._metrics.stream_started(spec.shm_length)
            counted = spec.shm_length
            log.info(
                "session start peer=%s stream=%s %s processor=%s",
                self.peer,
                spec.stream_name,
                spec.describe(),
                self._processor_name,
                extra={
                    "event": "session_start",
                    "peer": self.peer,
                    "stream": spec.stream_name,
                    "format": spec.describe(),
                    "transfer": "shared_memory" if spec.shm_name else "embedded",
                    "processor": self._processor_name,
                },
            )
            reason = await self._run(requests, write)
        except SessionEnd as exc:
            reason = f"{exc.code}: {exc}"
            raise
        except asyncio.CancelledError:
            reason = "call cancelled (client went away or server stopped)"
            raise
        finally:
            await self._cleanup()
            if self._inflight:  # the call ended first (client gone, violation, stop)
                self._metrics.frames_unacked(self._inflight)
                self._inflight = 0
            if counted >= 0:
                self._metrics.stream_ended(counted)
            if self._spec is not None:
                seconds = time.monotonic() - started
                log.info(
                    "session end peer=%s stream=%s frames=%d invalid=%d dropped=%d "
                    "error=%d lost=%d shutdown=%d seconds=%.1f reason=%s",
                    self.peer,
                    self._spec.stream_name,
                    self.frames,
                    self.invalid,
                    self.dropped,
                    self.failed,
                    self.lost,
                    self.stopped,
                    seconds,
                    reason,
                    extra={
                        "event": "session_end",
                        "peer": self.peer,
                        "stream": self._spec.stream_name,
                        "frames": self.frames,
                        "invalid": self.invalid,
                        "dropped": self.dropped,
                        "error": self.failed,
                        "lost": self.lost,
                        "shutdown": self.stopped,
                        "seconds": round(seconds, 3),
                        "reason": reason,
                    },
                )

    @property
    def unacknowledged(self) -> int:
        """Samples read whose acks have not been written yet."""
        return self.frames - self.acked

    def drain(self) -> None:
        """Stop reading new samples; in-flight ones are still processed and acknowledged."""
        self._draining = True
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    def _handshake(self, first: MediaStreamMessage | Unparsed) -> StreamSpec:
        if isinstance(first, Unparsed):
            raise SessionEnd("INVALID_ARGUMENT", first.describe(1))
        try:
            spec = validate_descriptor(first)
            name, params = from_configuration(spec.extension_configuration, self.config.processor)
            if spec.shm_name is not None:
                self._memory = ClientMemory(spec.shm_name, spec.shm_length)
            fmt = FrameFormat(
                spec.encoding, spec.pixel_format, spec.width, spec.height, spec.stride
            )
            self._lane = self._backend.open(
                LaneSpec(fmt, name, params, spec.shm_name, spec.shm_length),
                self._memory,
                self._deliver,
            )
        except DescriptorError as exc:
            raise SessionEnd(exc.code, str(exc)) from None
        except ValueError as exc:
            raise SessionEnd("INVALID_ARGUMENT", str(exc)) from None
        self._spec = spec
        self._raw, self._frame_bytes = spec.raw, spec.frame_bytes  # read per frame
        if self._memory is not None and spec.raw:
            self._last_offset = self._memory.length - spec.frame_bytes
        self._processor_name = name
        self._last_in_seq = first.sequence_number
        return spec

    async def _run(self, requests: Requests, write: Write) -> str:
        reader = self._reader = asyncio.create_task(self._read(requests))
        reader.add_done_callback(self._input_ended)
        try:
            await self._write_acks(write)  # returns once the reader is done and all is acked
        finally:
            reader.cancel()
        if reader.cancelled() or (self._draining and not self._client_done):
            # (The second: a drain that began before the reader ran, during the handshake.)
            raise SessionEnd(
                "UNAVAILABLE",
                "server is shutting down; every frame "
                "received was acknowledged, reconnect to continue",
            )
        error = reader.exception()
        if isinstance(error, ProtocolViolation):
            raise SessionEnd(error.code, str(error))
        if error is not None:
            raise error
        return "client closed the stream"

    # -- reading ----------------------------------------------------------------

    async def _read(self, requests: Requests) -> None:
        dropping = self.config.overload == "drop"
        while not self._draining:
            if self._inflight >= self._max_inflight and not dropping:
                await self._window_open()  # window full: stop reading (back-pressure)
            message = await anext(requests, None)
            if message is None:
                self._client_done = True
                return
            self._received += 1
            # Overload policy drop: never stop reading; a frame that finds the window
            # full is acknowledged (after the frames before it) without inference.
            self._accept(message, dropping and self._inflight >= self._max_inflight)

    async def _window_open(self) -> None:
        while self._inflight >= self._max_inflight:
            self._window = self._loop.create_future()
            try:
                await self._window
            finally:
                self._window = None

    def _input_ended(self, reader: asyncio.Task[None]) -> None:
        """The reader is done (stream end, drain, violation): ack what was read, then end."""
        self._dispatch()
        self._input_done = True
        self._wake_writer()

    def _accept(self, data: bytes, dropped: bool = False) -> None:
        parsed = parse_sample(data)  # native; None: not the canonical sample
        if parsed is None:
            seq, timestamp, kind, a, b, data = self._parse_other(data)
        else:
            seq, timestamp, kind, a, b = parsed
        if seq <= self._last_in_seq:
            raise ProtocolViolation(
                "INVALID_ARGUMENT",
                f"sample sequence_number {seq} (message "
                f"{self._received} of this call) does not increase (the "
                f"previous message was {self._last_in_seq})",
            )
        self._last_in_seq = seq
        self.frames += 1
        metrics = self._metrics
        now = time.monotonic() if metrics.enabled else 0.0
        if dropped:
            self.dropped += 1
            self._pending.append((seq, timestamp, DROPPED, False, now))
            self._dispatch()  # ack it as soon as the frames before it are acked
            return
        self._inflight += 1
        need = self._frame_bytes
        if kind == CONTENT_REFERENCE and a <= self._last_offset and b >= need:
            # A RAW frame inside the client's file: the common shared-memory case, checked
            # here rather than through _payload and ClientMemory.frame (per frame).
            payload: Payload | None = _shm_ref((a, need))
            error = None
        else:
            try:
                payload = self._payload(kind, a, b, data)
                error = None
            except SampleError as exc:
                payload, error = None, Unprocessed(Outcome.INVALID, str(exc))
        sample = (seq, timestamp, error, True, now)
        if metrics.enabled:
            metrics.frame_accepted()
        if self._batch_size == 1 and payload is not None and not self._pending:
            # --batch-size 1 (the default): each frame is its own batch, submitted now
            # (what _send does, inlined: this runs per frame).
            if self._closed:
                return
            batch: _Batch = [[sample], None]
            self._order.append(batch)
            token = next(self._tokens)
            self._running[token] = batch
            self._lane.submit(token, [payload])  # type: ignore[union-attr]
            return
        if payload is not None:
            self._payloads.append(payload)
        self._pending.append(sample)
        if len(self._pending) >= self._batch_size:
            self._dispatch()
        elif self._timer is None:
            self._timer = self._loop.call_later(self.config.batch_delay_ms / 1000.0, self._dispatch)

    def _parse_other(self, data: bytes) -> tuple[int, int, int, int, int, bytes]:
        """A message the native parser left to protobuf: a sample with more in it
        (upstream inferences, unknown fields), a protocol violation, or bad bytes."""
        message = parse_request(data)
        if isinstance(message, Unparsed):
            raise ProtocolViolation("INVALID_ARGUMENT", message.describe(self._received))
        kind = message.WhichOneof("payload")
        seq = message.sequence_number
        if kind != "media_sample":
            where = f"message {self._received} of this call (sequence_number {seq})"
            if kind == "media_stream_descriptor":
                raise ProtocolViolation(
                    "INVALID_ARGUMENT",
                    f"{where} is a second media_stream_descriptor; a stream has exactly one, first",
                )
            raise ProtocolViolation(
                "INVALID_ARGUMENT", f"{where} carries neither a descriptor nor a sample"
            )
        sample = message.media_sample
        content = sample.WhichOneof("content")
        if content == "content_bytes":
            frame = sample.content_bytes.bytes
            return seq, sample.timestamp, CONTENT_BYTES, 0, len(frame), frame
        if content == "content_reference":
            ref = sample.content_reference
            return (
                seq,
                sample.timestamp,
                CONTENT_REFERENCE,
                ref.address_offset,
                ref.length_bytes,
                b"",
            )
        return seq, sample.timestamp, 0, 0, 0, b""

    def _payload(self, kind: int, a: int, b: int, data: bytes) -> Payload:
        """The frame a sample carries: embedded bytes ``data[a:a + b]`` (kept as a
        view: no copy), or a checked region of shared memory (``a`` offset, ``b`` length)."""
        if kind == CONTENT_REFERENCE:
            if self._memory is None:
                raise SampleError("sample refers to shared memory, but the descriptor set up none")
            if self._raw:
                return self._memory.frame(a, b, self._frame_bytes)
            return self._memory.content(a, b)
        if kind == CONTENT_BYTES:
            if self._raw:
                need = self._frame_bytes
                if b < need:
                    spec = self._spec
                    assert spec is not None
                    raise SampleError(
                        f"embedded frame has {b} bytes; a "
                        f"{spec.width}x{spec.height} frame needs {need}"
                    )
                return memoryview(data)[a : a + need]
            if not b:
                raise SampleError("embedded image is empty")
            return memoryview(data)[a : a + b]
        raise SampleError("sample carries no content")

    def _dispatch(self) -> None:
        """Hand the pending samples to the lane as one batch (or none, if none has a payload)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        samples, payloads = self._pending, self._payloads
        self._pending, self._payloads = [], []
        self._send(samples, payloads)

    def _send(self, samples: list[_Sample], payloads: list[Payload]) -> None:
        """Queue a batch for its acks and submit its payloads to the lane (if it has any)."""
        if self._closed:
            return
        batch: _Batch = [samples, None]
        self._order.append(batch)
        if not payloads:
            batch[_RESULTS] = ()
            self._wake_writer()
            return
        token = next(self._tokens)
        self._running[token] = batch
        self._lane.submit(token, payloads)  # type: ignore[union-attr]  # set by the handshake

    def _deliver(self, token: int, results: Sequence[Result]) -> None:
        """A batch's results, from the backend (on the event loop)."""
        batch = self._running.pop(token, None)
        if batch is None:
            return  # not ours any more: the session ended without waiting for it
        batch[_RESULTS] = results
        if self._idle is not None and not self._running and not self._idle.done():
            self._idle.set_result(None)
        if self._order[0] is batch and (wake := self._wake) is not None and not wake.done():
            wake.set_result(None)  # the oldest batch is complete: the writer can go on

    # -- writing ----------------------------------------------------------------

    def _wake_writer(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _write_acks(self, write: Write) -> None:
        order = self._order
        metrics = self._metrics
        while True:
            while order and (results := order[0][_RESULTS]) is not None:
                samples = order.popleft()[_SAMPLES]
                if len(samples) == 1 and samples[0][_OUTCOME] is None and type(results[0]) is bytes:
                    # One frame with its serialized result (--batch-size 1, workers): the
                    # common case, written here without a coroutine per batch.
                    seq, timestamp, _, _, arrived = samples[0]
                    inferences: bytes = results[0]
                    self._out_seq += 1
                    await write(encode_ack(self._out_seq, seq, timestamp, inferences))
                    self.acked += 1
                    if metrics.enabled:
                        metrics.frame_acked(
                            "inferred" if inferences else "empty", time.monotonic() - arrived, True
                        )
                    self._inflight -= 1  # _release_permit, inlined (per frame)
                    if (window := self._window) is not None and not window.done():
                        window.set_result(None)
                else:
                    await self._write_batch(samples, results, write)
            if self._input_done and not order:
                return
            self._wake = self._loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None

    async def _write_batch(
        self, samples: list[_Sample], outcomes: Sequence[Result], write: Write
    ) -> None:
        results = iter(outcomes)
        acks: list[tuple[int, int, bytes]] = []
        kinds: list[str] = []
        for sample in samples:
            seq, timestamp, error, _, _ = sample
            outcome = error if error is not None else next(results)
            if isinstance(outcome, bytes):  # serialized inferences; b"": none
                acks.append((seq, timestamp, outcome))
                kinds.append("inferred" if outcome else "empty")
                continue
            if isinstance(outcome, Unprocessed):
                self._unprocessed(seq, outcome)
                kinds.append(_LABELS[outcome.kind])
            else:  # inference objects (a backend that did not serialize them)
                inferences = MediaSample(inferences=outcome).SerializeToString()
                acks.append((seq, timestamp, inferences))
                kinds.append("inferred" if inferences else "empty")
                continue
            acks.append((seq, timestamp, b""))
        # One native call numbers and encodes the batch's acks.
        messages = encode_acks(self._out_seq + 1, acks)
        self._out_seq += len(messages)
        metrics = self._metrics
        for (_, _, _, permit, arrived), message, kind in zip(samples, messages, kinds, strict=True):
            await write(message)
            self.acked += 1
            if metrics.enabled:
                metrics.frame_acked(kind, time.monotonic() - arrived, permit)
            if permit:
                self._release_permit()

    def _release_permit(self) -> None:
        self._inflight -= 1
        window = self._window
        if window is not None and not window.done():
            window.set_result(None)

    def _unprocessed(self, seq: int, outcome: Unprocessed) -> None:
        """Count a frame acked without inference, and log it as its kind deserves: a bad
        sample (the client's) at WARNING, a processing error or a lost frame (the
        server's) at ERROR, each the first ``_LOUD`` times per session and then at
        DEBUG; the server stopping at WARNING once per session; a drop not at all (the
        session's end line and the metrics count them)."""
        kind = outcome.kind
        if kind == Outcome.INVALID:
            self.invalid += 1
            count, loud = self.invalid, logging.WARNING
        elif kind == Outcome.ERROR:
            self.failed += 1
            count, loud = self.failed, logging.ERROR
        elif kind == Outcome.LOST:
            self.lost += 1
            count, loud = self.lost, logging.ERROR
        elif kind == Outcome.SHUTDOWN:  # one cause for them all: one line per session
            self.stopped += 1
            if self.stopped > 1:
                return
            count, loud = 1, logging.WARNING
        else:  # DROPPED: counted as it was read
            return
        stream = self._spec.stream_name if self._spec else "?"
        label = _LABELS[kind]
        log.log(
            loud if count <= _LOUD else logging.DEBUG,
            "peer=%s stream=%s: sample %d acknowledged without inference (%s): %s",
            self.peer,
            stream,
            seq,
            label,
            outcome.reason,
            extra={
                "event": "frame_unprocessed",
                "peer": self.peer,
                "stream": stream,
                "sequence_number": seq,
                "outcome": label,
                "reason": outcome.reason,
            },
        )
        if count == _LOUD:
            log.log(
                loud,
                "peer=%s stream=%s: further samples acknowledged without inference "
                "(%s) are logged at DEBUG",
                self.peer,
                stream,
                label,
            )

    def _next_seq(self) -> int:
        self._out_seq += 1
        return self._out_seq

    # -- the end ----------------------------------------------------------------

    async def _cleanup(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        self._payloads.clear()
        cancelled = False
        if self._running:  # frames still being read from the mapping: let them finish first
            # Bounded, and shielded from further cancels: unmapping (or telling the workers
            # to unmap) under a running batch is not an option, and skipping the close would
            # leak the client file's descriptor and the workers' mappings.
            self._idle = idle = self._loop.create_future()
            deadline = self._loop.time() + _CLEANUP_WAIT_S
            while not idle.done():
                try:
                    await asyncio.wait_for(
                        asyncio.shield(idle), max(0.0, deadline - self._loop.time())
                    )
                except TimeoutError:
                    log.error(
                        "%d batches still running after %.0f s at session end",
                        len(self._running),
                        _CLEANUP_WAIT_S,
                    )
                    break
                except asyncio.CancelledError:
                    cancelled = True  # cancelled again: finish the cleanup, then go
        self._running.clear()
        self._order.clear()
        if self._lane is not None:
            self._lane.close()
        if self._memory is not None:
            self._memory.close()
        if cancelled:
            raise asyncio.CancelledError
