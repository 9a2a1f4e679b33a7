"""Where batches run: the front's side of the processing backend.

A session opens a *lane* (:meth:`Backend.open`) with a *deliver* callback and
submits batches of payloads to it, each under a token of the session's choosing;
when a batch is done the backend calls ``deliver(token, results)`` on the event
loop, one result per payload, in order.  No future per batch: the front's cost per
frame is what this module is measured by.  A payload is a
:class:`~fastext.backend.shm.ShmRef` into the session's client file (already
bounds-checked) or the embedded bytes.

* :class:`InlineBackend` (``--workers 0``) runs batches on a thread pool of the
  server process; numba kernels release the GIL, so streams run in parallel.  The
  batches of a model, from every session, wait for its runtime together and run as
  one call (as a worker runs them).
* :class:`WorkerBackend` (``--workers N``) hands references to worker processes
  over per-worker SPSC rings in shared memory.  Embedded frames are copied once
  into the server's arena.  A batch is resolved only when its worker reports it
  done; if the worker dies first, the batch runs again elsewhere (bounded), so
  no frame is lost or acknowledged twice.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from fastext.backend import records
from fastext.backend.doorbell import Doorbell
from fastext.backend.execute import (
    FrameFormat,
    FrameResult,
    fetch_payload,
    frames_of,
    run_batch,
    serialized,
)
from fastext.backend.placement import Placement, Worker
from fastext.backend.ring import Ring, RingPair, required_size
from fastext.backend.segments import cleanup_stale_segments, mib, segment_name, shm_free
from fastext.backend.shm import Arena, ArenaAllocator, ClientMemory, ShmRef
from fastext.backend.supervisor import Slot, Supervisor
from fastext.backend.worker import WorkerSpec
from fastext.backend.worker import main as worker_main
from fastext.config import Config
from fastext.errors import ShmFullError
from fastext.metrics import MetricsSink, NullMetrics
from fastext.models import repository
from fastext.outcomes import Outcome, Unprocessed
from fastext.processors import ModelProcessor, create
from fastext.processors.base import Processor

__all__ = [
    "Backend",
    "Deliver",
    "InlineBackend",
    "Lane",
    "Payload",
    "WorkerBackend",
    "make_backend",
]

log = logging.getLogger("fastext.backend.pipeline")

#: What a session submits per frame: a checked region of its client file, or embedded bytes.
Payload = ShmRef | memoryview
#: One frame's result as the backend returns it: inferences (objects, or serialized as a
#: MediaSample's field 10 by a worker), or how it ended without them and why.
Result = FrameResult | bytes
#: How a backend hands a batch's results back: ``deliver(token, results)``, on the loop.
Deliver = Callable[[int, Sequence[Result]], None]
#: ``listener(ready)``: the backend can take batches again (True) or cannot (False).
Readiness = Callable[[bool], None]


@dataclass(frozen=True, slots=True)
class LaneSpec:
    """What a backend needs to know about a session."""

    format: FrameFormat
    processor: str
    params: dict[str, Any]
    shm_name: str | None
    shm_length: int


class Lane(Protocol):
    def submit(self, token: int, payloads: Sequence[Payload]) -> None:
        """Start a batch; its results come back through the lane's deliver callback."""

    def close(self) -> None:
        """The session is over: nothing more will be submitted."""


class Backend(Protocol):
    async def start(self) -> None:
        """Get ready to take batches (compile or load kernels, start workers)."""

    def open(self, spec: LaneSpec, memory: ClientMemory | None, deliver: Deliver) -> Lane:
        """A lane for one session; ValueError names a bad processor or parameter.

        ``deliver(token, results)`` is called on the event loop once per submitted
        batch (results, or the reason for each frame), until the lane is closed.
        """

    async def close(self) -> None:
        """Finish or abandon running batches and release every resource."""

    def on_readiness(self, listener: Readiness) -> None:
        """``listener(ready)`` is called on the loop, from :meth:`start` on, each time the
        backend stops being able to run batches (``False``: no worker is up) or can again
        (``True``).  Batches submitted meanwhile wait; none is lost."""

    def abort(self) -> None:
        """The process exits now: stop every child process and remove every name this
        backend created (shared memory), without waiting for any frame."""


