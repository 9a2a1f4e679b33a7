"""Session through its seams: a fake lane instead of a backend, requests from a queue,
writes into a list.  Batching by size and by delay, in-order acks whatever order
results come back in, the drop policy, statuses, and cleanup that waits for running
batches.  (A real server end to end: tests/test_end_to_end.py.)"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastext._proto.extension_pb2 import MediaSample, MediaStreamMessage
from fastext._proto.inferencing_pb2 import Classification, Inference, Tag
from fastext.backend.pipeline import LaneSpec, Payload, Result
from fastext.backend.shm import ClientMemory, ShmRef
from fastext.config import Config
from fastext.errors import SampleError
from fastext.front.session import Session, SessionEnd
from fastext.metrics import Metrics, MetricsSink
from fastext.outcomes import Outcome, Unprocessed
from tests.helpers import ORANGE, descriptor, embedded, referenced, solid

# portable: the session's rules and its inlined checks against the general ones (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

Msg = MediaStreamMessage
FRAME = solid(ORANGE, 8, 8).tobytes()
END = object()  # the client half-closes the call


class FakeLane:
    def __init__(self, deliver: Any) -> None:
        self.deliver = deliver
        self.batches: list[tuple[int, list[Payload]]] = []
        self.submitted = asyncio.Event()
        self.closed = False

    def submit(self, token: int, payloads: Sequence[Payload]) -> None:
        assert not self.closed, "a batch was submitted after the lane closed"
        self.batches.append((token, list(payloads)))
        self.submitted.set()

    def close(self) -> None:
        self.closed = True

    def answer(self, token: int, results: list[Result] | None = None) -> None:
        """Deliver a batch's results: one 'inferred' result per frame by default."""
        count = dict(self.batches)[token]
        self.deliver(token, results if results is not None else [b""] * len(count))


class FakeBackend:
    def __init__(self) -> None:
        self.lane: FakeLane | None = None

    def open(self, spec: LaneSpec, memory: ClientMemory | None, deliver: Any) -> FakeLane:
        self.lane = FakeLane(deliver)
        return self.lane


