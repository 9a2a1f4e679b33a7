"""The contract's session rules as pure functions: no sockets, no processes.

* :func:`validate_descriptor` turns a client's first message into an immutable
  :class:`StreamSpec` or raises :class:`DescriptorError` naming the problem.
* :func:`descriptor_reply` builds the server's first message (acks: :func:`fastext.contract.wire.encode_ack`).
* :func:`parse_request` is the server's request deserializer: it never raises, so
  bytes that are not a message reach the session as :class:`Unparsed`, and the
  session ends the call with a status naming the message (after its acks).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastext._proto import extension_pb2, media_pb2
from fastext.contract import wire
from fastext.errors import DescriptorError
from fastext.vision.frames import (
    MAX_DIMENSION,
    Encoding,
    PixelFormat,
    default_stride,
    raw_frame_size,
)

__all__ = [
    "EXTENSION_IDENTIFIER",
    "StreamSpec",
    "Unparsed",
    "descriptor_reply",
    "parse_request",
    "validate_descriptor",
    "validate_handle_name",
]

EXTENSION_IDENTIFIER = "fastext"
MediaStreamMessage = extension_pb2.MediaStreamMessage
_ENCODINGS = frozenset(int(e) for e in Encoding)
_PIXEL_FORMATS = frozenset(int(p) for p in PixelFormat)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What one session serves, validated once at descriptor time."""

    encoding: int
    pixel_format: int
    width: int
    height: int
    stride: int  # RAW: bytes from one row to the next; 0 for encoded images
    frame_bytes: int  # RAW: bytes a frame covers (YUV420P: all three planes); 0 otherwise
    timescale: int
    shm_name: str | None  # a plain file name in /dev/shm, or None for embedded frames
    shm_length: int
    extension_configuration: str
    stream_name: str  # for logs: graph instance/node or extension identifier

    @property
    def raw(self) -> bool:
        return self.encoding == Encoding.RAW

    def describe(self) -> str:
        fmt = Encoding(self.encoding).name
        if self.raw:
            fmt = f"RAW {PixelFormat(self.pixel_format).name} stride {self.stride}"
        mode = (
            f"shared memory {self.shm_name} ({self.shm_length} bytes)"
            if self.shm_name
            else "embedded"
        )
        return f"{fmt} {self.width}x{self.height}, {mode}"


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A request whose bytes are not a MediaStreamMessage (what :func:`parse_request`
    returns instead of raising)."""

    size: int
    reason: str

    def describe(self, position: int) -> str:
        """The status text for the ``position``-th message (1-based) of a call."""
        return (
            f"message {position} of this call is not a valid MediaStreamMessage "
            f"({self.reason}; {self.size} bytes)"
        )


def parse_request(data: bytes) -> MediaStreamMessage | Unparsed:
    """The request deserializer: a message, or :class:`Unparsed` saying what is wrong.

    gRPC would end the call with UNKNOWN and the decoder's class name if this raised;
    the session decides instead.  Good messages cost what ``FromString`` costs.
    """
    try:
        return MediaStreamMessage.FromString(data)
    except Exception:  # DecodeError; anything else the decoder raises is as bad
        damage = wire.find_damage(data, MediaStreamMessage.DESCRIPTOR)
        return Unparsed(len(data), damage or "its bytes do not parse as protobuf")


def validate_handle_name(name: str) -> str:
    """A shared-memory handle must be a plain file name: no path, no traversal."""
    if not name:
        raise DescriptorError("INVALID_ARGUMENT", "shared memory handle_name is empty")
    if "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
        raise DescriptorError(
            "INVALID_ARGUMENT",
            f"shared memory handle_name {name!r} must be a plain file name in /dev/shm "
            "(no '/', no '..')",
        )
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise DescriptorError(
            "INVALID_ARGUMENT", "shared memory handle_name is longer than 255 bytes"
        )
    return name


def _stream_name(desc: extension_pb2.MediaStreamDescriptor) -> str:
    which = desc.WhichOneof("stream_identifier")
    if which == "graph_identifier":
        g = desc.graph_identifier
        return "/".join(p for p in (g.graph_instance_name, g.graph_node_name) if p) or "graph"
    if which == "extension_identifier":
        return desc.extension_identifier or "extension"
    return "unnamed"


def _validate_format(fmt: media_pb2.VideoFrameSampleFormat) -> tuple[int, int, int, int, int]:
    encoding, pixel_format = int(fmt.encoding), int(fmt.pixel_format)
    if encoding not in _ENCODINGS:
        raise DescriptorError("INVALID_ARGUMENT", f"unknown encoding value {encoding}")
    if pixel_format not in _PIXEL_FORMATS:
        raise DescriptorError("INVALID_ARGUMENT", f"unknown pixel_format value {pixel_format}")
    width, height = int(fmt.dimensions.width), int(fmt.dimensions.height)
    for label, value in (("width", width), ("height", height)):
        if not 0 < value <= MAX_DIMENSION:
            raise DescriptorError(
                "OUT_OF_RANGE", f"dimensions.{label} is {value}; it must be 1..{MAX_DIMENSION}"
            )
    if encoding != Encoding.RAW:
        return encoding, pixel_format, width, height, 0
    if pixel_format == PixelFormat.NONE:
        raise DescriptorError("INVALID_ARGUMENT", "RAW encoding needs a pixel_format (got NONE)")
    row = default_stride(pixel_format, width)
    stride = int(fmt.stride_bytes) or row  # widely used clients omit the stride
    if stride < row:
        raise DescriptorError(
            "INVALID_ARGUMENT",
            f"stride_bytes {stride} is shorter than one row of {width} "
            f"{PixelFormat(pixel_format).name} pixels ({row} bytes)",
        )
    return encoding, pixel_format, width, height, stride


def validate_descriptor(message: extension_pb2.MediaStreamMessage) -> StreamSpec:
    """Check a client's first message field by field; the reason names the field."""
    if message.WhichOneof("payload") != "media_stream_descriptor":
        raise DescriptorError(
            "INVALID_ARGUMENT",
            "the first message of a stream must carry a media_stream_descriptor",
        )
    desc = message.media_stream_descriptor
    media = desc.media_descriptor
    if media.WhichOneof("media_sample_format") != "video_frame_sample_format":
        raise DescriptorError(
            "INVALID_ARGUMENT", "media_descriptor.video_frame_sample_format is missing"
        )
    encoding, pixel_format, width, height, stride = _validate_format(
        media.video_frame_sample_format
    )
    frame_bytes = raw_frame_size(pixel_format, width, height, stride) if stride else 0
    shm_name, shm_length = None, 0
    if desc.WhichOneof("data_transfer_properties") == "shared_memory_buffer_transfer_properties":
        props = desc.shared_memory_buffer_transfer_properties
        shm_name = validate_handle_name(props.handle_name)
        shm_length = int(props.length_bytes)
        if shm_length == 0:
            raise DescriptorError("INVALID_ARGUMENT", "shared memory length_bytes is 0")
        if frame_bytes > shm_length:
            raise DescriptorError(
                "OUT_OF_RANGE",
                f"one {width}x{height} frame needs {frame_bytes} bytes but the shared memory "
                f"is {shm_length} bytes",
            )
    return StreamSpec(
        encoding=encoding,
        pixel_format=pixel_format,
        width=width,
        height=height,
        stride=stride,
        frame_bytes=frame_bytes,
        timescale=int(media.timescale),
        shm_name=shm_name,
        shm_length=shm_length,
        extension_configuration=desc.extension_configuration,
        stream_name=_stream_name(desc),
    )


def descriptor_reply(sequence_number: int, ack: int, spec: StreamSpec) -> MediaStreamMessage:
    """The server's first message: its identifier and the timescale it will echo."""
    return MediaStreamMessage(
        sequence_number=sequence_number,
        ack_sequence_number=ack,
        media_stream_descriptor=extension_pb2.MediaStreamDescriptor(
            extension_identifier=EXTENSION_IDENTIFIER,
            media_descriptor=media_pb2.MediaDescriptor(timescale=spec.timescale),
        ),
    )
