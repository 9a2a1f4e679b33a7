"""Serve one ProcessMediaStream handler the way fastext does (limits lifted, no
SO_REUSEPORT), print ``port N``, stop on SIGTERM: shared by the baseline servers."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from fastext import METHOD_PATH
from fastext._proto.extension_pb2 import MediaStreamMessage as Msg

SERVICE, _, METHOD = METHOD_PATH.strip("/").partition("/")


async def serve(process: Callable[[Any, Any], Awaitable[None]]) -> None:
    limit = 256 * 1024 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    handler = grpc.stream_stream_rpc_method_handler(
        process, request_deserializer=Msg.FromString, response_serializer=Msg.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0.5)
