"""The contract's two per-frame messages, encoded by hand, and the sample parsed natively.

A sample (client side) and its ack (server side) are the only messages built once
per frame.  Building them as protobuf objects copies a frame's bytes into the
message and again into the serialized string; here the few header bytes are
encoded directly and the frame (or a worker's already serialized inferences) is
joined to them once.  The bytes equal protobuf's ``SerializeToString`` exactly,
zero-valued scalars omitted as proto3 does (tests/contract/test_proto.py compares them).

The server's per-frame path uses the native codec (``fastext._native._wire``; this
is the only module that imports it):

* :func:`parse_sample` ``(data) -> (seq, timestamp, kind, a, b) | None`` reads the
  canonical sample (sequence and ack numbers, a media_sample with a timestamp and
  at most one content) without building a protobuf object or copying the frame.
  ``kind`` is :data:`CONTENT_NONE`; :data:`CONTENT_BYTES`, the frame being
  ``data[a:a + b]``; or :data:`CONTENT_REFERENCE`, ``a`` = address_offset and
  ``b`` = length_bytes.  None means "not the canonical sample" (a descriptor,
  inferences, unknown fields, repeated submessages, malformed bytes, ...): parse
  ``data`` with protobuf (``protocol.parse_request``), which gives protobuf's
  exact semantics and errors.  Whenever it returns a tuple, protobuf reads the
  same values from the same bytes (tests/contract/test_wire.py holds it to that).
* :func:`encode_ack` ``(seq, ack, timestamp, inferences) -> bytes`` is
  :func:`sample_message` without content (the ack of one sample, carrying its
  timestamp and a worker's serialized inferences, ``b""`` for none), and
  :func:`encode_acks` ``(first_seq, [(ack, timestamp, inferences), ...])`` builds a
  batch's acks in one call, numbered ``first_seq``, ``first_seq + 1``, ...  Values
  are uint64: outside 0 .. 2**64-1 raises OverflowError.

They are the native functions themselves (no Python frame in between: this is the
per-frame cost of the front, measured by bench/bench_front_cost.py); their signatures are
in ``_native/_wire.pyi``.

Field numbers, from proto/: MediaStreamMessage sequence_number = 1,
ack_sequence_number = 2, media_sample = 6; MediaSample timestamp = 1,
content_bytes = 5, content_reference = 6, inferences = 10; ContentBytes bytes = 1;
ContentReference address_offset = 1, length_bytes = 2.
"""

from __future__ import annotations

from typing import Any, Final

from fastext._native import _wire

__all__ = [
    "CONTENT_BYTES",
    "CONTENT_NONE",
    "CONTENT_REFERENCE",
    "encode_ack",
    "encode_acks",
    "find_damage",
    "parse_sample",
    "sample_message",
    "varint",
]

CONTENT_NONE: Final = 0  # parse_sample's kind: the sample has no content
CONTENT_BYTES: Final = 1  # content_bytes: the frame is data[a:a + b]
CONTENT_REFERENCE: Final = 2  # content_reference: a = address_offset, b = length_bytes

parse_sample = _wire.parse_sample
encode_ack = _wire.encode_ack
encode_acks = _wire.encode_acks

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5  # protobuf wire types
_FIXED = {_I64: 8, _I32: 4}
_MAX_DEPTH = 32  # this contract nests 6 deep; deeper (unknown) nesting is not walked


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


def sample_message(
    sequence_number: int,
    ack: int,
    timestamp: int,
    *,
    content: bytes | memoryview | None = None,
    reference: tuple[int, int] | None = None,
    inferences: bytes = b"",
) -> bytes:
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


def find_damage(data: bytes, descriptor: Any) -> str | None:
    """Where bytes that failed to parse as ``descriptor``'s message first go wrong.

    Only for error messages (a request that did not parse): it walks the wire format,
    into the message fields ``descriptor`` (a protobuf ``Descriptor``) knows, and
    returns a short reason naming the field and byte, or None when it finds nothing.
    """
    return _walk(memoryview(data), 0, len(data), descriptor, "", 0)


def _read_varint(data: memoryview, pos: int, end: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


def _walk(
    data: memoryview, pos: int, end: int, descriptor: Any, path: str, depth: int
) -> str | None:
    while pos < end:
        start = pos
        key = _read_varint(data, pos, end)
        if key is None or key[0] >> 3 == 0:
            return f"{path or 'the message'} has a broken field key at byte {start}"
        (number, wire_type), pos = divmod(key[0], 8), key[1]
        field = descriptor.fields_by_number.get(number) if descriptor is not None else None
        name = f"{path}{field.name if field is not None else f'field {number}'}"
        if wire_type == _VARINT:
            value = _read_varint(data, pos, end)
            if value is None:
                return f"{name} (byte {start}) is cut short"
            pos = value[1]
        elif wire_type in _FIXED:
            pos += _FIXED[wire_type]
            if pos > end:
                return f"{name} (byte {start}) is cut short"
        elif wire_type == _LEN:
            size = _read_varint(data, pos, end)
            if size is None:
                return f"the length of {name} (byte {start}) is cut short"
            length, pos = size
            if length > end - pos:
                return f"{name} (byte {start}) claims {length} bytes but only {end - pos} follow"
            inner = getattr(field, "message_type", None)
            if inner is not None and depth < _MAX_DEPTH:
                found = _walk(data, pos, pos + length, inner, f"{name}.", depth + 1)
                if found:
                    return found
            elif field is not None and field.type == field.TYPE_STRING:
                try:
                    bytes(data[pos : pos + length]).decode("utf-8")
                except UnicodeDecodeError:
                    return f"{name} (byte {start}) is not valid UTF-8"
            pos += length
        else:  # 3 and 4 (groups) are not part of this contract; 6 and 7 do not exist
            return (
                f"{name} (byte {start}) has wire type {wire_type}, which this contract never uses"
            )
    return None
