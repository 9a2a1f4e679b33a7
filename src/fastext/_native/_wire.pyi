"""Type stub for the native sample parser and ack encoder (private: import fastext.wire)."""

from collections.abc import Sequence

from typing_extensions import Buffer

def parse_sample(data: Buffer, /) -> tuple[int, int, int, int, int] | None: ...
def encode_ack(
    sequence_number: int, ack_sequence_number: int, timestamp: int, inferences: Buffer, /
) -> bytes: ...
def encode_acks(first_seq: int, acks: Sequence[tuple[int, int, Buffer]], /) -> list[bytes]: ...
