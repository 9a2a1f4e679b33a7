"""One ``ProcessMediaStream`` call: handshake, batching, in-order acks, cleanup.

Two tasks share a session: the *reader* validates each sample, turns it into a
payload (a zero-copy view of shared memory, or the embedded bytes) and groups
payloads into batches; the *writer* awaits each batch's outcomes in order and
writes one response per sample.  A sample is acknowledged only once its result
exists.  At most ``max_inflight`` samples are read ahead of their acks: past
that the reader stops reading, and gRPC flow control pushes back on the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastext._proto.extension_pb2 import MediaStreamMessage
from fastext.config import Config
from fastext.errors import DescriptorError, ProtocolViolation, SampleError
from fastext.execute import FrameFormat
from fastext.metrics import NullMetrics
from fastext.pipeline import Backend, Lane, LaneSpec, Payload, Result
from fastext.processors import from_configuration
from fastext.protocol import (
    StreamSpec,
    Unparsed,
    descriptor_reply,
    sample_response,
    serialized_sample_response,
    validate_descriptor,
)
from fastext.shm import ClientMemory

__all__ = ["Session", "SessionEnd"]

log = logging.getLogger("fastext.session")
Write = Callable[[MediaStreamMessage | bytes], Awaitable[None]]
Requests = AsyncIterator[MediaStreamMessage | Unparsed]  # see protocol.parse_request
_LOUD_INVALID = 10  # invalid samples per session logged at WARNING; the rest at DEBUG
_CLEANUP_WAIT_S = 30.0  # bound on waiting for running batches before unmapping
DROPPED = "dropped: the stream's window was full (overload policy drop)"
_STATUS_CHARS = 512  # a status quotes client input: keep it far below gRPC's 8 KiB metadata cap


class SessionEnd(Exception):
    """End the call with a gRPC status (``code`` is a ``grpc.StatusCode`` name)."""

    def __init__(self, code: str, message: str) -> None:
        if len(message) > _STATUS_CHARS:
            message = f"{message[:_STATUS_CHARS]}... ({len(message) - _STATUS_CHARS} more characters)"
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Sample:
    seq: int
    timestamp: int
    payload: Payload | None
    error: str | None
    holds_permit: bool = True  # a dropped frame is acked without taking a window permit
    arrived: float = 0.0  # time.monotonic() when read


@dataclass(slots=True)
class _Batch:
    samples: list[_Sample]
    future: asyncio.Future[list[Result]] | None  # None when no sample had a payload


class Session:
    """The state of one call; :meth:`serve` runs it to the end."""

    def __init__(self, config: Config, backend: Backend, peer: str = "",
                 metrics: NullMetrics | None = None) -> None:
        self.config = config
        self._metrics = metrics if metrics is not None else NullMetrics()
        self.peer = peer
        self._backend = backend
        self._window = asyncio.Semaphore(config.max_inflight)
        self._queue: asyncio.Queue[_Batch | None] = asyncio.Queue()
        self._pending: list[_Sample] = []
        self._running: set[asyncio.Future[list[Result]]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._memory: ClientMemory | None = None
        self._spec: StreamSpec | None = None
        self._lane: Lane | None = None
        self._processor_name = "-"
        self._out_seq = 0
        self._unacked = 0  # accepted frames (counted in flight) not yet acknowledged
        self._last_in_seq = 0
        self._received = 0  # messages read from the call: a message's position in it
        self._draining = False
        self.frames = 0
        self.acked = 0
        self.invalid = 0
        self.dropped = 0

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
            spec = self._handshake(first)
            await write(descriptor_reply(self._next_seq(), self._last_in_seq, spec))
            self._metrics.stream_started(spec.shm_length)
            counted = spec.shm_length
            log.info("session start peer=%s stream=%s %s processor=%s", self.peer,
                     spec.stream_name, spec.describe(), self._processor_name,
                     extra={"event": "session_start", "peer": self.peer,
                            "stream": spec.stream_name, "format": spec.describe(),
                            "transfer": "shared_memory" if spec.shm_name else "embedded",
                            "processor": self._processor_name})
            reason = await self._run(requests, write)
        except SessionEnd as exc:
            reason = f"{exc.code}: {exc}"
            raise
        except asyncio.CancelledError:
            reason = "call cancelled (client went away or server stopped)"
            raise
        finally:
            await self._cleanup()
            if self._unacked:  # the call ended first (client gone, violation, stop)
                self._metrics.frames_unacked(self._unacked)
                self._unacked = 0
            if counted >= 0:
                self._metrics.stream_ended(counted)
            if self._spec is not None:
                seconds = time.monotonic() - started
                log.info("session end peer=%s stream=%s frames=%d invalid=%d dropped=%d "
                         "seconds=%.1f reason=%s", self.peer, self._spec.stream_name, self.frames,
                         self.invalid, self.dropped, seconds, reason,
                         extra={"event": "session_end", "peer": self.peer,
                                "stream": self._spec.stream_name, "frames": self.frames,
                                "invalid": self.invalid, "dropped": self.dropped,
                                "seconds": round(seconds, 3), "reason": reason})

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
            fmt = FrameFormat(spec.encoding, spec.pixel_format, spec.width, spec.height, spec.stride)
            self._lane = self._backend.open(
                LaneSpec(fmt, name, params, spec.shm_name, spec.shm_length), self._memory)
        except DescriptorError as exc:
            raise SessionEnd(exc.code, str(exc)) from None
        except ValueError as exc:
            raise SessionEnd("INVALID_ARGUMENT", str(exc)) from None
        self._spec = spec
        self._processor_name = name
        self._last_in_seq = first.sequence_number
        return spec

    async def _run(self, requests: Requests, write: Write) -> str:
        reader = self._reader = asyncio.create_task(self._read(requests))
        writer = asyncio.create_task(self._write_results(write))
        try:
            await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
            if writer.done():  # only an error ends the writer before the end marker
                reader.cancel()
                writer.result()
                raise RuntimeError("writer stopped early")
            # The reader is done: whatever was read still gets processed and acked.
            self._dispatch()
            self._queue.put_nowait(None)
            await writer
            if reader.cancelled():
                raise SessionEnd("UNAVAILABLE", "server is shutting down; every frame "
                                 "received was acknowledged, reconnect to continue")
            error = reader.exception()
            if isinstance(error, ProtocolViolation):
                raise SessionEnd(error.code, str(error))
            if error is not None:
                raise error
            return "client closed the stream"
        finally:
            for task in (reader, writer):
                task.cancel()

    # -- reading ----------------------------------------------------------------

    async def _read(self, requests: Requests) -> None:
        if self.config.overload == "drop":
            return await self._read_dropping(requests)
        while not self._draining:
            await self._window.acquire()  # window full: stop reading (back-pressure)
            message = await anext(requests, None)
            if message is None:
                self._window.release()
                return
            self._received += 1
            self._accept(message)

    async def _read_dropping(self, requests: Requests) -> None:
        """Overload policy ``drop``: never stop reading; a frame that finds the window
        full is acknowledged at once (after the frames before it) without inference."""
        while not self._draining:
            message = await anext(requests, None)
            if message is None:
                return
            self._received += 1
            if self._window.locked():
                self._accept(message, dropped=True)
                continue
            await self._window.acquire()
            self._accept(message)

    def _accept(self, message: MediaStreamMessage | Unparsed, dropped: bool = False) -> None:
        if isinstance(message, Unparsed):
            raise ProtocolViolation("INVALID_ARGUMENT", message.describe(self._received))
        kind = message.WhichOneof("payload")
        seq = message.sequence_number
        if kind != "media_sample":
            where = f"message {self._received} of this call (sequence_number {seq})"
            if kind == "media_stream_descriptor":
                raise ProtocolViolation("INVALID_ARGUMENT", f"{where} is a second "
                                        "media_stream_descriptor; a stream has exactly one, first")
            raise ProtocolViolation("INVALID_ARGUMENT",
                                    f"{where} carries neither a descriptor nor a sample")
        if seq <= self._last_in_seq:
            raise ProtocolViolation("INVALID_ARGUMENT", f"sample sequence_number {seq} (message "
                                    f"{self._received} of this call) does not increase (the "
                                    f"previous message was {self._last_in_seq})")
        self._last_in_seq = seq
        self.frames += 1
        sample = message.media_sample
        now = time.monotonic()
        if dropped:
            self.dropped += 1
            self._pending.append(_Sample(seq, sample.timestamp, None, DROPPED, False, now))
            self._dispatch()  # ack it as soon as the frames before it are acked
            return
        try:
            payload, error = self._payload(sample), None
        except SampleError as exc:
            payload, error = None, str(exc)
        self._pending.append(_Sample(seq, sample.timestamp, payload, error, True, now))
        self._metrics.frame_accepted()
        self._unacked += 1
        if len(self._pending) >= self.config.batch_size:
            self._dispatch()
        elif self._timer is None:
            delay = self.config.batch_delay_ms / 1000.0
            self._timer = asyncio.get_running_loop().call_later(delay, self._dispatch)

    def _payload(self, sample: object) -> Payload:
        spec = self._spec
        assert spec is not None
        content = sample.WhichOneof("content")  # type: ignore[attr-defined]
        if content == "content_bytes":
            data: bytes = sample.content_bytes.bytes  # type: ignore[attr-defined]
            if spec.raw:
                if len(data) < spec.frame_bytes:
                    raise SampleError(f"embedded frame has {len(data)} bytes; a "
                                      f"{spec.width}x{spec.height} frame needs {spec.frame_bytes}")
                return memoryview(data)[: spec.frame_bytes]
            if not data:
                raise SampleError("embedded image is empty")
            return memoryview(data)
        if content == "content_reference":
            if self._memory is None:
                raise SampleError("sample refers to shared memory, but the descriptor set up none")
            ref = sample.content_reference  # type: ignore[attr-defined]
            if spec.raw:
                return self._memory.frame(ref.address_offset, ref.length_bytes, spec.frame_bytes)
            return self._memory.content(ref.address_offset, ref.length_bytes)
        raise SampleError("sample carries no content")

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        samples, self._pending = self._pending, []
        payloads = [s.payload for s in samples if s.payload is not None]
        future = None
        if payloads:
            assert self._lane is not None
            future = self._lane.submit(payloads)
            self._running.add(future)
            future.add_done_callback(self._running.discard)
        self._queue.put_nowait(_Batch(samples, future))

    # -- writing ----------------------------------------------------------------

    async def _write_results(self, write: Write) -> None:
        while (batch := await self._queue.get()) is not None:
            outcomes = await self._outcomes(batch)
            for sample in batch.samples:
                outcome = sample.error if sample.error is not None else next(outcomes)
                if outcome is DROPPED:
                    kind, outcome = "dropped", []
                elif isinstance(outcome, str):
                    self._log_invalid(sample.seq, outcome)
                    kind, outcome = "invalid", []
                else:
                    kind = "inferred" if outcome else "empty"
                if isinstance(outcome, bytes):  # serialized by a worker; b"": no inference
                    response = serialized_sample_response(self._next_seq(), sample.seq,
                                                          sample.timestamp, outcome)
                else:
                    response = sample_response(self._next_seq(), sample.seq, sample.timestamp,
                                               outcome)
                await write(response)
                self.acked += 1
                self._metrics.frame_acked(kind, time.monotonic() - sample.arrived,
                                          sample.holds_permit)
                if sample.holds_permit:
                    self._unacked -= 1
                    self._window.release()

    async def _outcomes(self, batch: _Batch):  # -> Iterator[Outcome]
        if batch.future is None:
            return iter(())
        try:
            # shield: a cancelled writer must not cancel work that still reads the frames
            return iter(await asyncio.shield(batch.future))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("batch failed in the backend")
            count = sum(1 for s in batch.samples if s.error is None)
            return iter([f"processing failed: {exc}"] * count)

    def _log_invalid(self, seq: int, reason: str) -> None:
        self.invalid += 1
        level = logging.WARNING if self.invalid <= _LOUD_INVALID else logging.DEBUG
        log.log(level, "stream %s: sample %d acknowledged without inference: %s",
                self._spec.stream_name if self._spec else "?", seq, reason)
        if self.invalid == _LOUD_INVALID:
            log.warning("stream %s: further invalid samples are logged at DEBUG",
                        self._spec.stream_name if self._spec else "?")

    def _next_seq(self) -> int:
        self._out_seq += 1
        return self._out_seq

    # -- the end ----------------------------------------------------------------

    async def _cleanup(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        running = [f for f in self._running if not f.done()]
        if running:  # frames still being read from the mapping: let them finish first
            _, late = await asyncio.wait(running, timeout=_CLEANUP_WAIT_S)
            if late:
                log.error("%d batches still running after %.0f s at session end",
                          len(late), _CLEANUP_WAIT_S)
        self._drop_payloads()
        if self._lane is not None:
            self._lane.close()
        if self._memory is not None:
            self._memory.close()

    def _drop_payloads(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
