"""Fuzz: hostile bytes and numbers on a real server; every call ends cleanly.

Each example is one ``ProcessMediaStream`` call made of raw bytes.  A call must end
with its samples acknowledged (each once) or a clear status; never UNKNOWN or
INTERNAL, and the server keeps serving.

Which side said what: when the server ends a call while a client write is still in
flight, grpc.aio replaces the server's status on the CLIENT with INTERNAL "Internal
error from Core" (and drops replies not yet read).  Writing everything and then
half-closing does not avoid it: the server may end the call before the last write.
So the client here runs in lockstep (a message is written once the one before it is
answered by a reply or by the end of the call) and asserts that grpc.aio never
reported the stand-in; the status it checks is then the server's own.

Budget: ``FUZZ_EXAMPLES`` calls per fuzz test and server mode (inline, and one
worker), plus the fixed hostile configurations and handles: about 490 calls, the
file in 22-30 s on the shared 2-core machine (server start-ups included).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastext import METHOD_PATH
from fastext._proto import extension_pb2
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client.stream import _FirstStatus
from fastext.client.synthetic import to_pixel_format
from fastext.contract import wire
from tests.helpers import (
    ORANGE,
    RunningServer,
    descriptor,
    inline_and_workers,
    running_server,
    solid,
    tags,
)

# portable: the session's answers; the native decoder meets hostile bytes in tests/contract/test_wire.py on every target (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

Msg = extension_pb2.MediaStreamMessage
W, H = 16, 8
FRAME = to_pixel_format(solid(ORANGE, W, H), VF.RGB24)
SHM_SIZE = 1 << 16
ALLOWED = {
    "OK",
    "INVALID_ARGUMENT",
    "OUT_OF_RANGE",
    "FAILED_PRECONDITION",
    "NOT_FOUND",
    "PERMISSION_DENIED",
}
FUZZ_EXAMPLES = 50
CALL_TIMEOUT_S = 15.0
ANSWER_WAIT_S = 5.0
U32 = (0, 1, 2, 2**31, 2**32 - 1)
U64 = (0, 1, 2**32 - 1, 2**63, 2**64 - 1)
# derandomize: the same examples on every run, so a failure reproduces and CI is stable.
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


# -- the server and its shared memory ----------------------------------------------------


@pytest.fixture(scope="module", params=inline_and_workers(1))
def fuzz_server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with running_server(workers=request.param, log_level="WARNING") as srv:
        yield srv


@pytest.fixture(scope="module")
def shm_name() -> Iterator[str]:
    """A client file of SHM_SIZE bytes holding light frames; removed afterwards."""
    name = f"fastext_fuzz_{os.getpid()}"
    path = os.path.join("/dev/shm", name)
    with open(path, "wb") as fh:
        fh.write((FRAME * (SHM_SIZE // len(FRAME) + 1))[:SHM_SIZE])
    try:
        yield name
    finally:
        os.unlink(path)


# -- one call ------------------------------------------------------------------------------


@dataclass
class Ending:
    code: str = ""
    details: str = ""
    replies: list[Msg] = field(default_factory=list)
    stand_in: bool = False  # grpc.aio reported its client-side stand-in first
    stalled: bool = False  # a message got neither an answer nor the end of the call

    @property
    def acks(self) -> list[int]:
        return [r.ack_sequence_number for r in self.replies[1:]]


async def _call(target: str, messages: list[bytes], lockstep: bool = True) -> Ending:
    """One call in lockstep: each message is written once the one before it is answered
    (a reply, or the end of the call).  So no write is in flight when the server ends the
    call, and what the client reports is the server's status, not grpc.aio's stand-in.
    Without lockstep every message is written at once and the call left open: for a
    call the server must end itself, at its last message."""
    ending = Ending()
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            METHOD_PATH, request_serializer=bytes, response_deserializer=Msg.FromString
        )(timeout=CALL_TIMEOUT_S)
        status = _FirstStatus(call)
        answered = asyncio.Event()

        async def read() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                while (reply := await call.read()) is not grpc.aio.EOF:
                    ending.replies.append(reply)
                    answered.set()

        reader = asyncio.create_task(read())
        reader.add_done_callback(lambda _: answered.set())
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            for message in messages:
                if reader.done():
                    break
                answered.clear()
                await call.write(message)
                if not lockstep:
                    continue
                try:
                    await asyncio.wait_for(answered.wait(), ANSWER_WAIT_S)
                except TimeoutError:
                    ending.stalled = True
                    break
            if lockstep and not reader.done():
                await call.done_writing()
        await reader
        code, details = await call.code(), await call.details() or ""
        ending.stand_in = (code, details) == _FirstStatus.STAND_IN
        code, details = await status.final(call)
        ending.code, ending.details = code.name, details
    return ending


def run_call(
    loop: asyncio.AbstractEventLoop, target: str, messages: list[bytes], lockstep: bool = True
) -> Ending:
    return loop.run_until_complete(_call(target, messages, lockstep))


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One client event loop for the module: grpc.aio keeps state per loop."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def check_ending(ending: Ending, sent: list[bytes]) -> None:
    """The rules every call obeys, whatever it sent."""
    assert not ending.stalled, f"no answer to a message within {ANSWER_WAIT_S} s"
    assert not ending.stand_in, "a write was in flight as the call ended: the client is wrong"
    assert ending.code in ALLOWED, (ending.code, ending.details)
    assert "<class" not in ending.details and "Error parsing" not in ending.details, ending.details
    acks = ending.acks
    assert len(acks) == len(set(acks)), f"a sample acknowledged twice: {acks}"
    samples = set()
    for data in sent[1:]:
        with contextlib.suppress(Exception):
            msg = Msg.FromString(data)
            if msg.WhichOneof("payload") == "media_sample":
                samples.add(msg.sequence_number)
    assert set(acks) <= samples, f"acks {acks} for samples never sent {samples}"


def expected_stream(sent: list[bytes]) -> tuple[list[int], int | None]:
    """After a valid descriptor: the samples the server must ack, and the position of the
    first message that must end the call (None: the call ends OK)."""
    acked: list[int] = []
    last = Msg.FromString(sent[0]).sequence_number
    for position, data in enumerate(sent[1:], start=2):
        try:
            msg = Msg.FromString(data)
        except Exception:
            return acked, position
        if msg.WhichOneof("payload") != "media_sample" or msg.sequence_number <= last:
            return acked, position
        last = msg.sequence_number
        acked.append(msg.sequence_number)
    return acked, None


def assert_alive(loop: asyncio.AbstractEventLoop, srv: RunningServer) -> None:
    msgs = [descriptor(W, H).SerializeToString(), wire.sample_message(2, 0, 3000, content=FRAME)]
    ending = run_call(loop, srv.target, msgs)
    assert ending.code == "OK", ending.details
    assert ending.acks == [2] and tags(ending.replies[1]) == ["light"]


# -- strategies ------------------------------------------------------------------------------


def sample_bytes(seq: int, kind: int, offset: int = 0, length: int = len(FRAME)) -> bytes:
    timestamp = seq * 3000 % 2**64  # a uint64 (wire.varint encodes larger values as given)
    if kind == 0:
        return wire.sample_message(seq, 0, timestamp, content=FRAME)
    if kind == 1:
        return wire.sample_message(seq, 0, timestamp, reference=(offset, length))
    return wire.sample_message(seq, 0, timestamp, content=b"")


VALID_PIECES = [
    descriptor(W, H).SerializeToString(),
    sample_bytes(2, 0),
    sample_bytes(3, 1),
    descriptor(W, H, shm=("x", SHM_SIZE), config='{"threshold": 3}').SerializeToString(),
]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """A valid encoding with bits flipped, cut short, or bytes inserted."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "truncate", "insert", "insert_valid"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "truncate":
            del data[at:]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        else:
            data[at:at] = draw(st.sampled_from(VALID_PIECES))
    return bytes(data)


