"""The records front and workers exchange over the rings (little-endian structs).

Front → worker (submit ring), in order per worker:

* ``OPEN``  a session: its frame format, the client's shared-memory file (if
  any) and its processor as JSON.  Sent before the first batch a worker gets.
* ``BATCH`` frames of one session: (source, offset, size) each — source is the
  client's file or the server's arena.  Only references travel, never pixels.
* ``CLOSE`` a session: the worker drops its processor and unmaps the file.
  Rings are FIFO, so no frame of a session is processed after its close.
* ``STOP``  the worker exits.

Worker → front (completion ring): ``READY`` once its kernels are warm (and its models
loaded), ``MODEL_RUN`` for each call of a model's runtime (which model, how many frames
of any sessions, how long: for the metrics), and
``DONE`` for each batch: per frame, an :class:`~fastext.outcomes.Outcome` code, then
bytes: code 0 (INFERRED) for any processed frame, its serialized inferences following
(none: EMPTY); any other code for a frame without inferences, the reason following.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from fastext.outcomes import Outcome, Unprocessed

__all__ = [
    "BATCH",
    "CLOSE",
    "DONE",
    "MODEL_RUN",
    "OPEN",
    "READY",
    "SRC_ARENA",
    "SRC_CLIENT",
    "STOP",
    "batch_session",
    "pack_model_run",
    "unpack_model_run",
    "Open",
    "pack_batch",
    "pack_close",
    "pack_done",
    "pack_open",
    "pack_ready",
    "pack_stop",
    "unpack_batch",
    "unpack_close",
    "unpack_done",
    "unpack_open",
    "unpack_ready",
]

OPEN, BATCH, CLOSE, STOP = 1, 2, 3, 4
READY, DONE, MODEL_RUN = 10, 11, 12
SRC_CLIENT, SRC_ARENA = 0, 1

_OPEN = struct.Struct(
    "<BxxxIBBxxIIIQHxxI"
)  # kind session enc pf w h stride shm_len name_len cfg_len
_BATCH = struct.Struct("<BxxxIQI")  # kind session batch_id count
_REF = struct.Struct("<BxxxxxxxQQ")  # source offset size
_BATCH1 = struct.Struct(_BATCH.format + _REF.format[1:])  # a batch of one frame
_SESSION = struct.Struct("<BxxxI")  # CLOSE: kind session; READY: kind pid
_DONE = struct.Struct("<BxxxIQI")  # kind processing_us batch_id count
_OUTCOME = struct.Struct("<BxxxI")  # outcome code, length
_MODEL_RUN = struct.Struct("<BxxxIII")  # kind model_index frames inference_us
_DONE1 = struct.Struct(_DONE.format + _OUTCOME.format[1:])  # DONE of one frame, before its bytes
_DONE1_SIZE, _unpack_done1 = _DONE1.size, _DONE1.unpack_from  # read per frame
_PROCESSED = Outcome.INFERRED.value  # 0: a processed frame's inferences follow (none: EMPTY)
_UNPROCESSED = frozenset(Outcome) - {Outcome.INFERRED, Outcome.EMPTY}
_BY_CODE = {int(kind): kind for kind in _UNPROCESSED}  # a DONE's code -> its kind


class Open(NamedTuple):
    session: int
    encoding: int
    pixel_format: int
    width: int
    height: int
    stride: int
    shm_name: str | None
    shm_length: int
    processor: str  # JSON: {"processor": name, ...parameters}


def _check_length(buf: bytes, need: int, kind: str) -> None:
    """A record shorter than its own lengths say is corrupt: raise, as a short header
    does (struct.error), rather than decode a shorter string."""
    if len(buf) < need:
        raise struct.error(f"{kind} record of {len(buf)} bytes, its lengths need {need}")


def pack_open(o: Open) -> bytes:
    name = (o.shm_name or "").encode()
    cfg = o.processor.encode()
    head = _OPEN.pack(
        OPEN,
        o.session,
        o.encoding,
        o.pixel_format,
        o.width,
        o.height,
        o.stride,
        o.shm_length,
        len(name),
        len(cfg),
    )
    return head + name + cfg


def unpack_open(buf: bytes) -> Open:
    (_, session, enc, pf, w, h, stride, shm_len, name_len, cfg_len) = _OPEN.unpack_from(buf)
    start = _OPEN.size
    _check_length(buf, start + name_len + cfg_len, "OPEN")
    name = buf[start : start + name_len].decode()
    cfg = buf[start + name_len : start + name_len + cfg_len].decode()
    return Open(session, enc, pf, w, h, stride, name or None, shm_len, cfg)


def pack_batch(session: int, batch_id: int, refs: Sequence[tuple[int, int, int]]) -> bytes:
    if len(refs) == 1:  # --batch-size 1, the default: one pack call per frame
        return _BATCH1.pack(BATCH, session, batch_id, 1, *refs[0])
    parts = [_BATCH.pack(BATCH, session, batch_id, len(refs))]
    parts += [_REF.pack(*ref) for ref in refs]
    return b"".join(parts)


def unpack_batch(buf: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    _, session, batch_id, count = _BATCH.unpack_from(buf)
    refs = [_REF.unpack_from(buf, _BATCH.size + i * _REF.size) for i in range(count)]
    return session, batch_id, refs


def pack_close(session: int) -> bytes:
    return _SESSION.pack(CLOSE, session)


def pack_stop() -> bytes:
    return _SESSION.pack(STOP, 0)


def pack_ready(pid: int) -> bytes:
    return _SESSION.pack(READY, pid)


def unpack_close(buf: bytes) -> int:
    """The session id of a CLOSE."""
    return _SESSION.unpack_from(buf)[1]


def unpack_ready(buf: bytes) -> int:
    """The worker's pid in a READY."""
    return _SESSION.unpack_from(buf)[1]


