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

from fastext import logs, records
from fastext.doorbell import Ringer
from fastext.execute import FrameFormat, fetch_payload, run_batch, serialized
from fastext.outcomes import Outcome, Unprocessed
from fastext.processors import create
from fastext.processors.base import Processor
from fastext.ring import RingPair
from fastext.shm import Arena, ArenaRef, ClientMemory, ShmRef

__all__ = ["WorkerSpec", "main"]

log = logging.getLogger("fastext.worker")
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
        self._ring = spec.doorbell.ring  # after a round of completions: never blocks

    def run(self) -> None:
        started = time.perf_counter()
        from fastext import kernels  # here, not at the top: the front imports this module

        # READY only once every kernel any frame may need is compiled or loaded here: a
        # frame never waits on a compile, and SERVING (all workers READY) means it. The
        # compile work is shared with the other workers warming at the same time (each
        # function compiled in one process, loaded from numba's cache by the rest), not
        # repeated in each: see fastext.warmup and docs/architecture.md, "Warm-up".
        report = kernels.warm_shared()
        log.info("kernels warm in %.2f s: %d functions compiled here, %d loaded from the cache "
                 "(pid %d)", time.perf_counter() - started, len(report.compiled),
                 len(report.loaded), os.getpid(),
                 extra={"event": "worker_ready", "compiled": report.compiled,
                        "loaded": report.loaded})
        self._push(records.pack_ready(os.getpid()))
        self._ring()
        while True:
            batch = self.requests.pop_many(64, _POLL_S)
            if not batch:
                if os.getppid() != self.spec.parent_pid:
                    log.warning("worker %d: the server is gone; exiting", self.spec.index)
                    return
                continue
            for record in batch:
                if not self._handle(record):
                    return
            self._ring()

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
            failed = (lane.error if lane is not None and lane.error is not None else Unprocessed(
                Outcome.ERROR, f"session {session_id} is not open in this worker"))
            return records.pack_done(batch_id, [failed] * len(refs))
        memory, arena = lane.memory, self.arena
        payloads = [fetch_payload(ArenaRef(offset, size) if source == records.SRC_ARENA
                                  else ShmRef(offset, size), memory, arena)
                    for source, offset, size in refs]
        started = time.perf_counter()
        outcomes = run_batch(lane.processor, lane.format, payloads)
        processing_us = int((time.perf_counter() - started) * 1e6)
        del payloads  # views of shared memory: gone before the front learns the batch is done
        encoded = serialized(outcomes)
        done = records.pack_done(batch_id, encoded, processing_us)
        if len(done) > self.completion.max_record:
            too_large = Unprocessed(Outcome.ERROR, "result larger than the completion ring allows")
            done = records.pack_done(batch_id, [too_large] * len(refs))
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
    threading.Thread(target=_heartbeat, args=(spec.heartbeat,), daemon=True,
                     name="fastext-heartbeat").start()
    worker = Worker(spec)
    try:
        worker.run()
    finally:
        worker.close()
