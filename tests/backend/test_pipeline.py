"""Worker processes: acks after completion, crashes, back-pressure, cleanup."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence

import grpc
import pytest

from fastext._proto import extension_pb2
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.backend.execute import FrameFormat
from fastext.backend.pipeline import InlineBackend, LaneSpec, Result, WorkerBackend
from fastext.client import StreamOptions, stream_frames
from fastext.client.health import check
from fastext.client.synthetic import encode, scenes, to_pixel_format
from fastext.config import Config
from fastext.outcomes import Outcome, Unprocessed
from fastext.processors import Frame, Inference, Processor
from fastext.vision.frames import Encoding, PixelFormat
from tests.helpers import (
    ORANGE,
    descriptor,
    free_port,
    inline_and_workers,
    install_entry_points,
    maps_of_children,
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


@pytest.mark.portable
def test_front_with_workers_never_loads_numba(tmp_path):
    # numba + llvmlite are ~57 MiB of a process: only processes that run kernels load
    # them.  Sessions of every kind (shm, embedded RAW and JPEG, motion) go through a
    # real front, then its memory maps are read.
    proc, port = start_server("--workers", "1")
    try:
        target = f"127.0.0.1:{port}"
        frames = [to_pixel_format(rgb, VF.RGB24) for rgb, _ in scenes(64, 48, 4, period=2)]
        for shm in (True, False):
            opts = StreamOptions(
                target=target,
                width=64,
                height=48,
                shm=shm,
                extension_configuration='{"processor": "motion"}' if shm else "",
            )
            assert run_stream(opts, frames).acked == len(frames)
        jpeg = StreamOptions(
            target=target, width=64, height=48, encoding=VF.JPG, pixel_format=VF.NONE
        )
        assert run_stream(jpeg, [encode(solid(ORANGE, 64, 48), VF.JPG)] * 3).acked == 3
        with open(f"/proc/{proc.pid}/maps") as fh:
            maps = fh.read()
        assert "llvmlite" not in maps and "numba" not in maps
        assert "llvmlite" in maps_of_children(proc.pid)  # the workers did load it
    finally:
        stop_server(proc)


def test_embedded_back_pressure_through_a_small_arena(make_server):
    srv = make_server(workers=2, shm_size_mb=1)  # ~2 frames of 416x416x3 fit at once
    made = list(scenes(416, 416, 60, period=3))
    opts = StreamOptions(target=srv.target, width=416, height=416, window=16)
    result = run_stream(opts, [to_pixel_format(rgb, VF.RGB24) for rgb, _ in made])
    assert result.acked == 60
    assert {s: tags_of(x) for s, x in result.samples.items()} == {
        i + 2: ["light" if made[i][1] else "dark"] for i in range(60)
    }


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

    result = run_stream(
        StreamOptions(target=srv.target, width=320, height=240, window=32), frames()
    )
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


@pytest.mark.portable
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
    result = run_stream(
        StreamOptions(target=srv.target, width=64, height=48, window=8, ack_timeout_s=120.0),
        [to_pixel_format(rgb, VF.RGB24) for rgb, _ in made],
    )
    assert result.acked == result.sent == 20 and result.resent == 0
    assert {s: tags_of(x) for s, x in result.samples.items()} == {
        i + 2: ["light" if made[i][1] else "dark"] for i in range(20)
    }
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


@pytest.mark.portable
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
    result = run_stream(
        StreamOptions(target=srv.target, width=32, height=32),
        [to_pixel_format(solid(ORANGE, 32, 32), VF.RGB24)] * 10,
    )
    assert result.acked == 10
    srv.stop()
    assert _segments(pid) == []


def test_many_streams_through_workers(make_server):
    srv = make_server(workers=2, batch_size=3)
    frames = [to_pixel_format(solid(c, 96, 64), VF.BGR24) for c in (ORANGE, (0, 100, 255))]

    async def many():
        return await asyncio.gather(
            *(
                stream_frames(
                    StreamOptions(
                        target=srv.target,
                        width=96,
                        height=64,
                        pixel_format=VF.BGR24,
                        shm=i % 2 == 1,
                        graph_instance=f"s{i}",
                    ),
                    [frames[j % 2] for j in range(60)],
                )
                for i in range(8)
            )
        )

    for result in asyncio.run(many()):
        assert result.acked == 60
        assert all(
            tags_of(s) == ["light" if (seq - 2) % 2 == 0 else "dark"]
            for seq, s in result.samples.items()
        )


@pytest.mark.portable
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
    from fastext.backend import pipeline

    monkeypatch.setattr(pipeline, "_RING_CAPACITY", 4096)
    srv = make_server(workers=1, max_inflight=400)
    (pid,) = worker_pids(srv)
    frame = to_pixel_format(solid(ORANGE, 16, 16), VF.RGB24)
    done: list[object] = []

    def client() -> None:
        opts = StreamOptions(target=srv.target, width=16, height=16, window=300, ack_timeout_s=30.0)
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


# -- how frames end: every kind under its own label ---------------------------------------

W, H = 32, 24
LABELS = [kind.label for kind in Outcome]


@pytest.fixture
def test_processors(tmp_path, monkeypatch) -> Iterator[None]:
    """tests/plugin_processors.py's processors, found by this process and its workers."""
    from fastext import processors

    install_entry_points(
        str(tmp_path),
        processors.ENTRY_POINT_GROUP,
        {
            "fail-every-third": "tests.plugin_processors:FailEveryThird",
            "die-on-mark": "tests.plugin_processors:DieOnMark",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    processors._discover.cache_clear()
    yield
    processors._discover.cache_clear()


def marked(mark: int) -> bytes:
    """A black W x H RGB24 frame whose first byte is ``mark``."""
    return bytes([mark]) + bytes(W * H * 3 - 1)


def frame_counts(srv) -> dict[str, float]:
    """fastext_frames_total by label (complete once the call's status is in: the session
    counts each ack as it writes it, and ends the call after the last)."""
    metrics = srv.server.metrics
    return {label: metrics.value("fastext_frames_total", {"outcome": label}) for label in LABELS}


@pytest.mark.portable
@pytest.mark.parametrize("workers", inline_and_workers())
def test_processor_errors_are_counted_and_logged_as_errors_not_bad_samples(
    make_server, test_processors, workers, caplog
):
    caplog.set_level("DEBUG", logger="fastext.front.session")
    srv = make_server(workers=workers, metrics_port=free_port())
    opts = StreamOptions(
        target=srv.target,
        width=W,
        height=H,
        window=8,
        ack_timeout_s=60.0,
        extension_configuration='{"processor": "fail-every-third"}',
    )
    result = run_stream(opts, [marked(i) for i in range(30)])  # batches of 1: 0, 3, ... fail
    assert result.acked == result.sent == 30 and result.code == grpc.StatusCode.OK
    assert {seq: tags_of(s) for seq, s in result.samples.items()} == {
        i + 2: [] if i % 3 == 0 else ["ok"] for i in range(30)
    }  # the stream went on
    assert frame_counts(srv) == {**dict.fromkeys(LABELS, 0), "inferred": 20, "error": 10}
    logged = [
        r
        for r in caplog.records
        if r.name == "fastext.front.session" and getattr(r, "event", "") == "frame_unprocessed"
    ]
    assert [(r.levelname, r.outcome, r.sequence_number) for r in logged] == [
        ("ERROR", "error", i + 2) for i in range(0, 30, 3)
    ]
    assert all("the model broke" in r.reason and r.peer and r.stream for r in logged)


def test_a_frame_that_kills_every_worker_it_reaches_is_counted_lost(make_server, test_processors):
    from tests.plugin_processors import POISON

    srv = make_server(workers=2, metrics_port=free_port())
    opts = StreamOptions(
        target=srv.target,
        width=W,
        height=H,
        window=8,
        ack_timeout_s=120.0,
        extension_configuration='{"processor": "die-on-mark"}',
    )
    # The poison frame last: each worker finishes the frames before it in its ring (FIFO)
    # before it dies, so only the poison frame runs, and dies, MAX_RUNS times.
    result = run_stream(opts, [marked(i) for i in range(1, 6)] + [marked(POISON)])
    assert result.acked == result.sent == 6 and result.code == grpc.StatusCode.OK
    assert [tags_of(result.samples[seq]) for seq in range(2, 8)] == [["ok"]] * 5 + [[]]
    assert frame_counts(srv) == {**dict.fromkeys(LABELS, 0), "inferred": 5, "lost": 1}
    assert srv.server.backend.abandoned == 1


class _Blocking(Processor):
    """Holds its first batch until ``release`` is set (so later ones wait in the pool)."""

    name = "blocking"
    needs = "raw"

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.started, self.release = started, release

    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        self.started.set()
        assert self.release.wait(30), "the test never released the batch"
        return [[] for _ in frames]


def _spec(processor: str, width: int = 2, height: int = 2) -> LaneSpec:
    return LaneSpec(
        FrameFormat(Encoding.RAW, PixelFormat.RGB24, width, height, 0), processor, {}, None, 0
    )


def test_inline_close_acks_the_batches_it_never_ran_as_shutdown(monkeypatch):
    from fastext.backend import pipeline

    started, release = threading.Event(), threading.Event()
    monkeypatch.setattr(pipeline, "create", lambda name, params: _Blocking(started, release))
    got: dict[int, list[Result]] = {}

    async def run() -> None:
        backend = InlineBackend(threads=1)
        lane = backend.open(_spec("blocking"), None, lambda t, r: got.__setitem__(t, list(r)))
        for token in (1, 2, 3):
            lane.submit(token, [memoryview(bytes(12))])
        assert await asyncio.to_thread(started.wait, 30)
        closing = asyncio.ensure_future(backend.close())  # cancels the two still queued
        async with asyncio.timeout(30):
            while len(got) < 2:
                await asyncio.sleep(0.01)
        release.set()
        async with asyncio.timeout(30):
            await closing

    asyncio.run(run())
    assert got[1] == [b""]  # it ran: processed, nothing found
    for token in (2, 3):
        assert [(r.kind, r.reason) for r in got[token]] == [  # type: ignore[union-attr]
            (Outcome.SHUTDOWN, "server stopped before the frame was processed")
        ]


@pytest.mark.portable
def test_worker_close_acks_the_batches_it_never_ran_as_shutdown():
    # A stopped worker holds the first batch; the second waits for arena space (two such
    # frames do not fit in 1 MiB).  Closing kills the worker: neither batch ever ran.
    width, height = 512, 400  # 600 KiB
    backend = WorkerBackend(Config(workers=1, shm_size_mb=1, drain_s=1.0))
    got: dict[int, list[Result]] = {}

    async def run() -> None:
        await backend.start()
        (pid,) = backend.worker_pids()
        lane = backend.open(
            _spec("brightness", width, height), None, lambda t, r: got.__setitem__(t, list(r))
        )
        os.kill(pid, signal.SIGSTOP)
        try:
            for token in (1, 2):
                lane.submit(token, [memoryview(bytes(width * height * 3))])
            assert backend.queued() == 1  # the second, in the backlog
        finally:
            async with asyncio.timeout(60):
                await backend.close()  # kills the stopped worker after its deadline

    try:
        asyncio.run(run())
    except BaseException:
        backend.abort()  # no worker or segment left behind
        raise
    assert sorted(got) == [1, 2]
    for results in got.values():
        assert [type(r) for r in results] == [Unprocessed]
        assert results[0].kind is Outcome.SHUTDOWN  # type: ignore[union-attr]