class Call:
    """One session driven by hand: ``send`` messages, read ``written``, ``finish``."""

    def __init__(self, metrics: MetricsSink | None = None, **changes: Any) -> None:
        self.config = Config(workers=0).replace(**changes)
        self.backend = FakeBackend()
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.written: list[Msg] = []
        self.wrote = asyncio.Event()
        self.session = Session(
            self.config,
            self.backend,
            peer="ipv4:127.0.0.1:5555",  # type: ignore[arg-type]
            metrics=metrics,
        )
        self.task = asyncio.create_task(self.session.serve(self._requests(), self._write))

    async def _requests(self) -> AsyncIterator[Any]:
        while (item := await self.inbox.get()) is not END:
            yield item

    async def _write(self, message: Msg | bytes) -> None:
        self.written.append(Msg.FromString(message) if isinstance(message, bytes) else message)
        self.wrote.set()

    def send(self, *messages: Any) -> None:
        """Queue requests as the call receives them: serialized (bytes stay as they are)."""
        for message in messages:
            raw = (
                message
                if isinstance(message, bytes) or message is END
                else (message.SerializeToString())
            )
            self.inbox.put_nowait(raw)

    @property
    def lane(self) -> FakeLane:
        assert self.backend.lane is not None
        return self.backend.lane

    def acks(self) -> list[int]:
        return [m.ack_sequence_number for m in self.written[1:]]

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.wrote.clear()
                self.lane.submitted.clear()
                waits = [asyncio.ensure_future(e.wait()) for e in (self.wrote, self.lane.submitted)]
                try:
                    await asyncio.wait(waits, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()

    async def finish(self) -> None:
        self.send(END)
        async with asyncio.timeout(5.0):
            await self.task


def on_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop, under a hard deadline."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30.0))

    return run


def frames(first: int, count: int) -> list[Msg]:
    return [embedded(seq, FRAME) for seq in range(first, first + count)]


async def opened(metrics: MetricsSink | None = None, **changes: Any) -> Call:
    call = Call(metrics, **changes)
    call.send(descriptor(8, 8))
    async with asyncio.timeout(5.0):
        while not call.written:
            await asyncio.sleep(0)
    return call


@on_loop
async def test_session_batches_by_size_and_flushes_the_rest_at_stream_end() -> None:
    call = await opened(batch_size=3, batch_delay_ms=10_000.0)
    call.send(*frames(2, 7))
    await call.until(lambda: len(call.lane.batches) == 2)
    assert [len(p) for _, p in call.lane.batches] == [3, 3]
    call.send(END)
    await call.until(lambda: len(call.lane.batches) == 3)
    assert [len(p) for _, p in call.lane.batches] == [3, 3, 1]
    for token, _ in call.lane.batches:
        call.lane.answer(token)
    async with asyncio.timeout(5.0):
        await call.task
    assert call.acks() == list(range(2, 9))
    assert [m.sequence_number for m in call.written] == list(range(1, 9))
    assert call.lane.closed


@on_loop
async def test_session_flushes_a_partial_batch_after_the_delay() -> None:
    call = await opened(batch_size=8, batch_delay_ms=20.0)
    call.send(*frames(2, 2))  # fewer than a batch, and the stream stays open
    await call.until(lambda: len(call.lane.batches) == 1)
    assert [len(p) for _, p in call.lane.batches] == [2]
    call.lane.answer(call.lane.batches[0][0])
    await call.until(lambda: len(call.written) == 3)
    assert call.acks() == [2, 3]
    await call.finish()


@on_loop
async def test_session_acks_in_order_whatever_order_results_arrive_in() -> None:
    call = await opened(batch_size=1)
    call.send(*frames(2, 4))
    await call.until(lambda: len(call.lane.batches) == 4)
    tokens = [t for t, _ in call.lane.batches]
    for token in reversed(tokens[1:]):  # every batch but the oldest
        call.lane.answer(token)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(call.written) == 1, "an ack went out before the frames ahead of it"
    call.lane.answer(tokens[0])
    await call.until(lambda: len(call.written) == 5)
    assert call.acks() == [2, 3, 4, 5]
    await call.finish()


@on_loop
async def test_session_stops_reading_at_a_full_window() -> None:
    call = await opened(batch_size=1, max_inflight=2)
    call.send(*frames(2, 5))
    await call.until(lambda: len(call.lane.batches) == 2)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(call.lane.batches) == 2, "read past a full window"
    assert call.inbox.qsize() == 3
    call.lane.answer(call.lane.batches[0][0])
    await call.until(lambda: len(call.lane.batches) == 3)  # one ack, one more frame read
    for token, _ in call.lane.batches[1:]:
        call.lane.answer(token)
    await call.until(lambda: len(call.lane.batches) == 5)
    for token, _ in call.lane.batches[3:]:
        call.lane.answer(token)
    await call.finish()
    assert call.acks() == [2, 3, 4, 5, 6]


@on_loop
async def test_session_drop_policy_acks_dropped_frames_in_order_without_inference() -> None:
    metrics = Metrics()
    call = await opened(metrics, batch_size=1, max_inflight=2, overload="drop")
    call.send(*frames(2, 5))
    await call.until(lambda: call.session.dropped == 3)
    assert len(call.lane.batches) == 2  # frames 4, 5, 6 never reach the lane
    assert len(call.written) == 1  # and are not acked ahead of frames 2 and 3
    call.lane.answer(call.lane.batches[1][0], [[]])  # frame 3 first: nothing moves yet
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(call.written) == 1
    call.lane.answer(call.lane.batches[0][0])
    await call.until(lambda: len(call.written) == 6)
    assert call.acks() == [2, 3, 4, 5, 6]
    assert [len(m.media_sample.inferences) for m in call.written[1:]] == [0] * 5
    await call.finish()
    assert metrics.outcomes["dropped"] == 3 and metrics.outcomes["empty"] == 2  # as labelled


@on_loop
async def test_session_a_violation_ends_the_call_after_acking_what_was_read() -> None:
    call = await opened(batch_size=1)
    call.send(*frames(2, 2), descriptor(8, 8, seq=4))
    await call.until(lambda: len(call.lane.batches) == 2)
    for token, _ in call.lane.batches:
        call.lane.answer(token)
    with pytest.raises(SessionEnd) as ended:
        async with asyncio.timeout(5.0):
            await call.task
    assert ended.value.code == "INVALID_ARGUMENT"
    assert "message 4 of this call" in str(ended.value)
    assert "second media_stream_descriptor" in str(ended.value)
    assert call.acks() == [2, 3]


@on_loop
async def test_session_unparsed_message_names_its_position() -> None:
    call = await opened(batch_size=1)
    call.send(*frames(2, 1), embedded(3, FRAME).SerializeToString()[:9])  # cut short
    await call.until(lambda: len(call.lane.batches) == 1)
    call.lane.answer(call.lane.batches[0][0])
    with pytest.raises(SessionEnd) as ended:
        async with asyncio.timeout(5.0):
            await call.task
    assert ended.value.code == "INVALID_ARGUMENT"
    assert str(ended.value).startswith("message 3 of this call is not a valid")
    assert call.acks() == [2]


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (b"\xff\xff\xff", "INVALID_ARGUMENT"),
        (embedded(1, FRAME), "INVALID_ARGUMENT"),
        (descriptor(8, 8, shm=("no-such-fastext-file", 4096)), "FAILED_PRECONDITION"),
        (descriptor(8, 8, config='{"processor": "brightness", '), "INVALID_ARGUMENT"),
    ],
    ids=["not-a-message", "sample-first", "missing-shm", "bad-configuration-json"],
)
@on_loop
async def test_session_bad_first_message_maps_to_its_status(first: Any, code: str) -> None:
    call = Call()
    call.send(first)
    with pytest.raises(SessionEnd) as ended:
        async with asyncio.timeout(5.0):
            await call.task
    assert ended.value.code == code
    assert call.written == []


