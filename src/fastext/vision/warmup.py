"""Warm kernels in several processes at once, compiling each numba function in one only.

numba caches per function: one index file (``<fn>-<line>.pyXY.nbi``) mapping signatures
to data files. Each file is written atomically (a temporary file, then ``os.replace``),
but adding a signature is an unlocked read-modify-write of the index
(``numba.core.caching.IndexDataCacheFile.save``): two processes saving signatures of
the same function at once can drop one entry, or point an entry at the other's data
file. So two workers may share the compile work only function by function, and the
shared helpers a kernel calls (themselves cached functions, compiled with their
caller) count as that kernel's functions too.

A :class:`Unit` is what one call warms (a kernel for every argument type, say) and
the names of every cached function its compile may write. A process takes a unit
by locking all those names (``flock`` on one file per name, next to numba's cache);
holding them it loads the unit from the cache or compiles it. Each process runs
every unit: first those it can lock at once (the others are being compiled
elsewhere), then the rest as their locks come free, which by then mostly means
loading what another process compiled. A lock dies with its process, so a worker
killed mid-compile holds nobody up: the next one compiles that unit itself.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["Unit", "run_units"]

log = logging.getLogger("fastext.vision.warmup")


@dataclass(frozen=True)
class Unit:
    """One piece of the warm-up and the cached functions its compile may write."""

    name: str
    run: Callable[[], None]
    functions: frozenset[str]


class _Locks:
    """Exclusive ``flock`` locks on ``<lock_dir>/<prefix><function>.lock``, or none."""

    def __init__(self, lock_dir: str | None, prefix: str) -> None:
        self._dir = lock_dir
        self._prefix = prefix

    def acquire(self, names: Iterable[str], wait: bool) -> list[int] | None:
        """Open file descriptors holding every lock; None if one is busy and not ``wait``.

        Blocking acquisitions take the locks in sorted order (no deadlock between
        processes); a try that fails releases what it took.
        """
        if self._dir is None:
            return []
        held: list[int] = []
        for name in sorted(names):
            fd = os.open(os.path.join(self._dir, f"{self._prefix}{name}.lock"),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self.release(held)
                return None
            held.append(fd)
        return held

    @staticmethod
    def release(held: list[int]) -> None:
        for fd in held:
            os.close(fd)  # closing the only descriptor drops its flock


def _usable(lock_dir: str | None) -> str | None:
    if lock_dir is None:
        return None
    try:
        os.makedirs(lock_dir, exist_ok=True)
        probe = os.path.join(lock_dir, f".fastext-probe-{os.getpid()}")
        os.close(os.open(probe, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.unlink(probe)
    except OSError as exc:
        log.warning("cannot lock in %s (%s): this process compiles what it misses on its own",
                    lock_dir, exc)
        return None
    return lock_dir


def run_units(units: Iterable[Unit], lock_dir: str | None, prefix: str = "") -> list[str]:
    """Run every unit once, each under its functions' locks; return the order they ran in.

    Units are tried in the order given (put the costliest first: they are what another
    process should not be left waiting for). Without a usable ``lock_dir`` nothing is
    shared and the units simply run in order.
    """
    locks = _Locks(_usable(lock_dir), prefix)
    pending = list(units)
    done: list[str] = []
    # Each pass runs every unit it can lock at once; a pass that runs none waits for the
    # first pending unit instead. Every pass runs at least one: at most len(units) passes.
    for _ in range(len(pending)):
        if not pending:
            break
        ran = False
        for unit in list(pending):
            held = locks.acquire(unit.functions, wait=False)
            if held is None:
                continue
            _run(unit, held, locks, done, pending)
            ran = True
        if not ran:
            unit = pending[0]
            started = time.perf_counter()
            held = locks.acquire(unit.functions, wait=True)
            assert held is not None
            log.debug("waited %.2f s for %s", time.perf_counter() - started, unit.name)
            _run(unit, held, locks, done, pending)
    return done


def _run(unit: Unit, held: list[int], locks: _Locks, done: list[str], pending: list[Unit]) -> None:
    try:
        unit.run()
    finally:
        locks.release(held)
    done.append(unit.name)
    pending.remove(unit)