def make_backend(config: Config, metrics: MetricsSink | None = None) -> Backend:
    """The backend ``config.workers`` asks for."""
    metrics = metrics if metrics is not None else NullMetrics()
    if config.workers == 0:
        return InlineBackend(metrics=metrics, model_threads=config.model_threads)
    return WorkerBackend(config, metrics)


# -- in process -------------------------------------------------------------------


@dataclass(slots=True)
class _ModelJob:
    """One session's batch waiting for its model in this process."""

    lane: _InlineLane
    token: int
    payloads: Sequence[Payload]
    submitted: float


class _ModelBatcher:
    """The batches of one model from every in-process session, run together.

    While the model runs, the batches submitted meanwhile wait here; the next call
    takes all of them (one runtime call per ``max_batch`` frames, whichever sessions
    they come from), as a worker takes every batch waiting in its ring. One pool
    thread drains at a time, so the model's calls never queue on its lock with one
    session's frames each. (``max_queue_delay_ms`` is the workers' only: here a batch
    never waits for one that has not come.)
    """

    def __init__(self, pool: ThreadPoolExecutor, metrics: MetricsSink) -> None:
        self._pool = pool
        self._metrics = metrics
        self._lock = threading.Lock()
        self._waiting: list[_ModelJob] = []
        self._draining = False

    def submit(self, job: _ModelJob) -> None:
        with self._lock:
            self._waiting.append(job)
            if self._draining:
                return
            self._draining = True
        try:
            self._pool.submit(self._drain).add_done_callback(self._drained)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._stopped()

    def _drained(self, done: Any) -> None:
        if done.cancelled():  # the pool shut down before the drain ran
            self._stopped()

    def _stopped(self) -> None:
        with self._lock:
            jobs, self._waiting = self._waiting, []
            self._draining = False
        stopped = Unprocessed(Outcome.SHUTDOWN, "server stopped before the frame was processed")
        for job in jobs:
            job.lane.deliver_from_thread(job.token, [stopped] * len(job.payloads))

    def _drain(self) -> None:
        while True:
            with self._lock:
                jobs, self._waiting = self._waiting, []
                if not jobs:
                    self._draining = False
                    return
            try:
                results = self._run(jobs)
            except Exception as exc:  # noqa: BLE001 - not the model's (see _run): still answered
                log.exception("the in-process queue of a model failed on %d batches", len(jobs))
                failed = Unprocessed(Outcome.ERROR, f"processing failed: {exc}")
                results = [[failed] * len(job.payloads) for job in jobs]
            for job, outcomes in zip(jobs, results, strict=True):
                job.lane.deliver_from_thread(job.token, outcomes)

    def _run(self, jobs: list[_ModelJob]) -> list[list[Result]]:
        """Every job's results: the model's, or ERROR for each frame when it raised."""
        started = time.perf_counter()
        processor = jobs[0].lane.model
        assert processor is not None
        engine = processor.engine
        try:
            work = [
                (
                    job.lane.model.params,  # type: ignore[union-attr]
                    frames_of(
                        job.lane.format, [fetch_payload(p, job.lane.memory) for p in job.payloads]
                    ),
                )
                for job in jobs
            ]
            results: list[list[Result]] = [list(serialized(o)) for o in engine.infer(work)]
        except Exception as exc:  # noqa: BLE001 - the runtime failed: every frame says so
            log.exception(
                "model %r failed on %d batches in the server process",
                processor.info.name,
                len(jobs),
            )
            failed = Unprocessed(Outcome.ERROR, f"model {processor.info.name!r} failed: {exc}")
            results = [[failed] * len(job.payloads) for job in jobs]
        finally:
            work = []  # views of client memory: gone before any frame is acked
        processing = time.perf_counter() - started
        for frames, seconds in engine.take_runs():
            self._metrics.model_run(processor.info.name, frames, seconds)
        for job in jobs:
            self._metrics.batch_done(started - job.submitted, processing)
        return results


