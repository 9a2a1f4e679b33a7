"""A full ``/dev/shm``: a clear error, never a SIGBUS (issue 19, parts 0 and 1).

Each test runs its scenario as root in a private mount namespace (``unshare -m``) whose
``/dev/shm`` is a small tmpfs, so filling it touches nothing outside; the scenarios
themselves are in tests/shm_full_child.py.  Skipped when not root or without unshare.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers import subprocess_env

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1): a private mount namespace with a small /dev/shm",
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGBUS_EXITS = (-signal.SIGBUS, 128 + signal.SIGBUS)


def in_small_shm(size: str, command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """``command`` in a new mount namespace whose /dev/shm is a tmpfs of ``size`` (8m)."""
    script = f"mount -t tmpfs -o size={size} fastext-test /dev/shm && exec {shlex.join(command)}"
    try:
        return subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=ROOT,
            env=subprocess_env(),
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still running after {timeout_s:.0f} s: {exc.stderr!r}")


def scenario(name: str, size: str) -> dict[str, Any]:
    proc = in_small_shm(size, [sys.executable, "-m", "tests.shm_full_child", name], 400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return seen


@pytest.mark.timeout(300)
def test_segments_too_large_for_dev_shm_are_an_error_and_leave_nothing() -> None:
    seen = scenario("segment", "1m")
    assert seen["segment"] == [
        "/dev/shm has 1.0 MiB free, too little for a 4.0 MiB segment",
        4 << 20,
        1 << 20,
    ]
    assert seen["slots"].startswith(
        "/dev/shm has 1.0 MiB free, too little for the 4.0 MiB "
        "shared-memory file (4 slots of 1048576 bytes"
    )
    assert seen["left_in_shm"] == [] and seen["fds_leaked"] == 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("shm_size_mb", "short"), [(16, "the arena"), (7, "the rings")])
def test_serve_refuses_to_start_when_dev_shm_is_too_small(shm_size_mb: int, short: str) -> None:
    # 8 MiB of /dev/shm: a 16 MiB arena does not fit; a 7 MiB one does, its worker's
    # 2 MiB of rings do not.  Either way: exit 2 and one line saying what to change.
    proc = in_small_shm(
        "8m",
        [
            sys.executable,
            "-m",
            "fastext",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--shm-size-mb",
            str(shm_size_mb),
        ],
        200,
    )
    assert proc.returncode == 2, (short, proc.returncode, proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fastext: error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr
    (line,) = errors
    need = shm_size_mb + 2.0  # MiB: the arena and one worker's two rings (1 MiB each + headers)
    assert line.startswith(
        "fastext: error: /dev/shm has 8.0 MiB free, too little for the "
        f"{need:.1f} MiB fastext needs: a {shm_size_mb:.1f} MiB arena "
        f"(--shm-size-mb {shm_size_mb}) and 2.0 MiB of rings per worker "
        "(--workers 1)"
    ), line
    assert "lower --shm-size-mb" in line and "docker run --shm-size" in line
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(480)
def test_dev_shm_full_after_start_kills_nothing_and_frames_wait_for_the_worker() -> None:
    seen = scenario("full_after_start", "16m")
    log = "".join(seen["log"])
    assert seen["health_start"] == "SERVING"
    assert seen["free_after_fill"] < 1 << 20  # less than one ring: a restart cannot fit
    # Frames after the fill: every one served (the arena and rings were backed at start).
    assert seen["first"] == {"sent": 40, "acked": 40, "samples": 40, "inferred": 40, "resent": 0}, (
        seen["first"],
        log[-3000:],
    )
    assert seen["alive_after_first"] and seen["health_full"] == "SERVING"
    # The worker killed while /dev/shm is full: its restart fails and is tried again.
    assert seen["failed_twice"], log[-3000:]
    assert seen["health_down"] == "NOT_SERVING"
    assert seen["health_while_waiting"] == "NOT_SERVING"
    assert seen["acked_while_full"] == 40  # the second stream's frames wait
    assert seen["serving_again"], log[-3000:]
    assert seen["second"] == {
        "sent": 20,
        "acked": 20,
        "samples": 20,
        "inferred": 20,
        "resent": 0,
    }, (seen["second"], log[-3000:])
    assert seen["inferred_total"] == 60  # each frame acked once, with its inference
    assert seen["restarts"] == seen["kills"] and seen["launch_failures"] >= 2
    assert seen["workers_after"] == 1
    assert "worker 0 could not be started: /dev/shm has" in log
    assert "too little for worker 0's rings (2.0 MiB)" in log and "--shm-size-mb" in log
    assert "health: NOT_SERVING" in log and "health: SERVING" in log
    assert seen["exit"] == 0 and seen["exit"] not in SIGBUS_EXITS
    assert seen["left_in_shm"] == []  # the server removed its segments (the filler is gone)


@pytest.mark.timeout(300)
def test_stream_shm_exits_1_with_one_line_when_dev_shm_is_too_small() -> None:
    # Less than one 640x480 RGB24 frame (900 KiB): a sparse slots file took a SIGBUS at
    # the first frame's copy (slots freed by acks are reused, so a file that holds a
    # frame or two would not show it).
    seen = scenario("stream_shm", "512k")
    assert seen["rc"] == 1, seen  # not 135 / -7: no SIGBUS
    lines = seen["stderr"].strip().splitlines()
    assert lines[-1].startswith(
        "fastext stream: error: /dev/shm has 0.5 MiB free, too little "
        "for the 7.0 MiB shared-memory file (8 slots of 921600 bytes"
    ), lines
    assert "lower --window" in lines[-1] and "docker run --shm-size" in lines[-1]
    assert seen["left_in_shm"] == []  # the slots file was removed
    assert seen["health"] == "SERVING" and seen["exit"] == 0
