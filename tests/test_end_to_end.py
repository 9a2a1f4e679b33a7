"""End to end on a real server: handshake, acks, every format, batching, many streams."""

from __future__ import annotations

import pytest

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions
from fastext.client.synthetic import encode, scenes, to_pixel_format
from tests.helpers import (
    AZURE,
    ORANGE,
    descriptor,
    embedded,
    exchange,
    run_stream,
    solid,
    tags,
    tags_of,
)

RAW_FORMATS = [
    VF.RGB24,
    VF.BGR24,
    VF.ARGB,
    VF.RGBA,
    VF.ABGR,
    VF.BGRA,
    VF.YUV420P,
    VF.RGB565LE,
    VF.RGB565BE,
    VF.RGB555LE,
    VF.RGB555BE,
]


def test_handshake_and_sequence_rules(server):
    frame = to_pixel_format(solid(ORANGE), VF.RGB24)
    msgs = [descriptor(seq=5)] + [embedded(5 + i, frame, timestamp=1000 + i) for i in range(1, 11)]
    replies, code, _ = exchange(server.target, msgs)
    assert code.name == "OK"
    first = replies[0]
    assert first.sequence_number == 1 and first.ack_sequence_number == 5
    assert first.media_stream_descriptor.extension_identifier == "fastext"
    assert first.media_stream_descriptor.media_descriptor.timescale == 90000
    rest = replies[1:]
    assert [r.sequence_number for r in rest] == list(range(2, 12))
    assert sorted(r.ack_sequence_number for r in rest) == list(range(6, 16))
    for r in rest:
        assert r.media_sample.timestamp == 1000 + r.ack_sequence_number - 5
        assert tags(r) == ["light"]
        inf = r.media_sample.inferences[0]
        assert inf.type == inf.CLASSIFICATION and inf.classification.tag.confidence == 1.0


@pytest.mark.parametrize("pixel_format", RAW_FORMATS, ids=lambda p: VF.PixelFormat.Name(p))
@pytest.mark.parametrize("padded", [False, True], ids=["tight", "padded"])
def test_raw_formats_dark_and_light(server, pixel_format, padded):
    width, height = 37, 21  # odd sizes: YUV420P chroma rounding, no alignment luck
    bpp = {
        VF.YUV420P: 1,
        VF.RGB565LE: 2,
        VF.RGB565BE: 2,
        VF.RGB555LE: 2,
        VF.RGB555BE: 2,
        VF.RGB24: 3,
        VF.BGR24: 3,
    }.get(pixel_format, 4)
    stride = width * bpp + 29 if padded else 0
    frames = [
        to_pixel_format(solid(c, width, height), pixel_format, stride) for c in (ORANGE, AZURE)
    ]
    msgs = [descriptor(width, height, VF.RAW, pixel_format, stride)]
    msgs += [embedded(i + 2, frames[i % 2]) for i in range(6)]
    replies, code, details = exchange(server.target, msgs)
    assert code.name == "OK", details
    got = {r.ack_sequence_number: tags(r) for r in replies[1:]}
    assert got == {i + 2: ["light" if i % 2 == 0 else "dark"] for i in range(6)}


@pytest.mark.parametrize("encoding", [VF.JPG, VF.PNG, VF.BMP], ids=["JPG", "PNG", "BMP"])
@pytest.mark.parametrize("shm", [False, True], ids=["embedded", "shm"])
def test_encoded_images(server, encoding, shm):
    made = list(scenes(320, 240, 6, period=2))
    opts = StreamOptions(
        target=server.target,
        width=320,
        height=240,
        encoding=encoding,
        pixel_format=VF.NONE,
        shm=shm,
        shm_slot_bytes=1 << 20,
        window=3,
    )
    result = run_stream(opts, [encode(rgb, encoding) for rgb, _ in made])
    assert result.acked == result.sent == 6
    for seq, sample in result.samples.items():
        assert tags_of(sample) == ["light" if made[seq - 2][1] else "dark"]


