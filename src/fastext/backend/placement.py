"""Which worker runs which batch: the worker backend's decisions, without its wiring.

:class:`Placement` holds the backlog, copies embedded frames into the arena, picks a
worker (the least loaded ready one; a stateful session's batches stay on one worker),
turns each placed batch into records on that worker's outbox, and re-runs a dead
worker's batches elsewhere (a bounded number of times).  It does no I/O and knows no
event loop, rings or processes: :class:`fastext.backend.pipeline.WorkerBackend` moves the
outboxes into the rings, feeds completions back and delivers results; the unit tests
drive it directly.
"""

from __future__ import annotations

import itertools
import operator
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from fastext.backend import records
from fastext.backend.shm import ArenaAllocator, ShmRef

__all__ = ["MAX_RUNS", "Job", "Placement", "PlacedLane", "Worker"]

MAX_RUNS = 3  # a batch whose worker died this many times is acked LOST instead
_LOAD = operator.attrgetter("frames")  # a worker's load, read by min() without a Python call
#: Embedded frame bytes, or a checked region of the client's file.
Payload = ShmRef | memoryview
Ref = tuple[int, int, int]  # (source, offset, size), as records.pack_batch takes them


class PlacedLane(Protocol):
    """What placement needs of a session's lane."""

    session: int
    stateful: bool
    open_record: bytes
    pinned: Worker[Any] | None
    closed: bool  # set by close_lane: its batches are not placed (or re-run) any more


#: The lane type a placement holds (the backend's own, with whatever it needs to deliver):
#: what a :class:`Job` gives back as its ``lane``, typed, so the backend needs no cast.
L = TypeVar("L", bound=PlacedLane)


class Job(Generic[L]):
    """One submitted batch, from the backlog to its worker's DONE record."""

    __slots__ = ("lane", "token", "payloads", "batch_id", "refs", "blocks", "runs", "submitted")

    def __init__(
        self, lane: L, token: int, payloads: Sequence[Payload], batch_id: int, submitted: float
    ) -> None:
        self.lane = lane
        self.token = token  # the session's name for the batch
        self.batch_id = batch_id
        self.refs: list[Ref] | None  # set once its embedded bytes are in the arena
        self.payloads: Sequence[Payload]  # () once it has refs
        if len(payloads) == 1 and type(ref := payloads[0]) is ShmRef:
            # One frame in the client's file (--batch-size 1 by shared memory): nothing to
            # copy, its reference is ready now.
            self.refs, self.payloads = [(records.SRC_CLIENT, ref[0], ref[1])], ()
        else:
            self.refs, self.payloads = None, payloads
        self.blocks: list[list[int]] = []  # arena blocks it holds
        self.runs = 0  # times it was handed to a worker
        self.submitted = submitted


class Worker(Generic[L]):
    """Placement's view of one worker slot."""

    __slots__ = ("index", "ready", "outbox", "jobs", "sessions", "frames")

    def __init__(self, index: int) -> None:
        self.index = index
        self.ready = False
        self.outbox: deque[bytes] = deque()  # records not yet in the worker's ring
        self.jobs: dict[int, Job[L]] = {}  # batch id -> job it holds
        self.sessions: set[int] = set()  # sessions it has an OPEN for
        self.frames = 0  # frames in its jobs: its load


