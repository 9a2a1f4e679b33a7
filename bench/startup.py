"""Start-to-SERVING of ``fastext serve``: start it, wait for SERVING, stop it.

    python bench/startup.py --workers 2 --cold     # an empty numba cache (a fresh temp dir)
    python bench/startup.py --workers 2            # numba's cache as it is

Prints the seconds from starting the command to the server's "fastext serving on"
line, which it logs right after setting grpc.health.v1 to SERVING. Time the whole
command from outside (``/usr/bin/time -v``) for a figure that includes the stop.
With ``--cold``, NUMBA_CACHE_DIR points at a new empty directory, which numba prefers
to every other cache location, and the directory is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="an empty numba cache")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    env = dict(os.environ)
    cache = tempfile.mkdtemp(prefix="fastext-numba-") if args.cold else None
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = cache
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastext",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            str(args.workers),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    serving = None
    try:
        deadline = started + args.timeout
        while time.perf_counter() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if "fastext serving on" in line:
                serving = time.perf_counter() - started
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    if serving is None:
        print("never SERVING", file=sys.stderr)
        return 1
    print(f"serving after {serving:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