def pack_done(
    batch_id: int, outcomes: Sequence[bytes | Unprocessed], processing_us: int = 0
) -> bytes:
    """bytes: serialized inferences (a MediaSample's field 10); Unprocessed: how the
    frame ended without them, and why."""
    parts = [_DONE.pack(DONE, min(processing_us, 0xFFFFFFFF), batch_id, len(outcomes))]
    for outcome in outcomes:
        if isinstance(outcome, bytes):
            parts += [_OUTCOME.pack(_PROCESSED, len(outcome)), outcome]
        else:
            reason = outcome.reason.encode()
            parts += [_OUTCOME.pack(_unprocessed_code(outcome.kind), len(reason)), reason]
    return b"".join(parts)


def unpack_done(buf: bytes) -> tuple[int, list[bytes | Unprocessed], int]:
    """(batch id, outcomes, processing time in microseconds)."""
    if len(buf) >= _DONE1_SIZE:  # one frame, the default: one unpack, no loop
        _, processing_us, batch_id, count, code, length = _unpack_done1(buf)
        if count == 1 and len(buf) == _DONE1_SIZE + length:
            data = buf[_DONE1_SIZE:]
            return batch_id, [_unprocessed(code, data) if code else data], processing_us
    _, processing_us, batch_id, count = _DONE.unpack_from(buf)
    pos, outcomes = _DONE.size, []
    view = memoryview(buf)
    for _ in range(count):
        code, length = _OUTCOME.unpack_from(buf, pos)
        pos += _OUTCOME.size
        _check_length(buf, pos + length, "DONE")
        data = bytes(view[pos : pos + length])
        outcomes.append(_unprocessed(code, data) if code else data)
        pos += length
    return batch_id, outcomes, processing_us


def batch_session(buf: bytes) -> int:
    """The session id of a BATCH, without decoding its references."""
    return int.from_bytes(buf[4:8], "little")


def pack_model_run(model: int, frames: int, inference_us: int) -> bytes:
    """Model number ``model`` (its place in the worker's list) ran once on ``frames`` frames."""
    return _MODEL_RUN.pack(MODEL_RUN, model, frames, min(inference_us, 0xFFFFFFFF))


def unpack_model_run(buf: bytes) -> tuple[int, int, int]:
    """(model number, frames, inference time in microseconds)."""
    _, model, frames, inference_us = _MODEL_RUN.unpack_from(buf)
    return model, frames, inference_us


def _unprocessed_code(kind: Outcome) -> int:
    if kind not in _UNPROCESSED:  # INFERRED or EMPTY with a reason: a caller's bug
        raise struct.error(f"{kind!r} is not an outcome without inferences")
    return int(kind)


def _unprocessed(code: int, data: bytes) -> Unprocessed:
    """A frame that ended without inferences; an unknown code is a corrupt record."""
    kind = _BY_CODE.get(code)
    if kind is None:
        raise struct.error(f"DONE record with outcome code {code}, not one without inferences")
    return Unprocessed(kind, data.decode(errors="replace"))  # a reason is for a log line
