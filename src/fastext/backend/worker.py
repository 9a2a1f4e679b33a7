"""The worker process: pop batches, read frames in place, run the processor, report.

Started with ``spawn`` by the supervisor.  It attaches the two rings and the
arena by name, warms the numba kernels (every one, sharing the compile work with the
workers starting beside it), then says READY.  It maps each client
file read-only itself, so only references cross the ring.  A heartbeat thread
stamps a shared clock (kernels release the GIL, so it ticks during long
batches); the worker exits when its parent dies.  Never imports grpc.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastext import logs
from fastext.backend import records
from fastext.backend.doorbell import Ringer
from fastext.backend.execute import (
    FrameFormat,
    fetch_payload,
    frames_of,
    run_batch,
    serialized,
)
from fastext.backend.ring import RingPair
from fastext.backend.shm import Arena, ArenaRef, ClientMemory, ShmRef
from fastext.models import repository
from fastext.models.repository import ModelInfo
from fastext.outcomes import Outcome, Unprocessed
from fastext.processors import ModelProcessor, create
from fastext.processors.base import Processor

__all__ = ["WorkerSpec", "main"]

log = logging.getLogger("fastext.backend.worker")
_POLL_S = 0.5  # how often an idle worker checks that its parent is alive
_HEARTBEAT_S = 0.25
_PUSH_RETRY_S = 1.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to start (pickled by ``spawn``)."""

    index: int
    rings: tuple[str, str]
    arena_name: str
    arena_size: int
    log_level: str
    log_format: str
    parent_pid: int
    heartbeat: Any  # multiprocessing RawValue('d'): monotonic time of the last beat
    doorbell: Ringer  # the front's doorbell for this worker: rung after completions
    models: tuple[ModelInfo, ...] = ()  # the server's models: each loaded here before READY
    model_threads: int = 1


