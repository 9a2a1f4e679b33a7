"""fastext.backend.records: every record kind round trips; out-of-range values; malformed input."""

from __future__ import annotations

import struct
from contextlib import nullcontext
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastext.backend import records
from fastext.backend.records import (
    BATCH,
    CLOSE,
    DONE,
    OPEN,
    READY,
    SRC_ARENA,
    SRC_CLIENT,
    STOP,
    Open,
    pack_batch,
    pack_close,
    pack_done,
    pack_open,
    pack_ready,
    pack_stop,
    unpack_batch,
    unpack_close,
    unpack_done,
    unpack_open,
    unpack_ready,
)
from fastext.outcomes import Outcome, Unprocessed

# portable: record layouts, little-endian and packed on every target (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

INVALID, ERROR = Unprocessed(Outcome.INVALID, "no frame"), Unprocessed(Outcome.ERROR, "")
#: Every kind a frame without inferences can end as.
UNPROCESSED_KINDS = [k for k in Outcome if k not in (Outcome.INFERRED, Outcome.EMPTY)]
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
OPENS = [
    Open(7, 0, 1, 1920, 1080, 5760, "lva_shm_cam1", 64 << 20, '{"processor": "brightness"}'),
    Open(U32, 255, 255, U32, U32, U32, None, U64, ""),  # every field at its largest
    Open(0, 0, 0, 0, 0, 0, "caméra/ß", 0, '{"processor": "motion", "note": "日本"}'),
]


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("o", OPENS, ids=["typical", "largest", "non-ascii"])
def test_records_open_round_trips(o: Open) -> None:
    buf = pack_open(o)
    assert buf[0] == OPEN
    assert unpack_open(buf) == o


def test_records_open_empty_shm_name_means_none() -> None:
    # No file (embedded frames) is sent as an empty name and comes back as None.
    o = OPENS[0]._replace(shm_name="")
    assert unpack_open(pack_open(o)).shm_name is None


@pytest.mark.parametrize("count", [0, 1, 64])
def test_records_batch_round_trips(count: int) -> None:
    refs = [(SRC_ARENA if i % 2 else SRC_CLIENT, i * (1 << 33), U64 - i) for i in range(count)]
    buf = pack_batch(U32, U64, refs)
    assert buf[0] == BATCH
    assert unpack_batch(buf) == (U32, U64, refs)


@pytest.mark.parametrize(
    ("pack", "kind", "unpack", "value"),
    [
        (lambda: pack_close(12345), CLOSE, unpack_close, 12345),
        (lambda: pack_close(U32), CLOSE, unpack_close, U32),
        (lambda: pack_ready(4242), READY, unpack_ready, 4242),
        (pack_stop, STOP, unpack_close, 0),
    ],
    ids=["close", "close-largest", "ready", "stop"],
)
def test_records_session_records_round_trip(
    pack: object, kind: int, unpack: object, value: int
) -> None:
    buf = pack()  # type: ignore[operator]
    assert buf[0] == kind
    assert unpack(buf) == value  # type: ignore[operator]


def test_records_done_round_trips_results_and_reasons() -> None:
    outcomes: list[bytes | Unprocessed] = [
        b"\x52\x03abc",
        ERROR,
        b"",
        Unprocessed(Outcome.INVALID, "décodage impossible"),
        b"\x00" * 70000,
    ]
    buf = pack_done(U64, outcomes, processing_us=1234)
    assert buf[0] == DONE
    batch_id, got, processing_us = unpack_done(buf)
    assert (batch_id, got, processing_us) == (U64, outcomes, 1234)
    assert [type(o) for o in got] == [bytes, Unprocessed, bytes, Unprocessed, bytes]


@pytest.mark.parametrize("kind", UNPROCESSED_KINDS, ids=lambda k: k.label)
@pytest.mark.parametrize("count", [1, 3], ids=["one-frame", "batch"])
def test_records_done_round_trips_every_kind(kind: Outcome, count: int) -> None:
    # The kind travels, not only the reason: a processing error must reach the front as
    # one, never as a bad sample.  (One frame: the front's single-unpack path.)
    outcomes: list[bytes | Unprocessed] = [Unprocessed(kind, f"why {kind.name}")] * count
    _, got, _ = unpack_done(pack_done(5, outcomes))
    assert got == outcomes
    assert all(type(o) is Unprocessed and o.kind is kind for o in got)


def _outcome() -> st.SearchStrategy[bytes | Unprocessed]:
    return st.one_of(
        st.binary(max_size=40),
        st.builds(Unprocessed, st.sampled_from(UNPROCESSED_KINDS), st.text(max_size=20)),
    )


