"""One ProcessMediaStream session from the client side, strictly by the contract.

Sends the descriptor, waits for the server's reply, then streams samples with
at most ``window`` unacknowledged; with shared memory, a frame's slot is reused
only after its ack.  Every ack is checked: each sample acknowledged exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple

import grpc

from fastext import INSTANCE_HEADER, METHOD_PATH
from fastext._proto import extension_pb2, media_pb2
from fastext.client.shm import SlotWriter
from fastext.contract.wire import sample_message

__all__ = [
    "CallRecord",
    "FrameSource",
    "StreamError",
    "StreamOptions",
    "StreamResult",
    "Timed",
    "stream_frames",
]

log = logging.getLogger("fastext.client")


class Timed(NamedTuple):
    """A frame with its own presentation time (a video's), in seconds, exact."""

    data: bytes
    seconds: Fraction


# Frames as bytes are stamped ``round(index * timescale / StreamOptions.stamp_rate)``;
# Timed frames carry their own time, which the descriptor's timescale counts in.
FrameSource = Iterable[bytes | Timed]
Msg = extension_pb2.MediaStreamMessage
RAW = media_pb2.VideoFrameSampleFormat.RAW
_HALF = Fraction(1, 2)


class StreamError(Exception):
    """The session failed: the server ended the call, acks stopped, or an ack was wrong."""


@dataclass
class StreamOptions:
    target: str
    width: int
    height: int
    encoding: int = RAW
    pixel_format: int = media_pb2.VideoFrameSampleFormat.RGB24
    stride: int = 0
    shm: bool = False
    shm_slot_bytes: int = 0  # 0: the largest frame is measured from the first one (RAW: exact)
    # A frame (the same bytes object) still in a free slot is sent from there, not copied
    # again: a source repeating at most ``window`` frames writes each slot once.
    shm_reuse: bool = False
    window: int = 16
    timescale: int = 90000
    fps: float = 0.0  # real-time pacing, frames/s; 0: as fast as the window allows
    # frames/s that frames without a time of their own (bytes, not Timed) are stamped at:
    # round(index * timescale / rate); 0: ``fps``, or 30 when that is 0 too
    stamp_rate: float = 0.0
    extension_configuration: str = ""
    graph_instance: str = "fastext-stream"
    graph_node: str = "inference"
    ack_timeout_s: float = 30.0
    metadata: Sequence[tuple[str, str]] = ()
    max_message_mb: int = 256
    credentials: grpc.ChannelCredentials | None = None  # TLS; None: plaintext
    tls_server_name: str = ""  # expected certificate name, when it differs from the target host
    # (frame key, result): the key is the sequence number the frame carries on the first call
    on_ack: Callable[[int, extension_pb2.MediaSample | None], None] | None = None
    on_send: Callable[[int, int], None] | None = None  # (frame key, timestamp), first send only
    # Awaited before each new sample (after the window): holds the sender back, never the reader.
    send_gate: Callable[[], Awaitable[object]] | None = None
    reconnect: int = 0  # new calls allowed after a call is lost (UNAVAILABLE, connection lost)
    reconnect_backoff_s: float = 0.1  # before the first; doubles while calls get no ack, <= 5 s


@dataclass
class CallRecord:
    """One call of a stream: the instance that served it and how it went."""

    instance: str = ""  # the server's x-fastext-instance ("" when it did not name itself)
    acked: int = 0
    resent: int = 0  # frames an earlier call left unacknowledged, sent again on this one
    status: str = ""  # "OK", or why the call ended


@dataclass
class StreamResult:
    sent: int = 0  # distinct frames sent (a resend is counted in ``resent``)
    acked: int = 0
    # by frame key: the sequence number a frame carries on the first call (index + 2)
    samples: dict[int, extension_pb2.MediaSample] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    reply: Msg | None = None
    code: grpc.StatusCode | None = None
    details: str = ""
    calls: list[CallRecord] = field(default_factory=list)
    reconnects: int = 0
    resent: int = 0
    shm_copies: int = 0  # frames copied into a shared-memory slot (fewer with shm_reuse)

    @property
    def fps(self) -> float:
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _descriptor(opts: StreamOptions, shm: SlotWriter | None) -> Msg:
    desc = extension_pb2.MediaStreamDescriptor(
        graph_identifier=extension_pb2.GraphIdentifier(
            media_services_arm_id="",
            graph_instance_name=opts.graph_instance,
            graph_node_name=opts.graph_node,
        ),
        extension_configuration=opts.extension_configuration,
        media_descriptor=media_pb2.MediaDescriptor(
            timescale=opts.timescale,
            video_frame_sample_format=media_pb2.VideoFrameSampleFormat(
                # the stubs want enum members; any int is valid on the wire
                encoding=opts.encoding,  # type: ignore[arg-type]
                pixel_format=opts.pixel_format,  # type: ignore[arg-type]
                dimensions=media_pb2.Dimensions(width=opts.width, height=opts.height),
                stride_bytes=opts.stride,
            ),
        ),
    )
    if shm is not None:
        desc.shared_memory_buffer_transfer_properties.handle_name = shm.name
        desc.shared_memory_buffer_transfer_properties.length_bytes = shm.length
    return Msg(sequence_number=1, ack_sequence_number=0, media_stream_descriptor=desc)


@dataclass
class _Frame:
    """A frame taken from the source and not yet acknowledged (it may outlive its call)."""

    key: int  # the sequence number it carries on a stream's first call: source index + 2
    timestamp: int
    data: bytes | None  # embedded: kept for a resend; shared memory: None, the slot holds it
    slot: int = -1
    offset: int = 0
    length: int = 0
    sent_at: float = 0.0
    sends: int = 0


class _Stream:
    """What outlives a call: the source, the frames not yet acked, the window.

    A frame holds a window permit (and its shared-memory slot) from the moment it is
    taken from the source until its ack, across calls: a frame carried over to a new
    call is resent from its slot, never written again.
    """

    def __init__(
        self, opts: StreamOptions, frames: FrameSource, shm: SlotWriter | None, result: StreamResult
    ) -> None:
        self.opts, self.shm, self.result = opts, shm, result
        self.source: Iterator[bytes | Timed] = iter(frames)
        self.taken = 0
        # frames/s as the exact ratio typed (29.97 is 2997/100, not the float's binary value)
        given = opts.stamp_rate or opts.fps
        rate = Fraction(str(given)) if given > 0 and math.isfinite(given) else Fraction(30)
        self._ticks, self._per = opts.timescale * rate.denominator, rate.numerator
        self.exhausted = False
        self.unacked: dict[int, _Frame] = {}
        self.window = asyncio.Semaphore(opts.window)
        self.started = time.monotonic()

    def take(self) -> _Frame | None:
        """The source's next frame, registered as unacked (synchronous: never half done)."""
        item = next(self.source, None)
        if item is None:
            self.exhausted = True
            return None
        index, self.taken = self.taken, self.taken + 1
        if isinstance(item, Timed):  # to the nearest tick, half a tick up (as below)
            data, timestamp = item.data, math.floor(item.seconds * self.opts.timescale + _HALF)
        else:  # round(index * timescale / rate), in integers: half a tick rounds up
            data, timestamp = item, (2 * index * self._ticks + self._per) // (2 * self._per)
        frame = _Frame(index + 2, timestamp, None if self.shm is not None else data)
        if self.shm is not None:
            frame.slot, frame.offset = self.shm.write(data)
            frame.length = len(data)
        self.unacked[frame.key] = frame
        return frame

    def message(self, frame: _Frame, seq: int) -> bytes:
        if frame.data is None:
            return sample_message(seq, 0, frame.timestamp, reference=(frame.offset, frame.length))
        return sample_message(seq, 0, frame.timestamp, content=frame.data)


class _Call:
    """One ProcessMediaStream call of a stream: sequence numbers restart at 1 on each."""

    def __init__(
        self, stream: _Stream, call: grpc.aio.StreamStreamCall, record: CallRecord
    ) -> None:
        self.stream, self.call, self.record = stream, call, record
        self.opts, self.result = stream.opts, stream.result
        self.by_seq: dict[int, _Frame] = {}
        self.all_sent = asyncio.Event()
        self.cut_short = False
        self.seq = 1  # the descriptor's

    async def send(self) -> None:
        # Frames a previous call left unacknowledged go first; each already holds a permit.
        for carried in sorted(self.stream.unacked.values(), key=lambda f: f.key):
            if not await self._write(carried):
                return
        period = 1.0 / self.opts.fps if self.opts.fps > 0 else 0.0
        window = self.stream.window
        while not self.stream.exhausted:
            await window.acquire()
            if self.opts.send_gate is not None:
                try:
                    await self.opts.send_gate()
                except asyncio.CancelledError:
                    window.release()
                    raise
            if period:
                delay = self.stream.started + self.stream.taken * period - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.sleep(delay)
                    except asyncio.CancelledError:
                        window.release()
                        raise
            frame = self.stream.take()
            if frame is None:
                window.release()
                break
            if self.opts.on_send is not None:
                self.opts.on_send(frame.key, frame.timestamp)
            if not await self._write(frame):
                return
        self.all_sent.set()
        await self.call.done_writing()

    async def _write(self, frame: _Frame) -> bool:
        self.seq += 1
        self.by_seq[self.seq] = frame
        frame.sent_at = time.monotonic()
        try:
            await self.call.write(self.stream.message(frame, self.seq))
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            # The server already ended the call; receive() surfaces its status.  The frame
            # stays unacked: a new call (reconnect) sends it again.
            del self.by_seq[self.seq]
            self.cut_short = True
            return False
        if frame.sends:
            self.result.resent += 1
            self.record.resent += 1
        else:
            self.result.sent += 1
        frame.sends += 1
        return True

    async def receive(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11, wait_for loses a cancel that
                # lands as the read completes, and a cancelled stream kept streaming.
                async with asyncio.timeout(self.opts.ack_timeout_s):
                    msg = await self.call.read()
            except TimeoutError:
                self.call.cancel()
                raise StreamError(
                    f"no message from the server for {self.opts.ack_timeout_s:g} s "
                    f"with {len(self.by_seq)} frames unacknowledged"
                ) from None
            if msg is grpc.aio.EOF:
                return
            self._ack(msg)

    def _ack(self, msg: Msg) -> None:
        ack = msg.ack_sequence_number
        frame = self.by_seq.pop(ack, None)
        if frame is None:
            raise StreamError(
                f"server acknowledged sequence {ack}, which is not in flight "
                "(duplicate or unknown ack)"
            )
        del self.stream.unacked[frame.key]
        if self.stream.shm is not None:
            self.stream.shm.release(frame.slot)
        self.result.acked += 1
        self.record.acked += 1
        self.result.latencies_s.append(time.monotonic() - frame.sent_at)
        sample = msg.media_sample if msg.HasField("media_sample") else None
        if sample is not None:
            self.result.samples[frame.key] = sample
        if self.opts.on_ack is not None:
            self.opts.on_ack(frame.key, sample)
        self.stream.window.release()


class _CallLost(StreamError):
    """The call ended in a way a new call may mend: UNAVAILABLE, or the connection lost."""


def _lost(code: grpc.StatusCode, details: str) -> bool:
    """A status that says the call, not the stream, failed (worth a new call).

    UNAVAILABLE: a server draining (SIGTERM), refusing while it shuts down, or gone
    (connection refused or reset, a proxy with no backend left).  INTERNAL only as
    grpc's stand-in for a call that broke under a write, or as a stream reset by a
    proxy that lost its backend (nginx resets the HTTP/2 stream: "RST_STREAM").
    """
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    return code == grpc.StatusCode.INTERNAL and (
        details == _FirstStatus.STAND_IN[1] or "RST_STREAM" in details
    )


def _ended(code: grpc.StatusCode, details: str, text: str | None = None) -> StreamError:
    text = text or f"server ended the call: {code.name}: {details}"
    return _CallLost(text) if _lost(code, details) else StreamError(text)


async def stream_frames(
    opts: StreamOptions, frames: FrameSource, result: StreamResult | None = None
) -> StreamResult:
    """Run one session; raises :class:`StreamError` unless every frame was acked once.

    With ``opts.reconnect`` > 0, a call that ends UNAVAILABLE or loses its connection
    is followed (after a backoff) by a new call with a fresh descriptor, which first
    resends the frames not yet acknowledged.  Pass ``result`` to watch the counters
    while the session runs.
    """
    result = StreamResult() if result is None else result
    frames = iter(frames)
    shm = None
    if opts.shm:
        first = next(frames, None)
        measured = first.data if isinstance(first, Timed) else first  # not the pair's len
        size = opts.shm_slot_bytes or (len(measured) if measured is not None else 1)
        shm = SlotWriter(size, max(1, opts.window), reuse=opts.shm_reuse)
        if first is not None:
            frames = _chain(first, frames)
    limit = opts.max_message_mb * 1024 * 1024
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]
    try:
        if opts.tls_server_name:
            options.append(("grpc.ssl_target_name_override", opts.tls_server_name))
        if opts.credentials is not None:
            channel = grpc.aio.secure_channel(opts.target, opts.credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(opts.target, options=options)
        async with channel:
            method = channel.stream_stream(
                METHOD_PATH, request_serializer=_serialize, response_deserializer=Msg.FromString
            )
            stream = _Stream(opts, frames, shm, result)
            await _calls(method, opts, stream)
            result.elapsed_s = time.monotonic() - stream.started
    finally:
        if shm is not None:
            result.shm_copies = shm.copies
            shm.close()
    return result


async def _calls(method: Any, opts: StreamOptions, stream: _Stream) -> None:
    """Calls until the stream is done, at most ``1 + opts.reconnect`` of them."""
    result, idle = stream.result, 0  # idle: calls in a row that got no ack
    while True:
        record = CallRecord()
        result.calls.append(record)
        call = method(metadata=tuple(opts.metadata) or None)
        try:
            await _run(call, opts, stream, record)
            record.status = "OK"
            return
        except _CallLost as exc:
            record.status = str(exc)
            call.cancel()
            if result.reconnects >= opts.reconnect:
                if opts.reconnect:
                    raise StreamError(
                        f"{exc} (no reconnect left of {opts.reconnect}; "
                        f"{len(stream.unacked)} frames unacknowledged)"
                    ) from None
                raise StreamError(str(exc)) from None
        except StreamError as exc:
            record.status = str(exc)
            raise
        idle = 0 if record.acked else idle + 1
        log.info(
            "stream %s: call %d ended (%s); reconnecting with %d frames to resend",
            opts.graph_instance,
            len(result.calls),
            record.status,
            len(stream.unacked),
        )
        await asyncio.sleep(min(_BACKOFF_MAX_S, opts.reconnect_backoff_s * 2 ** max(0, idle - 1)))
        result.reconnects += 1


_BACKOFF_MAX_S = 5.0


async def _run(
    call: grpc.aio.StreamStreamCall, opts: StreamOptions, stream: _Stream, record: CallRecord
) -> None:
    status = _FirstStatus(call)
    try:
        await call.write(_descriptor(opts, stream.shm))
        reply = await asyncio.wait_for(call.read(), opts.ack_timeout_s)
    except TimeoutError:
        call.cancel()
        raise StreamError("the server did not answer the descriptor in time") from None
    except grpc.aio.AioRpcError as exc:
        raise _ended(*await status.final(call, exc.code(), exc.details())) from None
    if reply is grpc.aio.EOF:
        raise _ended(*await status.final(call))
    if reply.ack_sequence_number != 1 or reply.WhichOneof("payload") != "media_stream_descriptor":
        raise StreamError("the server's first message is not a descriptor reply acknowledging 1")
    record.instance = _instance(await call.initial_metadata())
    result = stream.result
    result.reply = reply
    session = _Call(stream, call, record)
    sender = asyncio.create_task(session.send())
    receiver = asyncio.create_task(session.receive())
    try:
        # A sender that fails (the source raised, a frame could not be stamped) ends the
        # stream with its error now, not as a server silent for --ack-timeout.
        await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            failure = sender.exception()
            call.cancel()
            raise StreamError(
                f"sending stopped after {result.sent} frames: {type(failure).__name__}: {failure}"
            ) from failure
        await receiver
    except grpc.aio.AioRpcError as exc:
        code, details = await status.final(call, exc.code(), exc.details())
        if (code, details) == _FirstStatus.STAND_IN and session.cut_short:
            raise _ended(
                code,
                details,
                f"the server ended the call while frame "
                f"{result.sent + 1} was being sent ({result.acked} acks received); "
                f"grpc gives no status but {code.name}: {details}",
            ) from None
        if code != grpc.StatusCode.OK:
            raise _ended(code, details) from None
    finally:
        if not receiver.done():
            receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        await _stop(sender, session)
    result.code, result.details = await status.final(call)
    if result.code != grpc.StatusCode.OK:
        raise _ended(result.code, result.details)
    if session.by_seq:
        raise StreamError(f"{len(session.by_seq)} frames were never acknowledged")
    if session.cut_short:
        raise StreamError(
            f"server ended the call (OK) after {result.sent} frames, "
            "before the client had sent them all"
        )


def _instance(metadata: Any) -> str:
    """The server's name for itself in a call's initial metadata ("" when it gave none)."""
    for key, value in metadata or ():
        if key == INSTANCE_HEADER:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


async def _stop(sender: asyncio.Task[None], session: _Call) -> None:
    """The call is over: let the sender finish its half-close, or stop it mid-source."""
    if not sender.done() and session.all_sent.is_set():
        await asyncio.wait({sender}, timeout=1.0)  # only done_writing() is left
    if not sender.done():
        session.cut_short = True
        sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)


def _serialize(message: Msg | bytes) -> bytes:
    """Samples are encoded by hand (fastext.contract.wire: the frame is copied once); the
    descriptor is a message."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def _chain(first: bytes | Timed, rest: FrameSource) -> Iterator[bytes | Timed]:
    yield first
    yield from rest


class _FirstStatus:
    """The status the server ended a call with, past grpc.aio's stand-in.

    When a write fails because the server has just ended the call, grpc.aio sets the
    call's status to a stand-in, INTERNAL "Internal error from Core" (grpc 1.85; 42 in
    300 refused calls here), before or after the server's own status arrives; each
    change runs the call's done callbacks, so the first other status seen is the
    server's.  Where only the stand-in is known, wait briefly for the real one.
    """

    STAND_IN = (grpc.StatusCode.INTERNAL, "Internal error from Core")

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None
        self._seen = asyncio.Event()
        call.add_done_callback(self._done)

    def _done(self, call: Any) -> None:
        if self.status is None:
            code, details = _settled(call.code()), _settled(call.details())
            if code is not None and (code, details) != self.STAND_IN:
                self.status = code, details or ""
                self._seen.set()

    async def final(
        self,
        call: grpc.aio.StreamStreamCall,
        code: grpc.StatusCode | None = None,
        details: str | None = None,
    ) -> tuple[grpc.StatusCode, str]:
        if code is None:
            code, details = await call.code(), await call.details()
        if (code, details) != self.STAND_IN:
            return code, details or ""
        if self.status is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._seen.wait(), _STAND_IN_WAIT_S)
        return self.status if self.status is not None else (code, details or "")


_STAND_IN_WAIT_S = 0.5


def _settled(awaitable: Any) -> Any:
    """The value of an awaitable that is already complete (a done call's status), or None."""
    try:
        awaitable.send(None)
    except StopIteration as stop:
        return stop.value
    except Exception:  # noqa: BLE001 - an accessor that is not ready or changed shape
        return None
    awaitable.close()
    return None
