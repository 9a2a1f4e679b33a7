"""The contract on the wire: method path, field numbers, generated code in step with proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from fastext import METHOD_PATH
from fastext._proto import extension_pb2, inferencing_pb2, media_pb2

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "microsoft.azure.media.live_video_analytics.extensibility.grpc.v1"


# -- an independent encoder: protobuf wire format from field numbers alone ----------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def vfield(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def lfield(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def ffield(number: int, value: float) -> bytes:
    import struct

    return varint(number << 3 | 5) + struct.pack("<f", value)


def test_method_path_is_the_contracts():
    assert METHOD_PATH == f"/{PACKAGE}.MediaGraphExtension/ProcessMediaStream"
    service = extension_pb2.DESCRIPTOR.services_by_name["MediaGraphExtension"]
    assert service.full_name == f"{PACKAGE}.MediaGraphExtension"
    method = service.methods_by_name["ProcessMediaStream"]
    assert method.input_type.full_name == f"{PACKAGE}.MediaStreamMessage"
    assert method.output_type.full_name == f"{PACKAGE}.MediaStreamMessage"


def test_descriptor_message_wire_bytes():
    msg = extension_pb2.MediaStreamMessage(
        sequence_number=1,
        media_stream_descriptor=extension_pb2.MediaStreamDescriptor(
            graph_identifier=extension_pb2.GraphIdentifier(
                media_services_arm_id="arm", graph_instance_name="g", graph_node_name="n"
            ),
            extension_configuration='{"a":1}',
            media_descriptor=media_pb2.MediaDescriptor(
                timescale=90000,
                video_frame_sample_format=media_pb2.VideoFrameSampleFormat(
                    encoding=media_pb2.VideoFrameSampleFormat.RAW,
                    pixel_format=media_pb2.VideoFrameSampleFormat.BGR24,
                    dimensions=media_pb2.Dimensions(width=416, height=300),
                    stride_bytes=1280,
                ),
            ),
            shared_memory_buffer_transfer_properties=extension_pb2.SharedMemoryBufferTransferProperties(
                handle_name="h", length_bytes=5 * 1024 * 1024
            ),
        ),
    )
    graph = lfield(1, b"arm") + lfield(2, b"g") + lfield(3, b"n")
    fmt = (
        vfield(1, 3) + vfield(2, 61) + lfield(3, vfield(1, 416) + vfield(2, 300)) + vfield(4, 1280)
    )
    media = vfield(1, 90000) + lfield(5, fmt)
    shm = lfield(1, b"h") + vfield(2, 5 * 1024 * 1024)
    desc = lfield(1, graph) + lfield(3, b'{"a":1}') + lfield(5, media) + lfield(10, shm)
    expected = vfield(1, 1) + lfield(5, desc)
    assert msg.SerializeToString() == expected
    assert extension_pb2.MediaStreamMessage.FromString(expected) == msg


def test_sample_and_result_wire_bytes():
    ref = extension_pb2.MediaStreamMessage(
        sequence_number=7,
        ack_sequence_number=3,
        media_sample=extension_pb2.MediaSample(
            timestamp=123456789,
            content_reference=media_pb2.ContentReference(address_offset=2**40, length_bytes=519168),
        ),
    )
    sample = vfield(1, 123456789) + lfield(6, vfield(1, 2**40) + vfield(2, 519168))
    assert ref.SerializeToString() == vfield(1, 7) + vfield(2, 3) + lfield(6, sample)

    inf = inferencing_pb2.Inference(
        type=inferencing_pb2.Inference.ENTITY,
        subtype="s",
        inference_id="i",
        related_inferences=["r"],
        sequence_id="q",
        entity=inferencing_pb2.Entity(
            tag=inferencing_pb2.Tag(value="car", confidence=0.5),
            attributes=[inferencing_pb2.Attribute(name="c", value="red", confidence=0.25)],
            box=inferencing_pb2.Rectangle(l=0.5, t=0.25, w=0.125, h=1.0),
            id="e1",
        ),
    )
    tag = lfield(2, b"car") + ffield(3, 0.5)  # Tag has no field 1
    attr = lfield(1, b"c") + lfield(2, b"red") + ffield(3, 0.25)
    box = ffield(1, 0.5) + ffield(2, 0.25) + ffield(3, 0.125) + ffield(4, 1.0)
    entity = lfield(1, tag) + lfield(2, attr) + lfield(3, box) + lfield(4, b"e1")
    want = (
        vfield(1, 3)
        + lfield(2, b"s")
        + lfield(3, b"i")
        + lfield(4, b"r")
        + lfield(7, entity)
        + lfield(14, b"q")
    )
    assert inferencing_pb2.Inference.FromString(want) == inf
    assert inf.SerializeToString() == want

    embedded = extension_pb2.MediaSample(
        timestamp=1, content_bytes=media_pb2.ContentBytes(bytes=b"\x01\x02")
    )
    assert embedded.SerializeToString() == vfield(1, 1) + lfield(5, lfield(1, b"\x01\x02"))


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("NONE", 0),
        ("YUV420P", 20),
        ("RGB565BE", 40),
        ("RGB565LE", 41),
        ("RGB555BE", 42),
        ("RGB555LE", 43),
        ("RGB24", 60),
        ("BGR24", 61),
        ("ARGB", 80),
        ("RGBA", 81),
        ("ABGR", 82),
        ("BGRA", 83),
    ],
)
def test_pixel_format_numbers(name, number):
    assert media_pb2.VideoFrameSampleFormat.PixelFormat.Value(name) == number


def test_enum_numbers():
    enc = media_pb2.VideoFrameSampleFormat.Encoding
    assert [enc.Value(n) for n in ("BMP", "JPG", "PNG", "RAW")] == [0, 1, 2, 3]
    types = inferencing_pb2.Inference.InferenceType
    assert [
        types.Value(n)
        for n in ("AUTO", "CLASSIFICATION", "MOTION", "ENTITY", "TEXT", "EVENT", "OTHER")
    ] == [0, 1, 2, 3, 4, 5, 15]


def test_newest_fields_present():
    fields = inferencing_pb2.Inference.DESCRIPTOR.fields_by_name
    assert fields["sequence_id"].number == 14 and fields["extensions"].number == 15
    assert inferencing_pb2.Entity.DESCRIPTOR.fields_by_name["id"].number == 4
    desc = extension_pb2.MediaStreamDescriptor.DESCRIPTOR.fields_by_name
    assert desc["extension_configuration"].number == 3
    assert inferencing_pb2.Event.DESCRIPTOR.fields_by_name["properties"].number == 7
    assert "value" in inferencing_pb2.Tag.DESCRIPTOR.fields_by_name
    assert [f.number for f in inferencing_pb2.Tag.DESCRIPTOR.fields] == [2, 3]


def test_generated_modules_match_proto_dir(tmp_path):
    """Regenerate from proto/ and compare descriptors with what is installed."""
    pytest.importorskip("grpc_tools")
    out = tmp_path / "set.pb"
    files = ["media.proto", "inferencing.proto", "extension.proto"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--descriptor_set_out={out}",
            *files,
        ],
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    by_name = {f.name: f for f in fresh.file}
    for module in (media_pb2, inferencing_pb2, extension_pb2):
        installed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert _without_json_names(installed) == _without_json_names(by_name[installed.name]), (
            f"{installed.name} drifted from proto/"
        )


def _without_json_names(proto: descriptor_pb2.FileDescriptorProto):
    """protoc's descriptor sets carry derived json_name fields; generated code drops them."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(proto)
    stack = list(copy.message_type)
    while stack:
        message = stack.pop()
        for f in message.field:
            f.ClearField("json_name")
        stack.extend(message.nested_type)
    return copy


