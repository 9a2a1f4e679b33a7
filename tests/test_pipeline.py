"""Worker processes: acks after completion, crashes, back-pressure, cleanup."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time

import grpc

from fastext._proto import extension_pb2
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions, stream_frames
from fastext.client.health import check
from fastext.client.synthetic import encode, scenes, to_pixel_format
from tests.helpers import (
    ORANGE,
    descriptor,
    free_port,
    open_call,
    referenced,
    run_stream,
    solid,
    start_server,
    stop_server,
    tags_of,
)

Msg = extension_pb2.MediaStreamMessage


def worker_pids(srv) -> list[int]:
    return srv.server.backend.worker_pids()


def test_front_with_workers_never_loads_numba(tmp_path):
    # numba + llvmlite are ~57 MiB of a process: only processes that run kernels load
    # them.  Sessions of every kind (shm, embedded RAW and JPEG, motion) go through a
    # real front, then its memory maps are read.
    proc, port = start_server("--workers", "1")
    try:
        target = f"127.0.0.1:{port}"
        frames = [to_pixel_format(rgb, VF.RGB24) for rgb, _ in scenes(64, 48, 4, period=2)]
        for shm in (True, False):
            opts = StreamOptions(target=target, width=64, height=48, shm=shm,
                                 extension_configuration='{"processor": "motion"}' if shm else "")
            assert run_stream(opts, frames).acked == len(frames)
        jpeg = StreamOptions(target=target, width=64, height=48, encoding=VF.JPG,
                             pixel_format=VF.NONE)
        assert run_stream(jpeg, [encode(solid(ORANGE, 64, 48), VF.JPG)] * 3).acked == 3
        with open(f"/proc/{proc.pid}/maps") as fh:
            maps = fh.read()
        assert "llvmlite" not in maps and "numba" not in maps
        assert "llvmlite" in _maps_of_children(proc.pid)  # the workers did load it
    finally:
        stop_server(proc)


def _maps_of_children(pid: int) -> str:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        children = fh.read().split()
    text = ""
    for child in children:
        try:
            with open(f"/proc/{child}/maps") as fh:
                text += fh.read()
        except OSError:
            pass
    return text


def test_embedded_back_pressure_through_a_small_arena(make_server):
    srv = make_server(workers=2, shm_size_mb=1)  # ~2 frames of 416x416x3 fit at once
    made = list(scenes(416, 416, 60, period=3))
    opts = StreamOptions(target=srv.target, width=416, height=416, window=16)
    result = run_stream(opts, [to_pixel_format(rgb, VF.RGB24) for rgb, _ in made])
    assert result.acked == 60
    assert {s: tags_of(x) for s, x in result.samples.items()} == {
        i + 2: ["light" if made[i][1] else "dark"] for i in range(60)}


def test_frame_larger_than_the_arena_is_acked_empty(make_server):
    srv = make_server(workers=1, shm_size_mb=1)
    frame = to_pixel_format(solid(ORANGE, 1024, 512), VF.RGB24)  # 1.5 MiB
    opts = StreamOptions(target=srv.target, width=1024, height=512)
    result = run_stream(opts, [frame, frame])
    assert result.acked == 2 and all(tags_of(s) == [] for s in result.samples.values())


def test_worker_killed_mid_stream_loses_nothing(make_server):
    srv = make_server(workers=2, batch_size=4, metrics_port=free_port())
    made = list(scenes(320, 240, 40, period=2))
    encoded = [to_pixel_format(rgb, VF.RGB24) for rgb, _ in made]
    victim = worker_pids(srv)[0]

    def frames():  # the kill lands while frames are in flight
        for i in range(400):
            if i == 150:
                os.kill(victim, signal.SIGKILL)
            yield encoded[i % 40]

    result = run_stream(StreamOptions(target=srv.target, width=320, height=240, window=32),
                        frames())
    assert result.acked == result.sent == 400
    assert sorted(result.samples) == list(range(2, 402))
    for seq, sample in result.samples.items():
        assert tags_of(sample) == ["light" if made[(seq - 2) % 40][1] else "dark"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(worker_pids(srv)) < 2:
        time.sleep(0.05)
    assert srv.server.backend._supervisor.slots[0].restarts >= 1
    assert len(worker_pids(srv)) == 2
    assert srv.server.metrics.value("fastext_worker_restarts_total") >= 1


def test_failed_worker_launches_are_retried_while_health_and_frames_wait(make_server):
    # A restart whose launch raises (no fds, /dev/shm full, fork refused) is tried again
    # with the crash backoff; meanwhile health is NOT_SERVING and frames wait, then all
    # are acked once by the worker that finally starts.
    srv = make_server(workers=1, metrics_port=free_port())
    supervisor = srv.server.backend._supervisor
    launch, attempts, fails = supervisor._launch, [], 3

    def failing(slot):
        attempts.append(slot.index)
        if len(attempts) <= fails:
            raise OSError(errno.EMFILE, "Too many open files")
        return launch(slot)

    supervisor._launch = failing
    metrics = srv.server.metrics
    assert check(srv.target) == "SERVING"
    os.kill(worker_pids(srv)[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while metrics.value("fastext_worker_launch_failures_total") < 1:
        assert time.monotonic() < deadline, "no launch failure seen"
        time.sleep(0.02)
    assert check(srv.target) == "NOT_SERVING"
    assert worker_pids(srv) == []
    made = list(scenes(64, 48, 20, period=2))
    result = run_stream(StreamOptions(target=srv.target, width=64, height=48, window=8,
                                      ack_timeout_s=120.0),
                        [to_pixel_format(rgb, VF.RGB24) for rgb, _ in made])
    assert result.acked == result.sent == 20 and result.resent == 0
    assert {s: tags_of(x) for s, x in result.samples.items()} == {
        i + 2: ["light" if made[i][1] else "dark"] for i in range(20)}
    assert attempts == [0] * (fails + 1)
    assert metrics.value("fastext_worker_launch_failures_total") == fails
    assert metrics.value("fastext_worker_restarts_total") == 1
    assert metrics.value("fastext_frames_total", {"outcome": "inferred"}) == 20
    assert check(srv.target) == "SERVING" and len(worker_pids(srv)) == 1


def test_session_end_unmaps_in_every_worker(make_server, shm_file):
    srv = make_server(workers=2, batch_size=1)
    w, h = 64, 48
    size = w * h * 3 * 4
    name, path = shm_file(size, to_pixel_format(solid(ORANGE, w, h), VF.RGB24) * 4)

    async def vanish():
        async with grpc.aio.insecure_channel(srv.target) as channel:
            call = open_call(channel)
            await call.write(descriptor(w, h, shm=(name, size)))
            await call.read()
            for i in range(8):
                await call.write(referenced(i + 2, (i % 4) * w * h * 3, w * h * 3))
            for _ in range(3):
                await call.read()
            call.cancel()

    asyncio.run(vanish())
    pids = worker_pids(srv)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if srv.sessions() == 0 and not any(_maps(pid, path) for pid in pids + [os.getpid()]):
            break
        time.sleep(0.05)
    assert srv.sessions() == 0
    assert [pid for pid in pids + [os.getpid()] if _maps(pid, path)] == []


def _maps(pid: int, path: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return any(path in line for line in fh)
    except FileNotFoundError:
        return False


def _segments(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"fastext_{pid}_")]


def test_sigkilled_front_leaves_nothing_after_next_start():
    proc, _ = start_server("--workers", "2")
    pid = proc.pid
    assert len(_segments(pid)) == 5  # an arena and two rings per worker
    proc.kill()
    proc.wait(10)
    proc.stderr.close()
    # the workers die with their parent (PR_SET_PDEATHSIG)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _children_alive(pid):
        time.sleep(0.05)
    assert not _children_alive(pid)
    assert _segments(pid), "nothing to clean: the test proves nothing"
    second, _ = start_server("--workers", "1")
    try:
        assert _segments(pid) == []
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
    assert _segments(second.pid) == []


def _children_alive(ppid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if int(fields[1]) == ppid and fields[0] != "Z":
                return True
    return False


def test_stop_with_workers_unlinks_every_segment(make_server):
    srv = make_server(workers=2)
    pid = os.getpid()
    assert len(_segments(pid)) >= 5
    result = run_stream(StreamOptions(target=srv.target, width=32, height=32),
                        [to_pixel_format(solid(ORANGE, 32, 32), VF.RGB24)] * 10)
    assert result.acked == 10
    srv.stop()
    assert _segments(pid) == []


def test_many_streams_through_workers(make_server):
    srv = make_server(workers=2, batch_size=3)
    frames = [to_pixel_format(solid(c, 96, 64), VF.BGR24) for c in (ORANGE, (0, 100, 255))]

    async def many():
        return await asyncio.gather(*(
            stream_frames(StreamOptions(target=srv.target, width=96, height=64,
                                        pixel_format=VF.BGR24, shm=i % 2 == 1,
                                        graph_instance=f"s{i}"), [frames[j % 2] for j in range(60)])
            for i in range(8)))

    for result in asyncio.run(many()):
        assert result.acked == 60
        assert all(tags_of(s) == ["light" if (seq - 2) % 2 == 0 else "dark"]
                   for seq, s in result.samples.items())


def test_sigterm_right_after_ready_still_cleans_up():
    for _ in range(3):  # the window this guards is small: try it a few times
        proc, _ = start_server("--workers", "1")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert _segments(proc.pid) == []


def test_records_left_in_an_outbox_go_when_the_worker_makes_room(make_server, monkeypatch):
    # A submit ring of 4 KiB holds ~80 one-frame BATCH records; a stopped worker lets the
    # rest pile up in its outbox. When it runs again and frees ring space, the outbox
    # must follow, although no new job comes its way (the client sent everything and
    # waits for acks): nothing else would send it.
    from fastext import pipeline

    monkeypatch.setattr(pipeline, "_RING_CAPACITY", 4096)
    srv = make_server(workers=1, max_inflight=400)
    (pid,) = worker_pids(srv)
    frame = to_pixel_format(solid(ORANGE, 16, 16), VF.RGB24)
    done: list[object] = []

    def client() -> None:
        opts = StreamOptions(target=srv.target, width=16, height=16, window=300,
                             ack_timeout_s=30.0)
        done.append(run_stream(opts, [frame] * 300))

    import threading

    os.kill(pid, signal.SIGSTOP)
    try:
        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        # Every frame read: ~80 in the ring, the rest waiting in the outbox.
        while srv.server.backend.queued() < 200:
            assert time.monotonic() < deadline, "the outbox never filled"
            time.sleep(0.01)
    finally:
        os.kill(pid, signal.SIGCONT)
    thread.join(timeout=60)
    assert done, "the stream did not finish: records stayed in the outbox"
    result = done[0]
    assert result.acked == result.sent == 300  # type: ignore[attr-defined]
    assert srv.server.backend.queued() == 0
