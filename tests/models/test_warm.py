"""`fastext warm --models`: the model kernels (preprocessing, box decoding) join the warm-up,
each ready in every process, so a server with --model starts without compiling."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import subprocess_env


def test_warm_models_readies_preprocessing_and_decoding() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastext", "warm", "--jobs", "1", "--models"],
        capture_output=True,
        text=True,
        timeout=900,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr
    child = subprocess.run(
        [sys.executable, "-m", "fastext", "warm", "--child", "--models"],
        capture_output=True,
        text=True,
        timeout=900,
        env=subprocess_env(),
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert {"models._prepare", "models._decode_batch"} <= set(report["functions"])
    assert not [f for f in report["compiled"] if f.startswith("models.")]  # loaded: warm now
    plain = subprocess.run(
        [sys.executable, "-m", "fastext", "warm", "--child"],
        capture_output=True,
        text=True,
        timeout=900,
        env=subprocess_env(),
    )
    assert plain.returncode == 0, plain.stderr
    assert not [
        f
        for f in json.loads(plain.stdout.strip().splitlines()[-1])["functions"]
        if f.startswith("models.")
    ]
