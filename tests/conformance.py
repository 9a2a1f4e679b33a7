"""An independent conformance client for any MediaGraphExtension server.

Written from the contract alone: it uses gRPC, the generated messages and its
own pixel packing — nothing of fastext's server or client.  Usage:

    python tests/conformance.py HOST:PORT

Exit 0 when every check passes; otherwise each failure is printed.
"""

from __future__ import annotations

import io
import mmap
import os
import sys
import threading

import grpc

from fastext._proto import extension_pb2 as ext
from fastext._proto import media_pb2 as media

PATH = (
    "/microsoft.azure.media.live_video_analytics.extensibility.grpc.v1"
    ".MediaGraphExtension/ProcessMediaStream"
)
VF = media.VideoFrameSampleFormat
LIGHT, DARK = (250, 190, 60), (20, 30, 120)


def luma_tag(rgb: tuple[int, int, int]) -> str:
    y = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "dark" if y < 127 else "light"


def pack(rgb: tuple[int, int, int], order: str, w: int, h: int, stride: int) -> bytes:
    px = bytes({"r": rgb[0], "g": rgb[1], "b": rgb[2], "a": 255}[c] for c in order)
    row = px * w
    return (row + b"\xee" * (stride - len(row))) * h


def jpeg(rgb: tuple[int, int, int], w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def descriptor(w, h, enc, pf, stride=0, shm=None):
    d = ext.MediaStreamDescriptor(
        graph_identifier=ext.GraphIdentifier(
            graph_instance_name="conformance", graph_node_name="x"
        ),
        media_descriptor=media.MediaDescriptor(
            timescale=90000,
            video_frame_sample_format=VF(
                encoding=enc,
                pixel_format=pf,
                dimensions=media.Dimensions(width=w, height=h),
                stride_bytes=stride,
            ),
        ),
    )
    if shm:
        d.shared_memory_buffer_transfer_properties.handle_name = shm[0]
        d.shared_memory_buffer_transfer_properties.length_bytes = shm[1]
    return ext.MediaStreamMessage(sequence_number=1, media_stream_descriptor=d)


def session(target: str, first, samples, expect: list[str], errors: list[str], label: str) -> None:
    msgs = [first] + [
        ext.MediaStreamMessage(sequence_number=i + 2, media_sample=s) for i, s in enumerate(samples)
    ]
    with grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    ) as ch:
        call = ch.stream_stream(
            PATH,
            request_serializer=ext.MediaStreamMessage.SerializeToString,
            response_deserializer=ext.MediaStreamMessage.FromString,
        )
        try:
            replies = list(call(iter(msgs), timeout=60))
        except grpc.RpcError as exc:
            errors.append(f"{label}: call failed: {exc.code().name} {exc.details()}")
            return
    if (
        not replies
        or replies[0].WhichOneof("payload") != "media_stream_descriptor"
        or replies[0].ack_sequence_number != 1
    ):
        errors.append(f"{label}: first reply is not a descriptor acking 1")
        return
    seqs = [r.sequence_number for r in replies]
    if seqs != list(range(1, len(replies) + 1)):
        errors.append(f"{label}: server sequence numbers are not 1, 2, 3...: {seqs[:8]}")
    acks = [r.ack_sequence_number for r in replies[1:]]
    if sorted(acks) != list(range(2, len(samples) + 2)):
        errors.append(f"{label}: acks {sorted(acks)[:8]}... are not one per sample")
    for r in replies[1:]:
        i = r.ack_sequence_number - 2
        if not 0 <= i < len(samples):
            continue
        if r.media_sample.timestamp != samples[i].timestamp:
            errors.append(f"{label}: sample {i + 2} timestamp not echoed")
        got = [x.classification.tag.value for x in r.media_sample.inferences]
        if got != [expect[i]]:
            errors.append(f"{label}: sample {i + 2} tagged {got}, expected {[expect[i]]}")


def embedded_case(target, errors, label, w, h, enc, pf, order="", stride=0):
    colours = [LIGHT, DARK] * 5
    if enc == VF.RAW:
        data = [pack(c, order, w, h, stride or w * len(order)) for c in colours]
    else:
        data = [jpeg(c, w, h) for c in colours]
    samples = [
        ext.MediaSample(timestamp=1000 * (i + 1), content_bytes=media.ContentBytes(bytes=d))
        for i, d in enumerate(data)
    ]
    session(
        target,
        descriptor(w, h, enc, pf, stride),
        samples,
        [luma_tag(c) for c in colours],
        errors,
        label,
    )


def shm_case(target, errors, label="RGB24 shared memory"):
    w, h = 320, 240
    frame = w * h * 3
    colours = [LIGHT, DARK, DARK, LIGHT] * 3
    name = f"conformance_{os.getpid()}_{threading.get_ident()}"
    path = f"/dev/shm/{name}"
    size = frame * len(colours)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as m:
            for i, c in enumerate(colours):
                m[i * frame : (i + 1) * frame] = pack(c, "rgb", w, h, w * 3)
            samples = [
                ext.MediaSample(
                    timestamp=7 * (i + 1),
                    content_reference=media.ContentReference(
                        address_offset=i * frame, length_bytes=frame
                    ),
                )
                for i in range(len(colours))
            ]
            session(
                target,
                descriptor(w, h, VF.RAW, VF.RGB24, shm=(name, size)),
                samples,
                [luma_tag(c) for c in colours],
                errors,
                label,
            )
    finally:
        os.close(fd)
        os.unlink(path)


def run(target: str) -> list[str]:
    errors: list[str] = []
    embedded_case(target, errors, "RGB24 embedded", 64, 48, VF.RAW, VF.RGB24, "rgb")
    embedded_case(
        target, errors, "BGR24 padded", 61, 33, VF.RAW, VF.BGR24, "bgr", stride=61 * 3 + 13
    )
    embedded_case(target, errors, "BGRA embedded", 64, 48, VF.RAW, VF.BGRA, "bgra")
    embedded_case(target, errors, "JPEG embedded", 320, 240, VF.JPG, VF.NONE)
    shm_case(target, errors)
    threads = [
        threading.Thread(
            target=embedded_case,
            args=(target, errors, f"stream {k}", 96, 64, VF.RAW, VF.BGR24, "bgr"),
        )
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def main() -> int:
    errors = run(sys.argv[1])
    for e in errors:
        print("FAIL", e)
    print("conformance:", "passed" if not errors else f"{len(errors)} failures")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
