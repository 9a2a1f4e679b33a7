"""Worker start-up: two workers on an empty numba cache compile each function once between them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastext.vision import warmup
from tests.helpers import proven_natively


@proven_natively(
    "the image's `fastext warm` step compiled these kernels cold on aarch64 minutes earlier, "
    "split over processes by the same locks; the server's share of it is Python"
)
def test_workers_split_a_cold_compile_and_are_ready_before_serving(tmp_path: Path) -> None:
    # The suite's one cold compile (tens of CPU seconds): an empty NUMBA_CACHE_DIR, which
    # numba prefers to every other cache location.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastext",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    ready: list[dict[str, object]] = []
    serving = False
    deadline = time.monotonic() + 280
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            event = json.loads(line)
            if event.get("event") == "worker_ready":
                ready.append(event)
            if str(event.get("message", "")).startswith("fastext serving on"):
                serving = True
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert serving, "the server never reported SERVING"
    assert sorted(e["worker"] for e in ready) == [0, 1]  # both READY before SERVING
    compiled = [set(e["compiled"]) for e in ready]  # type: ignore[call-overload]
    every = set().union(*(u.functions for u in warmup.warm_units()))
    assert not compiled[0] & compiled[1], "a function was compiled by both workers"
    assert compiled[0] | compiled[1] == every  # the cache was empty: all compiled, once
    assert compiled[0] and compiled[1], "one worker compiled everything: nothing was shared"
