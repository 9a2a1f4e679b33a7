"""A worker's model batches: consecutive batches of model sessions run as one call, and a
model's ``max_queue_delay_ms`` holds a batch that does not fill ``max_batch`` for more
frames. Driven without processes: the worker's request ring is a stand-in that hands out
what the test gives it, and the runtime call is recorded instead of run."""

from __future__ import annotations

from typing import Any

import pytest

from fastext.backend import records
from fastext.backend.worker import Worker, _Lane
from fastext.models.repository import ModelInfo
from fastext.processors import ModelProcessor

# portable: batching logic without processes (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

DEFAULTS = (
    ("iou", 0.45),
    ("max_detections", 100),
    ("softmax", False),
    ("threshold", 0.25),
    ("top_k", 1),
)


def info(delay_ms: float, max_batch: int = 4) -> ModelInfo:
    return ModelInfo(
        name="m",
        path="/nonexistent.onnx",
        kind="detect",
        input_name="images",
        width=32,
        height=32,
        layout="NCHW",
        dtype="float32",
        output_layout="yolov8",
        num_classes=3,
        labels=("red", "green", "blue"),
        max_batch=max_batch,
        max_queue_delay_ms=delay_ms,
        defaults=DEFAULTS,
    )


class Ring:
    """The worker's request ring: each pop hands out the next list it was given."""

    def __init__(self, *later: list[bytes]) -> None:
        self.later = list(later)
        self.timeouts: list[float] = []

    def pop_many(self, count: int, timeout: float) -> list[bytes]:
        self.timeouts.append(timeout)
        return self.later.pop(0) if self.later else []


def worker(model: ModelInfo, ring: Ring, sessions: int) -> tuple[Worker, list[Any]]:
    w = Worker.__new__(Worker)
    w.requests = ring  # type: ignore[assignment]
    w.lanes = {}
    for session in range(1, sessions + 1):
        lane = _Lane.__new__(_Lane)
        lane.processor = ModelProcessor(model)
        w.lanes[session] = lane
    calls: list[Any] = []
    w._run_models = lambda waiting: calls.append([(b, len(r)) for _, b, r in waiting])  # type: ignore[method-assign]
    return w, calls


def batch(session: int, batch_id: int, frames: int = 1) -> bytes:
    return records.pack_batch(session, batch_id, [(records.SRC_CLIENT, 0, 16)] * frames)


def test_batches_waiting_together_run_as_one_call_without_waiting() -> None:
    ring = Ring([batch(2, 20)])
    w, calls = worker(info(delay_ms=0), ring, sessions=2)
    assert w._handle_all([batch(1, 10), batch(2, 11)])
    assert calls == [[(10, 1), (11, 1)]]
    assert ring.timeouts == []  # no delay configured: nothing more is waited for


def test_a_batch_short_of_max_batch_waits_for_more_frames_of_any_stream() -> None:
    ring = Ring([batch(2, 20)], [batch(1, 30, frames=2)])
    w, calls = worker(info(delay_ms=200, max_batch=4), ring, sessions=2)
    assert w._handle_all([batch(1, 10)])
    assert calls == [[(10, 1), (20, 1), (30, 2)]]  # one call of 4 frames, from two streams
    assert len(ring.timeouts) == 2 and 0 < ring.timeouts[0] <= 0.2 + 1e-6  # full: no third wait


def test_the_wait_ends_at_the_delay_even_when_the_batch_stays_short() -> None:
    ring = Ring()
    w, calls = worker(info(delay_ms=50, max_batch=4), ring, sessions=1)
    assert w._handle_all([batch(1, 10)])
    assert calls == [[(10, 1)]]
    assert len(ring.timeouts) == 1 and 0 < ring.timeouts[0] <= 0.05 + 1e-6


def test_a_close_runs_the_waiting_batches_first() -> None:
    ring = Ring()
    w, calls = worker(info(delay_ms=0), ring, sessions=2)
    closed: list[int] = []
    w._handle = lambda record: closed.append(records.unpack_close(record)) or True  # type: ignore[method-assign]
    assert w._handle_all([batch(1, 10), records.pack_close(1), batch(2, 11)])
    assert calls == [[(10, 1)], [(11, 1)]] and closed == [1]
