"""fastext.vision.warmup: units claimed by function locks, so no function is compiled twice."""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fastext.vision.warmup import KEEP_BYTES, Unit, run_children, run_units
from tests.helpers import subprocess_env

# portable: the warm-up's locks and children (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

# Units sharing helpers, as kernels do: "check" and "unpack" are each used by two units.
FUNCTIONS = {
    "packed_a": {"packed_a", "check", "unpack"},
    "packed_b": {"packed_b", "check", "unpack"},
    "bytes_a": {"bytes_a", "check"},
    "plain": {"plain"},
    "motion": {"motion", "cells"},
}


def _load_or_compile(cache: Path, functions: set[str], log: Path) -> None:
    """A stand-in for numba: load a function whose cache file exists, else compile it."""
    for name in sorted(functions):
        marker = cache / name
        if marker.exists():
            continue  # loaded
        digest = b""
        for _ in range(2000):  # some work, so the other process gets to overlap with it
            digest = hashlib.sha256(digest).digest()
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:  # another process compiled it meanwhile: the bug
            name = f"DUPLICATE {name}"
        else:
            os.close(fd)
        with open(log, "a") as f:
            f.write(f"{name}\n")


def _warm(cache: str, logs: str, index: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    units = [
        Unit(n, lambda f=f: _load_or_compile(Path(cache), f, Path(logs) / str(index)), frozenset(f))
        for n, f in FUNCTIONS.items()
    ]
    barrier.wait(60)
    ran = run_units(units, cache)
    Path(logs, f"{index}.ran").write_text(",".join(ran))


def test_run_units_compiles_each_function_in_one_process_only(tmp_path: Path) -> None:
    cache, logs = tmp_path / "cache", tmp_path / "logs"
    cache.mkdir()
    logs.mkdir()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_warm, args=(str(cache), str(logs), i, barrier)) for i in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    compiled = [
        (logs / str(i)).read_text().split() if (logs / str(i)).exists() else [] for i in (0, 1)
    ]
    every = sorted(set().union(*FUNCTIONS.values()))
    assert sorted(compiled[0] + compiled[1]) == every  # once each, no DUPLICATE line
    for i in (0, 1):  # and each process ran every unit
        assert sorted((logs / f"{i}.ran").read_text().split(",")) == sorted(FUNCTIONS)


def test_run_units_runs_what_it_can_lock_before_waiting(tmp_path: Path) -> None:
    # Another process (here: another open file description) is compiling "shared".
    busy = os.open(tmp_path / "k.shared.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(busy, fcntl.LOCK_EX)
    order: list[str] = []
    free_ran = threading.Event()

    def free() -> None:
        order.append("free")
        free_ran.set()

    units = [
        Unit("blocked", lambda: order.append("blocked"), frozenset({"shared", "own"})),
        Unit("free", free, frozenset({"other"})),
    ]
    result: list[list[str]] = []
    worker = threading.Thread(target=lambda: result.append(run_units(units, str(tmp_path), "k.")))
    worker.start()
    try:
        assert free_ran.wait(30)
        assert order == ["free"]  # "blocked" waits for the lock, not ahead of "free"
    finally:
        os.close(busy)
    worker.join(30)
    assert result == [["free", "blocked"]] and order == ["free", "blocked"]


def test_run_units_without_a_usable_lock_dir_runs_everything_in_order(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a lock "directory" that is a file: unusable
    order: list[str] = []
    units = [Unit(n, lambda n=n: order.append(n), frozenset({"same"})) for n in "abc"]
    assert run_units(units, str(blocker / "sub")) == ["a", "b", "c"]
    assert run_units(units, None) == ["a", "b", "c"]
    assert order == ["a", "b", "c"] * 2


def test_run_units_releases_locks_when_a_unit_fails(tmp_path: Path) -> None:
    def boom() -> None:
        raise RuntimeError("compile failed")

    with pytest.raises(RuntimeError):
        run_units([Unit("bad", boom, frozenset({"f"}))], str(tmp_path))
    fd = os.open(tmp_path / "f.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
    finally:
        os.close(fd)


# -- fastext warm's children: every pipe read at once ------------------------------------

# Two children as fastext warm's coordinate: through a lock. The first waits for it; the
# second holds it while writing far more to stderr than a pipe holds (64 KiB), so it can
# only finish (and let the first go on) if its stderr is read while the first still runs.
_WAITER = """
import fcntl, os, sys, time
lock, held = sys.argv[1], sys.argv[2]
for _ in range(6000):  # until the writer holds the lock (at most 60 s)
    if os.path.exists(held):
        break
    time.sleep(0.01)
fd = os.open(lock, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("got the lock", flush=True)
"""
_WRITER = """
import fcntl, os, sys
lock, held = sys.argv[1], sys.argv[2]
fd = os.open(lock, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
open(held, "w").close()
sys.stderr.write("x" * 1_000_000 + "end")
sys.stderr.flush()
print("wrote", flush=True)
"""
_DRIVER = """
import json, sys
from fastext.vision.warmup import run_children
done = run_children(json.loads(sys.argv[1]))
print(json.dumps([[d.returncode, d.stdout, len(d.stderr), d.stderr[-5:]] for d in done]))
"""


def test_run_children_reads_every_child_at_once(tmp_path: Path) -> None:
    lock, held = str(tmp_path / "unit.lock"), str(tmp_path / "held")
    commands = [[sys.executable, "-c", code, lock, held] for code in (_WAITER, _WRITER)]
    # In a process of its own, its children in its session: a deadlock fails the test
    # (killed after the bound) instead of hanging it.
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, json.dumps(commands)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        start_new_session=True,
    )
    try:
        out, err = driver.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate()
        raise AssertionError("the children deadlocked: a full stderr pipe was not read") from None
    assert driver.returncode == 0, err
    assert json.loads(out) == [
        [0, "got the lock\n", 0, ""],
        [0, "wrote\n", KEEP_BYTES, "xxend"],
    ]  # the last 64 KiB kept


def _children_with(marker: str) -> list[int]:
    """Processes this one started that have ``marker`` among their arguments."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == os.getpid() and marker.encode() in argv:
            found.append(int(entry))
    return found


def test_run_children_kills_what_it_started_when_interrupted(tmp_path: Path) -> None:
    # A command that cannot start, after one that did: the started one is killed and
    # reaped (not left compiling), and the error is the caller's.
    marker = f"fastext-test-{tmp_path.name}"
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)", marker]
    with pytest.raises(FileNotFoundError):
        run_children([sleeper, [str(tmp_path / "no-such-program")]])
    assert _children_with(marker) == []
