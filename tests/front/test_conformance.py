"""`fastext serve` as a real process: the conformance client, then SIGTERM leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conformance
from tests.helpers import owned_segments, start_server

# portable: the contract's rules, which the worker variants of the other tests serve on every target (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

HERE = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "extra",
    [(), ("--batch-size", "4"), ("--workers", "0")],
    ids=["workers-default", "batch4", "inline"],
)
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
        out = subprocess.run(
            [sys.executable, str(HERE / "conformance.py"), f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert out.returncode == 0 and "conformance: passed" in out.stdout, out.stdout + out.stderr
