"""Child processes kept running: spawn, watch, restart with backoff, stop with deadlines.

Generic: the supervisor knows nothing of what its processes run.  It keeps ``count``
slots; for each process it creates a :class:`~fastext.backend.doorbell.Doorbell` and a
heartbeat clock on the slot, then asks the caller's ``launch(slot)`` for the one
argument the process gets (its spec: the caller puts ``slot.doorbell.ringer`` and
``slot.heartbeat`` in it, and sets up whatever else the process needs, such as rings)
and starts ``target(spec)`` in a ``spawn`` process.

The event loop learns of a process's exit from its sentinel and of its news from the
doorbell: both file descriptors watched with ``loop.add_reader``; nothing polls while the
processes run (only :meth:`Supervisor.stop` waits on them in short sleeps, bounded).  The
caller's callbacks, all on the loop:

* ``on_wake(slot)``: the slot's doorbell is readable.  It clears it
  (``doorbell.clear()``) and reads what the process left for it.
* ``on_exit(slot)``: the slot's process has ended (crash, heartbeat kill, stop).  Its
  doorbell and the caller's resources are still there: whatever the process finished
  is taken, and what it held handed elsewhere, before the slot is recycled.
* ``release(slot, aborting)``: free what ``launch`` set up for the process, after
  ``on_exit`` (or, from :meth:`Supervisor.kill`, with ``aborting=True``: the whole
  program exits next, so only remove names, such as shared memory, and unmap nothing).
  Called once per successful ``launch``; a ``launch`` that raises cleans up after itself.

A process whose heartbeat stalls once it serves is killed and handled like a crash:
it serves once the caller marked its slot ``ready``, or, for a caller that keeps that
fact elsewhere (one home per fact), once ``serving(slot)`` says so.  A process that
exits while not stopping is restarted after a backoff that grows with the exits of the
last minute.  A restart whose launch raises (``/dev/shm`` full, no file descriptors, fork
refused) is logged with its cause, reported to ``on_launch_failure(slot, exc)`` and tried
again with the same backoff, until the supervisor stops; only the first launches, in
:meth:`Supervisor.start`, raise.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastext.backend.doorbell import Doorbell

__all__ = ["Slot", "Supervisor"]

log = logging.getLogger("fastext.backend.supervisor")
_CTX = multiprocessing.get_context("spawn")  # fork is unsafe once gRPC exists
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # restart delays by exits in the last minute
WATCH_S = 1.0  # heartbeat check period
_FAILURE_WINDOW_S = 60.0
_KILLED_EXIT_S = 5.0  # how long stop() waits to see a SIGKILLed process end

#: ``launch(slot)``: set up the slot's next process; returns its spec (``target``'s argument).
Launch = Callable[["Slot"], Any]
#: ``release(slot, aborting)``: free what ``launch`` set up (``aborting``: unlink names only).
Release = Callable[["Slot", bool], None]
#: ``on_launch_failure(slot, exc)``: a restart could not start a process (it is retried).
LaunchFailure = Callable[["Slot", Exception], object]


class Slot:
    """One process position: its process of the moment, doorbell and heartbeat clock.

    ``ready`` is the caller's to set (the process said it serves): heartbeats are
    watched only from then, so a long start-up (compiling) is never a hang.  A caller
    that passes the supervisor ``serving`` keeps that fact itself and leaves it False.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.doorbell: Doorbell | None = None
        self.heartbeat: Any = None  # RawValue('d'): the child's time.monotonic() of its last beat
        self.ready = False
        self.restarts = 0
        self.launch_failures = 0  # restarts whose launch raised (each tried again)
        self.failures: list[float] = []  # exit and launch-failure times, for backoff
        self.launched = False  # launch() ran and release() has not yet

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


