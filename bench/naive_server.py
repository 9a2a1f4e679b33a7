"""The simplest correct baseline: one process, decode and classify inside the gRPC handler.

What a typical sample extension does: for each sample, turn the frame into a
Pillow image, ``convert("L")``, average it with numpy, tag dark/light, ack.
Shared memory is mapped once per session.  Correct, but every frame runs in
the event loop of a single process, with glibc's allocator as it comes (what a sample
does; fastext and the bare ceiling keep freed heap).  Run: ``python bench/naive_server.py``
— it prints ``port N`` once listening.
"""

from __future__ import annotations

import asyncio
import io
import mmap
import os

import numpy as np
from _serve import serve  # run as a script: bench/ is on sys.path
from PIL import Image

from fastext._proto import extension_pb2, inferencing_pb2
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF

Msg = extension_pb2.MediaStreamMessage
MODES = {VF.RGB24: "RGB", VF.BGR24: "BGR"}  # what this baseline supports


def classify(image: Image.Image) -> inferencing_pb2.Inference:
    mean = float(np.asarray(image.convert("L")).mean())
    return inferencing_pb2.Inference(
        type=inferencing_pb2.Inference.CLASSIFICATION,
        classification=inferencing_pb2.Classification(
            tag=inferencing_pb2.Tag(value="dark" if mean < 127 else "light", confidence=1.0)
        ),
    )


async def process(requests, context) -> None:
    seq, fmt, shm = 0, None, None
    try:
        async for message in requests:
            seq += 1
            if message.HasField("media_stream_descriptor"):
                desc = message.media_stream_descriptor
                fmt = desc.media_descriptor.video_frame_sample_format
                if desc.HasField("shared_memory_buffer_transfer_properties"):
                    props = desc.shared_memory_buffer_transfer_properties
                    fd = os.open(os.path.join("/dev/shm", props.handle_name), os.O_RDONLY)
                    shm = mmap.mmap(fd, props.length_bytes, prot=mmap.PROT_READ)
                    os.close(fd)
                await context.write(
                    Msg(
                        sequence_number=seq,
                        ack_sequence_number=message.sequence_number,
                        media_stream_descriptor=extension_pb2.MediaStreamDescriptor(
                            extension_identifier="naive"
                        ),
                    )
                )
                continue
            sample = message.media_sample
            if sample.HasField("content_reference"):
                ref = sample.content_reference
                data = shm[ref.address_offset : ref.address_offset + ref.length_bytes]
            else:
                data = sample.content_bytes.bytes
            if fmt.encoding == VF.RAW:
                size = (fmt.dimensions.width, fmt.dimensions.height)
                image = Image.frombuffer("RGB", size, data, "raw", MODES[fmt.pixel_format], 0, 1)
            else:
                image = Image.open(io.BytesIO(data))
            await context.write(
                Msg(
                    sequence_number=seq,
                    ack_sequence_number=message.sequence_number,
                    media_sample=extension_pb2.MediaSample(
                        timestamp=sample.timestamp, inferences=[classify(image)]
                    ),
                )
            )
    finally:
        if shm is not None:
            shm.close()


if __name__ == "__main__":
    asyncio.run(serve(process))