def test_shared_memory_slots_reused_only_after_ack(server):
    # Two slots, forty frames: every slot is rewritten many times, and each frame must
    # still be classified from its own pixels (the server acks only after reading).
    made = list(scenes(416, 416, 40, period=1))
    opts = StreamOptions(target=server.target, width=416, height=416, shm=True, window=2)
    result = run_stream(opts, [to_pixel_format(rgb, VF.RGB24) for rgb, _ in made])
    assert result.acked == 40
    assert {seq: tags_of(s) for seq, s in result.samples.items()} == {
        i + 2: ["light" if made[i][1] else "dark"] for i in range(40)
    }


def test_sixteen_concurrent_streams(server):
    import asyncio

    from fastext.client import stream_frames

    frames = [to_pixel_format(solid(c, 96, 64), VF.BGR24) for c in (ORANGE, AZURE)]

    async def many():
        return await asyncio.gather(
            *(
                stream_frames(
                    StreamOptions(
                        target=server.target,
                        width=96,
                        height=64,
                        pixel_format=VF.BGR24,
                        shm=i % 2 == 0,
                        graph_instance=f"s{i}",
                    ),
                    [frames[j % 2] for j in range(50)],
                )
                for i in range(16)
            )
        )

    results = asyncio.run(many())
    for result in results:
        assert result.acked == result.sent == 50
        assert sorted(result.samples) == list(range(2, 52))
        assert all(
            tags_of(s) == ["light" if (seq - 2) % 2 == 0 else "dark"]
            for seq, s in result.samples.items()
        )
    assert server.sessions() == 0


def test_1080p_raw_embedded_over_4mib(server):
    frame = to_pixel_format(solid(ORANGE, 1920, 1080), VF.BGRA)
    assert len(frame) > 4 * 1024 * 1024
    opts = StreamOptions(target=server.target, width=1920, height=1080, pixel_format=VF.BGRA)
    result = run_stream(opts, [frame] * 3)
    assert result.acked == 3 and all(tags_of(s) == ["light"] for s in result.samples.values())


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batching_each_frame_gets_its_own_result(make_server, batch_size):
    srv = make_server(batch_size=batch_size, batch_delay_ms=20.0)
    colours = [ORANGE if i % 3 else AZURE for i in range(21)]  # 21: a partial last batch for 8
    msgs = [descriptor(32, 32)] + [
        embedded(i + 2, to_pixel_format(solid(c, 32, 32), VF.RGB24)) for i, c in enumerate(colours)
    ]
    replies, code, _ = exchange(srv.target, msgs)
    assert code.name == "OK"
    assert len(replies) == 22
    for r in replies[1:]:
        i = r.ack_sequence_number - 2
        assert tags(r) == ["light" if colours[i] == ORANGE else "dark"]
        assert r.media_sample.timestamp == r.ack_sequence_number * 3000


def test_partial_batch_flushes_after_delay(make_server):
    """A client that waits for each ack must not stall on a batch that never fills."""
    srv = make_server(batch_size=8, batch_delay_ms=5.0)
    opts = StreamOptions(target=srv.target, width=32, height=32, window=1, ack_timeout_s=5.0)
    result = run_stream(opts, [to_pixel_format(solid(ORANGE, 32, 32), VF.RGB24)] * 5)
    assert result.acked == 5


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_overload_policy(make_server, policy):
    srv = make_server(overload=policy, max_inflight=1, batch_size=4, batch_delay_ms=30.0)
    frame = to_pixel_format(solid(ORANGE, 32, 32), VF.RGB24)
    msgs = [descriptor(32, 32)] + [embedded(i + 2, frame) for i in range(30)]
    replies, code, _ = exchange(srv.target, msgs)
    assert code.name == "OK"
    acks = sorted(r.ack_sequence_number for r in replies[1:])
    assert acks == list(range(2, 32))  # every frame acked exactly once, either way
    tagged = [r for r in replies[1:] if tags(r) == ["light"]]
    empty = [r for r in replies[1:] if tags(r) == []]
    assert len(tagged) + len(empty) == 30
    if policy == "block":
        assert not empty
    else:
        assert empty and tagged  # frames beyond the window were dropped, the first was not
        assert replies[1].ack_sequence_number == 2 and tags(replies[1]) == ["light"]