class _Lane:
    """A session as a worker holds it: frame format, its processor, the client's file."""

    def __init__(self, o: records.Open) -> None:
        self.format = FrameFormat(o.encoding, o.pixel_format, o.width, o.height, o.stride)
        self.memory: ClientMemory | None = None
        self.processor: Processor | None = None
        self.error: Unprocessed | None = None
        try:
            params = json.loads(o.processor)
            self.processor = create(params.pop("processor"), params)
            if o.shm_name is not None:
                self.memory = ClientMemory(o.shm_name, o.shm_length)
        except Exception as exc:  # the front validated it; this process may still see it fail
            # A processor the front could make and this process cannot: the server's fault.
            # (A client file gone by now leaves the processor: its frames fail one by one,
            # INVALID, in fetch_payload.)
            self.error = Unprocessed(Outcome.ERROR, f"worker could not open the session: {exc}")
            log.error("session %d: %s", o.session, self.error.reason)

    def close(self) -> None:
        if self.memory is not None:
            self.memory.close()


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.pair = RingPair.attach(spec.rings)
        self.requests = self.pair.submit.ring  # OPEN, BATCH, CLOSE, STOP from the front
        self.completion = self.pair.completion.ring
        self.arena = Arena.attach(spec.arena_name, spec.arena_size)
        self.lanes: dict[int, _Lane] = {}  # session id -> what this worker holds for it
        self._model_index = {info.name: i for i, info in enumerate(spec.models)}
        repository.install(spec.models)  # before any OPEN names a model
        self._ring = spec.doorbell.ring  # after a round of completions: never blocks

    def run(self) -> None:
        started = time.perf_counter()
        from fastext.vision import warmup  # here, not at the top: the front imports this module

        # READY only once every kernel any frame may need is compiled or loaded here: a
        # frame never waits on a compile, and SERVING (all workers READY) means it. The
        # compile work is shared with the other workers warming at the same time (each
        # function compiled in one process, loaded from numba's cache by the rest), not
        # repeated in each: see fastext.vision.warmup and docs/architecture.md, "Warm-up".
        report = warmup.warm_shared()
        log.info(
            "kernels warm in %.2f s: %d functions compiled here, %d loaded from the cache (pid %d)",
            time.perf_counter() - started,
            len(report.compiled),
            len(report.loaded),
            os.getpid(),
            extra={"event": "worker_ready", "compiled": report.compiled, "loaded": report.loaded},
        )
        if self.spec.models:  # every model loaded (and run once) before READY
            from fastext.models import engine

            engine.load(self.spec.models, self.spec.model_threads)
        self._push(records.pack_ready(os.getpid()))
        self._ring()
        while True:
            batch = self.requests.pop_many(64, _POLL_S)
            if not batch:
                if os.getppid() != self.spec.parent_pid:
                    log.warning("worker %d: the server is gone; exiting", self.spec.index)
                    return
                continue
            if not self._handle_all(batch):
                return
            self._ring()

    def _handle_all(self, batch: list[bytes]) -> bool:
        """Handle records in order, except that consecutive batches of model sessions wait
        and run together, one runtime call per model for all of them (whichever sessions
        they come from); they run before any other record is handled, so no CLOSE, STOP
        or other batch overtakes them. An OPEN only adds its new session's lane, so it is
        handled at once: the OPENs of streams starting together do not split the batches
        between them into one call per stream. A model with ``max_queue_delay_ms`` waits up
        to that long for more frames while its batch is not full. False when a STOP came."""
        waiting: list[tuple[_Lane, int, list[tuple[int, int, int]]]] = []
        deadline = 0.0
        pending = list(batch)
        while pending:
            for record in pending:
                if record[0] == records.BATCH:
                    lane = self.lanes.get(records.batch_session(record))
                    if lane is not None and isinstance(lane.processor, ModelProcessor):
                        _, batch_id, refs = records.unpack_batch(record)
                        waiting.append((lane, batch_id, refs))
                        continue
                elif record[0] == records.OPEN and waiting:
                    self._handle(record)
                    continue
                if waiting:
                    self._run_models(waiting)
                    waiting = []
                if not self._handle(record):
                    return False
            pending = []
            delay = self._fill_delay(waiting) if waiting else 0.0
            if delay > 0:  # fuller batches: the operator asked for this wait
                now = time.monotonic()
                deadline = deadline or now + delay
                if now < deadline:
                    pending = self.requests.pop_many(64, deadline - now)
        if waiting:
            self._run_models(waiting)
        return True

    @staticmethod
    def _fill_delay(waiting: list[tuple[_Lane, int, list[tuple[int, int, int]]]]) -> float:
        """Seconds to wait for more frames: the longest ``max_queue_delay_ms`` of a model
        whose waiting frames do not fill its batch (0: run now)."""
        frames: dict[str, int] = {}
        infos: dict[str, ModelInfo] = {}
        for lane, _, refs in waiting:
            info = lane.processor.info  # type: ignore[union-attr]
            frames[info.name] = frames.get(info.name, 0) + len(refs)
            infos[info.name] = info
        return max(
            (
                infos[n].max_queue_delay_ms / 1000.0
                for n, count in frames.items()
                if count < infos[n].max_batch
            ),
            default=0.0,
        )

    def _run_models(self, waiting: list[tuple[_Lane, int, list[tuple[int, int, int]]]]) -> None:
        by_model: dict[str, list[tuple[_Lane, int, list[tuple[int, int, int]]]]] = {}
        for item in waiting:
            processor = item[0].processor
            assert isinstance(processor, ModelProcessor)
            by_model.setdefault(processor.info.name, []).append(item)
        for name, items in by_model.items():
            started = time.perf_counter()
            jobs = []
            for lane, _, refs in items:
                processor = lane.processor
                assert isinstance(processor, ModelProcessor)
                jobs.append((processor.params, frames_of(lane.format, self._payloads(lane, refs))))
            engine = items[0][0].processor.engine  # type: ignore[union-attr]
            try:
                results = engine.infer(jobs)
            except Exception as exc:  # the runtime failed the batch: every frame says so
                log.exception(
                    "model %r failed on a batch of %d frames from %d sessions",
                    name,
                    sum(len(f) for _, f in jobs),
                    len(jobs),
                )
                failed = Unprocessed(Outcome.ERROR, f"model {name!r} failed: {exc}")
                results = [[failed] * len(frames) for _, frames in jobs]
            del jobs  # views of shared memory: gone before the front learns a batch is done
            processing_us = int((time.perf_counter() - started) * 1e6)
            index = self._model_index[name]
            for frames, seconds in engine.take_runs():
                self._push(records.pack_model_run(index, frames, int(seconds * 1e6)))
            for (_, batch_id, _), outcomes in zip(items, results, strict=True):
                self._push(self._done(batch_id, serialized(outcomes), processing_us))

    def _handle(self, record: bytes) -> bool:
        kind = record[0]
        if kind == records.BATCH:
            self._push(self._process(record))
        elif kind == records.OPEN:
            o = records.unpack_open(record)
            self.lanes[o.session] = _Lane(o)
        elif kind == records.CLOSE:
            lane = self.lanes.pop(records.unpack_close(record), None)
            if lane is not None:
                lane.close()
        elif kind == records.STOP:
            return False
        else:
            log.error("worker %d: unknown record kind %d", self.spec.index, kind)
        return True

    def _process(self, record: bytes) -> bytes:
        session_id, batch_id, refs = records.unpack_batch(record)
        lane = self.lanes.get(session_id)
        if lane is None or lane.processor is None:
            failed = (
                lane.error
                if lane is not None and lane.error is not None
                else Unprocessed(Outcome.ERROR, f"session {session_id} is not open in this worker")
            )
            return records.pack_done(batch_id, [failed] * len(refs))
        payloads = self._payloads(lane, refs)
        started = time.perf_counter()
        outcomes = run_batch(lane.processor, lane.format, payloads)
        processing_us = int((time.perf_counter() - started) * 1e6)
        del payloads  # views of shared memory: gone before the front learns the batch is done
        return self._done(batch_id, serialized(outcomes), processing_us)

    def _payloads(
        self, lane: _Lane, refs: list[tuple[int, int, int]]
    ) -> list[np.ndarray | memoryview | Unprocessed]:
        """A batch's frames in place: views of the client's file or of the arena."""
        memory, arena = lane.memory, self.arena
        return [
            fetch_payload(
                ArenaRef(offset, size) if source == records.SRC_ARENA else ShmRef(offset, size),
                memory,
                arena,
            )
            for source, offset, size in refs
        ]

    def _done(self, batch_id: int, encoded: list[bytes | Unprocessed], processing_us: int) -> bytes:
        """The DONE record of a batch, or one saying its results do not fit the ring."""
        done = records.pack_done(batch_id, encoded, processing_us)
        if len(done) > self.completion.max_record:
            too_large = Unprocessed(Outcome.ERROR, "result larger than the completion ring allows")
            done = records.pack_done(batch_id, [too_large] * len(encoded))
        return done

    def _push(self, record: bytes) -> None:
        while not self.completion.push(record, _PUSH_RETRY_S):
            self._ring()  # the front may be asleep on a full ring: wake it again
            if os.getppid() != self.spec.parent_pid:
                raise SystemExit(0)

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()
        self.lanes.clear()
        self.arena.close()
        self.pair.close()
        self.spec.doorbell.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (no orphans)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _heartbeat(clock: Any) -> None:
    while True:
        clock.value = time.monotonic()
        time.sleep(_HEARTBEAT_S)


def main(spec: WorkerSpec) -> None:
    """Entry point of a spawned worker."""
    _die_with_parent()
    if os.getppid() != spec.parent_pid:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the front's to handle
    logs.setup(spec.log_level, spec.log_format, worker=spec.index)
    spec.heartbeat.value = time.monotonic()
    threading.Thread(
        target=_heartbeat, args=(spec.heartbeat,), daemon=True, name="fastext-heartbeat"
    ).start()
    worker = Worker(spec)
    try:
        worker.run()
    finally:
        worker.close()