@st.composite
def hostile_message(draw: st.DrawFn, valid: bytes) -> bytes:
    return draw(st.one_of(st.binary(max_size=64), mutated(valid)))


# -- the tests -----------------------------------------------------------------------------------


def test_fuzz_corrupt_stream_messages_end_after_acks(loop, fuzz_server):
    """A valid descriptor, then valid samples and at most a few hostile messages."""

    @FUZZ
    @given(st.data())
    def one(data: st.DataObject) -> None:
        count = data.draw(st.integers(1, 6), label="messages after the descriptor")
        sent = [descriptor(W, H).SerializeToString()]
        for seq in range(2, count + 2):
            valid = sample_bytes(seq, 0)
            sent.append(data.draw(st.one_of(st.just(valid), hostile_message(valid))))
        ending = run_call(loop, fuzz_server.target, sent)
        check_ending(ending, sent)
        acked, bad = expected_stream(sent)
        assert sorted(ending.acks) == acked, (ending.code, ending.details)
        if bad is None:
            assert ending.code == "OK", ending.details
        else:
            assert ending.code == "INVALID_ARGUMENT", ending.details
            assert f"message {bad} " in ending.details, ending.details

    one()
    assert_alive(loop, fuzz_server)


def test_fuzz_corrupt_first_message_is_invalid_argument(loop, fuzz_server):
    @FUZZ
    @given(hostile_message(VALID_PIECES[0]))
    def one(first: bytes) -> None:
        sent = [first, sample_bytes(2, 0)]
        ending = run_call(loop, fuzz_server.target, sent)
        check_ending(ending, sent)
        try:
            Msg.FromString(first)
        except Exception:
            assert ending.code == "INVALID_ARGUMENT", ending.details
            assert "message 1 of this call" in ending.details, ending.details
            assert ending.replies == []

    one()
    assert_alive(loop, fuzz_server)


