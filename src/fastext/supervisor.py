"""Worker processes: spawn, watch, restart with backoff, stop with deadlines.

Each worker slot owns a ring pair and a doorbell pipe.  The event loop learns
of a worker's exit from its process sentinel and of its completions from the
doorbell — both file descriptors watched with ``loop.add_reader``; nothing
polls.  A worker whose heartbeat stalls is killed and handled like a crash.
What happens to the frames a dead worker held is the pipeline's business: the
supervisor reports the death first and recycles the slot after.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from fastext.ring import RingPair
from fastext.worker import WorkerSpec, main

__all__ = ["Supervisor", "WorkerSlot"]

log = logging.getLogger("fastext.supervisor")
_CTX = multiprocessing.get_context("spawn")  # fork is unsafe once gRPC exists
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_WATCH_S = 1.0


class WorkerSlot:
    """One worker position: its process of the moment, rings and doorbell."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.rings: RingPair | None = None
        self.doorbell: Connection | None = None
        self.heartbeat: Any = None
        self.ready = False
        self.restarts = 0
        self.failures: list[float] = []  # exit times, for backoff

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


class Supervisor:
    """Keeps ``count`` workers running until :meth:`stop`."""

    def __init__(
        self,
        count: int,
        arena: tuple[str, int],
        log_level: str,
        log_format: str,
        ring_capacity: int,
        on_completions: Callable[[WorkerSlot], None],
        on_exit: Callable[[WorkerSlot], None],
        hang_s: float = 30.0,
    ) -> None:
        self.slots = [WorkerSlot(i) for i in range(count)]
        self._arena = arena
        self._log_level = log_level
        self._log_format = log_format
        self._capacity = ring_capacity
        self._on_completions = on_completions
        self._on_exit = on_exit
        self._hang_s = hang_s
        self._stopping = False
        self._watch: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for slot in self.slots:
            self._spawn(slot)
        self._watch = self._loop.call_later(_WATCH_S, self._check_heartbeats)

    def _spawn(self, slot: WorkerSlot) -> None:
        assert self._loop is not None
        slot.rings = RingPair.create(self._capacity, tag=f"w{slot.index}")
        reader, writer = _CTX.Pipe(duplex=False)
        slot.heartbeat = _CTX.RawValue("d", time.monotonic())
        spec = WorkerSpec(index=slot.index, rings=slot.rings.names, arena_name=self._arena[0],
                          arena_size=self._arena[1], log_level=self._log_level,
                          log_format=self._log_format,
                          parent_pid=os.getpid(), heartbeat=slot.heartbeat, doorbell=writer)
        slot.process = _CTX.Process(target=main, args=(spec,), name=f"fastext-worker-{slot.index}",
                                    daemon=True)
        slot.process.start()
        writer.close()  # the child holds its copy
        slot.doorbell = reader
        slot.ready = False
        self._loop.add_reader(reader.fileno(), self._on_completions, slot)
        self._loop.add_reader(slot.process.sentinel, self._exited, slot)
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    def _exited(self, slot: WorkerSlot) -> None:
        assert self._loop is not None
        process = slot.process
        self._loop.remove_reader(process.sentinel)
        process.join(1.0)  # the sentinel closes a moment before the process can be reaped
        if not self._stopping:
            log.error("worker %d (pid %d) exited with code %s", slot.index, process.pid,
                      process.exitcode)
        self._on_exit(slot)  # completions are drained and frames re-queued before the slot resets
        self._release(slot)
        if self._stopping:
            return
        now = time.monotonic()
        slot.failures = [t for t in slot.failures if now - t < 60.0] + [now]
        delay = _BACKOFF_S[min(len(slot.failures) - 1, len(_BACKOFF_S) - 1)]
        slot.restarts += 1
        log.warning("restarting worker %d in %.1f s (restart %d)", slot.index, delay, slot.restarts)
        self._loop.call_later(delay, self._respawn, slot)

    def _respawn(self, slot: WorkerSlot) -> None:
        if not self._stopping:
            self._spawn(slot)

    def _release(self, slot: WorkerSlot) -> None:
        assert self._loop is not None
        if slot.doorbell is not None:
            self._loop.remove_reader(slot.doorbell.fileno())
            slot.doorbell.close()
            slot.doorbell = None
        if slot.rings is not None:
            slot.rings.close()
            slot.rings = None
        if slot.process is not None:
            slot.process.close()
            slot.process = None
        slot.ready = False

    def _check_heartbeats(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        for slot in self.slots:
            if slot.ready and slot.alive and now - slot.heartbeat.value > self._hang_s:
                log.error("worker %d has not beaten for %.0f s: killing it", slot.index,
                          now - slot.heartbeat.value)
                slot.process.kill()
        if not self._stopping:
            self._watch = self._loop.call_later(_WATCH_S, self._check_heartbeats)

    def kill(self, deadline_s: float = 1.0) -> int:
        """Stop now: SIGKILL every worker, reap each (bounded in all by ``deadline_s``) and
        unlink their rings.  For a process about to exit; returns how many were killed."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        killed = [s.process for s in self.slots if s.process is not None and s.process.is_alive()]
        for process in killed:
            process.kill()
        end = time.monotonic() + deadline_s
        for process in killed:
            process.join(max(0.0, end - time.monotonic()))
            if process.exitcode is None:
                log.error("worker pid %d not reaped within %.1f s of SIGKILL", process.pid,
                          deadline_s)
        for slot in self.slots:
            if slot.rings is not None:
                slot.rings.unlink()
        return len(killed)

    async def stop(self, send_stop: Callable[[WorkerSlot], None], deadline_s: float = 5.0) -> None:
        """Ask every worker to stop, wait up to ``deadline_s``, kill the rest, free the slots."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        for slot in self.slots:
            if slot.alive:
                send_stop(slot)
        end = time.monotonic() + deadline_s
        while any(s.alive for s in self.slots) and time.monotonic() < end:
            await asyncio.sleep(0.02)
        for slot in self.slots:
            if slot.alive:
                log.warning("worker %d did not stop in time: killing it", slot.index)
                slot.process.kill()
                await asyncio.to_thread(slot.process.join, 5.0)
        for slot in self.slots:
            if slot.process is not None:
                assert self._loop is not None
                self._loop.remove_reader(slot.process.sentinel)
                slot.process.join(0)
            self._release(slot)
