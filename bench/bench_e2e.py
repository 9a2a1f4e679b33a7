"""End to end through a real server process, each figure beside its baseline.

* shared memory, 416x416 RGB24, 2 streams x 16 frames in flight: fastext with 2
  workers vs the ceiling, a bare grpc.aio server that acks without reading
  (same client, same run); fastext's front-process CPU per frame is recorded.
* embedded 1080p JPEG: fastext with 1 worker vs 2 workers.

Run: ``pytest --benchmark`` (or ``pytest bench/bench_e2e.py --benchmark-only``).
frames/s is ``extra_info.fps``; pytest-benchmark's time is per round of frames.
"""

from __future__ import annotations

import asyncio
import resource

import pytest

from bench.conftest import bare_server, fastext_server
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions, stream_frames
from fastext.client.synthetic import encode, scenes, to_pixel_format

SERVERS = {
    "bare": (bare_server, ()),
    "fastext-2w": (fastext_server, ("--workers", "2")),
    "fastext-1w": (fastext_server, ("--workers", "1")),
}
ROUND_FRAMES = 400  # per stream and round


def _frames(encoding: int, width: int, height: int) -> list[bytes]:
    made = [rgb for rgb, _ in scenes(width, height, 8, period=2)]
    if encoding == VF.RAW:
        return [to_pixel_format(rgb, VF.RGB24) for rgb in made]
    return [encode(rgb, encoding) for rgb in made]


def _run(target: str, frames: list[bytes], width: int, height: int, encoding: int, shm: bool,
         streams: int, window: int, per_stream: int) -> int:
    async def go() -> int:
        opts = [StreamOptions(target=target, width=width, height=height, encoding=encoding,
                              pixel_format=VF.RGB24 if encoding == VF.RAW else VF.NONE, shm=shm,
                              window=window, graph_instance=f"bench-{k}") for k in range(streams)]
        results = await asyncio.gather(*(
            stream_frames(o, (frames[i % len(frames)] for i in range(per_stream))) for o in opts))
        return sum(r.acked for r in results)

    return asyncio.run(go())


def _measure(benchmark, server, **kw) -> None:
    frames = kw.pop("frames")
    per_stream = kw.pop("per_stream", ROUND_FRAMES)
    total = kw["streams"] * per_stream
    before = server.cpu_seconds(), server.children_cpu_seconds(), _own_cpu()
    acked = benchmark.pedantic(_run, args=(server.target, frames),
                               kwargs={**kw, "per_stream": per_stream},
                               rounds=3, iterations=1, warmup_rounds=1)
    after = server.cpu_seconds(), server.children_cpu_seconds(), _own_cpu()
    assert acked == total
    if benchmark.disabled:  # --benchmark-disable: the round ran and every frame was acked
        return
    frames_run = total * (benchmark.stats.stats.rounds + 1)  # + the warm-up round
    per_frame = [round((a - b) / frames_run * 1e6, 1) for a, b in zip(after, before, strict=True)]
    benchmark.extra_info["server"] = server.name
    benchmark.extra_info["fps"] = round(total / benchmark.stats.stats.median, 1)
    benchmark.extra_info["front_cpu_us_per_frame"] = per_frame[0]
    benchmark.extra_info["workers_cpu_us_per_frame"] = per_frame[1]
    benchmark.extra_info["client_cpu_us_per_frame"] = per_frame[2]


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.benchmark(group="e2e shm 416x416 RGB24, 2 streams x 16 in flight")
@pytest.mark.parametrize("key", ["bare", "fastext-2w"])
def bench_shm_416_rgb24(benchmark, servers, key):
    _measure(benchmark, servers[key], frames=_frames(VF.RAW, 416, 416), width=416, height=416,
             encoding=VF.RAW, shm=True, streams=2, window=16)


@pytest.mark.benchmark(group="e2e embedded 1080p JPEG, 2 streams x 8 in flight")
@pytest.mark.parametrize("key", ["fastext-1w", "fastext-2w"])
def bench_jpeg_1080p_workers(benchmark, servers, key):
    _measure(benchmark, servers[key], frames=_frames(VF.JPG, 1920, 1080), width=1920, height=1080,
             encoding=VF.JPG, shm=False, streams=2, window=8, per_stream=60)
