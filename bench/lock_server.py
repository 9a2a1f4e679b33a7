"""The design of Microsoft's YOLOv3 gRPC sample for Live Video Analytics, as a baseline.

One process, a synchronous ``grpc.server`` with a thread pool (a thread per stream),
one ONNX Runtime session with its default threads, shared by every stream behind a
lock, frame by frame. Each frame is preprocessed the usual Python way: Pillow's
``Image.frombuffer``, a bicubic resize keeping the aspect ratio pasted on a grey
canvas (the letterbox), ``np.array(..., float32) / 255``, transpose to NCHW; the
output is decoded and suppressed with numpy (greedy NMS per class). The sample's
structure, not its code: written here for the bench. Preprocessing and decoding run
outside the lock (Pillow and numpy release the GIL for part of their work), so
streams overlap everywhere but in the runtime call.

Run: ``python bench/lock_server.py MODEL.onnx`` — prints ``port N`` once listening.
The model's output must be in YOLOv8's layout (``[1, 4 + classes, anchors]``, boxes
as centre and size in input pixels), as :func:`fastext.models.toy.yolo_like` and
Ultralytics' exports are.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort
from PIL import Image

from fastext import METHOD_PATH
from fastext._proto import extension_pb2, inferencing_pb2
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF

Msg = extension_pb2.MediaStreamMessage
SERVICE, _, METHOD = METHOD_PATH.strip("/").partition("/")
MODES = {VF.RGB24: "RGB", VF.BGR24: "BGR"}  # what this baseline supports
THRESHOLD, IOU, MAX_DETECTIONS = 0.25, 0.45, 300  # fastext's defaults for a detector


class Detector:
    def __init__(self, path: str) -> None:
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.height, self.width = int(model_input.shape[2]), int(model_input.shape[3])
        self.lock = threading.Lock()

    def letterbox(self, image: Image.Image) -> tuple[np.ndarray, float, int, int]:
        iw, ih = image.size
        scale = min(self.width / iw, self.height / ih)
        nw, nh = int(iw * scale), int(ih * scale)
        resized = image.resize((nw, nh), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (self.width, self.height), (128, 128, 128))
        left, top = (self.width - nw) // 2, (self.height - nh) // 2
        canvas.paste(resized, (left, top))
        data = np.array(canvas, dtype=np.float32) / 255.0
        return np.expand_dims(data.transpose(2, 0, 1), 0), scale, left, top

    def detect(self, image: Image.Image) -> list[inferencing_pb2.Inference]:
        tensor, scale, left, top = self.letterbox(image)
        with self.lock:
            (output,) = self.session.run(None, {self.input_name: tensor})
        return self.decode(output[0], scale, left, top, image.size)

    def decode(
        self, rows: np.ndarray, scale: float, left: int, top: int, size: tuple[int, int]
    ) -> list[inferencing_pb2.Inference]:
        boxes, scores = rows[:4].T, rows[4:].T  # [A, 4] cx cy w h, [A, C]
        classes = scores.argmax(1)
        best = scores[np.arange(len(classes)), classes]
        keep = best >= THRESHOLD
        boxes, best, classes = boxes[keep], best[keep], classes[keep]
        xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
        chosen = nms(xyxy + (classes * 4096.0)[:, None], best, IOU)[:MAX_DETECTIONS]
        iw, ih = size
        found = []
        for k in chosen:
            x1 = min(max((xyxy[k, 0] - left) / scale, 0.0), iw)
            y1 = min(max((xyxy[k, 1] - top) / scale, 0.0), ih)
            x2 = min(max((xyxy[k, 2] - left) / scale, 0.0), iw)
            y2 = min(max((xyxy[k, 3] - top) / scale, 0.0), ih)
            found.append(
                inferencing_pb2.Inference(
                    type=inferencing_pb2.Inference.InferenceType.ENTITY,
                    subtype="objectDetection",
                    entity=inferencing_pb2.Entity(
                        tag=inferencing_pb2.Tag(
                            value=f"class{int(classes[k])}", confidence=float(best[k])
                        ),
                        box=inferencing_pb2.Rectangle(
                            l=x1 / iw, t=y1 / ih, w=(x2 - x1) / iw, h=(y2 - y1) / ih
                        ),
                    ),
                )
            )
        return found


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression: indices kept, best score first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = scores.argsort()[::-1]
    kept = []
    while order.size:  # bounded: each pass removes at least the box it keeps
        i = order[0]
        kept.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return kept


def handler(detector: Detector):  # type: ignore[no-untyped-def]
    def process(requests, context):  # type: ignore[no-untyped-def]
        seq, fmt, shm = 0, None, None
        try:
            for message in requests:
                seq += 1
                if message.HasField("media_stream_descriptor"):
                    desc = message.media_stream_descriptor
                    fmt = desc.media_descriptor.video_frame_sample_format
                    if desc.HasField("shared_memory_buffer_transfer_properties"):
                        props = desc.shared_memory_buffer_transfer_properties
                        fd = os.open(os.path.join("/dev/shm", props.handle_name), os.O_RDONLY)
                        shm = mmap.mmap(fd, props.length_bytes, prot=mmap.PROT_READ)
                        os.close(fd)
                    yield Msg(
                        sequence_number=seq,
                        ack_sequence_number=message.sequence_number,
                        media_stream_descriptor=extension_pb2.MediaStreamDescriptor(
                            extension_identifier="lock"
                        ),
                    )
                    continue
                sample = message.media_sample
                if sample.HasField("content_reference"):
                    ref = sample.content_reference
                    data = shm[ref.address_offset : ref.address_offset + ref.length_bytes]
                else:
                    data = sample.content_bytes.bytes
                size = (fmt.dimensions.width, fmt.dimensions.height)
                image = Image.frombuffer("RGB", size, data, "raw", MODES[fmt.pixel_format], 0, 1)
                yield Msg(
                    sequence_number=seq,
                    ack_sequence_number=message.sequence_number,
                    media_sample=extension_pb2.MediaSample(
                        timestamp=sample.timestamp, inferences=detector.detect(image)
                    ),
                )
        finally:
            if shm is not None:
                shm.close()

    return process


def main() -> None:
    detector = Detector(sys.argv[1])
    limit = 256 * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    method = grpc.stream_stream_rpc_method_handler(
        handler(detector),
        request_deserializer=Msg.FromString,
        response_serializer=Msg.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: method}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0.5).wait()


if __name__ == "__main__":
    main()
