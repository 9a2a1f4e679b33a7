"""A minimal, independent MediaGraphExtension server, for testing the client.

Written from the contract only (gRPC + generated messages; nothing of fastext's
server): a synchronous grpc server that answers the descriptor, then acks each
sample with one ENTITY inference.  Behaviours for failure tests:
``abort_after`` ends the call with ABORTED after N samples; ``stall_after``
stops acking (but keeps the call open) after N samples; ``end_after`` ends the
call with OK right after acking N samples, however many the client still has;
``refuse`` ends every call with UNAUTHENTICATED before reading anything; the first
``lose_calls`` calls read ``lose_after`` samples, ack the first half of them and end
with UNAVAILABLE (a server going away).  ``metadata`` records each call's invocation
metadata, ``calls`` every message each call received and ``acked`` the timestamps
each call acknowledged.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc

from fastext._proto import extension_pb2 as ext
from fastext._proto import inferencing_pb2 as inf

SERVICE = "microsoft.azure.media.live_video_analytics.extensibility.grpc.v1.MediaGraphExtension"


class MinimalServer:
    def __init__(
        self,
        abort_after: int = 0,
        stall_after: int = 0,
        end_after: int = 0,
        refuse: bool = False,
        lose_calls: int = 0,
        lose_after: int = 0,
    ) -> None:
        self.abort_after, self.stall_after, self.end_after = abort_after, stall_after, end_after
        self.refuse = refuse
        self.lose_calls, self.lose_after = lose_calls, lose_after
        self.metadata: list[dict[str, str]] = []
        self.calls: list[list[ext.MediaStreamMessage]] = []
        self.acked: list[list[int]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)],
        )
        handler = grpc.stream_stream_rpc_method_handler(
            self._process,
            request_deserializer=ext.MediaStreamMessage.FromString,
            response_serializer=ext.MediaStreamMessage.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"ProcessMediaStream": handler}),)
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def __enter__(self) -> MinimalServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.stop(grace=1).wait(5)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _process(self, requests, context):
        self.metadata.append(dict(context.invocation_metadata()))
        received: list[ext.MediaStreamMessage] = []
        acked: list[int] = []
        self.calls.append(received)
        self.acked.append(acked)
        lose = len(self.calls) <= self.lose_calls
        if self.refuse:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "minimal server: refused")
        out_seq = 0
        count = 0
        for message in requests:
            received.append(message)
            out_seq += 1
            if message.HasField("media_stream_descriptor"):
                yield ext.MediaStreamMessage(
                    sequence_number=out_seq,
                    ack_sequence_number=message.sequence_number,
                    media_stream_descriptor=ext.MediaStreamDescriptor(
                        extension_identifier="minimal"
                    ),
                )
                continue
            count += 1
            self.samples += 1
            if self.abort_after and count > self.abort_after:
                context.abort(grpc.StatusCode.ABORTED, "minimal server: enough frames")
            if lose and count > self.lose_after // 2:
                if count >= self.lose_after:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "minimal server: going away")
                continue  # read, never acked
            if self.stall_after and count > self.stall_after:
                self._stop.wait(30)  # keep the call open, ack nothing
                return
            entity = inf.Inference(
                type=inf.Inference.ENTITY,
                entity=inf.Entity(
                    tag=inf.Tag(value="thing", confidence=0.5),
                    box=inf.Rectangle(l=0.1, t=0.2, w=0.3, h=0.4),
                ),
            )
            acked.append(message.media_sample.timestamp)
            yield ext.MediaStreamMessage(
                sequence_number=out_seq,
                ack_sequence_number=message.sequence_number,
                media_sample=ext.MediaSample(
                    timestamp=message.media_sample.timestamp, inferences=[entity]
                ),
            )
            if self.end_after and count >= self.end_after:
                return