class Supervisor:
    """Keeps ``count`` processes of ``target`` running until :meth:`stop` or :meth:`kill`."""

    def __init__(
        self,
        count: int,
        launch: Launch,
        target: Callable[[Any], object],
        on_wake: Callable[[Slot], object],
        on_exit: Callable[[Slot], object],
        release: Release | None = None,
        *,
        hang_s: float = 30.0,
        name: str = "worker",
        backoff_s: Sequence[float] = BACKOFF_S,
        watch_s: float = WATCH_S,
        on_launch_failure: LaunchFailure | None = None,
        serving: Callable[[Slot], bool] | None = None,
    ) -> None:
        if not backoff_s:
            raise ValueError("backoff_s needs at least one delay")
        self.slots = [Slot(i) for i in range(count)]
        self._launch = launch
        self._target = target
        self._on_wake = on_wake
        self._on_exit = on_exit
        self._release_hook = release
        self._on_launch_failure = on_launch_failure
        self._serving: Callable[[Slot], bool] = serving if serving is not None else _marked
        self._hang_s = hang_s
        self._name = name
        self._backoff = tuple(backoff_s)
        self._watch_s = watch_s
        self._stopping = False
        self._watch: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    def start(self) -> None:
        """Spawn every slot's process (on the running loop).  A launch that raises here
        raises (the program cannot start as configured); the slots already started are
        the caller's to stop."""
        self._loop = asyncio.get_running_loop()
        for slot in self.slots:
            self._spawn(slot)
        self._watch = self._loop.call_later(self._watch_s, self._check_heartbeats)

    def _spawn(self, slot: Slot) -> None:
        assert self._loop is not None
        slot.doorbell = doorbell = Doorbell()
        slot.heartbeat = _CTX.RawValue("d", time.monotonic())
        slot.ready = False
        try:
            spec = self._launch(slot)
            slot.launched = True
            slot.process = _CTX.Process(
                target=self._target,
                args=(spec,),
                daemon=True,
                name=f"fastext-{self._name}-{slot.index}",
            )
            slot.process.start()
        except BaseException:
            slot.process = None
            self._release(slot)
            raise
        doorbell.ringer.close()  # the child holds its copy
        self._loop.add_reader(doorbell.fileno(), self._on_wake, slot)
        self._loop.add_reader(slot.process.sentinel, self._exited, slot)
        log.info("%s %d started (pid %d)", self._name, slot.index, slot.process.pid)

    def _exited(self, slot: Slot) -> None:
        assert self._loop is not None
        process = slot.process
        self._loop.remove_reader(process.sentinel)
        process.join(1.0)  # the sentinel closes a moment before the process can be reaped
        if not self._stopping:
            log.error(
                "%s %d (pid %d) exited with code %s",
                self._name,
                slot.index,
                process.pid,
                process.exitcode,
            )
        self._on_exit(slot)  # completions are taken and frames re-queued before the slot resets
        self._release(slot)
        if self._stopping:
            return
        slot.restarts += 1
        delay = self._respawn_later(slot)
        log.warning(
            "restarting %s %d in %.1f s (restart %d)", self._name, slot.index, delay, slot.restarts
        )

    def _respawn_later(self, slot: Slot) -> float:
        """Schedule the slot's next launch after the backoff its recent failures earn."""
        assert self._loop is not None
        now = time.monotonic()
        slot.failures = [t for t in slot.failures if now - t < _FAILURE_WINDOW_S] + [now]
        delay = self._backoff[min(len(slot.failures), len(self._backoff)) - 1]
        self._loop.call_later(delay, self._respawn, slot)
        return delay

    def _respawn(self, slot: Slot) -> None:
        if self._stopping:
            return
        try:
            self._spawn(slot)
        except Exception as exc:  # noqa: BLE001 - whatever it was, the slot is tried again
            # (_spawn released what it had set up.)  Tried again, forever: a slot left
            # empty would leave its frames waiting for a process that never comes.
            slot.launch_failures += 1
            delay = self._respawn_later(slot)
            log.error(
                "%s %d could not be started: %s; trying again in %.1f s (launch failure %d)",
                self._name,
                slot.index,
                _cause(exc),
                delay,
                slot.launch_failures,
            )
            if self._on_launch_failure is not None:
                self._on_launch_failure(slot, exc)

    def _release(self, slot: Slot) -> None:
        """The slot's process is gone: its doorbell, the caller's resources, the process."""
        self._close_doorbell(slot)
        self._release_resources(slot, aborting=False)
        process, slot.process = slot.process, None
        if process is not None and process.exitcode is not None:
            process.close()  # (one that survived SIGKILL is left to the garbage collector)
        slot.ready = False

    def _close_doorbell(self, slot: Slot) -> None:
        doorbell, slot.doorbell = slot.doorbell, None
        if doorbell is not None:
            if self._loop is not None and not doorbell.closed:
                self._loop.remove_reader(doorbell.fileno())
            doorbell.close()

    def _release_resources(self, slot: Slot, aborting: bool) -> None:
        """The caller's per-process resources, once per launch (``release(slot, aborting)``)."""
        if slot.launched:
            slot.launched = False
            if self._release_hook is not None:
                self._release_hook(slot, aborting)

    def _check_heartbeats(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        serving = self._serving
        for slot in self.slots:
            if serving(slot) and slot.alive and now - slot.heartbeat.value > self._hang_s:
                log.error(
                    "%s %d has not beaten for %.0f s: killing it",
                    self._name,
                    slot.index,
                    now - slot.heartbeat.value,
                )
                slot.process.kill()  # its sentinel reports the exit: handled as a crash
        if not self._stopping:
            self._watch = self._loop.call_later(self._watch_s, self._check_heartbeats)

    def kill(self, deadline_s: float = 1.0) -> int:
        """Stop now: SIGKILL every process, reap each (bounded in all by ``deadline_s``)
        and let ``release(slot, aborting=True)`` remove the caller's names; the doorbells
        are closed.  For a program about to exit: no ``on_exit``, nothing of the caller's
        unmapped, no restart.  Returns how many were killed."""
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
                log.error(
                    "%s pid %d not reaped within %.1f s of SIGKILL",
                    self._name,
                    process.pid,
                    deadline_s,
                )
        for slot in self.slots:
            self._release_resources(slot, aborting=True)
            # Should the loop run on, no on_exit and no restart follow: watch nothing more.
            process, slot.process = slot.process, None
            if process is not None and self._loop is not None:
                self._loop.remove_reader(process.sentinel)
            self._close_doorbell(slot)
            slot.ready = False
        return len(killed)

    async def stop(self, send_stop: Callable[[Slot], object], deadline_s: float = 5.0) -> None:
        """Ask every process to stop (``send_stop(slot)``), wait up to ``deadline_s``, kill
        the rest; each ending goes through ``on_exit`` and ``release`` as any exit does."""
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
                log.warning("%s %d did not stop in time: killing it", self._name, slot.index)
                slot.process.kill()
        # Each sentinel reports its kill: _exited reaps it, here on the loop's thread (a
        # join in another thread would race it for the exit status).
        end = time.monotonic() + _KILLED_EXIT_S
        while any(s.process is not None for s in self.slots) and time.monotonic() < end:
            await asyncio.sleep(0.02)
        for slot in self.slots:
            if slot.process is not None:  # its end not seen (a process stuck in the kernel)
                self._exited(slot)
            else:
                self._release(slot)


def _marked(slot: Slot) -> bool:
    """The default ``serving``: the caller marked the slot ``ready``."""
    return slot.ready


def _cause(exc: BaseException) -> str:
    """An exception for a log line: its type, unless its message says it all (ours)."""
    text = str(exc)
    if type(exc).__module__.startswith("fastext.") and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
