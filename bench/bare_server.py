"""The ceiling: a grpc.aio MediaGraphExtension server that acks every sample without reading it.

Same method path, same message limits and allocator setting as fastext; it replies to
the descriptor, then answers each sample with its ack and timestamp and no inference.  Run:
``python bench/bare_server.py`` — it prints ``port N`` once listening.
"""

from __future__ import annotations

import asyncio
import sys

from _serve import serve  # run as a script: bench/ is on sys.path

from fastext._proto import extension_pb2
from fastext.malloc import KEEP_MB, keep_freed_memory

Msg = extension_pb2.MediaStreamMessage


async def process(requests, context) -> None:
    seq = 0
    async for message in requests:
        seq += 1
        if message.HasField("media_stream_descriptor"):
            reply = Msg(
                sequence_number=seq,
                ack_sequence_number=message.sequence_number,
                media_stream_descriptor=extension_pb2.MediaStreamDescriptor(
                    extension_identifier="bare"
                ),
            )
        else:
            reply = Msg(
                sequence_number=seq,
                ack_sequence_number=message.sequence_number,
                media_sample=extension_pb2.MediaSample(timestamp=message.media_sample.timestamp),
            )
        await context.write(reply)


if __name__ == "__main__":
    # The ceiling gets fastext's allocator setting too (--malloc-keep-mb's default): with
    # glibc's defaults every large message is fresh pages, and a ceiling must not be
    # lowered by a setting fastext itself changes.
    keep_freed_memory(KEEP_MB)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(process))
    sys.exit(0)