# database=None: no .hypothesis/ folder in the tree (as in tests/contract/test_wire.py).
@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(_outcome(), max_size=6), st.integers(0, U64), st.integers(0, U32))
def test_records_done_round_trips_any_mix_of_kinds(
    outcomes: list[bytes | Unprocessed], batch_id: int, processing_us: int
) -> None:
    got = unpack_done(pack_done(batch_id, outcomes, processing_us))
    assert got == (batch_id, outcomes, processing_us)
    assert [type(o) for o in got[1]] == [type(o) for o in outcomes]  # b"" is not a reason
    assert [o.kind for o in got[1] if isinstance(o, Unprocessed)] == [
        o.kind for o in outcomes if isinstance(o, Unprocessed)
    ]


@pytest.mark.parametrize("kind", [Outcome.INFERRED, Outcome.EMPTY], ids=["inferred", "empty"])
def test_records_done_refuses_a_processed_kind_with_a_reason(kind: Outcome) -> None:
    # INFERRED and EMPTY travel as inference bytes; a reason under their kind is a bug.
    with pytest.raises(struct.error):
        pack_done(1, [Unprocessed(kind, "no")])


@pytest.mark.parametrize("count", [1, 2], ids=["one-frame", "batch"])
@pytest.mark.parametrize("code", [Outcome.EMPTY.value, max(Outcome) + 1, 255])
def test_records_done_with_an_unknown_outcome_code_raises(count: int, code: int) -> None:
    buf = bytearray(pack_done(1, [INVALID] * count))
    buf[20] = code  # the first outcome's code
    with pytest.raises(struct.error):
        unpack_done(bytes(buf))


def test_records_done_of_no_frames() -> None:
    assert unpack_done(pack_done(3, [])) == (3, [], 0)


def test_records_kinds_are_distinct() -> None:
    kinds = [OPEN, BATCH, CLOSE, STOP, READY, DONE]
    assert len(set(kinds)) == len(kinds) and all(0 < k < 256 for k in kinds)
    assert set(records.__all__) >= {"OPEN", "BATCH", "CLOSE", "STOP", "READY", "DONE"}


# -- out-of-range values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (0, 0),
        (U32, U32),
        (U32 + 1, U32),
        (10**15, U32),
    ],
)
def test_records_done_clamps_processing_time(given: int, stored: int) -> None:
    # A batch longer than ~71 minutes records the largest u32, not a wrapped value.
    assert unpack_done(pack_done(1, [b"x"], processing_us=given))[2] == stored


@pytest.mark.parametrize(
    "make",
    [
        lambda: pack_open(OPENS[0]._replace(session=U32 + 1)),
        lambda: pack_open(OPENS[0]._replace(width=-1)),
        lambda: pack_open(OPENS[0]._replace(encoding=256)),
        lambda: pack_open(OPENS[0]._replace(shm_length=U64 + 1)),
        lambda: pack_batch(1, U64 + 1, []),
        lambda: pack_batch(1, 1, [(SRC_CLIENT, U64 + 1, 1)]),
        lambda: pack_batch(1, 1, [(256, 0, 1)]),
        lambda: pack_close(-1),
        lambda: pack_ready(U32 + 1),
        lambda: pack_done(-1, []),
        lambda: pack_done(1, [], processing_us=-1),
    ],
    ids=[
        "session",
        "width",
        "encoding",
        "shm-length",
        "batch-id",
        "offset",
        "source",
        "close",
        "ready",
        "done-batch-id",
        "negative-time",
    ],
)
def test_records_other_out_of_range_values_raise_instead_of_wrapping(make: object) -> None:
    with pytest.raises(struct.error):
        make()  # type: ignore[operator]


def test_records_shm_name_length_is_bounded_not_truncated() -> None:
    # The name's length is a u16: 65535 bytes fit whole; one more is refused at
    # packing, never cut to fit.
    longest = OPENS[0]._replace(shm_name="n" * 0xFFFF)
    assert unpack_open(pack_open(longest)) == longest
    with pytest.raises(struct.error):
        pack_open(OPENS[0]._replace(shm_name="n" * 0x10000))


# -- malformed input -----------------------------------------------------------------------


def _header_cuts(buf: bytes, header: int) -> list[bytes]:
    return [buf[:n] for n in range(header)]


@pytest.mark.parametrize(
    ("buf", "unpack", "header"),
    [
        (pack_open(OPENS[0]), unpack_open, 40),
        (pack_batch(1, 2, [(SRC_CLIENT, 3, 4)]), unpack_batch, 20),
        (pack_close(1), unpack_close, 8),
        (pack_ready(1), unpack_ready, 8),
        (pack_done(1, [b"abc"]), unpack_done, 20),
    ],
    ids=["open", "batch", "close", "ready", "done"],
)
def test_records_short_header_raises_struct_error(buf: bytes, unpack: object, header: int) -> None:
    for cut in _header_cuts(buf, header):
        with pytest.raises(struct.error):
            unpack(cut)  # type: ignore[operator]