@on_loop
async def test_session_invalid_sample_is_acked_empty_without_reaching_the_lane() -> None:
    call = await opened(batch_size=1)
    call.send(embedded(2, FRAME[:10]), *frames(3, 1))
    await call.until(lambda: len(call.lane.batches) == 1)
    call.lane.answer(call.lane.batches[0][0])
    await call.finish()
    assert call.acks() == [2, 3]
    assert call.session.invalid == 1


@on_loop
async def test_session_counts_and_logs_each_kind_of_frame_by_whose_fault_it_is(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="fastext.front.session")
    metrics = Metrics()  # counted, not served
    call = await opened(batch_size=1, metrics=metrics)
    ok = MediaSample(
        inferences=[
            Inference(
                type=Inference.CLASSIFICATION, classification=(Classification(tag=Tag(value="ok")))
            )
        ]
    ).SerializeToString()
    answers: list[Result] = [ok, b""] + [
        Unprocessed(kind, f"why {kind.label}")
        for kind in (
            Outcome.ERROR,
            Outcome.LOST,
            Outcome.SHUTDOWN,
            Outcome.SHUTDOWN,
            Outcome.SHUTDOWN,
        )
    ]
    call.send(embedded(2, FRAME[:10]), *frames(3, len(answers)))  # the first: too short
    await call.until(lambda: len(call.lane.batches) == len(answers))
    for (token, _), answer in zip(call.lane.batches, answers, strict=True):
        call.lane.answer(token, [answer])
    await call.finish()
    assert call.acks() == list(range(2, 10))
    assert metrics.outcomes == {
        "inferred": 1,
        "empty": 1,
        "invalid": 1,
        "error": 1,
        "lost": 1,
        "shutdown": 3,
        "dropped": 0,
    }
    session = call.session
    assert (session.invalid, session.failed, session.lost, session.stopped) == (1, 1, 1, 3)
    logged = [
        (r.levelname, r.outcome, r.sequence_number)
        for r in caplog.records
        if getattr(r, "event", "") == "frame_unprocessed"
    ]
    # The client's fault a warning, the server's an error, the server stopping once.
    assert logged == [
        ("WARNING", "invalid", 2),
        ("ERROR", "error", 5),
        ("ERROR", "lost", 6),
        ("WARNING", "shutdown", 7),
    ]
    line = next(r.getMessage() for r in caplog.records if getattr(r, "outcome", "") == "lost")
    assert "peer=ipv4:127.0.0.1:5555 stream=" in line and "why lost" in line
    end = next(r for r in caplog.records if getattr(r, "event", "") == "session_end")
    assert (end.invalid, end.error, end.lost, end.shutdown, end.dropped) == (1, 1, 1, 3, 0)


@on_loop
async def test_session_logs_the_first_errors_loud_and_the_rest_at_debug(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="fastext.front.session")
    call = await opened(batch_size=1)
    call.send(*frames(2, 12))
    await call.until(lambda: len(call.lane.batches) == 12)
    for token, _ in call.lane.batches:
        call.lane.answer(token, [Unprocessed(Outcome.ERROR, "the model broke")])
    await call.finish()
    levels = [r.levelname for r in caplog.records if getattr(r, "event", "") == "frame_unprocessed"]
    assert levels == ["ERROR"] * 10 + ["DEBUG"] * 2
    assert any(
        r.levelname == "ERROR" and "further samples" in r.getMessage() for r in caplog.records
    )