def test_generated_imports_are_absolute():
    import inspect

    source = inspect.getsource(extension_pb2)
    assert "from fastext._proto import inferencing_pb2" in source
    assert "\nimport media_pb2" not in source


@pytest.mark.parametrize(
    ("seq", "ack", "ts"), [(1, 1, 0), (2, 5, 90000), (300, 2**40, 2**63), (7, 0, 1)]
)
def test_server_ack_equals_protobuf(seq, ack, ts):
    # The ack the session writes: wire.encode_ack around a worker's serialized inferences.
    from fastext.contract.wire import encode_ack

    inf = inferencing_pb2.Inference(
        type=inferencing_pb2.Inference.CLASSIFICATION,
        classification=inferencing_pb2.Classification(
            tag=inferencing_pb2.Tag(value="dark", confidence=1.0)
        ),
    )
    blob = extension_pb2.MediaSample(inferences=[inf, inf]).SerializeToString()

    def want(inferences: list) -> bytes:
        return extension_pb2.MediaStreamMessage(
            sequence_number=seq,
            ack_sequence_number=ack,
            media_sample=extension_pb2.MediaSample(timestamp=ts, inferences=inferences),
        ).SerializeToString()

    assert encode_ack(seq, ack, ts, blob) == want([inf, inf])
    assert encode_ack(seq, ack, ts, b"") == want([])


