"""Where batches run: the front's side of the processing backend.

A session opens a *lane* (:meth:`Backend.open`) and submits batches of
payloads to it; each submit returns a future holding one outcome per frame.
A payload is a :class:`~fastext.shm.ShmRef` into the session's client file
(already bounds-checked) or the embedded bytes.

* :class:`InlineBackend` (``--workers 0``) runs batches on a thread pool of the
  server process; numba kernels release the GIL, so streams run in parallel.
* :class:`WorkerBackend` (``--workers N``) hands references to worker processes
  over per-worker SPSC rings in shared memory.  Embedded frames are copied once
  into the server's arena.  A batch is resolved only when its worker reports it
  done; if the worker dies first, the batch runs again elsewhere (bounded), so
  no frame is lost or acknowledged twice.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fastext import records
from fastext.config import Config
from fastext.errors import SampleError
from fastext.execute import FrameFormat, Outcome, run_batch
from fastext.metrics import NullMetrics
from fastext.processors import create
from fastext.processors.base import Processor
from fastext.ring import cleanup_stale_segments, segment_name
from fastext.shm import Arena, ArenaAllocator, ClientMemory, ShmRef
from fastext.supervisor import Supervisor, WorkerSlot

__all__ = ["Backend", "InlineBackend", "Lane", "Payload", "WorkerBackend", "make_backend"]

log = logging.getLogger("fastext.pipeline")

#: What a session submits per frame: a checked region of its client file, or embedded bytes.
Payload = ShmRef | memoryview
#: One frame's result as the backend returns it: inferences (objects, or serialized as a
#: MediaSample's field 10 by a worker), or the reason there are none.
Result = Outcome | bytes


@dataclass(frozen=True, slots=True)
class LaneSpec:
    """What a backend needs to know about a session."""

    format: FrameFormat
    processor: str
    params: dict[str, Any]
    shm_name: str | None
    shm_length: int


class Lane(Protocol):
    def submit(self, payloads: Sequence[Payload]) -> asyncio.Future[list[Result]]:
        """Start a batch; the future holds one result per payload, in order."""

    def close(self) -> None:
        """The session is over: nothing more will be submitted."""


class Backend(Protocol):
    async def start(self) -> None:
        """Get ready to take batches (compile or load kernels, start workers)."""

    def open(self, spec: LaneSpec, memory: ClientMemory | None) -> Lane:
        """A lane for one session; ValueError names a bad processor or parameter."""

    async def close(self) -> None:
        """Finish or abandon running batches and release every resource."""

    def abort(self) -> None:
        """The process exits now: stop every child process and remove every name this
        backend created (shared memory), without waiting for any frame."""


def make_backend(config: Config, metrics: NullMetrics | None = None) -> Backend:
    """The backend ``config.workers`` asks for."""
    metrics = metrics if metrics is not None else NullMetrics()
    if config.workers == 0:
        return InlineBackend(metrics=metrics)
    return WorkerBackend(config, metrics)


# -- in process -------------------------------------------------------------------


class _InlineLane:
    def __init__(self, pool: ThreadPoolExecutor, spec: LaneSpec, memory: ClientMemory | None,
                 metrics: NullMetrics) -> None:
        self._pool = pool
        self._metrics = metrics
        self._format = spec.format
        self._memory = memory
        self._processor: Processor = create(spec.processor, spec.params)
        # A stateful processor (per-stream background, tracks) sees its frames in order:
        # each batch waits for the one before it. Stateless ones run batches in parallel.
        self._ordered = bool(getattr(self._processor, "stateful", False))
        self._last: asyncio.Future[list[Result]] | None = None

    def submit(self, payloads: Sequence[Payload]) -> asyncio.Future[list[Result]]:
        loop = asyncio.get_running_loop()
        if not self._ordered:
            return loop.run_in_executor(self._pool, self._run, payloads, time.perf_counter())
        future = asyncio.ensure_future(self._after(self._last, payloads))
        self._last = future
        return future

    async def _after(self, previous: asyncio.Future[list[Result]] | None,
                     payloads: Sequence[Payload]) -> list[Result]:
        submitted = time.perf_counter()
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is the session's business, not ours
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, payloads,
                                                                submitted)

    def _run(self, payloads: Sequence[Payload], submitted: float) -> list[Result]:
        started = time.perf_counter()
        arrays: list[np.ndarray | memoryview | str] = []
        for p in payloads:
            if isinstance(p, ShmRef):
                assert self._memory is not None
                try:
                    arrays.append(self._memory.view(p))
                except (SampleError, OSError) as exc:  # the file shrank, or the session ended
                    arrays.append(str(exc))  # run_batch makes it the frame's outcome
            else:
                arrays.append(p)
        outcomes: list[Result] = list(run_batch(self._processor, self._format, arrays))
        self._metrics.batch_done(started - submitted, time.perf_counter() - started)
        return outcomes

    def close(self) -> None:
        pass


class InlineBackend:
    """Runs batches on a thread pool of the server process."""

    def __init__(self, threads: int | None = None, metrics: NullMetrics | None = None) -> None:
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._pool = ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 1, thread_name_prefix="fastext-batch"
        )

    async def start(self) -> None:
        # The first frame must not pay for numba's compilation (or cache load).  Imported
        # here: with workers, the front never loads numba.
        from fastext import kernels

        await asyncio.to_thread(kernels.warm)

    def open(self, spec: LaneSpec, memory: ClientMemory | None) -> Lane:
        return _InlineLane(self._pool, spec, memory, self._metrics)

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)

    def abort(self) -> None:
        pass  # threads and memory of this process end with it


# -- worker processes -----------------------------------------------------------------

_RING_CAPACITY = 1 << 20  # bytes of records per ring: thousands of batches of references
_MAX_RETRIES = 2  # runs of a batch whose worker died, before its frames are acked empty
_READY_TIMEOUT_S = 180.0  # a cold numba cache on a slow ARM board compiles for a while


@dataclass(eq=False)
class _Job:
    lane: _WorkerLane
    payloads: Sequence[Payload]
    future: asyncio.Future[list[Result]]
    batch_id: int = 0
    refs: list[tuple[int, int, int]] | None = None
    blocks: list[list[int]] = field(default_factory=list)
    runs: int = 0
    submitted: float = field(default_factory=time.perf_counter)


class _WorkerLane:
    def __init__(self, backend: WorkerBackend, session: int, spec: LaneSpec) -> None:
        # Reject bad parameters now, at descriptor time; workers make their own instances.
        processor = create(spec.processor, spec.params)
        self.backend = backend
        self.session = session
        # A stateful processor keeps per-stream state in one worker's instance: every batch
        # of the session goes to that worker, whose ring keeps them in order.
        self.stateful = bool(getattr(processor, "stateful", False))
        self.pinned: _WorkerState | None = None
        config = json.dumps({"processor": spec.processor, **spec.params})
        f = spec.format
        self.open_record = records.pack_open(records.Open(
            session, f.encoding, f.pixel_format, f.width, f.height, f.stride, spec.shm_name,
            spec.shm_length, config))

    def submit(self, payloads: Sequence[Payload]) -> asyncio.Future[list[Result]]:
        return self.backend._submit(self, payloads)

    def close(self) -> None:
        self.backend._close_lane(self)


@dataclass(eq=False)
class _WorkerState:
    """The pipeline's view of one worker slot."""

    slot: WorkerSlot
    outbox: deque[bytes] = field(default_factory=deque)  # records waiting for ring space
    jobs: dict[int, _Job] = field(default_factory=dict)  # batch id -> job, sent or waiting
    sessions: set[int] = field(default_factory=set)  # sessions this process has opened
    frames: int = 0  # frames in jobs


