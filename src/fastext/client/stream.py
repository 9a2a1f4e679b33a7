"""One ProcessMediaStream session from the client side, strictly by the contract.

Sends the descriptor, waits for the server's reply, then streams samples with
at most ``window`` unacknowledged; with shared memory, a frame's slot is reused
only after its ack.  Every ack is checked: each sample acknowledged exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from fastext import METHOD_PATH
from fastext._proto import extension_pb2, media_pb2
from fastext.client.shm import SlotWriter
from fastext.wire import sample_message

__all__ = ["FrameSource", "StreamError", "StreamOptions", "StreamResult", "stream_frames"]

FrameSource = Iterable[bytes]
Msg = extension_pb2.MediaStreamMessage
RAW = media_pb2.VideoFrameSampleFormat.RAW


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
    window: int = 16
    timescale: int = 90000
    fps: float = 0.0  # 0: as fast as the window allows
    extension_configuration: str = ""
    graph_instance: str = "fastext-stream"
    graph_node: str = "inference"
    ack_timeout_s: float = 30.0
    metadata: Sequence[tuple[str, str]] = ()
    max_message_mb: int = 256
    credentials: grpc.ChannelCredentials | None = None  # TLS; None: plaintext
    tls_server_name: str = ""  # expected certificate name, when it differs from the target host
    on_ack: Callable[[int, extension_pb2.MediaSample | None], None] | None = None  # (seq, result)
    on_send: Callable[[int, int], None] | None = None  # (seq, timestamp), as each sample goes out
    # Awaited before each sample (after the window): holds the sender back, never the reader.
    send_gate: Callable[[], Awaitable[object]] | None = None


@dataclass
class StreamResult:
    sent: int = 0
    acked: int = 0
    samples: dict[int, extension_pb2.MediaSample] = field(default_factory=dict)  # by client seq
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    reply: Msg | None = None
    code: grpc.StatusCode | None = None
    details: str = ""

    @property
    def fps(self) -> float:
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _descriptor(opts: StreamOptions, shm: SlotWriter | None) -> Msg:
    desc = extension_pb2.MediaStreamDescriptor(
        graph_identifier=extension_pb2.GraphIdentifier(
            media_services_arm_id="", graph_instance_name=opts.graph_instance,
            graph_node_name=opts.graph_node),
        extension_configuration=opts.extension_configuration,
        media_descriptor=media_pb2.MediaDescriptor(
            timescale=opts.timescale,
            video_frame_sample_format=media_pb2.VideoFrameSampleFormat(
                # the stubs want enum members; any int is valid on the wire
                encoding=opts.encoding, pixel_format=opts.pixel_format,  # type: ignore[arg-type]
                dimensions=media_pb2.Dimensions(width=opts.width, height=opts.height),
                stride_bytes=opts.stride)),
    )
    if shm is not None:
        desc.shared_memory_buffer_transfer_properties.handle_name = shm.name
        desc.shared_memory_buffer_transfer_properties.length_bytes = shm.length
    return Msg(sequence_number=1, ack_sequence_number=0, media_stream_descriptor=desc)


class _Session:
    def __init__(self, opts: StreamOptions, call: grpc.aio.StreamStreamCall,
                 shm: SlotWriter | None, result: StreamResult) -> None:
        self.opts, self.call, self.shm, self.result = opts, call, shm, result
        self.window = asyncio.Semaphore(opts.window)
        self.pending: dict[int, tuple[float, int]] = {}  # seq -> (send time, slot)
        self.all_sent = asyncio.Event()
        self.cut_short = False

    async def send(self, frames: FrameSource) -> None:
        seq, start = 1, time.monotonic()
        period = 1.0 / self.opts.fps if self.opts.fps > 0 else 0.0
        for index, frame in enumerate(frames):
            await self.window.acquire()
            if self.opts.send_gate is not None:
                await self.opts.send_gate()
            if period:
                delay = start + index * period - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            seq += 1
            timestamp = index * self.opts.timescale // int(self.opts.fps or 30)
            slot = -1
            if self.shm is not None:
                slot, offset = self.shm.write(frame)
                message = sample_message(seq, 0, timestamp, reference=(offset, len(frame)))
            else:
                message = sample_message(seq, 0, timestamp, content=frame)
            self.pending[seq] = (time.monotonic(), slot)
            if self.opts.on_send is not None:
                self.opts.on_send(seq, timestamp)
            try:
                await self.call.write(message)
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                # The server already ended the call; receive() surfaces its status.
                del self.pending[seq]
                self.cut_short = True
                return
            self.result.sent += 1
        self.all_sent.set()
        await self.call.done_writing()

    async def receive(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11, wait_for loses a cancel that
                # lands as the read completes, and a cancelled stream kept streaming.
                async with asyncio.timeout(self.opts.ack_timeout_s):
                    msg = await self.call.read()
            except TimeoutError:
                self.call.cancel()
                raise StreamError(f"no message from the server for {self.opts.ack_timeout_s:g} s "
                                  f"with {len(self.pending)} frames unacknowledged") from None
            if msg is grpc.aio.EOF:
                return
            self._ack(msg)

    def _ack(self, msg: Msg) -> None:
        ack = msg.ack_sequence_number
        entry = self.pending.pop(ack, None)
        if entry is None:
            raise StreamError(f"server acknowledged sequence {ack}, which is not in flight "
                              "(duplicate or unknown ack)")
        sent_at, slot = entry
        if self.shm is not None:
            self.shm.release(slot)
        self.result.acked += 1
        self.result.latencies_s.append(time.monotonic() - sent_at)
        sample = msg.media_sample if msg.HasField("media_sample") else None
        if sample is not None:
            self.result.samples[ack] = sample
        if self.opts.on_ack is not None:
            self.opts.on_ack(ack, sample)
        self.window.release()

    @property
    def in_flight(self) -> int:
        return len(self.pending)


async def stream_frames(opts: StreamOptions, frames: FrameSource,
                        result: StreamResult | None = None) -> StreamResult:
    """Run one session; raises :class:`StreamError` unless every frame was acked once.

    Pass ``result`` to watch the counters while the session runs.
    """
    result = StreamResult() if result is None else result
    frames = iter(frames)
    shm = None
    first: bytes | None = None
    if opts.shm:
        first = next(frames, None)
        size = opts.shm_slot_bytes or (len(first) if first is not None else 1)
        shm = SlotWriter(size, max(1, opts.window))
    limit = opts.max_message_mb * 1024 * 1024
    options: list[tuple[str, Any]] = [("grpc.max_send_message_length", limit),
                                      ("grpc.max_receive_message_length", limit)]
    try:
        if opts.tls_server_name:
            options.append(("grpc.ssl_target_name_override", opts.tls_server_name))
        if opts.credentials is not None:
            channel = grpc.aio.secure_channel(opts.target, opts.credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(opts.target, options=options)
        async with channel:
            method = channel.stream_stream(METHOD_PATH, request_serializer=_serialize,
                                           response_deserializer=Msg.FromString)
            call = method(metadata=tuple(opts.metadata) or None)
            start = time.monotonic()
            await _run(call, opts, shm, result, frames, first)
            result.elapsed_s = time.monotonic() - start
    finally:
        if shm is not None:
            shm.close()
    return result


async def _run(call: grpc.aio.StreamStreamCall, opts: StreamOptions, shm: SlotWriter | None,
               result: StreamResult, frames: FrameSource, first: bytes | None) -> None:
    if first is not None:
        frames = _chain(first, frames)
    status = _FirstStatus(call)
    try:
        await call.write(_descriptor(opts, shm))
        reply = await asyncio.wait_for(call.read(), opts.ack_timeout_s)
    except (TimeoutError, grpc.aio.AioRpcError) as exc:
        raise StreamError(await _status_text(call, status, exc)) from None
    if reply is grpc.aio.EOF:
        raise StreamError(await _status_text(call, status, None))
    if reply.ack_sequence_number != 1 or reply.WhichOneof("payload") != "media_stream_descriptor":
        raise StreamError("the server's first message is not a descriptor reply acknowledging 1")
    result.reply = reply
    session = _Session(opts, call, shm, result)
    sender = asyncio.create_task(session.send(frames))
    try:
        await session.receive()
    except grpc.aio.AioRpcError as exc:
        code, details = await status.final(call, exc.code(), exc.details())
        if (code, details) == _FirstStatus.STAND_IN and session.cut_short:
            raise StreamError(f"the server ended the call while frame {result.sent + 1} was being "
                              f"sent ({result.acked} acks received); grpc gives no status but "
                              f"{code.name}: {details}") from None
        if code != grpc.StatusCode.OK:
            raise StreamError(f"server ended the call: {code.name}: {details}") from None
    finally:
        await _stop(sender, session)
    result.code, result.details = await status.final(call)
    if result.code != grpc.StatusCode.OK:
        raise StreamError(f"server ended the call: {result.code.name}: {result.details}")
    if session.pending:
        raise StreamError(f"{len(session.pending)} frames were never acknowledged")
    if session.cut_short:
        raise StreamError(f"server ended the call (OK) after {result.sent} frames, "
                          "before the client had sent them all")


async def _stop(sender: asyncio.Task[None], session: _Session) -> None:
    """The call is over: let the sender finish its half-close, or stop it mid-source."""
    if not sender.done() and session.all_sent.is_set():
        await asyncio.wait({sender}, timeout=1.0)  # only done_writing() is left
    if not sender.done():
        session.cut_short = True
        sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)


def _serialize(message: Msg | bytes) -> bytes:
    """Samples are encoded by hand (fastext.wire: the frame is copied once); the
    descriptor is a message."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def _chain(first: bytes, rest: FrameSource):  # -> Iterator[bytes]
    yield first
    yield from rest


async def _status_text(call: grpc.aio.StreamStreamCall, status: _FirstStatus,
                       exc: BaseException | None) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        call.cancel()
        return "the server did not answer the descriptor in time"
    if isinstance(exc, grpc.aio.AioRpcError):
        code, details = await status.final(call, exc.code(), exc.details())
    else:
        code, details = await status.final(call)
    return f"server ended the call: {code.name}: {details}"


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

    async def final(self, call: grpc.aio.StreamStreamCall, code: grpc.StatusCode | None = None,
                    details: str | None = None) -> tuple[grpc.StatusCode, str]:
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