@pytest.mark.parametrize(("seq", "ts"), [(2, 0), (3, 90000), (2**33, 2**63), (0, 1)])
@pytest.mark.parametrize(
    "content", [b"", b"\x00", bytes(range(256)) * 600], ids=["empty", "one-byte", "150KB"]
)
def test_hand_encoded_samples_equal_protobuf(seq, ts, content):
    from fastext.contract.wire import sample_message

    embedded = extension_pb2.MediaSample(timestamp=ts)
    embedded.content_bytes.bytes = content
    want = extension_pb2.MediaStreamMessage(sequence_number=seq, media_sample=embedded)
    assert sample_message(seq, 0, ts, content=content) == want.SerializeToString()
    assert sample_message(seq, 0, ts, content=memoryview(content)) == want.SerializeToString()
    for offset, length in [(0, 0), (0, 519168), (2**40, 7), (4096, 0)]:
        referenced = extension_pb2.MediaSample(timestamp=ts)
        referenced.content_reference.address_offset = offset
        referenced.content_reference.length_bytes = length
        want = extension_pb2.MediaStreamMessage(sequence_number=seq, media_sample=referenced)
        assert sample_message(seq, 0, ts, reference=(offset, length)) == want.SerializeToString()
    with pytest.raises(ValueError):
        sample_message(seq, 0, ts, content=content, reference=(0, 1))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\xff\xff", "broken field key at byte 0"),
        (b"\x08", "sequence_number (byte 0) is cut short"),
        (b"\x32\x05\x08", "media_sample (byte 0) claims 5 bytes but only 1 follow"),
        (b"\x32\x04\x2a\x02\x0a\x05", "media_sample.content_bytes.bytes (byte 4) claims 5 bytes"),
        (
            b"\x2a\x04\x12\x02\xff\xfe",
            "media_stream_descriptor.extension_identifier (byte 2) is not valid UTF-8",
        ),
        (b"\x0b", "sequence_number (byte 0) has wire type 3"),
    ],
)
def test_parse_request_names_the_damage(data, needle):
    from fastext.front.protocol import Unparsed, parse_request

    result = parse_request(data)
    assert isinstance(result, Unparsed) and result.size == len(data)
    assert needle in result.reason
    text = result.describe(7)
    assert text.startswith("message 7 of this call is not a valid MediaStreamMessage (")
    assert "Error" not in text and "<class" not in text


def test_parse_request_passes_messages_through():
    from fastext.front.protocol import parse_request

    msg = extension_pb2.MediaStreamMessage(sequence_number=2**64 - 1, ack_sequence_number=3)
    assert parse_request(msg.SerializeToString()) == msg
    assert parse_request(b"") == extension_pb2.MediaStreamMessage()
