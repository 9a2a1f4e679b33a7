"""fastext.backend.execute: the one payload fetch both lanes use, and serialized outcomes."""

from __future__ import annotations

import os

import numpy as np

from fastext._proto.extension_pb2 import MediaSample
from fastext._proto.inferencing_pb2 import Classification, Inference, Tag
from fastext.backend.execute import fetch_payload, serialized
from fastext.backend.segments import segment_name
from fastext.backend.shm import Arena, ArenaRef, ClientMemory, ShmRef


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
        # Every failure is the frame's outcome (a str), never an exception.
        for payload, mem, ar, words in [
            (ShmRef(4090, 10), memory, None, "outside"),
            (ShmRef(0, 4), None, None, "client file"),
            (ArenaRef(4090, 10), None, arena, "outside"),
            (ArenaRef(0, 4), None, None, "arena"),
        ]:
            reason = fetch_payload(payload, mem, ar)
            assert isinstance(reason, str) and words in reason, reason
        os.truncate(tmp_path / "client", 8)  # the client cut its file after the handshake
        reason = fetch_payload(ShmRef(10, 4), memory)
        assert isinstance(reason, str) and "was cut" in reason
    finally:
        del view, got
        memory.close()
        arena.close()


def test_serialized_outcomes_are_what_the_ack_splices_in() -> None:
    tag = Inference(type=Inference.CLASSIFICATION,
                    classification=Classification(tag=Tag(value="dark", confidence=1.0)))
    out = serialized([[tag], [], "no frame"])
    assert MediaSample.FromString(out[0]).inferences == [tag]
    assert out[1] == b"" and out[2] == "no frame"