def test_records_batch_with_fewer_refs_than_its_count_raises() -> None:
    buf = pack_batch(1, 2, [(SRC_CLIENT, 3, 4), (SRC_ARENA, 5, 6)])
    for n in range(20, len(buf)):
        with pytest.raises(struct.error):
            unpack_batch(buf[:n])


def test_records_invalid_utf8_in_open_raises() -> None:
    buf = bytearray(pack_open(OPENS[0]._replace(shm_name="ab")))
    buf[40] = 0xFF  # the name's first byte
    with pytest.raises(UnicodeDecodeError):
        unpack_open(bytes(buf))


def test_records_invalid_utf8_in_a_done_reason_is_replaced() -> None:
    # A reason is for a log line: undecodable bytes become U+FFFD rather than fail the batch.
    buf = bytearray(pack_done(1, [Unprocessed(Outcome.ERROR, "ab")]))
    buf[-1] = 0xFF
    assert unpack_done(bytes(buf))[1] == [Unprocessed(Outcome.ERROR, "a\ufffd")]


@pytest.mark.parametrize(
    ("buf", "unpack", "header"),
    [
        (pack_open(OPENS[0]), unpack_open, 40),
        (pack_done(1, [b"abc", INVALID]), unpack_done, 20),
    ],
    ids=["open", "done"],
)
def test_records_truncated_tail_raises_rather_than_decoding_short(
    buf: bytes, unpack: object, header: int
) -> None:
    # OPEN's name and processor, DONE's outcomes: every cut inside them is an error,
    # not a shorter name or result.
    for n in range(header, len(buf)):
        with pytest.raises(struct.error):
            unpack(buf[:n])  # type: ignore[operator]


@pytest.mark.parametrize(
    "outcome",
    [b"", b"\x52\x03abc", ERROR, Unprocessed(Outcome.INVALID, "décodage impossible")],
    ids=["empty", "inferences", "empty-reason", "reason"],
)
def test_records_done_of_one_frame_round_trips(outcome: bytes | Unprocessed) -> None:
    buf = pack_done(7, [outcome], processing_us=99)
    assert unpack_done(buf) == (7, [outcome], 99)
    with pytest.raises(struct.error):  # cut inside the outcome: refused, as for any count
        unpack_done(buf[:-1])


def test_records_batch_of_one_frame_round_trips() -> None:
    ref = (SRC_CLIENT, U64, U64 - 1)
    assert unpack_batch(pack_batch(U32, U64, [ref])) == (U32, U64, [ref])


# -- the one-frame DONE's single unpack vs the general loop -------------------------------


def _decoded(buf: bytes, general: bool) -> object:
    """unpack_done's answer for ``buf`` (or the type of what it raised), by its one-frame
    shortcut where it applies, or by the general loop however many frames (``general``:
    the shortcut's size test can never pass)."""
    with mock.patch.object(records, "_DONE1_SIZE", 1 << 62) if general else nullcontext():
        try:
            batch_id, outcomes, processing_us = unpack_done(buf)
        except Exception as exc:  # noqa: BLE001 - which error is part of the answer
            return type(exc)
    return (
        batch_id,
        [(type(o), o) if isinstance(o, bytes) else (o.kind, o.reason) for o in outcomes],
        processing_us,
    )


# database=None: no .hypothesis/ folder in the tree (as in tests/contract/test_wire.py).
@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_outcome(), max_size=4), st.integers(0, U64), st.integers(0, U32))
def test_records_done_shortcut_decodes_as_the_general_loop(
    outcomes: list[bytes | Unprocessed], batch_id: int, processing_us: int
) -> None:
    buf = pack_done(batch_id, outcomes, processing_us)
    fast = _decoded(buf, general=False)
    assert fast == _decoded(buf, general=True)
    assert isinstance(fast, tuple) and len(fast[1]) == len(outcomes)


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(0, 255), st.binary(max_size=24), st.integers(-3, 3), st.integers(0, 2))
def test_records_done_shortcut_decodes_any_one_frame_record_as_the_general_loop(
    code: int, data: bytes, skew: int, count: int
) -> None:
    """Any code (unknown ones too), any bytes (invalid UTF-8 reasons too), a length that
    lies by ``skew``, a count of 0-2: the shortcut answers (or raises) as the loop does."""
    head = struct.pack("<BxxxIQI", records.DONE, 5, 9, count)
    buf = head + struct.pack("<BxxxI", code, max(0, len(data) + skew)) + data
    assert _decoded(buf, general=False) == _decoded(buf, general=True)