class Placement(Generic[L]):
    """Backlog, arena copy-in, worker choice and re-runs for ``count`` workers, whose
    lanes are ``L``s: ``Placement[MyLane](...)``, and every job's ``lane`` is a ``MyLane``."""

    def __init__(
        self, count: int, alloc: ArenaAllocator, write: Callable[[int, memoryview], None]
    ) -> None:
        self.workers: list[Worker[L]] = [Worker(i) for i in range(count)]
        self.ready: list[Worker[L]] = []  # the ready workers, by index
        self.backlog: deque[Job[L]] = deque()  # waiting for arena space or a ready worker
        self._alloc = alloc
        self._write = write  # copies bytes into the arena at an offset
        self._ids = itertools.count(1)
        self.retried = 0  # batches run again after their worker died
        self.abandoned = 0  # frames acked LOST after too many worker deaths

    def set_ready(self, worker: Worker[L], ready: bool = True) -> None:
        """A worker can take batches (its READY came), or no longer can."""
        worker.ready = ready
        self.ready = [w for w in self.workers if w.ready]

    def add(
        self, lane: L, token: int, payloads: Sequence[Payload], submitted: float
    ) -> Worker[L] | None:
        """Take a batch.  With nothing waiting before it, it is placed at once if it can
        go, and the worker whose outbox got its records is returned; otherwise it joins
        the backlog (for :meth:`place`) and None is returned."""
        job = Job(lane, token, payloads, next(self._ids), submitted)
        if not self.backlog:
            worker = self._place(job)
            if worker is not None:
                return worker
        self.backlog.append(job)
        return None

    def place(self) -> list[Worker[L]]:
        """Place waiting jobs, oldest first, until one cannot go (arena full, no ready
        worker); returns the workers whose outbox got records."""
        touched: list[Worker[L]] = []
        backlog = self.backlog
        while backlog:
            worker = self._place(backlog[0])
            if worker is None:
                break
            backlog.popleft()
            if worker not in touched:
                touched.append(worker)
        return touched

    def _place(self, job: Job[L]) -> Worker[L] | None:
        """Give a job to a worker: its session's OPEN first if that worker lacks it, then
        its BATCH, on the worker's outbox.  None when it cannot go yet (arena full: frees
        come with completions; or no worker ready)."""
        refs = job.refs
        if refs is None:
            if not self._copy_in(job):
                return None
            refs = job.refs
            assert refs is not None
        lane = job.lane
        # (_least_loaded, inlined: this runs per batch)
        worker = self._pinned(lane) if lane.stateful else min(self.ready, key=_LOAD, default=None)
        if worker is None:
            return None
        session = lane.session
        if session not in worker.sessions:
            worker.sessions.add(session)
            worker.outbox.append(lane.open_record)
        worker.outbox.append(records.pack_batch(session, job.batch_id, refs))
        worker.jobs[job.batch_id] = job
        worker.frames += len(refs)
        job.runs += 1
        return worker

    def _copy_in(self, job: Job[L]) -> bool:
        """Turn payloads into references; embedded bytes are copied into the arena once."""
        refs: list[Ref] = []
        alloc = self._alloc
        for payload in job.payloads:
            if isinstance(payload, ShmRef):
                refs.append((records.SRC_CLIENT, payload.offset, payload.size))
                continue
            size = len(payload)
            block = alloc.alloc(size)
            if block is None:
                if size > alloc.size:
                    refs.append((records.SRC_ARENA, 0, alloc.size + 1))  # the worker reports it
                    continue
                for b in job.blocks:
                    alloc.free(b)
                job.blocks.clear()
                return False
            self._write(block[0], payload)
            job.blocks.append(block)
            refs.append((records.SRC_ARENA, block[0], size))
        job.refs = refs
        job.payloads = ()  # the bytes live in the arena now
        return True

    def _pinned(self, lane: L) -> Worker[L] | None:
        """A stateful lane's worker: every batch of it goes to the one that holds its state."""
        pinned = lane.pinned
        if pinned is None or not pinned.ready:
            # first batch, or its worker died (its state died too): pin to a live one
            lane.pinned = pinned = self._least_loaded()
        return pinned

    def _least_loaded(self) -> Worker[L] | None:
        return min(self.ready, key=_LOAD, default=None)  # the first of the least loaded

    def finished(self, worker: Worker[L], batch_id: int) -> Job[L] | None:
        """The worker reported a batch done: the job, its arena blocks freed (None for a
        batch it no longer holds)."""
        job = worker.jobs.pop(batch_id, None)
        if job is not None:
            worker.frames -= len(job.refs or ())
            if job.blocks:
                self.release(job)
        return job

    def release(self, job: Job[L]) -> None:
        """Free the arena space a job holds (its frames will not be read again)."""
        for block in job.blocks:
            self._alloc.free(block)
        job.blocks.clear()

    def worker_died(self, worker: Worker[L]) -> list[Job[L]]:
        """Forget what a dead worker held.  Its batches go back to the front of the
        backlog, oldest first, except those that already ran ``MAX_RUNS`` times:
        those are returned, to be acked LOST (their arena space is freed)."""
        orphans = sorted(worker.jobs.values(), key=lambda j: j.batch_id)
        worker.jobs.clear()
        worker.outbox.clear()
        worker.sessions.clear()
        worker.frames = 0
        self.set_ready(worker, False)
        given_up: list[Job[L]] = []
        for job in reversed(orphans):  # appendleft: the oldest ends up first
            if job.lane.closed:  # its session is over (it stopped waiting): nobody wants it
                self.release(job)
            elif job.runs >= MAX_RUNS:
                self.abandoned += len(job.refs or ())
                self.release(job)
                given_up.append(job)
            else:
                self.retried += 1
                self.backlog.appendleft(job)
        given_up.reverse()
        return given_up

    def close_lane(self, lane: L) -> list[Worker[L]]:
        """The session is over: a CLOSE record for every worker that opened it (rings are
        FIFO, so it follows the session's last batch); returns those workers.  Its batches
        still waiting (a session that stopped waiting for them) are dropped, and any that
        a worker holds will not run again after a death: placed later, they would send a
        new OPEN that no CLOSE follows."""
        lane.closed = True
        kept: deque[Job[L]] = deque()
        for job in self.backlog:
            if job.lane is lane:
                self.release(job)
            else:
                kept.append(job)
        self.backlog = kept
        session = lane.session
        touched = []
        for worker in self.workers:
            if session in worker.sessions:
                worker.sessions.discard(session)
                worker.outbox.append(records.pack_close(session))
                touched.append(worker)
        return touched

    def queued(self) -> int:
        """Batches not yet in a ring: the backlog and the outboxes."""
        return len(self.backlog) + sum(len(w.outbox) for w in self.workers)
