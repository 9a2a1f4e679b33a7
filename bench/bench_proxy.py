"""fastext through nginx (deploy/proxy/nginx.conf, as shipped) against direct, same run.

One ``fastext serve --workers 1`` process; nginx (one worker process) in front of it.
Rounds alternate direct / nginx (the order flipped each pair) so the machine's drift
hits both alike.  ``extra_info``: median frames/s of each, the throughput cost, and the
CPU per frame of nginx's worker (from /proc/<pid>/stat), of fastext's front and of the
client, each side.

Run: ``pytest bench/bench_proxy.py --benchmark-only`` (needs Debian's nginx; skipped
without it).  With ``--benchmark-disable`` (CI's smoke) one short pair runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.conftest import ServerProcess, _cpu, fastext_server
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions, StreamResult, stream_frames
from fastext.client.synthetic import encode, scenes, to_pixel_format

_spec = importlib.util.spec_from_file_location(
    "fastext_proxy_script", Path(__file__).resolve().parents[1] / "scripts/proxy.py"
)
assert _spec is not None and _spec.loader is not None
proxy = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = proxy
_spec.loader.exec_module(proxy)

SERVERS = {"fastext": (fastext_server, ("--workers", "1"))}
MODES = {  # name: (encoding, width, height, frames per stream and round)
    "embedded-416-rgb24": (VF.RAW, 416, 416, 500),
    "embedded-1080p-jpeg": (VF.JPG, 1920, 1080, 120),
}


@pytest.fixture(scope="module")
def nginx(servers: dict[str, ServerProcess]) -> Iterator[Any]:
    if proxy.nginx_binary() is None:
        pytest.skip(
            "nginx is not installed: CI (.ci/run) installs Debian's nginx when it runs "
            "as root; elsewhere `apt-get install nginx-light`"
        )
    with proxy.start_nginx([servers["fastext"].target], worker_processes=1) as running:
        yield running


def _frames(encoding: int, width: int, height: int) -> list[bytes]:
    made = [rgb for rgb, _ in scenes(width, height, 8, period=2)]
    return [
        to_pixel_format(rgb, VF.RGB24) if encoding == VF.RAW else encode(rgb, encoding)
        for rgb in made
    ]


def _round(
    target: str, mode: str, frames: list[bytes], streams: int, per_stream: int
) -> list[StreamResult]:
    encoding, width, height, _ = MODES[mode]

    async def go() -> list[StreamResult]:
        opts = [
            StreamOptions(
                target=target,
                width=width,
                height=height,
                encoding=encoding,
                pixel_format=VF.RGB24 if encoding == VF.RAW else VF.NONE,
                window=16,
                graph_instance=f"bench-{k}",
            )
            for k in range(streams)
        ]
        return list(
            await asyncio.gather(
                *(
                    stream_frames(o, (frames[i % len(frames)] for i in range(per_stream)))
                    for o in opts
                )
            )
        )

    return asyncio.run(go())


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _nginx_cpu(nginx: Any) -> float:
    return sum(_cpu(pid) for pid in nginx.worker_pids())


@pytest.mark.parametrize("mode", list(MODES))
def bench_nginx_vs_direct(benchmark, servers, nginx, mode):
    benchmark.group = f"through nginx vs direct: {mode}, 4 streams x 16 in flight"
    server = servers["fastext"]
    streams = 4
    per_stream = 20 if benchmark.disabled else MODES[mode][3] // streams
    total = streams * per_stream
    frames = _frames(*MODES[mode][:3])  # made before any clock starts
    seen: dict[str, dict[str, list[float]]] = {
        k: {"fps": [], "front": [], "client": [], "nginx": []} for k in ("direct", "nginx")
    }
    flip = [False]

    def pair() -> None:
        order = [("direct", server.target), ("nginx", nginx.target)]
        flip[0] = not flip[0]
        for key, target in order if flip[0] else order[::-1]:
            before = server.cpu_seconds(), _own_cpu(), _nginx_cpu(nginx)
            start = time.perf_counter()
            results = _round(target, mode, frames, streams, per_stream)
            elapsed = time.perf_counter() - start
            after = server.cpu_seconds(), _own_cpu(), _nginx_cpu(nginx)
            assert sum(r.acked for r in results) == total
            # every call through nginx reached the one instance behind it
            assert {c.instance for r in results for c in r.calls} != {""}
            seen[key]["fps"].append(total / elapsed)
            for name, a, b in zip(("front", "client", "nginx"), after, before, strict=True):
                seen[key][name].append((a - b) / total * 1e6)

    benchmark.pedantic(
        pair,
        rounds=1 if benchmark.disabled else 8,
        iterations=1,
        warmup_rounds=0 if benchmark.disabled else 1,
    )
    if benchmark.disabled:
        return
    # the first pair is the warm-up round: not counted
    med = {k: {m: statistics.median(v[1:]) for m, v in d.items()} for k, d in seen.items()}
    benchmark.extra_info.update(
        {
            "mode": mode,
            "streams": streams,
            "window": 16,
            "frame_bytes": len(frames[0]),
            "fps_direct": round(med["direct"]["fps"], 1),
            "fps_nginx": round(med["nginx"]["fps"], 1),
            "throughput_cost": round(1 - med["nginx"]["fps"] / med["direct"]["fps"], 4),
            "nginx_cpu_us_per_frame": round(med["nginx"]["nginx"], 1),
            "nginx_cpu_us_per_mb": round(med["nginx"]["nginx"] / (len(frames[0]) / 1e6), 1),
            "front_cpu_us_direct": round(med["direct"]["front"], 1),
            "front_cpu_us_nginx": round(med["nginx"]["front"], 1),
            "client_cpu_us_direct": round(med["direct"]["client"], 1),
            "client_cpu_us_nginx": round(med["nginx"]["client"], 1),
            "fps_rounds_direct": [round(x) for x in seen["direct"]["fps"][1:]],
            "fps_rounds_nginx": [round(x) for x in seen["nginx"]["fps"][1:]],
            "load_average_1min": round(os.getloadavg()[0], 2),  # the machine is shared
        }
    )
