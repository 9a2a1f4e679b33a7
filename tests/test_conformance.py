"""`fastext serve` as a real process: the conformance client, then SIGTERM leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import conformance

HERE = Path(__file__).resolve().parent


def start_server(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """``fastext serve`` on a free port; the log lines read while waiting are kept in
    ``proc.startup_lines``."""
    proc = subprocess.Popen([sys.executable, "-m", "fastext", "serve", "--bind", "127.0.0.1:0",
                             *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    proc.startup_lines = []  # type: ignore[attr-defined]
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        proc.startup_lines.append(line)  # type: ignore[attr-defined]
        match = re.search(r"fastext serving on \S+ \(port (\d+)", line)
        if match:
            return proc, int(match.group(1))
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stderr.read()}")


def stop_server(proc: subprocess.Popen, timeout: float = 60) -> str:
    """SIGTERM, wait (bounded; killed past it) and return what it logged since start-up."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return err


def owned_segments(pid: int) -> set[str]:
    """Shared memory a server process owns (named fastext_<pid>_...)."""
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"fastext_{pid}_")}


@pytest.mark.parametrize("extra", [(), ("--batch-size", "4"), ("--workers", "0")],
                         ids=["workers-default", "batch4", "inline"])
def test_serve_passes_conformance_and_stops_cleanly(extra):
    proc, port = start_server(*extra)
    try:
        errors = conformance.run(f"127.0.0.1:{port}")
        assert errors == []
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "fastext stopped" in err
    assert owned_segments(proc.pid) == set()
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"conformance_{os.getpid()}_")]


def test_conformance_script_runs_standalone():
    proc, port = start_server()
    try:
        out = subprocess.run([sys.executable, str(HERE / "conformance.py"), f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert out.returncode == 0 and "conformance: passed" in out.stdout, out.stdout + out.stderr