@on_loop
async def test_session_cleanup_waits_for_running_batches_before_closing_the_lane() -> None:
    call = await opened(batch_size=1)
    call.send(*frames(2, 2))
    await call.until(lambda: len(call.lane.batches) == 2)
    call.task.cancel()  # the client went away with two frames being processed
    for _ in range(50):
        await asyncio.sleep(0)
    assert not call.task.done() and not call.lane.closed
    call.lane.answer(call.lane.batches[0][0])
    for _ in range(20):
        await asyncio.sleep(0)
    assert not call.lane.closed, "closed with a batch still reading the frames"
    call.lane.answer(call.lane.batches[1][0])
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5.0):
            await call.task
    assert call.lane.closed


@on_loop
async def test_session_cancelled_again_during_cleanup_still_closes_after_running_batches() -> None:
    call = await opened(batch_size=1)
    call.send(*frames(2, 1))
    await call.until(lambda: len(call.lane.batches) == 1)
    call.task.cancel()  # the client went away with a frame being processed
    for _ in range(20):
        await asyncio.sleep(0)
    call.task.cancel()  # and the server stops: a second cancel lands in the cleanup wait
    for _ in range(20):
        await asyncio.sleep(0)
    assert not call.task.done() and not call.lane.closed, "closed under a running batch"
    call.lane.answer(call.lane.batches[0][0])
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5.0):
            await call.task
    assert call.lane.closed, "the lane (and the client file) were left open"


@on_loop
async def test_session_drain_acks_what_was_read_then_ends_unavailable() -> None:
    call = await opened(batch_size=1)
    call.send(*frames(2, 2))
    await call.until(lambda: len(call.lane.batches) == 2)
    call.session.drain()
    call.send(*frames(4, 2))  # never read
    for token, _ in call.lane.batches:
        call.lane.answer(token)
    with pytest.raises(SessionEnd) as ended:
        async with asyncio.timeout(5.0):
            await call.task
    assert ended.value.code == "UNAVAILABLE"
    assert call.acks() == [2, 3]
    assert len(call.lane.batches) == 2


@on_loop
async def test_session_drained_during_its_handshake_ends_unavailable() -> None:
    call = Call(batch_size=1)
    call.session.drain()  # the server began to stop before this call's reader ran
    call.send(descriptor(8, 8), *frames(2, 2))
    with pytest.raises(SessionEnd) as ended:
        async with asyncio.timeout(5.0):
            await call.task
    assert ended.value.code == "UNAVAILABLE"  # not OK: the client must know to reconnect
    assert len(call.written) == 1 and call.lane.batches == []


# -- the RAW shared-memory bounds check: the session's inlined compare vs ClientMemory's --

_FILE_BYTES = 4096  # the largest file the property below describes


def _near(edge: int) -> st.SearchStrategy[int]:
    """Values just around ``edge`` (where an off-by-one lives), and any uint64."""
    return st.one_of(st.integers(max(0, edge - 3), edge + 3), st.integers(0, 2**64 - 1))


@st.composite
def _raw_references(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    """(width, height, file size, offset, length): an RGB24 frame of width x height in a
    file the descriptor announces as file size bytes (at least one frame, as it must),
    and one content_reference into it."""
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 4))
    frame = 3 * width * height
    size = draw(st.integers(frame, min(_FILE_BYTES, frame + 300)))
    offset = draw(_near(size - frame))
    length = draw(st.one_of(_near(frame), _near(max(0, size - offset))))
    return width, height, size, offset, length


