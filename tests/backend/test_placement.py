"""Placement on its own: no processes, rings or event loop (fastext.backend.placement)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastext.backend import records
from fastext.backend.placement import MAX_RUNS, Placement, Worker
from fastext.backend.shm import ArenaAllocator, ShmRef

# portable: placement logic (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable


@dataclass(eq=False)
class Lane:
    session: int
    stateful: bool = False
    pinned: Worker | None = None
    closed: bool = False

    @property
    def open_record(self) -> bytes:
        return records.pack_close(self.session) + b"open"  # any bytes that name the session


def make(workers: int = 2, arena: int = 4096) -> tuple[Placement, bytearray]:
    memory = bytearray(arena)

    def write(offset: int, data: memoryview) -> None:
        memory[offset : offset + len(data)] = data

    placement = Placement(workers, ArenaAllocator(arena), write)
    for worker in placement.workers:
        placement.set_ready(worker)
    return placement, memory


def batches(worker: Worker) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    return [records.unpack_batch(r) for r in worker.outbox if r[0] == records.BATCH]


def test_placement_sends_open_once_per_worker_then_batches() -> None:
    placement, _ = make(workers=1)
    lane = Lane(7)
    placed = [placement.add(lane, token, [ShmRef(100 * token, 10)], 0.0) for token in (1, 2)]
    (worker,) = placement.workers
    assert placed == [worker, worker] and placement.place() == []
    assert worker.outbox[0] == lane.open_record
    assert [(s, refs) for s, _, refs in batches(worker)] == [
        (7, [(records.SRC_CLIENT, 100, 10)]),
        (7, [(records.SRC_CLIENT, 200, 10)]),
    ]
    assert worker.frames == 2 and not placement.backlog


def test_placement_picks_the_least_loaded_ready_worker() -> None:
    placement, _ = make(workers=3)
    a, b, c = placement.workers
    a.frames, b.frames, c.frames = 5, 1, 3
    assert placement.add(Lane(1), 1, [ShmRef(0, 1)], 0.0) is b
    placement.set_ready(b, False)
    assert placement.add(Lane(1), 2, [ShmRef(0, 1)], 0.0) is c
    a.frames = c.frames  # a tie goes to the first
    assert placement.add(Lane(1), 3, [ShmRef(0, 1)], 0.0) is a


def test_placement_keeps_a_stateful_lane_on_one_worker_and_repins_after_a_death() -> None:
    placement, _ = make(workers=2)
    lane = Lane(3, stateful=True)
    first = placement.add(lane, 1, [ShmRef(0, 1)], 0.0)
    assert first is not None
    placement.workers[1 - first.index].frames = -100  # much less loaded: still not chosen
    assert placement.add(lane, 2, [ShmRef(0, 1)], 0.0) is first
    placement.worker_died(first)
    (second,) = placement.place()  # its two batches run again, elsewhere, in order
    assert second is not first and lane.pinned is second
    assert [batch_id for _, batch_id, _ in batches(second)] == [1, 2]


def test_placement_places_a_batch_at_once_unless_others_wait_before_it() -> None:
    placement, _ = make(workers=1)
    (worker,) = placement.workers
    placement.set_ready(worker, False)
    assert placement.add(Lane(1), 1, [ShmRef(0, 8)], 0.0) is None  # no worker: it waits
    placement.set_ready(worker)
    assert placement.add(Lane(1), 2, [ShmRef(8, 8)], 0.0) is None  # behind the first, in order
    assert not batches(worker) and placement.place() == [worker]
    assert [b for _, b, _ in batches(worker)] == [1, 2]
    assert placement.add(Lane(1), 3, [ShmRef(16, 8)], 0.0) is worker  # nothing waits: at once
    assert [b for _, b, _ in batches(worker)] == [1, 2, 3] and not placement.backlog


def test_placement_copies_embedded_frames_into_the_arena_once() -> None:
    placement, memory = make(workers=1)
    placement.add(Lane(1), 1, [memoryview(b"abc"), ShmRef(64, 8)], 0.0)
    placement.place()
    ((_, _, refs),) = batches(placement.workers[0])
    (src, offset, size), client = refs
    assert (src, size) == (records.SRC_ARENA, 3) and memory[offset : offset + 3] == b"abc"
    assert client == (records.SRC_CLIENT, 64, 8)


def test_placement_waits_for_arena_space_in_order() -> None:
    placement, _ = make(workers=1, arena=1024)
    worker = placement.workers[0]
    placement.add(Lane(1), 1, [memoryview(bytes(800))], 0.0)
    placement.add(Lane(1), 2, [memoryview(bytes(800))], 0.0)
    placement.add(Lane(1), 3, [ShmRef(0, 8)], 0.0)  # needs no arena, but must not overtake
    placement.place()
    assert [b for _, b, _ in batches(worker)] == [1] and len(placement.backlog) == 2
    job = placement.finished(worker, 1)
    assert job is not None and job.token == 1 and not job.blocks
    worker.outbox.clear()
    placement.place()
    assert [b for _, b, _ in batches(worker)] == [2, 3]


def test_placement_a_frame_larger_than_the_arena_is_left_for_the_worker_to_report() -> None:
    placement, _ = make(workers=1, arena=1024)
    placement.add(Lane(1), 1, [memoryview(bytes(2000))], 0.0)
    placement.place()
    ((_, _, refs),) = batches(placement.workers[0])
    assert refs == [(records.SRC_ARENA, 0, 1025)]  # out of the arena's bounds: refused there


def test_placement_reruns_a_dead_workers_batches_then_gives_up() -> None:
    placement, _ = make(workers=1, arena=1024)
    worker = placement.workers[0]
    placement.add(Lane(1), 1, [memoryview(bytes(100))], 0.0)
    placement.add(Lane(1), 2, [ShmRef(0, 8)], 0.0)
    given_up = []
    for run in range(1, MAX_RUNS + 1):
        placement.set_ready(worker)
        placement.place()
        assert [b for _, b, _ in batches(worker)] == [1, 2], f"run {run}: oldest first"
        given_up = placement.worker_died(worker)
        if run < MAX_RUNS:
            assert given_up == [] and [j.batch_id for j in placement.backlog] == [1, 2]
    assert [j.token for j in given_up] == [1, 2]
    assert placement.abandoned == 2 and placement.retried == 2 * (MAX_RUNS - 1)
    assert not placement.backlog and worker.frames == 0 and not worker.jobs
    assert placement._alloc.alloc(1024) is not None, "the abandoned batch kept its arena space"


def test_placement_places_nothing_without_a_ready_worker() -> None:
    placement, _ = make(workers=2)
    for worker in placement.workers:
        placement.set_ready(worker, False)
    placement.add(Lane(1), 1, [ShmRef(0, 8)], 0.0)
    assert placement.place() == [] and placement.queued() == 1


def test_placement_close_goes_only_to_workers_that_opened_the_session() -> None:
    placement, _ = make(workers=2)
    lane = Lane(5, stateful=True)
    opened = placement.add(lane, 1, [ShmRef(0, 8)], 0.0)
    assert opened is not None
    opened.outbox.clear()
    assert placement.close_lane(lane) == [opened]
    assert list(opened.outbox) == [records.pack_close(5)]
    assert placement.close_lane(lane) == []  # once


def test_placement_a_closed_lanes_batches_never_reopen_it() -> None:
    # A session that stopped waiting (its cleanup timed out) closes its lane while one of
    # its batches waits for arena space and another is held by a worker that then dies.
    placement, _ = make(workers=1, arena=1024)
    (worker,) = placement.workers
    lane, other = Lane(1), Lane(2)
    assert placement.add(lane, 1, [memoryview(bytes(800))], 0.0) is worker
    assert placement.add(lane, 2, [memoryview(bytes(800))], 0.0) is None  # arena full
    assert placement.add(other, 1, [ShmRef(0, 8)], 0.0) is None  # behind it, in order
    worker.outbox.clear()
    assert placement.close_lane(lane) == [worker]
    assert [j.lane for j in placement.backlog] == [other], "the closed lane's batch still waits"
    assert placement.worker_died(worker) == [] and [j.lane for j in placement.backlog] == [other]
    placement.set_ready(worker)
    assert placement.place() == [worker]
    sent = list(worker.outbox)
    assert sent == [other.open_record, records.pack_batch(2, 3, [(records.SRC_CLIENT, 0, 8)])]
    assert placement._alloc.alloc(1024) is not None, "the closed lane's arena space was kept"


# -- the one-frame batch (its reference made in Job, no copy-in) vs the general path ------


class _General(ShmRef):
    """A ShmRef that is not exactly one: Job's one-frame shortcut (``type(...) is
    ShmRef``) passes it by, so the general copy-in path turns it into a reference."""

    __slots__ = ()


#: One add: (lane 0-2, its frames: each an (offset, size) in the client file, or None
#: for embedded bytes), or a worker's death / a completion of its oldest job ("die" /
#: "done", worker 0-1).
_Op = tuple[str, int, list[tuple[int, int] | None]]
_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.integers(0, 2),
            st.lists(
                st.one_of(st.none(), st.tuples(st.integers(0, 2**40), st.integers(1, 2**20))),
                min_size=1,
                max_size=3,
            ),
        ),
        st.tuples(st.sampled_from(["die", "done", "ready"]), st.integers(0, 1), st.just([])),
    ),
    max_size=30,
)


def _replay(ops: list[_Op], ref: type[ShmRef]) -> list[object]:
    """What a placement did for ``ops`` with client references of type ``ref``: for each
    step, the worker it went to, every worker's outbox, the backlog and the arena."""
    placement, memory = make(workers=2, arena=64)
    lanes = [Lane(1, stateful=False), Lane(2, stateful=True), Lane(3)]
    seen: list[object] = []
    for token, (what, which, frames) in enumerate(ops):
        if what == "add":
            payloads = [
                ref(*f) if f is not None else memoryview(bytes([token % 256]) * 8) for f in frames
            ]
            placed = placement.add(lanes[which], token, payloads, 0.0)
            seen.append(placed.index if placed is not None else None)
            seen.append([w.index for w in placement.place()])
        elif what == "die":
            seen.append([job.token for job in placement.worker_died(placement.workers[which])])
        elif what == "ready":
            placement.set_ready(placement.workers[which])
            seen.append([w.index for w in placement.place()])
        else:
            worker = placement.workers[which]
            if worker.jobs:
                job = placement.finished(worker, min(worker.jobs))
                seen.append(job.refs if job is not None else None)
        seen.append([list(w.outbox) for w in placement.workers])
        seen.append([job.token for job in placement.backlog])  # (refs: made when placed)
        seen.append(bytes(memory))
    return seen


# database=None: no .hypothesis/ folder in the tree (as in tests/contract/test_wire.py).
@settings(max_examples=200, deadline=None, database=None)
@given(ops=_ops)
def test_placement_one_frame_shortcut_places_as_the_general_path(ops: list[_Op]) -> None:
    """Whatever mix of one-frame and larger batches, embedded or not, deaths and
    completions: the same records on the same workers, the same backlog, the same arena."""
    assert _replay(ops, ShmRef) == _replay(ops, _General)
