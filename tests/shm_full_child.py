"""Scenarios of tests/test_shm_full.py, run inside a private mount namespace whose
``/dev/shm`` is a small tmpfs (``unshare -m``, then ``mount -t tmpfs``): a server, a full
``/dev/shm``, streams.  Not a test module: ``python -m tests.shm_full_child SCENARIO``
prints one JSON line of what it saw, last on stdout; the test asserts on it.

Every wait is bounded; every process started here is ended here.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from fastext.client import StreamOptions
from fastext.client.health import check
from tests.helpers import free_port, run_stream, scrape, solid, start_server

SHM = "/dev/shm"
FILLER = os.path.join(SHM, "filler")
FRAME = solid((255, 100, 0)).tobytes()  # 64x48 RGB24: 9 KiB, quick to serve
WAIT_S = 120.0


def fill() -> int:
    """Fill /dev/shm with one file until it takes no more; returns the bytes left free."""
    with open(FILLER, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 16, 1 << 12):
            block = b"\xa5" * chunk
            for _ in range(4096):  # bounded: 16 MiB of 4 KiB blocks at most
                try:
                    fh.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    st = os.statvfs(SHM)
    return st.f_bavail * st.f_frsize


class Hog:
    """Keeps /dev/shm full: whatever a process frees (a dead worker's rings, unlinked by
    the front) is taken within a few milliseconds, before the restart 0.1 s later."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._fh = open(os.path.join(SHM, "hog"), "wb", buffering=0)  # noqa: SIM115
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            st = os.statvfs(SHM)
            free = st.f_bavail * st.f_frsize
            if free >= 4096:
                try:
                    self._fh.write(b"\xa5" * (free // 4096 * 4096))
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._fh.close()
        os.unlink(self._fh.name)


def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def worker_pids(pid: int) -> list[int]:
    """The server's worker processes (spawned children running spawn_main)."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                children = [int(c) for c in fh.read().split()]
        except OSError:
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as fh:
                    if b"spawn_main" in fh.read():
                        found.append(child)
            except OSError:
                continue
    return found


class Server:
    """``fastext serve`` with its log read on a thread (never a full pipe)."""

    def __init__(self, *args: str) -> None:
        self.proc, self.port = start_server(*args)
        self.lines: list[str] = list(self.proc.startup_lines)  # type: ignore[attr-defined]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health(self) -> str:
        return check(self.target, timeout=5.0)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        return self.proc.returncode


def stream(target: str, frames: int, window: int) -> dict[str, Any]:
    opts = StreamOptions(target=target, width=64, height=48, window=window, ack_timeout_s=WAIT_S)
    try:
        result = run_stream(opts, [FRAME] * frames)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return {"error": f"{type(exc).__name__}: {exc}"}
    inferred = sum(1 for s in result.samples.values() if len(s.inferences) > 0)
    return {
        "sent": result.sent,
        "acked": result.acked,
        "samples": len(result.samples),
        "inferred": inferred,
        "resent": result.resent,
    }


def full_after_start() -> dict[str, Any]:
    """SERVING, then /dev/shm filled: frames still served; the worker killed while full:
    its restart fails (retried), health NOT_SERVING, frames sent meanwhile wait; space
    back: the worker starts, SERVING, every frame acked once."""
    metrics_port = free_port()
    server = Server("--workers", "1", "--shm-size-mb", "4", "--metrics-port", str(metrics_port))
    seen: dict[str, Any] = {"health_start": server.health()}
    try:
        seen["free_after_fill"] = fill()
        seen["first"] = stream(server.target, 40, 8)
        seen["alive_after_first"] = server.proc.poll() is None
        if not seen["alive_after_first"]:
            return seen
        seen["health_full"] = server.health()

        def failures() -> float:
            return scrape(metrics_port).get("fastext_worker_launch_failures_total", 0.0)

        hog = Hog()
        seen["kills"] = 0
        for _ in range(5):  # bounded: the hog wins the race for the freed rings at once
            pids = worker_pids(server.proc.pid)
            if len(pids) != 1:  # (the worker never came back: the test fails on it)
                break
            worker = pids[0]
            os.kill(worker, signal.SIGKILL)
            seen["kills"] += 1
            # A failed launch, or (the hog lost the race) a new worker: kill again.
            killed = [worker]
            until(
                lambda killed=killed: (
                    failures() >= 1 or worker_pids(server.proc.pid) not in ([], killed)
                )
            )
            if failures() >= 1:
                break
            until(lambda: server.health() == "SERVING")
        seen["failed_twice"] = until(lambda: failures() >= 2)
        seen["health_down"] = server.health()
        waiting: dict[str, Any] = {}
        sender = threading.Thread(target=lambda: waiting.update(stream(server.target, 20, 4)))
        sender.start()
        time.sleep(1.0)  # the frames are read and wait for a worker
        seen["health_while_waiting"] = server.health()
        seen["acked_while_full"] = scrape(metrics_port).get(
            'fastext_frames_total{outcome="inferred"}', 0.0
        )
        hog.stop()
        os.unlink(FILLER)
        seen["serving_again"] = until(lambda: server.health() == "SERVING")
        sender.join(WAIT_S)
        seen["second"] = waiting if not sender.is_alive() else {"error": "still waiting"}
        samples = scrape(metrics_port)
        seen["launch_failures"] = samples.get("fastext_worker_launch_failures_total", 0.0)
        seen["restarts"] = samples.get("fastext_worker_restarts_total", 0.0)
        seen["inferred_total"] = samples.get('fastext_frames_total{outcome="inferred"}', 0.0)
        seen["workers_after"] = len(worker_pids(server.proc.pid))
    finally:
        seen["exit"] = server.stop()
        seen["log"] = server.lines
        seen["left_in_shm"] = sorted(os.listdir(SHM))
    return seen


def stream_shm() -> dict[str, Any]:
    """``fastext stream --shm`` whose slots file cannot fit in /dev/shm."""
    server = Server("--workers", "0")
    seen: dict[str, Any] = {}
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fastext",
                "stream",
                "synthetic:gradient",
                "--width",
                "640",
                "--height",
                "480",
                "--shm",
                "--window",
                "8",
                "--max-frames",
                "5",
                "--quiet",
                "--target",
                server.target,
            ],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        seen["rc"] = proc.returncode
        seen["stderr"] = proc.stderr
        seen["left_in_shm"] = sorted(os.listdir(SHM))
        seen["health"] = server.health()
    finally:
        seen["exit"] = server.stop()
    return seen


def segment() -> dict[str, Any]:
    """Segment.create and SlotWriter where the size does not fit: the error, nothing left."""
    from fastext.backend.segments import Segment, segment_name
    from fastext.client.shm import ShmSpaceError, SlotWriter
    from fastext.errors import ShmFullError

    fds = len(os.listdir("/proc/self/fd"))
    seen: dict[str, Any] = {}
    try:
        Segment.create(segment_name("big"), 4 << 20).close()
    except ShmFullError as exc:
        seen["segment"] = [str(exc), exc.need, exc.free]
    try:
        SlotWriter(1 << 20, 4).close()
    except ShmSpaceError as exc:
        seen["slots"] = str(exc)
    seen["left_in_shm"] = sorted(os.listdir(SHM))
    seen["fds_leaked"] = len(os.listdir("/proc/self/fd")) - fds
    return seen


SCENARIOS = {"full_after_start": full_after_start, "stream_shm": stream_shm, "segment": segment}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()), flush=True)
