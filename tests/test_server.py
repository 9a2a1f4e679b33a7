"""Server lifecycle: drain on stop, refusal while draining, uvloop."""

from __future__ import annotations

import asyncio

import grpc

from fastext._proto import extension_pb2
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client.synthetic import to_pixel_format
from fastext.config import Config
from fastext.server import ExtensionServer, new_event_loop
from tests.conftest import open_call
from tests.test_session import ORANGE, descriptor, embedded, solid

Msg = extension_pb2.MediaStreamMessage


async def _drain_scenario() -> tuple[list[Msg], grpc.StatusCode, str, int]:
    server = ExtensionServer(Config(bind="127.0.0.1:0", batch_size=4, batch_delay_ms=500.0))
    port = await server.start()
    frame = to_pixel_format(solid(ORANGE, 32, 32), VF.RGB24)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = open_call(channel)
        await call.write(descriptor(32, 32))
        replies = [await call.read()]
        for i in range(3):  # a partial batch: would wait 500 ms without the drain
            await call.write(embedded(i + 2, frame))
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(server.stop(drain_s=5.0))
        while (msg := await _read(call)) is not None:
            replies.append(msg)
        await stopping
        code, details = await call.code(), await call.details()
    return replies, code, details, server.active_sessions


async def _read(call):
    try:
        msg = await call.read()
    except grpc.aio.AioRpcError:
        return None
    return None if msg is grpc.aio.EOF else msg


def test_stop_drains_in_flight_frames_then_ends_with_unavailable():
    replies, code, details, active = asyncio.run(_drain_scenario())
    assert [r.ack_sequence_number for r in replies] == [1, 2, 3, 4]
    assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details
    assert active == 0


def test_server_runs_on_uvloop():
    loop = new_event_loop()
    try:
        assert type(loop).__module__.startswith("uvloop")

        async def roundtrip() -> int:
            server = ExtensionServer(Config(bind="127.0.0.1:0"))
            port = await server.start()
            frame = to_pixel_format(solid(ORANGE, 16, 16), VF.RGB24)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = open_call(channel)
                await call.write(descriptor(16, 16))
                await call.write(embedded(2, frame))
                await call.done_writing()
                count = 0
                while (await call.read()) is not grpc.aio.EOF:
                    count += 1
            await server.stop(drain_s=1.0)
            return count

        assert loop.run_until_complete(roundtrip()) == 2
    finally:
        loop.close()


def test_json_logs_one_object_per_line_with_session_fields():
    import json
    import signal

    from tests import conformance
    from tests.test_conformance import start_server

    proc, port = start_server("--workers", "1", "--log-format", "json")
    try:
        errors = conformance.run(f"127.0.0.1:{port}")
        assert errors == []
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    lines = [*proc.startup_lines, *err.splitlines()]  # type: ignore[attr-defined]
    records = [json.loads(line) for line in lines if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    starts = [r for r in records if r.get("event") == "session_start"]
    ends = [r for r in records if r.get("event") == "session_end"]
    assert len(starts) == len(ends) == 9  # the conformance client's sessions
    assert {r["transfer"] for r in starts} == {"embedded", "shared_memory"}
    assert all(r["processor"] == "brightness" and r["peer"] for r in starts)
    assert sum(r["frames"] for r in ends) == 92 and all(r["invalid"] == 0 for r in ends)
    assert any(r.get("worker") == 0 for r in records)  # worker lines are JSON too


async def _initial_metadata(target: str) -> dict[str, str]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = open_call(channel)
        await call.write(descriptor(8, 8))
        await call.read()
        metadata = await call.initial_metadata()
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    return {key: value for key, value in metadata}


def test_instance_named_in_initial_metadata(make_server):
    import os
    import socket

    from fastext import INSTANCE_HEADER

    default = make_server()
    named = make_server(instance="edge-a")
    got = asyncio.run(_initial_metadata(default.target))
    assert got[INSTANCE_HEADER] == f"{socket.gethostname()}:{os.getpid()}"
    assert asyncio.run(_initial_metadata(named.target))[INSTANCE_HEADER] == "edge-a"
