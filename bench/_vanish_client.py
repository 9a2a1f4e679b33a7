"""A client process made to vanish: streams shared-memory frames until it is SIGKILLed.

Usage: ``python bench/_vanish_client.py TARGET GRAPH_INSTANCE ACKS``.  After ACKS acks
it prints ``acked A sent S`` once frames are in flight (S > A) and goes on sending, so the
kill lands mid-stream.  Bounded on its own too: it stops after ``_MAX_FRAMES`` frames,
or when the server stops answering for the client's ack timeout.
"""

from __future__ import annotations

import asyncio
import sys

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions, StreamResult, stream_frames
from fastext.client.synthetic import scene, to_pixel_format

_MAX_FRAMES = 200_000
_SIZE = 416


def main(target: str, graph_instance: str, acks: int) -> None:
    frame = to_pixel_format(scene(_SIZE, _SIZE, 0, light=True), VF.RGB24)
    result = StreamResult()
    told = False

    def on_ack(seq: int, sample: object) -> None:
        nonlocal told
        # The client counts an ack before this callback. A window's acks may all land
        # before the sender refills it (sent == acked): tell at the first ack after
        # ``acks`` that leaves frames in flight.
        if not told and result.acked >= acks and result.sent > result.acked:
            told = True
            print(f"acked {result.acked} sent {result.sent}", flush=True)

    opts = StreamOptions(
        target=target,
        width=_SIZE,
        height=_SIZE,
        shm=True,
        window=16,
        graph_instance=graph_instance,
        on_ack=on_ack,
    )
    asyncio.run(stream_frames(opts, (frame for _ in range(_MAX_FRAMES)), result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
