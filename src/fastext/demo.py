"""``fastext demo``: a server and a client in one command, on real-looking frames.

Starts fastext on a free loopback port, then streams day and night street
scenes through it — RAW by shared memory, RAW embedded, JPEG embedded, and
several streams at once — printing inferences and frames per second, and
checking every tag against the scene it was made from.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
from dataclasses import dataclass

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions, stream_frames
from fastext.client.synthetic import encode, scenes, to_pixel_format
from fastext.config import Config
from fastext.contract.metadata import sample_to_json
from fastext.front.server import ExtensionServer, new_event_loop

__all__ = ["run_demo"]


@dataclass(frozen=True)
class Pass:
    title: str
    width: int
    height: int
    encoding: int
    pixel_format: int
    shm: bool
    streams: int = 1


PASSES = (
    Pass("RAW RGB24 416x416, shared memory", 416, 416, VF.RAW, VF.RGB24, True),
    Pass("RAW BGR24 416x416, embedded", 416, 416, VF.RAW, VF.BGR24, False),
    Pass("JPEG 1280x720, embedded", 1280, 720, VF.JPG, VF.NONE, False),
    Pass("RAW BGRA 640x360, shared memory, 4 streams", 640, 360, VF.RAW, VF.BGRA, True, 4),
)


def _frames(p: Pass, distinct: int = 20) -> list[tuple[bytes, bool]]:
    made = []
    for rgb, light in scenes(p.width, p.height, distinct, period=5):
        data = to_pixel_format(rgb, p.pixel_format) if p.encoding == VF.RAW else encode(rgb, p.encoding)
        made.append((data, light))
    return made


async def _one_pass(port: int, p: Pass, frames_per_stream: int, show: int) -> tuple[int, int]:
    frames = _frames(p)
    expected = [("light" if light else "dark") for _, light in frames]
    opts = [StreamOptions(target=f"127.0.0.1:{port}", width=p.width, height=p.height,
                          encoding=p.encoding, pixel_format=p.pixel_format, shm=p.shm,
                          graph_instance=f"demo-{i}") for i in range(p.streams)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(*(
        stream_frames(o, (f for f, _ in itertools.islice(itertools.cycle(frames), frames_per_stream)))
        for o in opts))
    elapsed = loop.time() - started
    wrong = 0
    for result in results:
        for seq, sample in result.samples.items():
            tags = [i.classification.tag.value for i in sample.inferences]
            if tags != [expected[(seq - 2) % len(frames)]]:
                wrong += 1
    acked = sum(r.acked for r in results)
    print(f"\n== {p.title}: {acked} frames in {elapsed:.2f} s = {acked / elapsed:.0f} frames/s, "
          f"p50 ack latency {statistics.median(t for r in results for t in r.latencies_s) * 1e3:.2f} ms, "
          f"wrong tags {wrong}")
    first = results[0]
    seqs = sorted(first.samples)
    for seq in seqs[:: max(1, len(seqs) // max(1, show))][:show]:
        print(f"   seq {seq}: {sample_to_json(first.samples[seq])}")
    return acked, wrong


async def _demo(config: Config, frames: int, show: int) -> int:
    server = ExtensionServer(config)
    port = await server.start()
    print(f"fastext demo: server on 127.0.0.1:{port} (workers={config.workers}, "
          f"batch_size={config.batch_size})")
    total = wrong = 0
    try:
        for p in PASSES:
            acked, bad = await _one_pass(port, p, frames, show)
            total += acked
            wrong += bad
    finally:
        await server.stop(drain_s=2.0)
    expected = sum(frames * p.streams for p in PASSES)
    ok = total == expected and wrong == 0
    print("\n" + json.dumps({"frames": expected, "acked": total, "wrong_tags": wrong, "ok": ok}))
    return 0 if ok else 1


def run_demo(config: Config, frames: int = 200, show: int = 3) -> int:
    """Run every pass; exit status 0 when every frame was acked with the right tag."""
    config = config.replace(bind="127.0.0.1:0")
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_demo(config, frames, show))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(Config()))
