"""fastext.backend.execute: the one payload fetch both lanes use, how a batch's frames end, and
serialized outcomes."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fastext._proto.extension_pb2 import MediaSample
from fastext._proto.inferencing_pb2 import Classification, Inference, Tag
from fastext.backend.execute import FrameFormat, fetch_payload, run_batch, serialized
from fastext.backend.segments import segment_name
from fastext.backend.shm import Arena, ArenaRef, ClientMemory, ShmRef
from fastext.client.synthetic import encode
from fastext.outcomes import Outcome, Unprocessed
from fastext.processors import Processor
from fastext.vision.frames import Encoding, Frame, PixelFormat
from tests.helpers import ORANGE, solid


def test_fetch_payload_reads_each_kind_in_place_or_says_why_not(tmp_path) -> None:
    (tmp_path / "client").write_bytes(bytes(range(256)) * 16)
    memory = ClientMemory("client", 4096, directory=str(tmp_path))
    arena = Arena.create(segment_name("exectest"), 4096)
    try:
        arena.write(100, b"arena!")
        embedded = memoryview(b"embedded")
        assert fetch_payload(embedded, None) is embedded
        view = fetch_payload(ShmRef(10, 4), memory)
        assert isinstance(view, np.ndarray) and bytes(view) == bytes([10, 11, 12, 13])
        got = fetch_payload(ArenaRef(100, 6), None, arena)
        assert isinstance(got, np.ndarray) and bytes(got) == b"arena!"
        # Every failure is the frame's outcome (INVALID, with the reason), never an exception.
        for payload, mem, ar, words in [
            (ShmRef(4090, 10), memory, None, "outside"),
            (ShmRef(0, 4), None, None, "client file"),
            (ArenaRef(4090, 10), None, arena, "outside"),
            (ArenaRef(0, 4), None, None, "arena"),
        ]:
            failed = fetch_payload(payload, mem, ar)
            assert isinstance(failed, Unprocessed) and failed.kind is Outcome.INVALID
            assert words in failed.reason, failed
        os.truncate(tmp_path / "client", 8)  # the client cut its file after the handshake
        failed = fetch_payload(ShmRef(10, 4), memory)
        assert isinstance(failed, Unprocessed) and failed.kind is Outcome.INVALID
        assert "was cut" in failed.reason
    finally:
        del view, got
        memory.close()
        arena.close()


def test_serialized_outcomes_are_what_the_ack_splices_in() -> None:
    tag = Inference(
        type=Inference.CLASSIFICATION,
        classification=Classification(tag=Tag(value="dark", confidence=1.0)),
    )
    failed = Unprocessed(Outcome.ERROR, "no frame")
    out = serialized([[tag], [], failed])
    assert MediaSample.FromString(out[0]).inferences == [tag]
    assert out[1] == b"" and out[2] is failed


class _Broken(Processor):
    """Raises, or returns one result too few: either way the server's fault."""

    name = "broken"
    needs = "raw"

    def __init__(self, miscount: bool = False) -> None:
        super().__init__()
        self.miscount = miscount

    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        if self.miscount:
            return [[] for _ in frames[1:]]
        raise RuntimeError("the model broke")


def test_run_batch_tells_a_bad_frame_from_a_failing_processor() -> None:
    fmt = FrameFormat(Encoding.JPG, PixelFormat.NONE, 0, 0, 0)
    image = encode(solid(ORANGE, 16, 16), Encoding.JPG)
    cut = Unprocessed(Outcome.INVALID, "the client's file was cut")  # as fetch_payload says
    for processor, words in [(_Broken(), "the model broke"), (_Broken(True), "returned 1")]:
        got = run_batch(processor, fmt, [image, b"not an image", cut, image])
        assert [r.kind for r in got] == [  # type: ignore[union-attr]
            Outcome.ERROR,
            Outcome.INVALID,
            Outcome.INVALID,
            Outcome.ERROR,
        ]
        assert got[2] is cut and words in got[0].reason  # type: ignore[union-attr]
