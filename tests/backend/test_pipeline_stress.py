"""Cross-process stress of the worker pipeline, in a subprocess under a hard deadline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "stress" / "pipeline_kill.py"


@pytest.mark.stress
@pytest.mark.parametrize("seed", [1, 2])
def test_workers_killed_at_random_every_frame_acked_once(seed):
    try:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), str(seed)], capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"deadlock: no result within 240 s\n{exc.stderr}") from None
    assert proc.returncode >= 0, f"stress run killed by signal {-proc.returncode}\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"], json.dumps(report, indent=1) + proc.stderr[-3000:]
    assert report["kills"] >= 1
    for stream in report["streams"]:
        assert stream == {"sent": 2000, "acked": 2000, "wrong": 0, "exact": True}
