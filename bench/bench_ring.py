"""Cross-process transport benchmarks: fastext.backend.ring against multiprocessing.Queue
and posix_ipc.MessageQueue, side by side.

    PYTHONPATH=src pytest bench/bench_ring.py --benchmark-only

Two measures, both between two processes started with "spawn":

* throughput: a child process produces N 64-byte records as fast as it can, the
  benchmarked parent consumes them; ``extra_info["items_per_s"]``.
* latency: ping-pong of one 64-byte record (parent -> child -> parent); each
  round trip is timed with perf_counter_ns; ``extra_info["p50_us"]``,
  ``["p99_us"]``.

Ring variants differ in batching (push_many/pop_many) and in ``spin``, the
bounded pause loop before a futex sleep (the data behind the default, see
docs/ring.md).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import posix_ipc
import pytest

from fastext.backend.ring import SharedRing

CTX = mp.get_context("spawn")
RECORD = 64
BATCH = 64
WAIT = 10.0
PING_PONGS = 2000


# ---- transports: the same five verbs over three mechanisms ---------------------------


@dataclass
class Spec:
    """Picklable description of one direction-pair, opened in each process."""

    kind: str  # "ring", "ring-batch", "mpq", "mpq-batch", "mq"
    names: tuple[Any, Any]  # (parent->child, child->parent) handles or names
    spin: int = 0


class Endpoint:
    """One process's view: send to the peer, receive from the peer.  The
    bulk loops are written out per mechanism so that the harness adds the
    same (minimal) Python overhead to each."""

    def __init__(self, spec: Spec, parent: bool) -> None:
        self.kind = spec.kind
        out_name, in_name = spec.names if parent else spec.names[::-1]
        self._closers: list[Callable[[], None]] = []
        self.out: Any  # Ring, multiprocessing Queue or posix_ipc MessageQueue
        self.inp: Any
        if spec.kind.startswith("ring"):
            out_ring = SharedRing.attach(out_name, spin=spec.spin)
            in_ring = SharedRing.attach(in_name, spin=spec.spin)
            self._closers += [out_ring.close, in_ring.close]
            self.out, self.inp = out_ring.ring, in_ring.ring
        elif spec.kind.startswith("mpq"):
            self.out, self.inp = out_name, in_name
        else:
            self.out = posix_ipc.MessageQueue(out_name)
            self.inp = posix_ipc.MessageQueue(in_name)
            self._closers += [self.out.close, self.inp.close]

    def send(self, item: bytes) -> None:
        if self.kind.startswith("ring"):
            if not self.out.push(item, timeout=WAIT):
                raise TimeoutError("ring push")
        elif self.kind.startswith("mpq"):
            self.out.put(item)
        else:
            self.out.send(item, timeout=WAIT)

    def recv(self) -> bytes:
        if self.kind.startswith("ring"):
            item = self.inp.pop(timeout=WAIT)
            if item is None:
                raise TimeoutError("ring pop")
            return item
        if self.kind.startswith("mpq"):
            got: bytes = self.inp.get(timeout=WAIT)
            return got
        return self.inp.receive(timeout=WAIT)[0]

    def send_many(self, items: list[bytes]) -> None:
        """Send every item, the way each mechanism does it best."""
        kind, out = self.kind, self.out
        if kind == "ring":
            push = out.push
            for item in items:
                if not push(item, WAIT):
                    raise TimeoutError("ring push")
        elif kind == "ring-batch":
            done = 0
            while done < len(items):
                n = out.push_many(items[done : done + BATCH])
                if n == 0 and not out.wait_writable(RECORD, WAIT):
                    raise TimeoutError("ring push_many")
                done += n
        elif kind == "mpq":
            put = out.put
            for item in items:
                put(item)
        elif kind == "mpq-batch":
            for i in range(0, len(items), BATCH):
                out.put(items[i : i + BATCH])
        else:
            send = out.send
            for item in items:
                send(item, WAIT)

    def recv_count(self, count: int) -> int:
        """Receive exactly `count` records; returns how many arrived."""
        kind, inp, got = self.kind, self.inp, 0
        if kind == "ring":
            pop = inp.pop
            for _ in range(count):
                if pop(WAIT) is None:
                    raise TimeoutError("ring pop")
            got = count
        elif kind == "ring-batch":
            pop_many = inp.pop_many
            while got < count:
                n = len(pop_many(256, WAIT))
                if n == 0:
                    raise TimeoutError("ring pop_many")
                got += n
        elif kind == "mpq":
            get = inp.get
            for _ in range(count):
                get(True, WAIT)
            got = count
        elif kind == "mpq-batch":
            while got < count:
                got += len(inp.get(True, WAIT))
        else:
            receive = inp.receive
            for _ in range(count):
                receive(WAIT)
            got = count
        return got

    def close(self) -> None:
        for close in self._closers:
            close()


def producer_main(spec: Spec, control: Any) -> None:
    """Child: on each count from `control`, send that many records; 0 stops."""
    end = Endpoint(spec, parent=False)
    items = [i.to_bytes(8, "little") * (RECORD // 8) for i in range(BATCH * 4)]
    try:
        while count := control.recv():
            batch = (items * (count // len(items) + 1))[:count]
            end.send_many(batch)
    finally:
        end.close()


def echo_main(spec: Spec) -> None:
    """Child: send back every record; an empty record stops."""
    end = Endpoint(spec, parent=False)
    try:
        while item := end.recv():
            end.send(item)
    finally:
        end.close()


# ---- setup of each mechanism ---------------------------------------------------------


@pytest.fixture
def transport() -> Iterator[Callable[[str, int], Spec]]:
    """Factory for a fresh direction-pair; everything is removed afterwards."""
    cleanups: list[Callable[[], None]] = []

    def make(kind: str, spin: int = 0) -> Spec:
        if kind.startswith("ring"):
            rings = [SharedRing.create(1 << 16, tag="bench") for _ in range(2)]
            cleanups.extend(r.close for r in rings)
            return Spec(kind, (rings[0].name, rings[1].name), spin)
        if kind.startswith("mpq"):
            queues = (CTX.Queue(), CTX.Queue())
            cleanups.extend(functools.partial(_close_queue, q) for q in queues)
            return Spec(kind, queues)
        names = (f"/fastext_{os.getpid()}_benchmq_0", f"/fastext_{os.getpid()}_benchmq_1")
        depth = _mq_depth()
        for name in names:
            mq = posix_ipc.MessageQueue(
                name, posix_ipc.O_CREX, max_messages=depth, max_message_size=RECORD
            )
            mq.close()
            cleanups.append(functools.partial(posix_ipc.unlink_message_queue, name))
        return Spec(kind, names)

    yield make
    for cleanup in reversed(cleanups):
        cleanup()


def _close_queue(queue: Any) -> None:
    queue.close()
    queue.join_thread()


def _mq_depth() -> int:
    try:
        with open("/proc/sys/fs/mqueue/msg_max") as f:
            return min(256, int(f.read()))
    except OSError:
        return 10


def _start(target: Callable[..., None], *args: Any) -> Any:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _stop(proc: Any) -> None:
    proc.join(WAIT)
    if proc.is_alive():
        proc.kill()
        proc.join(WAIT)


# ---- throughput ---------------------------------------------------------------------

THROUGHPUT = [  # (kind, spin, records per benchmark round: ~0.1-0.4 s each)
    ("ring", 0, 1_000_000),
    ("ring", 200, 1_000_000),
    ("ring-batch", 0, 4_000_000),
    ("ring-batch", 200, 4_000_000),
    ("mpq", 0, 50_000),
    ("mpq-batch", 0, 1_000_000),
    ("mq", 0, 200_000),
]


@pytest.mark.parametrize(
    ("kind", "spin", "count"),
    THROUGHPUT,
    ids=[f"{k}-spin{s}" if k.startswith("ring") else k for k, s, _ in THROUGHPUT],
)
def test_throughput_64b(
    benchmark: Any, transport: Callable[..., Spec], kind: str, spin: int, count: int
) -> None:
    spec = transport(kind, spin)
    parent = Endpoint(spec, parent=True)
    control, child_control = CTX.Pipe()
    child = _start(producer_main, spec, child_control)

    def one_round() -> int:
        control.send(count)
        return parent.recv_count(count)

    try:
        received = benchmark.pedantic(one_round, rounds=5, warmup_rounds=1, iterations=1)
    finally:
        control.send(0)
        _stop(child)
        parent.close()
    assert received == count
    if benchmark.disabled:  # --benchmark-disable: one correct round, no statistics
        return
    median = benchmark.stats.stats.median  # robust to a noisy neighbour on a shared host
    benchmark.extra_info.update(
        {
            "kind": kind,
            "spin": spin,
            "records_per_round": count,
            "record_bytes": RECORD,
            "items_per_s": round(count / median),
            "batch": BATCH if "batch" in kind else 1,
        }
    )


# ---- latency --------------------------------------------------------------------------

LATENCY = [("ring", 0), ("ring", 200), ("ring", 2000), ("mpq", 0), ("mq", 0)]


@pytest.mark.parametrize(
    ("kind", "spin"), LATENCY, ids=[f"{k}-spin{s}" if k == "ring" else k for k, s in LATENCY]
)
def test_round_trip_latency_64b(
    benchmark: Any, transport: Callable[..., Spec], kind: str, spin: int
) -> None:
    spec = transport(kind, spin)
    parent = Endpoint(spec, parent=True)
    child = _start(echo_main, spec)
    record = b"p" * RECORD
    samples: list[int] = []

    def ping_pongs() -> None:
        clock = time.perf_counter_ns
        for _ in range(PING_PONGS):
            start = clock()
            parent.send(record)
            parent.recv()
            samples.append(clock() - start)

    try:
        benchmark.pedantic(ping_pongs, rounds=3, warmup_rounds=1, iterations=1)
    finally:
        parent.send(b"")
        _stop(child)
        parent.close()
    if benchmark.disabled:  # --benchmark-disable: one round ran, nothing to time
        assert len(samples) == PING_PONGS
        return
    samples = samples[PING_PONGS:]  # drop the warm-up round
    cuts = statistics.quantiles(samples, n=100)
    benchmark.extra_info.update(
        {
            "kind": kind,
            "spin": spin,
            "round_trips": len(samples),
            "p50_us": round(cuts[49] / 1000, 1),
            "p99_us": round(cuts[98] / 1000, 1),
        }
    )