class _InlineLane:
    def __init__(
        self,
        pool: ThreadPoolExecutor,
        spec: LaneSpec,
        memory: ClientMemory | None,
        deliver: Deliver,
        metrics: MetricsSink,
        batchers: dict[str, _ModelBatcher],
    ) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._metrics = metrics
        self.format = spec.format
        self.memory = memory
        self._processor: Processor = create(spec.processor, spec.params)
        # A model's batches wait for it with every other session's (see _ModelBatcher).
        self.model = self._processor if isinstance(self._processor, ModelProcessor) else None
        self._batcher: _ModelBatcher | None = None
        if self.model is not None:
            name = self.model.info.name
            if name not in batchers:
                batchers[name] = _ModelBatcher(pool, metrics)
            self._batcher = batchers[name]
        # A stateful processor (per-stream background, tracks) sees its frames in order:
        # each batch waits for the one before it. Stateless ones run batches in parallel.
        self._ordered = bool(getattr(self._processor, "stateful", False))
        self._waiting: deque[tuple[int, Sequence[Payload], float]] = deque()
        self._busy = False

    def submit(self, token: int, payloads: Sequence[Payload]) -> None:
        if self._batcher is not None:
            self._batcher.submit(_ModelJob(self, token, payloads, time.perf_counter()))
            return
        job = (token, payloads, time.perf_counter())
        if not self._ordered:
            self._start(job)
        elif self._busy:
            self._waiting.append(job)
        else:
            self._busy = True
            self._start(job)

    def _start(self, job: tuple[int, Sequence[Payload], float]) -> None:
        token, payloads, submitted = job
        done = self._pool.submit(self._run, payloads, submitted)
        done.add_done_callback(lambda f: self._from_thread(token, len(payloads), f))

    def deliver_from_thread(self, token: int, results: list[Result]) -> None:
        """Hand a batch's results to the session, from a pool thread."""
        try:
            self._loop.call_soon_threadsafe(self._deliver, token, results)
        except RuntimeError:  # the loop is closed: the server is gone, nobody waits
            pass

    def _from_thread(self, token: int, count: int, done: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._complete, token, count, done)
        except RuntimeError:  # the loop is closed: the server is gone, nobody waits
            pass

    def _complete(self, token: int, count: int, done: Any) -> None:
        try:
            results: list[Result] = done.result()
        except BaseException as exc:  # noqa: BLE001 - a processor's failure is the frames' outcome
            if done.cancelled():  # the pool shut down (close) before the batch ran
                failed = Unprocessed(
                    Outcome.SHUTDOWN, "server stopped before the frame was processed"
                )
            else:
                log.error("batch failed in the server process: %s", exc, exc_info=exc)
                failed = Unprocessed(
                    Outcome.ERROR, f"processing failed: {exc or type(exc).__name__}"
                )
            results = [failed] * count
        self._deliver(token, results)
        if self._ordered:
            if self._waiting:
                self._start(self._waiting.popleft())
            else:
                self._busy = False

    def _run(self, payloads: Sequence[Payload], submitted: float) -> list[Result]:
        started = time.perf_counter()
        arrays = [fetch_payload(p, self.memory) for p in payloads]
        # Serialized here, in the pool's thread, not on the event loop (as workers do).
        outcomes: list[Result] = list(serialized(run_batch(self._processor, self.format, arrays)))
        self._metrics.batch_done(started - submitted, time.perf_counter() - started)
        return outcomes

    def close(self) -> None:
        pass


class InlineBackend:
    """Runs batches on a thread pool of the server process."""

    def __init__(
        self, threads: int | None = None, metrics: MetricsSink | None = None, model_threads: int = 1
    ) -> None:
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._model_threads = model_threads
        self._pool = ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 1, thread_name_prefix="fastext-batch"
        )
        self._batchers: dict[str, _ModelBatcher] = {}  # by model name, made at first use

    async def start(self) -> None:
        # The first frame must not pay for numba's compilation (or cache load).  Imported
        # here: with workers, the front never loads numba.
        from fastext.vision import warmup

        await asyncio.to_thread(warmup.warm)
        models = repository.installed()
        if models:  # this process is the worker: every model loaded before SERVING
            from fastext.models import engine

            await asyncio.to_thread(engine.load, models, self._model_threads)

    def open(self, spec: LaneSpec, memory: ClientMemory | None, deliver: Deliver) -> Lane:
        return _InlineLane(self._pool, spec, memory, deliver, self._metrics, self._batchers)

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)

    def on_readiness(self, listener: Readiness) -> None:
        pass  # the server process's own threads: ready from start() to close()

    def abort(self) -> None:
        pass  # threads and memory of this process end with it


