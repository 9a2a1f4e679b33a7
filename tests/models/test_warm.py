"""`fastext warm --models`: the model kernels (preprocessing, box decoding) join the warm-up,
each ready in every process, so a server with --model starts without compiling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import subprocess_env

# portable: the image's own `fastext warm --models` step ran the same on aarch64 before the tests (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable


def _child(*flags: str) -> dict[str, list[str]]:
    """One `fastext warm` child's report (what the parent gathers from each)."""
    proc = subprocess.run(
        [sys.executable, "-m", "fastext", "warm", "--child", *flags],
        capture_output=True,
        text=True,
        timeout=900,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def test_warm_models_readies_preprocessing_and_decoding() -> None:
    report = _child("--models")
    assert {"models._prepare", "models._decode_batch"} <= set(report["functions"])
    plain = _child()
    assert not [f for f in plain["functions"] if f.startswith("models.")]
    assert set(plain["functions"]) < set(report["functions"])
