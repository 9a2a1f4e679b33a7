"""Server lifecycle: drain on stop, refusal while draining, uvloop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time

import grpc
import pytest

from fastext._proto import extension_pb2
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client.synthetic import to_pixel_format
from fastext.config import Config
from fastext.front.server import ExtensionServer, new_event_loop
from tests.helpers import (
    ORANGE,
    descriptor,
    embedded,
    free_port,
    open_call,
    owned_segments,
    scrape,
    solid,
    start_server,
)

# portable: signals, logs and draining (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

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

    from tests import conformance

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


async def _second_signal_scenario(
    sig: signal.Signals,
) -> tuple[subprocess.Popen, float, str, list[int]]:
    """A real server with one worker that is stopped (SIGSTOP), so three frames it was
    handed can never be acknowledged; the drain then waits for them (up to 60 s)."""
    metrics_port = free_port()
    proc, port = start_server(
        "--workers", "1", "--drain-s", "60", "--metrics-port", str(metrics_port)
    )
    startup = "".join(proc.startup_lines)  # type: ignore[attr-defined]
    workers = [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)", startup)]
    assert proc.stderr is not None and len(workers) == 1
    try:
        os.kill(workers[0], signal.SIGSTOP)
        frame = to_pixel_format(solid(ORANGE, 32, 32), VF.RGB24)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = open_call(channel)
            await call.write(descriptor(32, 32))
            assert (await call.read()).ack_sequence_number == 1
            for seq in (2, 3, 4):
                await call.write(embedded(seq, frame))
            deadline = time.monotonic() + 20
            while (await asyncio.to_thread(scrape, metrics_port))["fastext_frames_in_flight"] < 3:
                assert time.monotonic() < deadline, "the server did not read the three frames"
            proc.send_signal(sig)
            log = ""
            while "a second signal stops at once" not in log:  # the drain has begun
                line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 20)
                assert line, "server exited on the first signal"
                log += line
            started = time.monotonic()
            proc.send_signal(sig)
            await asyncio.to_thread(proc.wait, 20)
            elapsed = time.monotonic() - started
            call.cancel()
        return proc, elapsed, log + await asyncio.to_thread(proc.stderr.read), workers
    finally:
        if proc.poll() is None:
            proc.kill()  # the worker dies with it (PR_SET_PDEATHSIG)
            proc.wait(10)
        proc.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_while_draining_exits_at_once(sig):
    proc, elapsed, log, workers = asyncio.run(_second_signal_scenario(sig))
    assert elapsed < 2.0, f"exited {elapsed:.1f} s after the second signal (drain-s is 60)"
    assert proc.returncode == 128 + sig, log
    assert f"second signal ({sig.name}): stopping now, 3 frames not acknowledged" in log
    assert owned_segments(proc.pid) == set()
    assert not os.path.exists(f"/proc/{workers[0]}"), "the worker outlived the server"


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
    import socket

    from fastext import INSTANCE_HEADER

    default = make_server()
    named = make_server(instance="edge-a")
    got = asyncio.run(_initial_metadata(default.target))
    assert got[INSTANCE_HEADER] == f"{socket.gethostname()}:{os.getpid()}"
    assert asyncio.run(_initial_metadata(named.target))[INSTANCE_HEADER] == "edge-a"