# -- worker processes -----------------------------------------------------------------

_RING_CAPACITY = 1 << 20  # bytes of records per ring: thousands of batches of references
_RING_PAIR_BYTES = 2 * required_size(_RING_CAPACITY)  # a worker's rings in /dev/shm
# A cold numba cache on a slow ARM board compiles for a while (the model kernels alone
# take about 40 s of CPU on x86-64: images warm them at build time, `fastext warm --models`).
_READY_TIMEOUT_S = 600.0


class _WorkerLane:
    def __init__(
        self, backend: WorkerBackend, session: int, spec: LaneSpec, deliver: Deliver
    ) -> None:
        # Reject bad parameters now, at descriptor time; workers make their own instances.
        processor = create(spec.processor, spec.params)
        self.backend = backend
        self.session = session
        self.deliver = deliver
        # A stateful processor keeps per-stream state in one worker's instance: every batch
        # of the session goes to that worker, whose ring keeps them in order.
        self.stateful = bool(getattr(processor, "stateful", False))
        self.pinned: Worker | None = None
        self.closed = False  # the session is over (placement's)
        config = json.dumps({"processor": spec.processor, **spec.params})
        f = spec.format
        self.open_record = records.pack_open(
            records.Open(
                session,
                f.encoding,
                f.pixel_format,
                f.width,
                f.height,
                f.stride,
                spec.shm_name,
                spec.shm_length,
                config,
            )
        )

        # submit(token, payloads) is the backend's, bound to this lane: no frame in between.
        self.submit: Callable[[int, Sequence[Payload]], None] = functools.partial(
            backend.submit, self
        )

    def close(self) -> None:
        self.backend.close_lane(self)


class _WorkerLink:
    """One worker process's wiring, from :meth:`WorkerBackend._launch` to its
    :meth:`~WorkerBackend._release`: its rings and its doorbell, and what the hot path
    reads of them (the submit and completion rings, placement's :class:`Worker`) without
    an attribute chain per flush or wake-up."""

    __slots__ = ("rings", "doorbell", "submit", "completion", "worker")

    def __init__(self, rings: RingPair, doorbell: Doorbell, worker: Worker) -> None:
        self.rings = rings
        self.doorbell = doorbell
        self.submit: Ring = rings.submit.ring
        self.completion: Ring = rings.completion.ring
        self.worker = worker


