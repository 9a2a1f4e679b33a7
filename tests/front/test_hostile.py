"""Hostile input: each case ends in a precise status or an acked frame; the server stays up."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from fastext._proto import extension_pb2
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client.synthetic import encode, scene, to_pixel_format
from tests.helpers import (
    AZURE,
    ORANGE,
    descriptor,
    embedded,
    exchange,
    inline_and_workers,
    open_call,
    referenced,
    solid,
    start_server,
    stop_server,
    tags,
)

Msg = extension_pb2.MediaStreamMessage
W, H = 64, 48
FRAME = W * H * 3


def assert_alive(server) -> None:
    """A clean session still works after the hostile one."""
    msgs = [descriptor(W, H), embedded(2, to_pixel_format(solid(ORANGE, W, H), VF.RGB24))]
    replies, code, _ = exchange(server.target, msgs)
    assert code == grpc.StatusCode.OK and tags(replies[1]) == ["light"]


@pytest.mark.parametrize(
    ("msg", "code", "needle"),
    [
        (descriptor(0, 48), "OUT_OF_RANGE", "width"),
        (descriptor(64, 0), "OUT_OF_RANGE", "height"),
        (descriptor(16385, 48), "OUT_OF_RANGE", "16384"),
        (descriptor(64, 2**31), "OUT_OF_RANGE", "height"),
        (descriptor(64, 48, stride=100), "INVALID_ARGUMENT", "stride_bytes 100"),
        (descriptor(64, 48, pixel_format=VF.NONE), "INVALID_ARGUMENT", "pixel_format"),
        (descriptor(64, 48, pixel_format=59), "INVALID_ARGUMENT", "unknown pixel_format value 59"),
        (descriptor(64, 48, encoding=9), "INVALID_ARGUMENT", "unknown encoding value 9"),
        (
            descriptor(64, 48, config='{"processor": "nope"}'),
            "INVALID_ARGUMENT",
            "unknown processor 'nope'",
        ),
        (descriptor(64, 48, config="{broken"), "INVALID_ARGUMENT", "not JSON"),
        (descriptor(64, 48, config='{"threshold": "x"}'), "INVALID_ARGUMENT", "threshold"),
        (
            Msg(sequence_number=1, media_stream_descriptor=extension_pb2.MediaStreamDescriptor()),
            "INVALID_ARGUMENT",
            "video_frame_sample_format",
        ),
        (embedded(1, b"x" * FRAME), "INVALID_ARGUMENT", "first message"),
        (Msg(sequence_number=1), "INVALID_ARGUMENT", "first message"),
    ],
)
def test_bad_descriptor_status(server, msg, code, needle):
    replies, status, details = exchange(server.target, [msg])
    assert status.name == code and needle in details
    assert replies == []
    assert_alive(server)


@pytest.mark.parametrize(
    ("handle", "needle"),
    [
        ("../etc/passwd", "plain file name"),
        ("a/b", "plain file name"),
        ("..", "plain file name"),
        ("", "empty"),
        ("fastext_test_missing_handle", "does not exist"),
    ],
)
def test_bad_handle_names(server, handle, needle):
    msg = descriptor(W, H, shm=(handle, 1 << 20))
    _, status, details = exchange(server.target, [msg])
    assert status.name in ("INVALID_ARGUMENT", "FAILED_PRECONDITION") and needle in details
    assert_alive(server)


def test_shm_symlink_and_fifo_refused(server, tmp_path):
    link = f"fastext_test_link_{os.getpid()}"
    fifo = f"fastext_test_fifo_{os.getpid()}"
    os.symlink("/etc/hostname", f"/dev/shm/{link}")
    os.mkfifo(f"/dev/shm/{fifo}")
    try:
        for name, needle in ((link, "symbolic link"), (fifo, "not a regular file")):
            _, status, details = exchange(server.target, [descriptor(W, H, shm=(name, FRAME))])
            assert status == grpc.StatusCode.FAILED_PRECONDITION and needle in details
    finally:
        os.unlink(f"/dev/shm/{link}")
        os.unlink(f"/dev/shm/{fifo}")


def test_shm_file_smaller_than_length(server, shm_file):
    name, _ = shm_file(1000)
    _, status, details = exchange(server.target, [descriptor(8, 8, shm=(name, 4096))])
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "fewer than the 4096" in details


def test_shm_smaller_than_one_frame(server, shm_file):
    name, _ = shm_file(FRAME - 1)
    _, status, details = exchange(server.target, [descriptor(W, H, shm=(name, FRAME - 1))])
    assert status == grpc.StatusCode.OUT_OF_RANGE and "needs 9216 bytes" in details


def test_bad_references_are_acked_empty(server, shm_file):
    size = 4 * FRAME
    light = to_pixel_format(solid(ORANGE, W, H), VF.RGB24)
    name, path = shm_file(size, light * 4)
    bad = [
        (size, FRAME),  # starts at the end
        (size - FRAME + 1, FRAME),  # straddles the end
        (2**64 - 1, FRAME),  # offset + length overflows 64 bits
        (2**63, 2**63),
        (0, FRAME - 1),  # shorter than the frame
        (size * 2, 1),
    ]
    msgs = [descriptor(W, H, shm=(name, size))]
    msgs += [referenced(i + 2, off, length) for i, (off, length) in enumerate(bad)]
    good = len(msgs) + 1
    # One byte past the file, frame inside: the sloppy test client's case, served.
    msgs += [referenced(good, size - FRAME, FRAME + 1), referenced(good + 1, 0, FRAME)]
    replies, status, _ = exchange(server.target, msgs)
    assert status == grpc.StatusCode.OK
    by_ack = {r.ack_sequence_number: r for r in replies[1:]}
    assert sorted(by_ack) == list(range(2, good + 2))
    for seq in range(2, good):
        assert tags(by_ack[seq]) == [] and by_ack[seq].media_sample.timestamp == seq * 3000
    assert tags(by_ack[good]) == ["light"] and tags(by_ack[good + 1]) == ["light"]
    assert_alive(server)


def test_reference_without_shared_memory_is_acked_empty(server):
    replies, status, _ = exchange(server.target, [descriptor(W, H), referenced(2, 0, FRAME)])
    assert status == grpc.StatusCode.OK and tags(replies[1]) == []


def test_truncated_raw_and_empty_sample(server):
    light = to_pixel_format(solid(ORANGE, W, H), VF.RGB24)
    empty = Msg(sequence_number=4, media_sample=extension_pb2.MediaSample(timestamp=1))
    msgs = [descriptor(W, H), embedded(2, light[:-1]), embedded(3, light), empty]
    replies, status, _ = exchange(server.target, msgs)
    assert status == grpc.StatusCode.OK
    assert [tags(r) for r in replies[1:]] == [[], ["light"], []]


@pytest.mark.parametrize("encoding", [VF.JPG, VF.PNG, VF.BMP], ids=["JPG", "PNG", "BMP"])
def test_corrupt_images_are_acked_empty(server, encoding):
    good = encode(scene(160, 120, 0, light=True), encoding)
    corrupt = [good[: len(good) // 2], b"\x00" * 500, good[:20] + bytes(reversed(good[20:]))]
    msgs = [descriptor(160, 120, encoding=encoding, pixel_format=VF.NONE)]
    msgs += [embedded(i + 2, data) for i, data in enumerate(corrupt + [good])]
    replies, status, _ = exchange(server.target, msgs)
    assert status == grpc.StatusCode.OK
    assert [tags(r) for r in replies[1:]] == [[], [], [], ["light"]]


def test_jpeg_bomb_header_is_acked_empty(server):
    good = bytearray(encode(scene(64, 64, 0, light=True), VF.JPG))
    sof = good.find(b"\xff\xc0")
    good[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    msgs = [descriptor(64, 64, encoding=VF.JPG, pixel_format=VF.NONE), embedded(2, bytes(good))]
    replies, status, _ = exchange(server.target, msgs)
    assert status == grpc.StatusCode.OK and tags(replies[1]) == []


def test_samples_before_descriptor(server):
    frame = to_pixel_format(solid(ORANGE, W, H), VF.RGB24)
    _, status, details = exchange(server.target, [embedded(1, frame), descriptor(W, H)])
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "media_stream_descriptor" in details


def test_second_descriptor_mid_stream(server):
    frame = to_pixel_format(solid(AZURE, W, H), VF.RGB24)
    msgs = [descriptor(W, H), embedded(2, frame), descriptor(W, H, seq=3), embedded(4, frame)]
    replies, status, details = exchange(server.target, msgs)
    assert (
        status == grpc.StatusCode.INVALID_ARGUMENT and "second media_stream_descriptor" in details
    )
    # what was read before the violation is still acknowledged
    assert [r.ack_sequence_number for r in replies] == [1, 2] and tags(replies[1]) == ["dark"]


def test_non_increasing_sequence_numbers(server):
    frame = to_pixel_format(solid(AZURE, W, H), VF.RGB24)
    msgs = [descriptor(W, H), embedded(2, frame), embedded(2, frame)]
    replies, status, details = exchange(server.target, msgs)
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "does not increase" in details
    assert [r.ack_sequence_number for r in replies] == [1, 2]


def test_message_without_payload_mid_stream(server):
    replies, status, details = exchange(server.target, [descriptor(W, H), Msg(sequence_number=2)])
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "neither" in details


def test_client_vanishes_with_frames_in_flight(make_server, shm_file):
    """Cancel mid-stream: the session ends, the mapping is released, the server goes on."""
    srv = make_server(batch_size=8, batch_delay_ms=2000.0)  # frames sit in a pending batch
    size = 16 * FRAME
    name, path = shm_file(size, to_pixel_format(solid(ORANGE, W, H), VF.RGB24) * 16)

    async def vanish():
        async with grpc.aio.insecure_channel(srv.target) as channel:
            call = open_call(channel)
            await call.write(descriptor(W, H, shm=(name, size)))
            assert (await call.read()).ack_sequence_number == 1
            for i in range(5):
                await call.write(referenced(i + 2, i * FRAME, FRAME))
            await asyncio.sleep(0.2)
            call.cancel()

    asyncio.run(vanish())
    deadline = asyncio.run(_wait_until(lambda: srv.sessions() == 0, 10.0))
    assert deadline, "session still open after the client vanished"
    assert not _mapped(path), "the client's shared memory is still mapped"
    assert_alive(srv)


async def _wait_until(predicate, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def _mapped(path: str) -> bool:
    with open("/proc/self/maps") as fh:
        return any(path in line for line in fh)


def test_shared_memory_unmapped_after_session(server, shm_file):
    name, path = shm_file(FRAME, to_pixel_format(solid(ORANGE, W, H), VF.RGB24))
    replies, status, _ = exchange(
        server.target, [descriptor(W, H, shm=(name, FRAME)), referenced(2, 0, FRAME)]
    )
    assert status == grpc.StatusCode.OK and tags(replies[1]) == ["light"]
    assert asyncio.run(_wait_until(lambda: not _mapped(path), 5.0))


def test_huge_embedded_message_is_refused_not_crashing(make_server):
    srv = make_server(max_message_mb=4)
    frame = b"\x00" * (5 * 1024 * 1024)
    _, status, _ = exchange(srv.target, [descriptor(W, H), embedded(2, frame)])
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_alive(srv)


def test_invalid_sample_logged_once_with_reason(server, caplog):
    caplog.set_level("WARNING", logger="fastext.front.session")
    light = to_pixel_format(solid(ORANGE, W, H), VF.RGB24)
    replies, status, _ = exchange(
        server.target, [descriptor(W, H), embedded(2, light[:100]), embedded(3, light)]
    )
    assert status == grpc.StatusCode.OK
    records = [r for r in caplog.records if "acknowledged without inference" in r.getMessage()]
    assert len(records) == 1
    assert "sample 2" in records[0].getMessage() and "needs 9216" in records[0].getMessage()


@pytest.mark.parametrize("workers", inline_and_workers())
def test_client_file_cut_after_the_handshake(shm_file, workers):
    # Reading mapped pages past a shrunken file's end raises SIGBUS, which kills the
    # process that reads: the frame must be acked empty instead, the server stay up
    # and no worker die.  Subprocess servers: a regression must not take pytest down.
    light = to_pixel_format(solid(ORANGE, W, H), VF.RGB24)
    name, path = shm_file(4 * FRAME, light * 4)
    proc, port = start_server("--workers", str(workers))
    target = f"127.0.0.1:{port}"

    async def session() -> list[list[str]]:
        async with grpc.aio.insecure_channel(target) as channel:
            call = open_call(channel)
            await call.write(descriptor(W, H, shm=(name, 4 * FRAME)))
            await call.read()
            got = []
            await call.write(referenced(2, 3 * FRAME, FRAME))
            got.append(tags(await call.read()))
            os.truncate(path, FRAME)  # the client cuts its file under the server
            await call.write(referenced(3, 3 * FRAME, FRAME))
            got.append(tags(await call.read()))
            await call.write(referenced(4, 0, FRAME))  # still inside: served
            got.append(tags(await call.read()))
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
            return got

    try:
        assert asyncio.run(session()) == [["light"], [], ["light"]]
        assert proc.poll() is None
    finally:
        err = stop_server(proc)
    assert proc.returncode == 0, err
    assert "was cut to 9216 bytes" in err and "died" not in err