def _fast_then_general(
    shm: str, width: int, height: int, size: int, offset: int, length: int
) -> tuple[ShmRef | None, bool, ShmRef | None]:
    """Accept one RAW content_reference in a session opened on ``shm`` (announced as
    ``size`` bytes): (the reference its inlined check put in a batch, or None; whether
    it fell back to the general path), and what ClientMemory.frame says of the same
    reference (its ShmRef, or None when it refuses it)."""

    async def accept() -> tuple[ShmRef | None, bool, ShmRef | None]:
        backend = FakeBackend()
        session = Session(Config(workers=0), backend)  # type: ignore[arg-type]
        session._handshake(descriptor(width, height, shm=(shm, size)))
        fell_back: list[tuple[int, ...]] = []
        general = session._payload

        def payload(kind: int, a: int, b: int, data: bytes) -> Payload:
            fell_back.append((kind, a, b))
            return general(kind, a, b, data)

        session._payload = payload  # type: ignore[method-assign]
        memory = session._memory
        assert memory is not None and backend.lane is not None
        try:
            session._accept(referenced(2, offset, length).SerializeToString())
            fast = backend.lane.batches[0][1][0] if not fell_back and backend.lane.batches else None
            try:
                expected: ShmRef | None = memory.frame(offset, length, 3 * width * height)
            except SampleError:
                expected = None
            if expected is not None:  # and the view's own check (defence in depth) agrees
                assert memory.view(expected).nbytes == 3 * width * height
            return fast, bool(fell_back), expected  # type: ignore[return-value]
        finally:
            memory.close()

    return asyncio.run(accept())


@pytest.fixture(scope="module")
def raw_file() -> Any:
    name = f"fastext-test-bounds-{os.getpid()}"
    path = os.path.join("/dev/shm", name)
    with open(path, "wb") as f:
        f.truncate(_FILE_BYTES)
    try:
        yield name
    finally:
        os.unlink(path)


# database=None: no .hypothesis/ folder in the tree (as in tests/contract/test_wire.py).
@settings(max_examples=300, deadline=None, database=None)
@given(case=_raw_references())
def test_session_inlined_raw_bounds_check_agrees_with_client_memory(
    raw_file: str, case: tuple[int, int, int, int, int]
) -> None:
    """The per-frame compare against _last_offset accepts exactly the references that
    ClientMemory.frame accepts, as the same region; everything it refuses goes the
    general way (and is refused there)."""
    width, height, size, offset, length = case
    fast, fell_back, expected = _fast_then_general(raw_file, width, height, size, offset, length)
    assert fast == expected
    assert fell_back == (expected is None)


# -- the one-frame submit inlined in _accept vs the general batch path --------------------


def _submitted_and_acked(sizes: list[int], general: bool) -> tuple[list[Any], list[Any]]:
    """Stream embedded frames of ``sizes`` bytes (fewer than a frame's: invalid) at
    --batch-size 1, the general path forced or not: (each batch the lane got, as
    (token, frame bytes)), (each ack, as (ack number, sequence number, inference count)),
    every batch answered with one classification per frame."""

    async def stream() -> tuple[list[Any], list[Any]]:
        call = await opened(batch_size=1)
        if general:  # _accept's "_batch_size == 1" shortcut fails; _dispatch runs per frame
            call.session._batch_size = 0
        longer = FRAME + bytes(5)
        call.send(*[embedded(2 + i, longer[:size]) for i, size in enumerate(sizes)])
        valid = sum(1 for size in sizes if size >= len(FRAME))
        await call.until(
            lambda: len(call.lane.batches) == valid and call.session.frames == len(sizes)
        )
        found = [Inference(classification=Classification(tag=Tag(value="x")))]
        for token, payloads in call.lane.batches:
            call.lane.answer(token, [found] * len(payloads))
        await call.until(lambda: len(call.written) == 1 + len(sizes))
        await call.finish()
        batches = [(token, [bytes(p) for p in payloads]) for token, payloads in call.lane.batches]
        acks = [
            (m.sequence_number, m.ack_sequence_number, len(m.media_sample.inferences))
            for m in call.written
        ]
        return batches, acks

    return asyncio.run(asyncio.wait_for(stream(), 30.0))


# database=None: no .hypothesis/ folder in the tree (as in tests/contract/test_wire.py).
@settings(max_examples=40, deadline=None, database=None)
@given(
    sizes=st.lists(
        st.sampled_from([0, len(FRAME) - 1, len(FRAME), len(FRAME) + 5]), min_size=1, max_size=8
    )
)
def test_session_inlined_one_frame_submit_matches_the_general_batch_path(sizes: list[int]) -> None:
    """Valid and invalid frames in any order: the shortcut submits the same batches (same
    tokens, same frames) and the call writes the same acks as the general path does."""
    fast = _submitted_and_acked(sizes, general=False)
    assert fast == _submitted_and_acked(sizes, general=True)
    assert len(fast[1]) == 1 + len(sizes)
