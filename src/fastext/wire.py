"""The contract's two per-frame messages, encoded by hand.

A sample (client side) and its ack (server side) are the only messages built once
per frame.  Building them as protobuf objects copies a frame's bytes into the
message and again into the serialized string; here the few header bytes are
encoded directly and the frame (or a worker's already serialized inferences) is
joined to them once.  The bytes equal protobuf's ``SerializeToString`` exactly,
zero-valued scalars omitted as proto3 does (tests/test_proto.py compares them).

Field numbers, from proto/: MediaStreamMessage sequence_number = 1,
ack_sequence_number = 2, media_sample = 6; MediaSample timestamp = 1,
content_bytes = 5, content_reference = 6, inferences = 10; ContentBytes bytes = 1;
ContentReference address_offset = 1, length_bytes = 2.
"""

from __future__ import annotations

__all__ = ["sample_message", "varint"]

_VARINT, _LEN = 0, 2  # protobuf wire types


def varint(value: int) -> bytes:
    """``value`` (0 .. 2**64-1) as a base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _scalar(number: int, value: int) -> bytes:
    return varint(number << 3 | _VARINT) + varint(value) if value else b""


def _length(number: int, size: int) -> bytes:
    return varint(number << 3 | _LEN) + varint(size)


def sample_message(sequence_number: int, ack: int, timestamp: int, *,
                   content: bytes | memoryview | None = None,
                   reference: tuple[int, int] | None = None,
                   inferences: bytes = b"") -> bytes:
    """A MediaStreamMessage carrying one MediaSample.

    ``content``: embedded frame bytes; ``reference``: (address_offset, length_bytes)
    into shared memory; ``inferences``: a serialized MediaSample holding only its
    inference list (field 10), as a worker produces it.  At most one of ``content``
    and ``reference``.
    """
    if content is not None and reference is not None:
        raise ValueError("a sample carries content bytes or a reference, not both")
    sample = _scalar(1, timestamp)
    tail: bytes | memoryview = b""
    if content is not None:
        inner = _length(1, len(content)) if len(content) else b""
        sample += _length(5, len(inner) + len(content)) + inner
        tail = content
    elif reference is not None:
        ref = _scalar(1, reference[0]) + _scalar(2, reference[1])
        sample += _length(6, len(ref)) + ref
    head = _scalar(1, sequence_number) + _scalar(2, ack)
    head += _length(6, len(sample) + len(tail) + len(inferences))
    if tail:
        return b"".join((head, sample, tail, inferences))
    return head + sample + inferences
