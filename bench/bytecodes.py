"""Python bytecodes per frame in the front, by function: where the front's own work goes.

    python bench/bytecodes.py            # shared memory, 416x416 RGB24, window 16
    python bench/bytecodes.py --embedded

Runs ``fastext serve --workers 2`` in a child process whose main thread counts every
bytecode it executes (``sys.settrace`` with ``f_trace_opcodes``; the workers are spawned
and not traced), streams a short and a long session to it with the project's client, and
prints (long - short) / (the difference in frames) per function: deterministic counts, so a
change to the hot path can be judged in seconds, beside callgrind's instruction counts
(``bench/bench_front_cost.py``), which say what a bytecode costs (roughly 40-50
instructions on x86-64 with what it allocates: 100 bytecodes fewer per frame moved the
front's ratio to the bare server by 4-5 %).  The tracer makes the server
~20x slower, so the front is the bottleneck and runs about one frame per loop iteration,
as under callgrind.  Not a pytest benchmark: a tool for reading the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_DUMP = signal.SIGUSR1


def _serve_traced(out: str, argv: list[str]) -> int:
    """The child: serve with a per-function bytecode counter; SIGUSR1 dumps and resets."""
    ops: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    dumps = [0]

    def name(code: object) -> str:
        return f"{os.path.basename(code.co_filename)}:{code.co_name}"  # type: ignore[attr-defined]

    def local(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "opcode":
            ops[name(frame.f_code)] += 1
        return local

    def trace(frame, event, arg):  # type: ignore[no-untyped-def]
        if event != "call":
            return None
        frame.f_trace_opcodes = True
        calls[name(frame.f_code)] += 1  # a coroutine's every resumption counts as a call
        return local

    def dump(signum: int, _frame: object) -> None:
        dumps[0] += 1
        Path(f"{out}.{dumps[0]}").write_text(json.dumps({"ops": ops, "calls": calls}))
        ops.clear()
        calls.clear()

    signal.signal(_DUMP, dump)
    from fastext.cli import main

    sys.settrace(trace)
    return main(argv)


def _session(port: int, shm: bool, frames: int) -> None:
    from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
    from fastext.client import StreamOptions, stream_frames
    from fastext.client.synthetic import scenes, to_pixel_format

    made = [to_pixel_format(rgb, VF.RGB24) for rgb, _ in scenes(416, 416, 8, period=2)]
    opts = StreamOptions(target=f"127.0.0.1:{port}", width=416, height=416, shm=shm, window=16)
    result = asyncio.run(stream_frames(opts, (made[i % len(made)] for i in range(frames))))
    assert result.acked == frames, f"{result.acked} of {frames} frames acknowledged"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedded", action="store_true", help="frames embedded, not by shm")
    parser.add_argument("--short", type=int, default=50)
    parser.add_argument("--long", type=int, default=550)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fastext-bytecodes-") as tmp:
        out = os.path.join(tmp, "ops")
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                out,
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--log-level",
                "INFO",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        try:
            port = _wait_for_port(proc, deadline=time.monotonic() + 300)
            shm = not args.embedded
            _session(port, shm, 20)  # warm-up: first-call costs are not per frame
            for frames in (0, args.short, args.long):
                if frames:
                    _session(port, shm, frames)
                proc.send_signal(_DUMP)
                time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(60)
        short, long_ = (json.loads(Path(f"{out}.{n}").read_text()) for n in (2, 3))
    frames = args.long - args.short
    rows = sorted(
        (
            (long_["ops"].get(k, 0) - short["ops"].get(k, 0)) / frames,
            (long_["calls"].get(k, 0) - short["calls"].get(k, 0)) / frames,
            k,
        )
        for k in set(short["ops"]) | set(long_["ops"])
    )
    rows.reverse()
    print(
        f"bytecodes per frame {sum(r[0] for r in rows):.0f}, "
        f"calls per frame {sum(r[1] for r in rows):.1f}"
    )
    for ops, calls, key in rows[: args.top]:
        if ops >= 0.5:
            print(f"{ops:8.1f} {calls:6.2f}  {key}")
    return 0


def _wait_for_port(proc: subprocess.Popen[str], deadline: float) -> int:
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"the server exited ({proc.wait()}) before serving")
        if "fastext serving on" in line:
            return int(line.split("(port ", 1)[1].split(",", 1)[0])
    raise RuntimeError("the server did not serve in time")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(_serve_traced(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
