"""Warm kernels in several processes at once, compiling each numba function in one only;
the warm-up of :mod:`fastext.vision.kernels` (:func:`warm`, :func:`warm_shared`).

The kernels compile nothing at import: :func:`warm` compiles (or loads from numba's cache,
located by numba's own ``NUMBA_CACHE_DIR``) every kernel for the argument types
:mod:`fastext.vision.frames` uses; :func:`warm_shared` does the same in several worker
processes at once while compiling each function in one of them only (a cold compile
of the whole set costs tens of CPU seconds; two workers doing it side by side each
paid it in full).

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

``fastext warm`` starts those processes (:func:`warm_child`, ``fastext warm --child``)
and reads their output with :func:`run_children`: every pipe of every child at once,
since a child that blocks writing to a full pipe while holding locks would hold up every
child waiting for them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import selectors
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Finished",
    "Unit",
    "WarmReport",
    "cache_dir",
    "jitted_closure",
    "run_children",
    "run_units",
    "warm",
    "warm_child",
    "warm_shared",
    "warm_units",
]

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
            fd = os.open(
                os.path.join(self._dir, f"{self._prefix}{name}.lock"),
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                0o666,
            )
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
        log.warning(
            "cannot lock in %s (%s): this process compiles what it misses on its own", lock_dir, exc
        )
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


# -- the vision kernels' warm-up --------------------------------------------------------
#
# fastext.vision.kernels (numba, llvmlite) is imported inside each function: the parent
# of ``fastext warm`` imports this module and never runs a kernel.


def warm() -> None:
    """Compile, or load from numba's cache, every kernel for the types used at run time.

    Those types: ``uint8`` 2-D read-only views, C-contiguous or strided; Python ints,
    floats and bools; ``out`` and the motion state writable C-contiguous arrays.
    """
    for unit in warm_units():
        unit.run()


@dataclass(frozen=True)
class WarmReport:
    """What one process's warm-up did: every cached function it made ready, and of those
    the ones compiled here or loaded (a function may have signatures of each kind; a
    helper compiled into its caller's cache entry is in neither)."""

    functions: list[str]
    compiled: list[str]
    loaded: list[str]


def warm_shared() -> WarmReport:
    """:func:`warm`, sharing the compile work with other processes warming at once.

    Every process still ends with every kernel (so any frame finds its kernel ready),
    but each numba function is compiled by one process only; the others load it from
    numba's cache once it is there (see this module's docstring for why and how).
    Without a writable cache directory, each process compiles what it needs itself.
    """
    from fastext.vision import kernels

    units = warm_units()
    run_units(units, cache_dir(), prefix="kernels.")
    functions = sorted(set().union(*(u.functions for u in units)))
    found: dict[str, Any] = {}
    for name in kernels.__all__:
        found.update(_jitted(getattr(kernels, name)))
    stats = {name: found[name].stats for name in functions}
    return WarmReport(
        functions=functions,
        compiled=[n for n in functions if sum(stats[n].cache_misses.values())],
        loaded=[n for n in functions if sum(stats[n].cache_hits.values())],
    )


def cache_dir() -> str | None:
    """Where numba keeps the kernels' cache: NUMBA_CACHE_DIR, else ``__pycache__`` beside
    them (one directory for every module of the package), else a per-user directory;
    None when it found none writable."""
    from fastext.vision import kernels

    path = kernels.mean_u8.stats.cache_path
    return path if isinstance(path, str) and path else None


def warm_units() -> list[Unit]:
    """The warm-up as independent units: one per public kernel (motion's two together).

    Costliest first, by cold compile time measured on x86-64 (the RGB565/555 kernels,
    four literal-specialised loops each, take longest). A unit's functions are the
    kernel and every jitted helper it calls, found from the code itself.
    """
    from fastext.vision.kernels import (
        luma_mean_packed16,
        luma_mean_rgb,
        luma_packed16,
        luma_rgb,
        mean_u8,
        motion_cells,
        motion_regions,
        resize_bilinear,
        rgb_bytes,
        rgb_packed16,
        rgb_yuv420p,
    )

    out = np.zeros((2, 2), np.uint8)
    rgb = np.zeros((2, 2, 3), np.uint8)
    views = _warm_views()

    def unit(name: str, kernels: tuple[Any, ...], call: Callable[[np.ndarray], object]) -> Unit:
        def run() -> None:
            for view in views:
                call(view)

        functions = frozenset().union(*(jitted_closure(k) for k in kernels))
        return Unit(name, run, functions)

    return [
        unit(
            "luma_mean_packed16",
            (luma_mean_packed16,),
            lambda v: luma_mean_packed16(v, 2, False, True),
        ),
        unit("luma_packed16", (luma_packed16,), lambda v: luma_packed16(v, 2, False, True, out)),
        unit("motion", (motion_cells, motion_regions), _warm_motion),
        unit("rgb_packed16", (rgb_packed16,), lambda v: rgb_packed16(v, 2, False, True, rgb)),
        unit("rgb_yuv420p", (rgb_yuv420p,), _warm_yuv420p),
        unit("luma_rgb", (luma_rgb,), lambda v: luma_rgb(v, 4, 0, 1, 2, 2, out)),
        unit("rgb_bytes", (rgb_bytes,), lambda v: rgb_bytes(v, 4, 0, 1, 2, 2, rgb)),
        unit("luma_mean_rgb", (luma_mean_rgb,), lambda v: luma_mean_rgb(v, 4, 0, 1, 2, 2)),
        unit(
            "resize_bilinear", (resize_bilinear,), lambda v: resize_bilinear(v, 4, 0, 1, 2, 2, rgb)
        ),
        unit("mean_u8", (mean_u8,), mean_u8),
    ]


def _warm_views() -> list[np.ndarray]:
    """Tiny read-only views of both layouts frames hand to kernels: contiguous, padded."""
    contiguous = np.zeros((2, 8), np.uint8)
    padded = np.zeros((2, 12), np.uint8)[:, :8]
    for view in (contiguous, padded):
        view.flags.writeable = False
    return [contiguous, padded]


def _warm_yuv420p(y_plane: np.ndarray) -> None:
    from fastext.vision.kernels import rgb_yuv420p

    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb_yuv420p(y_plane, y_plane, y_plane, True, rgb)
    # An odd width with one byte of padding pads the Y rows but not the half-width
    # chroma rows (ceil(stride / 2) == ceil(width / 2)): padded Y, contiguous chroma.
    contiguous = _warm_views()[0]
    rgb_yuv420p(y_plane, contiguous, contiguous, True, rgb)


def _warm_motion(luma: np.ndarray) -> None:
    from fastext.vision.kernels import motion_cells, motion_regions

    # The types fastext.processors.motion passes: see MotionDetector.
    background = np.zeros((1, 4), np.float32)
    counts = np.zeros((1, 1), np.int32)
    extents = np.zeros((1, 1, 4), np.int32)
    boxes = np.zeros((1, 5), np.int64)
    motion_cells(luma, 2, 4, background, 10.0, 0.1, True, counts, extents)
    motion_regions(counts, extents, 1, 2, boxes)


def jitted_closure(kernel: Any) -> frozenset[str]:
    """Names of ``kernel`` and of every cached jitted function it calls, transitively.

    Those are the functions whose cache files compiling ``kernel`` may write (and whose
    locks a unit takes). Overloads (``_row_as_c``) are not cached and so not listed.
    """
    return frozenset(_jitted(kernel))


def _jitted(kernel: Any) -> dict[str, Any]:
    """:func:`jitted_closure` with each function's dispatcher. A helper is found through
    the globals of the module of the function that calls it, so one imported from
    another module counts; two different functions of one name are an error (locks and
    cache statistics go by name)."""
    from numba.core.dispatcher import Dispatcher

    found: dict[str, Any] = {}
    todo = [kernel]
    while todo:
        fn = todo.pop()
        seen = found.get(fn.__name__)
        if seen is fn:
            continue
        if seen is not None:
            raise ValueError(
                f"two jitted functions named {fn.__name__} ({seen.py_func.__module__}, "
                f"{fn.py_func.__module__}): warm-up units tell them apart by name"
            )
        found[fn.__name__] = fn
        module_globals = fn.py_func.__globals__
        todo += [
            module_globals[n]
            for n in fn.py_func.__code__.co_names
            if isinstance(module_globals.get(n), Dispatcher)
        ]
    return found


# -- the processes of ``fastext warm`` -------------------------------------------------

KEEP_BYTES = 64 * 1024  # of each child's stdout and stderr, the last ones


@dataclass(frozen=True)
class Finished:
    """A child of :func:`run_children` that has exited, with the end of its output."""

    returncode: int
    stdout: str  # its last KEEP_BYTES (decoded, undecodable bytes replaced)
    stderr: str


def run_children(commands: Sequence[Sequence[str]], keep: int = KEEP_BYTES) -> list[Finished]:
    """Start every command at once and read all their stdout and stderr pipes together
    (one selector) until each child has closed both, keeping the last ``keep`` bytes of
    each; return how each ended, in order.

    Reading one child after another (``communicate()``) would let a child that fills a
    pipe (64 KiB on Linux: numba's warnings, a traceback) block while holding a lock
    that the child being read waits for. Every pass of the loop reads at least one
    chunk or closes one pipe, so it ends with the children; an exception (Ctrl-C) kills
    those still running: no compile goes on without us.
    """
    procs: list[subprocess.Popen[bytes]] = []
    tails: dict[tuple[int, str], bytearray] = {}
    try:
        with selectors.DefaultSelector() as selector:
            for number, command in enumerate(commands):
                proc = subprocess.Popen(
                    list(command),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                procs.append(proc)
                assert proc.stdout is not None and proc.stderr is not None  # both PIPE
                for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                    tails[number, name] = bytearray()
                    selector.register(pipe, selectors.EVENT_READ, (number, name))
            while selector.get_map():  # bounded by the children: each pipe ends at its EOF
                for key, _ in selector.select():
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    tail = tails[key.data]
                    tail += chunk
                    del tail[:-keep]
        return [
            Finished(
                proc.wait(),
                tails[n, "stdout"].decode(errors="replace"),
                tails[n, "stderr"].decode(errors="replace"),
            )
            for n, proc in enumerate(procs)
        ]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def warm_child(more: dict[str, Callable[[], tuple[list[str], list[str]]]] | None = None) -> int:
    """One process of ``fastext warm`` (``fastext warm --child``): ready every kernel
    (:func:`warm_shared`: this module's units, claimed by locks), then
    print its report as one JSON line on stdout, ``{"compiled", "functions", "cache"}``,
    or ``{"error"}`` and return 1. ``more``: by name prefix, further warm-ups run after
    (each returns the functions it readied and those it compiled), such as the model
    kernels, which live above this package."""
    try:
        from numba.core import config as numba_config

        if getattr(numba_config, "DISABLE_JIT", False):
            raise RuntimeError("NUMBA_DISABLE_JIT is set: there is nothing to compile or keep")
        report = warm_shared()
        functions, compiled = list(report.functions), list(report.compiled)
        for prefix, warm in (more or {}).items():  # other packages' kernels (the models')
            readied, compiled_here = warm()
            functions += [f"{prefix}.{name}" for name in readied]
            compiled += [f"{prefix}.{name}" for name in compiled_here]
        print(
            json.dumps({"compiled": compiled, "functions": functions, "cache": cache_dir()}),
            flush=True,
        )
    except Exception as exc:  # reported by the parent, named by its process number
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    return 0