class WorkerBackend:
    """Batches run in worker processes fed through shared-memory rings."""

    def __init__(self, config: Config, metrics: NullMetrics | None = None) -> None:
        self.config = config
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._ids = itertools.count(1)
        self._backlog: deque[_Job] = deque()  # waiting for arena space or a ready worker
        self._arena: Arena | None = None
        self._alloc: ArenaAllocator | None = None
        self._supervisor: Supervisor | None = None
        self._states: list[_WorkerState] = []
        self._all_ready: asyncio.Event | None = None
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None  # start()'s: asks no getpid per frame
        self._unsignalled_retired = 0  # counted on rings of workers since replaced
        self.retried = 0  # batches run again after their worker died
        self.abandoned = 0  # frames acked empty after too many worker deaths

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        removed = cleanup_stale_segments()
        if removed:
            log.info("removed %d stale shared-memory segments of dead servers", len(removed))
        size = self.config.shm_size_mb * 1024 * 1024
        self._arena = Arena.create(segment_name("arena"), size)
        self._alloc = ArenaAllocator(size)
        self._all_ready = asyncio.Event()
        self._supervisor = Supervisor(
            self.config.workers, (self._arena.name, size), self.config.log_level,
            self.config.log_format, _RING_CAPACITY, self._on_completions, self._on_exit)
        self._states = [_WorkerState(slot) for slot in self._supervisor.slots]
        self._metrics.count_unsignalled_wakeups(self.unsignalled_wakeups)
        self._supervisor.start()
        try:
            await asyncio.wait_for(self._all_ready.wait(), _READY_TIMEOUT_S)
        except TimeoutError:
            await self.close()
            raise RuntimeError(f"workers were not ready within {_READY_TIMEOUT_S:.0f} s") from None

    def open(self, spec: LaneSpec, memory: ClientMemory | None) -> Lane:
        return _WorkerLane(self, next(self._ids), spec)

    # -- submitting ------------------------------------------------------------------

    def _submit(self, lane: _WorkerLane, payloads: Sequence[Payload]) -> asyncio.Future[list[Result]]:
        loop = self._loop
        assert loop is not None, "WorkerBackend.start() first"
        job = _Job(lane, payloads, loop.create_future(), batch_id=next(self._ids))
        self._backlog.append(job)
        if not self._pump_scheduled:
            # Place everything submitted in this loop iteration together: one ring
            # publish and at most one futex wake per worker, not one per frame.
            self._pump_scheduled = True
            loop.call_soon(self._pump)
        return job.future

    def _pump(self) -> None:
        """Place waiting jobs on workers, oldest first; stop at the first that cannot go."""
        self._pump_scheduled = False
        while self._backlog and self._arena is not None:
            job = self._backlog[0]
            if job.refs is None and not self._copy_in(job):
                break  # arena full: frees come with completions
            state = self._worker_for(job.lane)
            if state is None:
                break  # no worker ready: READY records resume the pump
            self._backlog.popleft()
            self._assign(state, job)
        for state in self._states:
            self._flush(state)
        self._metrics.queue_depth(len(self._backlog) + sum(len(s.outbox) for s in self._states))

    def _copy_in(self, job: _Job) -> bool:
        """Turn payloads into ring references; embedded bytes are copied into the arena once."""
        assert self._alloc is not None and self._arena is not None
        refs: list[tuple[int, int, int]] = []
        for payload in job.payloads:
            if isinstance(payload, ShmRef):
                refs.append((records.SRC_CLIENT, payload.offset, payload.size))
                continue
            block = self._alloc.alloc(len(payload))
            if block is None:
                if len(payload) > self._alloc.size:
                    refs.append((records.SRC_ARENA, 0, self._alloc.size + 1))  # worker reports it
                    continue
                for b in job.blocks:
                    self._alloc.free(b)
                job.blocks.clear()
                return False
            self._arena.write(block[0], payload)
            job.blocks.append(block)
            refs.append((records.SRC_ARENA, block[0], len(payload)))
        job.refs = refs
        job.payloads = ()  # the bytes live in the arena now
        return True

    def _worker_for(self, lane: _WorkerLane) -> _WorkerState | None:
        if not lane.stateful:
            return self._least_loaded()
        if lane.pinned is None or not lane.pinned.slot.ready:
            # first batch, or its worker died (its state died too): pin to a live one
            lane.pinned = self._least_loaded()
        return lane.pinned

    def _least_loaded(self) -> _WorkerState | None:
        ready = [s for s in self._states if s.slot.ready]
        return min(ready, key=lambda s: s.frames) if ready else None

    def _assign(self, state: _WorkerState, job: _Job) -> None:
        assert job.refs is not None
        if job.lane.session not in state.sessions:
            state.sessions.add(job.lane.session)
            state.outbox.append(job.lane.open_record)
        state.outbox.append(records.pack_batch(job.lane.session, job.batch_id, job.refs))
        state.jobs[job.batch_id] = job
        state.frames += len(job.refs)
        job.runs += 1

    def _flush(self, state: _WorkerState) -> None:
        rings = state.slot.rings
        if rings is None or not state.outbox:
            return
        ring = rings.submit.ring
        while state.outbox and ring.try_push(state.outbox[0]):
            state.outbox.popleft()

    def _close_lane(self, lane: _WorkerLane) -> None:
        for state in self._states:
            if lane.session in state.sessions:
                state.sessions.discard(lane.session)
                state.outbox.append(records.pack_close(lane.session))
                self._flush(state)

    # -- completions and deaths ----------------------------------------------------------

    def _on_completions(self, slot: WorkerSlot) -> None:
        state = self._states[slot.index]
        if slot.doorbell is not None:
            try:
                os.read(slot.doorbell.fileno(), 65536)
            except (BlockingIOError, OSError):
                pass
        self._drain(state)
        self._pump()

    def _drain(self, state: _WorkerState) -> None:
        rings = state.slot.rings
        if rings is None:
            return
        for record in rings.completion.ring.pop_many(1 << 16, 0):
            kind = record[0]
            if kind == records.DONE:
                batch_id, outcomes, processing_us = records.unpack_done(record)
                job = state.jobs.pop(batch_id, None)
                if job is not None:
                    state.frames -= len(outcomes)
                    processing = processing_us / 1e6
                    self._metrics.batch_done(time.perf_counter() - job.submitted - processing,
                                             processing)
                    self._finish(job, list(outcomes))
            elif kind == records.READY:
                state.slot.ready = True
                log.info("worker %d ready (pid %d)", state.slot.index, records.unpack_session(record))
                if self._all_ready is not None and all(s.slot.ready for s in self._states):
                    self._all_ready.set()

    def _finish(self, job: _Job, outcomes: list[Result]) -> None:
        assert self._alloc is not None
        for block in job.blocks:
            self._alloc.free(block)
        job.blocks.clear()
        if not job.future.done():
            job.future.set_result(outcomes)

    def unsignalled_wakeups(self) -> int:
        """Lost wake-ups that the rings' bounded sleeps rescued, over every worker so far."""
        live = sum(s.slot.rings.unsignalled_wakeups() for s in self._states
                   if s.slot.rings is not None)
        return self._unsignalled_retired + live

    def _on_exit(self, slot: WorkerSlot) -> None:
        state = self._states[slot.index]
        if slot.rings is not None:  # its rings go with it: keep their count
            self._unsignalled_retired += slot.rings.unsignalled_wakeups()
        if self._supervisor is not None and not self._supervisor.stopping:
            self._metrics.worker_restarted()
        self._drain(state)  # what it finished before dying still counts
        orphans = sorted(state.jobs.values(), key=lambda j: j.batch_id)
        state.jobs.clear()
        state.outbox.clear()
        state.sessions.clear()
        state.frames = 0
        for job in reversed(orphans):  # oldest first at the front of the backlog
            if job.runs > _MAX_RETRIES:
                self.abandoned += len(job.refs or ())
                reason = f"worker died while processing this frame ({job.runs} times)"
                self._finish(job, [reason] * len(job.refs or ()))
            else:
                self.retried += 1
                self._backlog.appendleft(job)
        if orphans:
            log.warning("worker %d died holding %d batches: running them again elsewhere",
                        slot.index, len(orphans))
        # The supervisor marks the slot dead after this returns: place the orphans then.
        asyncio.get_running_loop().call_soon(self._pump)

    async def close(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.stop(self._send_stop, deadline_s=max(1.0, self.config.drain_s))
            self._supervisor = None
        for job in self._backlog:
            if not job.future.done():
                job.future.set_result(["server stopped before the frame was processed"]
                                      * len(job.refs or job.payloads))
        self._backlog.clear()
        if self._arena is not None:
            self._arena.close()
            self._arena = None

    def abort(self) -> None:
        killed = self._supervisor.kill() if self._supervisor is not None else 0
        if self._arena is not None:
            self._arena.unlink()
        log.warning("backend aborted: %d workers killed, shared memory unlinked", killed)

    def _send_stop(self, slot: WorkerSlot) -> None:
        state = self._states[slot.index]
        state.outbox.append(records.pack_stop())
        self._flush(state)
