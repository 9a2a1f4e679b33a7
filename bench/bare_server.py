"""The ceiling: a grpc.aio MediaGraphExtension server that acks every sample without reading it.

Same method path, same message limits as fastext; it replies to the descriptor,
then answers each sample with its ack and timestamp and no inference.  Run:
``python bench/bare_server.py`` — it prints ``port N`` once listening.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from fastext import METHOD_PATH
from fastext._proto import extension_pb2

Msg = extension_pb2.MediaStreamMessage
SERVICE, _, METHOD = METHOD_PATH.strip("/").partition("/")


async def process(requests, context) -> None:
    seq = 0
    async for message in requests:
        seq += 1
        if message.HasField("media_stream_descriptor"):
            reply = Msg(sequence_number=seq, ack_sequence_number=message.sequence_number,
                        media_stream_descriptor=extension_pb2.MediaStreamDescriptor(
                            extension_identifier="bare"))
        else:
            reply = Msg(sequence_number=seq, ack_sequence_number=message.sequence_number,
                        media_sample=extension_pb2.MediaSample(
                            timestamp=message.media_sample.timestamp))
        await context.write(reply)


async def main() -> None:
    limit = 256 * 1024 * 1024
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit),
                                      ("grpc.so_reuseport", 0)])
    handler = grpc.stream_stream_rpc_method_handler(
        process, request_deserializer=Msg.FromString, response_serializer=Msg.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0.5)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
    sys.exit(0)