HANDLES = [
    "",
    ".",
    "..",
    "a/b",
    "/etc/passwd",
    "../etc/passwd",
    "a\x00b",
    "x" * 300,
    "é" * 200,
    "кадр",
    "fastext_fuzz_missing",
    "\\",
    " ",
    "\n",
    "%s%n",
]
CONFIGS = [
    "",
    "{broken",
    "[]",
    "1",
    '"s"',
    "null",
    '{"processor": "nope"}',
    '{"processor": 7}',
    '{"threshold": "x"}',
    '{"threshold": 1e400}',
    '{"threshold": NaN}',
    '{"threshold": ' + "9" * 5000 + "}",
    '{"processor": "motion", "sensitivity": -1}',
    '{"": 1}',
    "[" * 100_000 + "]" * 100_000,
    '{"a": ' * 50_000 + "1" + "}" * 50_000,
    '{"processor": "' + "p" * 300_000 + '"}',
    '{"' + "k" * 300_000 + '": 1}',
    '{"threshold": "' + "t" * 300_000 + '"}',
    "\x00",
    "{}" * 1000,
]


def either(draw: st.DrawFn, good: st.SearchStrategy, bad: st.SearchStrategy) -> object:
    """Mostly a usable value, one time in four a hostile one: so that a descriptor is
    often refused for one field only, or accepted, and the server's later checks run."""
    return draw(bad) if draw(st.integers(0, 3)) == 0 else draw(good)


@st.composite
def hostile_descriptor(draw: st.DrawFn, shm: str, link: str) -> bytes:
    desc = extension_pb2.MediaStreamDescriptor(
        extension_configuration=either(
            draw,
            st.sampled_from(["", '{"threshold": 3}', '{"processor": "motion"}']),
            st.one_of(st.sampled_from(CONFIGS), st.text(max_size=40)),
        )
    )
    if draw(st.booleans()):
        desc.graph_identifier.graph_instance_name = draw(st.text(max_size=20))
    else:
        desc.extension_identifier = draw(st.text(max_size=20))
    media = desc.media_descriptor
    media.timescale = draw(st.sampled_from(U32))
    if draw(st.integers(0, 9)):  # one in ten has no video_frame_sample_format
        fmt = media.video_frame_sample_format
        fmt.encoding = either(
            draw,
            st.sampled_from([VF.RAW, VF.JPG, VF.PNG, VF.BMP]),
            st.sampled_from([4, 2**31 - 1, -1]),
        )
        fmt.pixel_format = either(
            draw,
            st.sampled_from([VF.RGB24, VF.BGRA, VF.YUV420P]),
            st.one_of(
                st.sampled_from(list(VF.PixelFormat.values())),
                st.integers(-2, 100),
                st.just(2**31 - 1),
            ),
        )
        size = st.sampled_from(U32 + (16384, 16385))
        fmt.dimensions.width = either(draw, st.just(W), size)
        fmt.dimensions.height = either(draw, st.just(H), size)
        fmt.stride_bytes = either(draw, st.sampled_from([0, W * 4]), st.sampled_from(U32))
    if draw(st.booleans()):
        props = desc.shared_memory_buffer_transfer_properties
        props.handle_name = either(
            draw, st.just(shm), st.one_of(st.sampled_from(HANDLES + [link]), st.text(max_size=20))
        )
        props.length_bytes = either(
            draw, st.just(SHM_SIZE), st.sampled_from(U64 + (SHM_SIZE + 1, len(FRAME) - 1))
        )
    return Msg(
        sequence_number=draw(st.sampled_from(U64)),
        ack_sequence_number=draw(st.sampled_from(U64)),
        media_stream_descriptor=desc,
    ).SerializeToString()