class WorkerBackend:
    """Batches run in worker processes fed through shared-memory rings.

    The decisions (backlog, arena, which worker, re-runs) are :class:`Placement`'s;
    the processes (spawn, restart, stop) are the :class:`Supervisor`'s; this class is
    the wiring: each process's rings and spec (:meth:`_launch`, :meth:`_release`), its
    doorbell, completions, and the results handed back to sessions.

    ``target(spec)`` is what each process runs: fastext's worker; a test's stand-in
    (tests/fake_worker.py) drives this wiring through deaths and re-runs without one.
    """

    def __init__(
        self,
        config: Config,
        metrics: MetricsSink | None = None,
        *,
        target: Callable[[WorkerSpec], object] = worker_main,
    ) -> None:
        self.config = config
        self._target = target
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._lanes = itertools.count(1)
        self._arena: Arena | None = None
        self._placement: Placement[_WorkerLane] | None = None
        self._supervisor: Supervisor | None = None
        self._all_ready: asyncio.Event | None = None
        self._readiness: Readiness | None = None
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None  # start()'s: asks no getpid per frame
        self._unsignalled_retired = 0  # counted on rings of workers since replaced
        # Per slot, the wiring of its process of the moment (from _launch to _release):
        # looked up per flush and per completion wake-up.
        self._links: list[_WorkerLink | None] = [None] * config.workers

    @property
    def retried(self) -> int:
        """Batches run again after their worker died."""
        return self._placement.retried if self._placement is not None else 0

    @property
    def abandoned(self) -> int:
        """Frames acked LOST after too many worker deaths."""
        return self._placement.abandoned if self._placement is not None else 0

    def queued(self) -> int:
        """Batches not yet in a worker's ring (the backlog and the outboxes)."""
        return self._placement.queued() if self._placement is not None else 0

    def worker_pids(self) -> list[int]:
        """The pids of the worker processes alive now (for tests and tools)."""
        slots = self._supervisor.slots if self._supervisor is not None else ()
        return [s.process.pid for s in slots if s.process is not None]

    async def start(self) -> None:
        """Create the arena, start every worker and wait until each is ready.  No room in
        ``/dev/shm`` for the arena and every worker's rings: :class:`ShmFullError`, whose
        one line names the need, the free space and what to change."""
        self._loop = asyncio.get_running_loop()
        removed = cleanup_stale_segments()
        if removed:
            log.info("removed %d stale shared-memory segments of dead servers", len(removed))
        size = self.config.shm_size_mb * 1024 * 1024
        free = shm_free()
        try:
            self._arena = arena = Arena.create(segment_name("arena"), size)
            self._placement = Placement[_WorkerLane](
                self.config.workers, ArenaAllocator(size), arena.write
            )
            self._all_ready = asyncio.Event()
            self._supervisor = Supervisor(
                self.config.workers,
                self._launch,
                self._target,
                self._on_completions,
                self._on_exit,
                self._release,
                on_launch_failure=self._on_launch_failure,
                serving=self._serving,
            )
            self._metrics.count_unsignalled_wakeups(self.unsignalled_wakeups)
            self._supervisor.start()
        except ShmFullError:
            await self.close()
            need = (self.config.shm_size_mb << 20) + _RING_PAIR_BYTES * self.config.workers
            raise ShmFullError(self._start_advice(free), need, free) from None
        try:
            await asyncio.wait_for(self._all_ready.wait(), _READY_TIMEOUT_S)
        except TimeoutError:
            await self.close()
            raise RuntimeError(f"workers were not ready within {_READY_TIMEOUT_S:.0f} s") from None

    def _start_advice(self, free: int) -> str:
        """The one line for a start that found ``/dev/shm`` too small (``free`` bytes)."""
        workers, arena = self.config.workers, self.config.shm_size_mb << 20
        rings = _RING_PAIR_BYTES * workers
        return (
            f"/dev/shm has {mib(free)} free, too little for the {mib(arena + rings)} "
            f"fastext needs: a {mib(arena)} arena (--shm-size-mb "
            f"{self.config.shm_size_mb}) and {mib(_RING_PAIR_BYTES)} of rings per worker "
            f"(--workers {workers}); lower --shm-size-mb, run fewer "
            "workers, or give the device a larger /dev/shm (docker run --shm-size, "
            "HostConfig.ShmSize)"
        )

    def open(self, spec: LaneSpec, memory: ClientMemory | None, deliver: Deliver) -> Lane:
        return _WorkerLane(self, next(self._lanes), spec, deliver)

    def on_readiness(self, listener: Readiness) -> None:
        self._readiness = listener

    # -- submitting ------------------------------------------------------------------

    def submit(self, lane: _WorkerLane, token: int, payloads: Sequence[Payload]) -> None:
        """Place a batch of ``lane``; its results go to ``lane.deliver(token, ...)``."""
        placement = self._placement
        assert placement is not None and self._loop is not None, "WorkerBackend.start() first"
        worker = placement.add(
            lane, token, payloads, time.perf_counter() if self._metrics.enabled else 0.0
        )
        if worker is not None:  # placed at once (nothing waited before it): into its ring
            self._flush(worker)
            if self._metrics.enabled:
                self._metrics.queue_depth(placement.queued())
        elif not self._pump_scheduled:
            # It waits for arena space or a ready worker: place it (and whatever else
            # waits) at the end of this loop iteration, or when completions free room.
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        placement = self._placement
        if placement is None:
            return
        for worker in placement.place():
            self._flush(worker)
        if self._metrics.enabled:
            self._metrics.queue_depth(placement.queued())

    def _flush(self, worker: Worker) -> None:
        """Move a worker's outbox into its ring: one publish (and at most one wake)."""
        link = self._links[worker.index]
        outbox = worker.outbox
        if link is None or not outbox:  # no process in the slot (between launches)
            return
        pushed = link.submit.push_many(outbox)
        if pushed == len(outbox):
            outbox.clear()
        else:
            for _ in range(pushed):
                outbox.popleft()

    def close_lane(self, lane: _WorkerLane) -> None:
        """The session is over: its workers unmap its file after its last batch."""
        if self._placement is not None:
            for worker in self._placement.close_lane(lane):
                self._flush(worker)

    # -- completions and deaths ----------------------------------------------------------

    def _on_completions(self, slot: Slot, exited: bool = False) -> None:
        """The worker rang its doorbell (or ``exited``): take every record it wrote (DONE
        results go to their sessions), then send what waits.  One call per wake-up.

        The doorbell is cleared here, before the ring is read, not in the supervisor's
        wake-up path: that order (clear, then drain) is what makes a ring written after
        the drain ring again, and it is this protocol's, not the supervisor's, which knows
        nothing of rings; it also spares a call per wake-up (per frame at low load)."""
        link = self._links[slot.index]
        placement = self._placement
        if link is None or placement is None:
            return
        link.doorbell.clear()
        worker = link.worker
        metrics = self._metrics
        finished = placement.finished
        for record in link.completion.pop_many(1 << 16, 0):
            kind = record[0]
            if kind == records.DONE:
                batch_id, outcomes, processing_us = records.unpack_done(record)
                job = finished(worker, batch_id)
                if job is None:
                    continue  # a batch it no longer holds (re-run elsewhere after a death)
                if metrics.enabled:
                    processing = processing_us / 1e6
                    metrics.batch_done(time.perf_counter() - job.submitted - processing, processing)
                job.lane.deliver(job.token, outcomes)
            elif kind == records.MODEL_RUN:
                model, frames, inference_us = records.unpack_model_run(record)
                models = repository.installed()
                if model < len(models):
                    metrics.model_run(models[model].name, frames, inference_us / 1e6)
            elif kind == records.READY:
                placement.set_ready(worker)  # the one ready flag (the supervisor's too)
                log.info("worker %d ready (pid %d)", worker.index, records.unpack_ready(record))
                if len(placement.ready) == 1 and self._readiness is not None:
                    self._readiness(True)  # the first worker up: batches run again
                if self._all_ready is not None and len(placement.ready) == len(placement.workers):
                    self._all_ready.set()
        if exited:
            return
        # The worker consumed records, so its ring has room: what waited in its outbox for
        # that room goes now (nothing else would send it if no new job came its way).
        if worker.outbox:
            self._flush(worker)
        if placement.backlog and not self._pump_scheduled:
            self._pump()  # completions freed arena space or worker load (unless a pump is due)

    def unsignalled_wakeups(self) -> int:
        """Lost wake-ups that the rings' bounded sleeps rescued, over every worker so far."""
        live = 0
        for link in self._links:  # read by the scrape thread: a slot's rings may be closing
            if link is not None:
                try:
                    live += link.rings.unsignalled_wakeups()
                except ValueError:  # closed under us: its count moved to the retired total
                    pass
        return self._unsignalled_retired + live

    def _launch(self, slot: Slot) -> WorkerSpec:
        """The supervisor starts a process in ``slot``: its rings, and what it is told."""
        arena, placement = self._arena, self._placement
        assert arena is not None and placement is not None and slot.doorbell is not None
        try:
            rings = RingPair.create(_RING_CAPACITY, tag=f"w{slot.index}")
        except ShmFullError as exc:
            raise ShmFullError(
                f"/dev/shm has {mib(exc.free)} free, too little for worker {slot.index}'s "
                f"rings ({mib(_RING_PAIR_BYTES)}): free space in /dev/shm (another program's "
                "files?), give the device a larger /dev/shm (docker run --shm-size), lower "
                "--shm-size-mb or run fewer --workers",
                exc.need,
                exc.free,
            ) from None
        self._links[slot.index] = _WorkerLink(rings, slot.doorbell, placement.workers[slot.index])
        config = self.config
        return WorkerSpec(
            index=slot.index,
            rings=rings.names,
            arena_name=arena.name,
            arena_size=arena.size,
            log_level=config.log_level,
            log_format=config.log_format,
            parent_pid=os.getpid(),
            heartbeat=slot.heartbeat,
            doorbell=slot.doorbell.ringer,
            models=repository.installed(),
            model_threads=config.model_threads,
        )

    def _release(self, slot: Slot, aborting: bool) -> None:
        """The slot's process is gone (after :meth:`_on_exit`): close its rings, which
        unlinks them.  ``aborting`` (the program exits now): only unlink the names."""
        link = self._links[slot.index]
        if link is None:
            return
        rings = link.rings
        if aborting:
            rings.unlink()
            return
        try:  # its rings go with it: keep their count
            self._unsignalled_retired += rings.unsignalled_wakeups()
        finally:
            self._links[slot.index] = None
            rings.close()

    def _serving(self, slot: Slot) -> bool:
        """Whether the slot's process said READY (its heartbeat is watched from then):
        placement's flag, the one both the placement and the supervisor read."""
        placement = self._placement
        return placement is not None and placement.workers[slot.index].ready

    def _on_launch_failure(self, slot: Slot, exc: Exception) -> None:
        """A restart could not start slot's worker (the supervisor logged why and tries
        again): counted; its frames wait in the backlog meanwhile."""
        self._metrics.worker_launch_failed()

    def _on_exit(self, slot: Slot) -> None:
        placement = self._placement
        if placement is not None:
            if self._supervisor is not None and not self._supervisor.stopping:
                self._metrics.worker_restarted()
            self._on_completions(slot, exited=True)  # what it finished before dying counts
        # (Its link, rings and doorbell go in _release, after this returns: the slot's
        # next process gets new ones.)
        if placement is None:
            return
        worker = placement.workers[slot.index]
        held = len(worker.jobs)
        was_ready = worker.ready
        for job in placement.worker_died(worker):
            lost = Unprocessed(
                Outcome.LOST, f"worker died while processing this frame ({job.runs} times)"
            )
            job.lane.deliver(job.token, [lost] * len(job.refs or ()))
        if held:
            log.warning(
                "worker %d died holding %d batches: running them again elsewhere", slot.index, held
            )
        stopping = self._supervisor is None or self._supervisor.stopping
        if was_ready and not placement.ready and not stopping and self._readiness is not None:
            self._readiness(False)  # no worker left: batches wait for the next one
        # The supervisor marks the slot dead after this returns: place the orphans then.
        asyncio.get_running_loop().call_soon(self._pump)

    async def close(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.stop(self._send_stop, deadline_s=max(1.0, self.config.drain_s))
            self._supervisor = None
        if self._placement is not None:
            backlog, self._placement.backlog = self._placement.backlog, deque()
            stopped = Unprocessed(Outcome.SHUTDOWN, "server stopped before the frame was processed")
            for job in backlog:
                self._placement.release(job)
                job.lane.deliver(job.token, [stopped] * len(job.refs or job.payloads))
        if self._arena is not None:
            self._arena.close()
            self._arena = None

    def abort(self) -> None:
        killed = self._supervisor.kill() if self._supervisor is not None else 0
        if self._arena is not None:
            self._arena.unlink()
        log.warning("backend aborted: %d workers killed, shared memory unlinked", killed)

    def _send_stop(self, slot: Slot) -> None:
        if self._placement is None:
            return
        worker = self._placement.workers[slot.index]
        worker.outbox.append(records.pack_stop())
        self._flush(worker)
