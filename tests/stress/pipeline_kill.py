"""Stress: 4 streams x 2,000 frames through 2 workers that are SIGKILLed at random points.

Run as a script (in a subprocess, under a deadline, by tests/backend/test_pipeline_stress.py).
Prints one JSON line of counts; exits 0 only if every frame of every stream was
acknowledged exactly once with the right tag.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions, stream_frames
from fastext.client.synthetic import to_pixel_format
from fastext.config import Config
from fastext.front.server import ExtensionServer

STREAMS, FRAMES, KILLS = 4, 2000, 6
LIGHT, DARK = (250, 190, 60), (20, 30, 120)


def expected(seq: int) -> str:
    return "light" if (seq * 7919) % 5 < 2 else "dark"  # an irregular pattern


async def killer(server: ExtensionServer, rng: random.Random, done: asyncio.Event) -> int:
    kills = 0
    while kills < KILLS and not done.is_set():
        await asyncio.sleep(rng.uniform(0.15, 0.5))
        pids = server.backend.worker_pids()  # type: ignore[attr-defined]
        if pids:
            os.kill(rng.choice(pids), signal.SIGKILL)
            kills += 1
    return kills


async def main(seed: int) -> int:
    rng = random.Random(seed)
    server = ExtensionServer(
        Config(bind="127.0.0.1:0", workers=2, batch_size=4, batch_delay_ms=2.0, log_level="ERROR")
    )
    port = await server.start()
    frames = {
        tag: to_pixel_format(__import__("numpy").full((48, 64, 3), rgb, "uint8"), VF.RGB24)
        for tag, rgb in (("light", LIGHT), ("dark", DARK))
    }
    done = asyncio.Event()
    kill_task = asyncio.create_task(killer(server, rng, done))

    def source():
        for i in range(FRAMES):
            yield frames[expected(i + 2)]

    opts = [
        StreamOptions(
            target=f"127.0.0.1:{port}",
            width=64,
            height=48,
            shm=k % 2 == 0,
            window=24,
            graph_instance=f"stress-{k}",
            ack_timeout_s=60,
        )
        for k in range(STREAMS)
    ]
    results = await asyncio.gather(
        *(stream_frames(o, source()) for o in opts), return_exceptions=True
    )
    done.set()
    kills = await kill_task
    backend = server.backend
    report = {
        "seed": seed,
        "kills": kills,
        "retried_batches": backend.retried,  # type: ignore
        "abandoned_frames": backend.abandoned,
        "streams": [],
    }  # type: ignore
    ok = True
    for r in results:
        if isinstance(r, BaseException):
            report["streams"].append({"error": repr(r)})
            ok = False
            continue
        wrong = sum(
            1
            for seq, s in r.samples.items()
            if [i.classification.tag.value for i in s.inferences] != [expected(seq)]
        )
        exact = sorted(r.samples) == list(range(2, FRAMES + 2))
        report["streams"].append({"sent": r.sent, "acked": r.acked, "wrong": wrong, "exact": exact})
        ok &= r.sent == r.acked == FRAMES and wrong == 0 and exact
    await server.stop(drain_s=5.0)
    leftovers = [n for n in os.listdir("/dev/shm") if n.startswith(f"fastext_{os.getpid()}_")]
    report["leftover_segments"] = leftovers
    ok &= not leftovers and kills > 0
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)))