@pytest.fixture(scope="module")
def shm_link() -> Iterator[str]:
    """A symbolic link in /dev/shm: a handle the server must refuse to follow."""
    name = f"fastext_fuzz_link_{os.getpid()}"
    os.symlink("/etc/hostname", f"/dev/shm/{name}")
    try:
        yield name
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_fuzz_hostile_descriptors_get_a_clear_status(loop, fuzz_server, shm_name, shm_link):
    @FUZZ
    @given(hostile_descriptor(shm_name, shm_link), st.integers(0, 3))
    def one(first: bytes, samples: int) -> None:
        seq0 = Msg.FromString(first).sequence_number
        sent = [first] + [
            sample_bytes(seq0 + i, i % 3) for i in range(1, samples + 1) if seq0 + i < 2**64
        ]
        ending = run_call(loop, fuzz_server.target, sent)
        check_ending(ending, sent)
        if ending.code == "OK":
            assert ending.replies and ending.replies[0].ack_sequence_number == seq0
            assert sorted(ending.acks) == [Msg.FromString(m).sequence_number for m in sent[1:]]
        else:
            assert ending.details, ending.code
            assert len(ending.details) < 4096, len(ending.details)

    one()
    assert_alive(loop, fuzz_server)


def test_fuzz_references_out_of_bounds_are_acked(loop, fuzz_server, shm_name):
    extreme = st.one_of(
        st.sampled_from(
            U64
            + (
                SHM_SIZE,
                SHM_SIZE - 1,
                SHM_SIZE + 1,
                SHM_SIZE - len(FRAME),
                SHM_SIZE - len(FRAME) + 1,
                len(FRAME),
                len(FRAME) - 1,
                len(FRAME) + 1,
            )
        ),
        st.integers(0, SHM_SIZE * 2),
    )

    @FUZZ
    @given(
        st.lists(st.tuples(extreme, extreme), min_size=1, max_size=6),
        st.sampled_from([VF.RAW, VF.JPG]),
    )
    def one(refs: list[tuple[int, int]], encoding: int) -> None:
        first = descriptor(
            W,
            H,
            encoding=encoding,
            pixel_format=VF.RGB24 if encoding == VF.RAW else VF.NONE,
            shm=(shm_name, SHM_SIZE),
        ).SerializeToString()
        sent = [first] + [
            sample_bytes(i + 2, 1, off, length) for i, (off, length) in enumerate(refs)
        ]
        ending = run_call(loop, fuzz_server.target, sent)
        check_ending(ending, sent)
        assert ending.code == "OK", ending.details
        assert sorted(ending.acks) == list(range(2, len(refs) + 2))
        for reply in ending.replies[1:]:
            off, length = refs[reply.ack_sequence_number - 2]
            inside = off + len(FRAME) <= SHM_SIZE and length >= len(FRAME)
            if encoding == VF.RAW and inside and off % len(FRAME) == 0:
                assert tags(reply) == ["light"]  # a real frame, served by the contract's rule
            elif not inside:
                assert tags(reply) == [], (off, length)

    one()
    assert_alive(loop, fuzz_server)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[:12]!r}x{len(c)}")
def test_fuzz_hostile_configuration_gets_a_clear_short_status(loop, fuzz_server, config):
    ending = run_call(
        loop, fuzz_server.target, [descriptor(W, H, config=config).SerializeToString()]
    )
    check_ending(ending, [])
    assert ending.code in ("OK", "INVALID_ARGUMENT"), ending.details
    assert (ending.code == "OK") == (config in ("", '{"threshold": 3}'))
    assert 0 < len(ending.details) <= 600 or ending.code == "OK"


@pytest.mark.parametrize("handle", HANDLES + ["LINK"], ids=repr)
def test_fuzz_hostile_handle_gets_a_clear_status(loop, fuzz_server, shm_link, handle):
    handle = shm_link if handle == "LINK" else handle
    ending = run_call(
        loop, fuzz_server.target, [descriptor(W, H, shm=(handle, SHM_SIZE)).SerializeToString()]
    )
    check_ending(ending, [])
    assert ending.code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION"), ending.details
    assert "handle_name" in ending.details or "shared memory" in ending.details


@pytest.mark.parametrize(("workers", "overload"), [(0, "block"), (1, "block"), (0, "drop")])
def test_corrupt_message_ends_call_after_acks_of_frames_in_flight(
    loop, make_server, workers, overload
):
    # Frames 2..4 wait in a partial batch (2 s delay) when message 5 arrives corrupt: they
    # are processed and acked at once, then the call ends naming message 5.
    srv = make_server(workers=workers, batch_size=8, batch_delay_ms=2000.0, overload=overload)
    sent = [descriptor(W, H).SerializeToString()] + [sample_bytes(s, 0) for s in (2, 3, 4)]
    sent.append(sample_bytes(5, 0)[:-7])  # cut short inside the frame bytes
    ending = run_call(loop, srv.target, sent, lockstep=False)
    assert not ending.stand_in
    assert ending.code == "INVALID_ARGUMENT"
    assert ending.details.startswith("message 5 of this call is not a valid MediaStreamMessage (")
    assert "claims" in ending.details and "Error" not in ending.details
    assert ending.acks == [2, 3, 4] and all(tags(r) == ["light"] for r in ending.replies[1:])
