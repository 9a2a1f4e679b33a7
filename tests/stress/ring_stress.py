"""Cross-process stress scenarios for fastext.backend.ring, one scenario per run.

    python tests/stress/ring_stress.py SCENARIO [--deadline SECONDS]

Scenarios: spsc, mesh, consumer-kill, producer-kill, wakeups (see each
function).  Workers are started with multiprocessing "spawn", like fastext's
own workers.  The run prints one JSON line of facts (counts, orders, exit
codes) and exits 0; tests/backend/test_ring_stress.py judges the facts.  It exits 3
when its own deadline expires (a deadlock: the children still alive are
named), and the test adds a hard subprocess timeout on top of that.
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import posix_ipc

from fastext.backend.ring import Ring, SharedRing
from fastext.backend.segments import segment_name

CTX = mp.get_context("spawn")
WAIT = 10.0  # no single wait may take this long: treat it as a lost wake-up
REC_HDR = 8


# ---- records -------------------------------------------------------------------


def payload_size(seq: int) -> int:
    """8..64 bytes, varying so records straddle the end of the ring."""
    return 8 + (seq * 7919) % 57


def payload(seq: int, tag: int = 0) -> bytes:
    size = payload_size(seq)
    head = seq.to_bytes(6, "little") + tag.to_bytes(2, "little")
    return head + bytes([(seq + i) & 0xFF for i in range(size - 8)])


def parse(item: bytes) -> tuple[int, int]:
    """(seq, tag) of a record, after checking every byte of it."""
    seq = int.from_bytes(item[:6], "little")
    tag = int.from_bytes(item[6:8], "little")
    if item != payload(seq, tag):
        raise ValueError(f"torn or foreign record for seq {seq}: {item[:16].hex()}…")
    return seq, tag


def record_boundaries(count: int, capacity: int) -> dict[int, int]:
    """Byte position of the boundary before each record seq in [0, count]
    (pushed in order since init/reset), mirroring ring.c's layout: 8-byte
    header, payload padded to 8, and a pad to the end of the data area when
    a record would straddle it.  The boundary is taken before that pad: it
    is where `head` stands once every earlier record is consumed."""
    bounds: dict[int, int] = {}
    pos = 0
    for seq in range(count):
        bounds[seq] = pos
        total = REC_HDR + (payload_size(seq) + 7) // 8 * 8
        if pos % capacity + total > capacity:
            pos += capacity - pos % capacity
        pos += total
    bounds[count] = pos
    return bounds


class SharedCounter:
    """One 64-bit slot in its own segment: a child's progress, readable after
    the child is SIGKILLed (a plain aligned 8-byte store)."""

    def __init__(self, name: str, create: bool) -> None:
        flags = posix_ipc.O_CREX if create else 0
        shm = posix_ipc.SharedMemory(name, flags, size=8 if create else 0)
        self.name, self._owner = name, create
        self._map = mmap.mmap(shm.fd, 8)
        shm.close_fd()
        self._view = memoryview(self._map).cast("Q")

    @property
    def value(self) -> int:
        return int(self._view[0])

    @value.setter
    def value(self, v: int) -> None:
        self._view[0] = v

    def close(self) -> None:
        self._view.release()
        self._map.close()
        if self._owner:
            posix_ipc.unlink_shared_memory(self.name)


# ---- process plumbing ---------------------------------------------------------------


class Deadlock(Exception):
    """Children still alive at the scenario deadline."""


class PeerDied(Exception):
    """A child stopped before its work was done (its report says why)."""


def spawn(target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    """Start `target(conn, *args)` in a spawned process; it reports over conn."""
    here, there = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=target, args=(there, *args), daemon=True)
    proc.start()
    there.close()
    return proc, here


def collect(children: list[tuple[Any, Connection]], deadline: float) -> list[dict[str, Any]]:
    """Each child's report (with its exit code), or Deadlock naming who is stuck."""
    reports = []
    for proc, conn in children:
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            stuck = [p.name for p, _ in children if p.is_alive()]
            for p, _ in children:
                p.kill()
            raise Deadlock(f"no report by the deadline; alive: {stuck}")
        try:
            report = conn.recv()
        except EOFError:  # died without reporting (signal, abort)
            report = {"error": "child died without a report"}
        proc.join(max(0.0, deadline - time.monotonic()))
        report["exitcode"] = proc.exitcode
        reports.append(report)
    return reports


@contextmanager
def shared_rings(count: int, capacity: int) -> Iterator[list[SharedRing]]:
    rings: list[SharedRing] = []
    try:
        for _ in range(count):
            rings.append(SharedRing.create(capacity, tag="stress"))
        yield rings
    finally:
        for ring in rings:
            ring.close()


def child_report(conn: Connection, work: Callable[[], dict[str, Any]]) -> None:
    """Run `work` and send its facts, or the error, to the parent."""
    try:
        conn.send(work())
    except Exception as exc:  # reported, then judged by the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


# ---- (a) spsc -------------------------------------------------------------------------


def spsc_producer(conn: Connection, name: str, items: int) -> None:
    def work() -> dict[str, Any]:
        with SharedRing.attach(name) as shared:
            ring, seq, timeouts = shared.ring, 0, 0
            while seq < items:
                if seq % 3000 < 1500:  # batches: as many as fit, one wake
                    batch = [payload(s) for s in range(seq, min(seq + 32, items))]
                    pushed = ring.push_many(batch)
                    if pushed == 0 and not ring.wait_writable(len(batch[0]), WAIT):
                        timeouts += 1
                        break
                    seq += pushed
                else:
                    if not ring.push(payload(seq), timeout=WAIT):
                        timeouts += 1
                        break
                    seq += 1
            return {"sent": seq, "timeouts": timeouts}

    child_report(conn, work)


def spsc_consumer(conn: Connection, name: str, items: int) -> None:
    def work() -> dict[str, Any]:
        with SharedRing.attach(name) as shared:
            ring, expected, disorder, timeouts = shared.ring, 0, 0, 0
            while expected < items:
                if expected % 2000 < 1000:
                    got = ring.pop_many(64, timeout=WAIT)
                else:
                    one = ring.pop(timeout=WAIT)
                    got = [] if one is None else [one]
                if not got:
                    timeouts += 1
                    break
                for item in got:
                    seq, _ = parse(item)
                    disorder += seq != expected
                    expected = seq + 1
            stats = ring.stats()
            return {
                "received": expected,
                "disorder": disorder,
                "timeouts": timeouts,
                "wraps": stats["tail"] // ring.capacity,
                "popped": stats["popped"],
            }

    child_report(conn, work)


def scenario_spsc(deadline: float, items: int = 200_000, capacity: int = 2048) -> dict[str, Any]:
    """(a) One producer process, one consumer process, a small ring wrapping
    thousands of times: every record arrives once, in order, intact."""
    with shared_rings(1, capacity) as (ring,):
        children = [spawn(spsc_consumer, ring.name, items), spawn(spsc_producer, ring.name, items)]
        cons, prod = collect(children, deadline)
        stats = ring.ring.stats()
    return {
        "items": items,
        "producer": prod,
        "consumer": cons,
        "pushed": stats["pushed"],
        "popped": stats["popped"],
        "wraps": cons.get("wraps"),
    }


# ---- (b) mesh ---------------------------------------------------------------------------


def mesh_producer(conn: Connection, pid: int, names: list[str], per_pair: int) -> None:
    """Push per_pair records to each of its rings, interleaved, never blocking
    on one full ring while another has room."""

    def work() -> dict[str, Any]:
        shared = [SharedRing.attach(n) for n in names]
        try:
            rings = [s.ring for s in shared]
            next_seq = [0] * len(rings)
            stalls = 0
            while min(next_seq) < per_pair:
                progressed = False
                for i, ring in enumerate(rings):
                    if next_seq[i] < per_pair:
                        end = min(next_seq[i] + 16, per_pair)
                        n = ring.push_many([payload(s, pid) for s in range(next_seq[i], end)])
                        next_seq[i] += n
                        progressed |= n > 0
                if not progressed:  # all full: sleep on the least advanced ring
                    i = next_seq.index(min(next_seq))
                    if not rings[i].wait_writable(payload_size(next_seq[i]), WAIT):
                        stalls += 1
                        break
            return {"sent": next_seq, "stalls": stalls}
        finally:
            for s in shared:
                s.close()

    child_report(conn, work)


def mesh_consumer(conn: Connection, names: list[str], per_pair: int) -> None:
    """Drain one ring per producer; check per-producer order and count."""

    def work() -> dict[str, Any]:
        shared = [SharedRing.attach(n) for n in names]
        try:
            rings = [s.ring for s in shared]
            expected = [0] * len(rings)
            disorder = wrong_producer = stalls = 0
            idle_since = time.monotonic()
            while min(expected) < per_pair:
                got_any = False
                for p, ring in enumerate(rings):
                    for item in ring.pop_many(64, timeout=0):
                        seq, tag = parse(item)
                        wrong_producer += tag != p
                        disorder += seq != expected[p]
                        expected[p] = seq + 1
                        got_any = True
                if got_any:
                    idle_since = time.monotonic()
                    continue
                if time.monotonic() - idle_since > WAIT:
                    stalls += 1
                    break
                # Nothing anywhere: sleep on the ring furthest behind (bounded).
                p = expected.index(min(expected))
                rings[p].wait_readable(timeout=0.005)
            return {
                "received": expected,
                "disorder": disorder,
                "wrong_producer": wrong_producer,
                "stalls": stalls,
            }
        finally:
            for s in shared:
                s.close()

    child_report(conn, work)


def scenario_mesh(
    deadline: float,
    producers: int = 3,
    consumers: int = 2,
    per_pair: int = 20_000,
    capacity: int = 4096,
) -> dict[str, Any]:
    """(b) N producer processes x M consumer processes, one SPSC ring per
    (producer, consumer) pair: exact per-pair counts and order."""
    with shared_rings(producers * consumers, capacity) as rings:
        name = {
            (p, c): rings[p * consumers + c].name
            for p in range(producers)
            for c in range(consumers)
        }
        children = [
            spawn(mesh_consumer, [name[p, c] for p in range(producers)], per_pair)
            for c in range(consumers)
        ]
        children += [
            spawn(mesh_producer, p, [name[p, c] for c in range(consumers)], per_pair)
            for p in range(producers)
        ]
        reports = collect(children, deadline)
        pushed = {
            f"{p},{c}": rings[p * consumers + c].ring.pushed
            for p in range(producers)
            for c in range(consumers)
        }
    return {
        "producers": producers,
        "consumers": consumers,
        "per_pair": per_pair,
        "consumer_reports": reports[:consumers],
        "producer_reports": reports[consumers:],
        "pushed": pushed,
    }


# ---- (c) consumer killed ------------------------------------------------------------------


def acking_consumer(conn: Connection, name: str, ack_name: str, expect: list[int]) -> None:
    """Pop records one at a time; after each, store seq+1 in the ack slot
    ("fully consumed up to here").  `expect` is the exact sequence this
    consumer must see, as [first, last) ranges flattened; [] = any order
    starting anywhere (the victim, which runs until it is killed)."""

    def work() -> dict[str, Any]:
        ack = SharedCounter(ack_name, create=False)
        try:
            with SharedRing.attach(name) as shared:
                want = [
                    s for a, b in zip(expect[::2], expect[1::2], strict=True) for s in range(a, b)
                ]
                got: list[int] = []
                while not want or len(got) < len(want):
                    item = shared.ring.pop(timeout=WAIT)
                    if item is None:
                        return {"error": "pop timed out", "got": len(got)}
                    seq, _ = parse(item)
                    got.append(seq)
                    ack.value = seq + 1
                return {
                    "exact": got == want,
                    "count": len(got),
                    "first_bad": next(
                        (i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), None
                    ),
                }
        finally:
            ack.close()

    child_report(conn, work)


def push_range(
    ring: Ring,
    first: int,
    end: int,
    deadline: float,
    peer: Any = None,
    facts: dict[str, Any] | None = None,
) -> None:
    """Push [first, end) one by one.  Waits are sliced so a dead `peer` (the
    consumer) is noticed rather than waited on until the deadline; a slice
    that times out on an empty ring is a lost wake-up and is counted."""
    seq = first
    while seq < end:
        if ring.push(payload(seq), timeout=0.5):
            seq += 1
            continue
        if ring.used_bytes == 0 and facts is not None:
            facts["lost_wakeups"] = facts.get("lost_wakeups", 0) + 1
        if peer is not None and not peer.is_alive():
            raise PeerDied(f"consumer died while seq {seq} was waiting for room")
        if time.monotonic() > deadline:
            raise Deadlock(f"push of seq {seq} did not complete by the deadline")


def kill_round(
    ring: Ring,
    ring_name: str,
    ack: SharedCounter,
    total: int,
    kill_after: int,
    asleep: bool,
    recover: str,
    deadline: float,
) -> dict[str, Any]:
    """Push to a consumer, SIGKILL it, prove the ring still works, recover."""
    ring.reset()
    ack.value = 0
    victim, conn = spawn(acking_consumer, ring_name, ack.name, [])
    seq = 0
    if asleep:  # let it drain everything and park in the futex
        push_range(ring, 0, kill_after, deadline, victim)
        seq = kill_after
        while not (ack.value == kill_after and ring.stats()["consumer_waiting"]):
            if time.monotonic() > deadline:
                raise Deadlock("victim never went to sleep")
            time.sleep(0.001)
    else:  # kill it while records stream in
        while ack.value < kill_after:
            n = ring.push_many([payload(s) for s in range(seq, seq + 8)])
            seq += n
            if n == 0 and not ring.wait_writable(payload_size(seq), timeout=WAIT):
                raise Deadlock("victim stopped consuming before it was killed")
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(WAIT)
    conn.close()
    # The ring must not be wedged: pushing goes on until full, never hangs.
    start = time.monotonic()
    while ring.push(payload(seq), timeout=0.01):
        seq += 1
    full_stall = time.monotonic() - start
    acked, stats = ack.value, ring.stats()
    bounds = record_boundaries(seq, ring.capacity)
    # head lands exactly on a record boundary: the first record not consumed.
    resume = next((s for s, pos in bounds.items() if pos == stats["head"]), None)
    facts: dict[str, Any] = {
        "signal": -(victim.exitcode or 0),
        "pushed_at_kill": seq,
        "acked": acked,
        "resume": resume,
        "popped_counter": stats["popped"],
        "recover": recover,
        "full_stall_s": round(full_stall, 3),
        "asleep": asleep,
    }
    if resume is None:
        facts["error"] = f"head {stats['head']} is not on a record boundary"
        return facts
    if recover == "reset":  # the front's policy: rebuild, re-submit all unacked
        ring.reset()
        plan = [acked, total]
    else:  # keep the ring: new consumer reads what is left, then re-sends
        plan = [resume, seq, acked, resume, seq, total]
    ack.value = 0
    heir, heir_conn = spawn(acking_consumer, ring_name, ack.name, plan)
    try:
        if recover == "reset":
            push_range(ring, acked, total, deadline, heir, facts)
        else:
            push_range(ring, acked, resume, deadline, heir, facts)  # popped, never acked
            push_range(ring, seq, total, deadline, heir, facts)
    except PeerDied as exc:
        facts["error"] = str(exc)
    facts["heir"] = collect([(heir, heir_conn)], deadline)[0]
    facts["accounted"] = acked + facts["heir"].get("count", 0)
    return facts


def scenario_consumer_kill(
    deadline: float, total: int = 6000, capacity: int = 1024
) -> dict[str, Any]:
    """(c) A consumer SIGKILLed mid-stream (and once while asleep in the
    futex) never stalls the ring; a new consumer recovers, and every record
    the dead one did not acknowledge is delivered exactly once."""
    rounds = [
        (1500, False, "continue"),
        (2500, False, "reset"),
        (1000, True, "continue"),
        (700, True, "reset"),
    ]
    with shared_rings(1, capacity) as (shared,):
        ack = SharedCounter(segment_name("ack"), create=True)
        try:
            results = [
                kill_round(shared.ring, shared.name, ack, total, k, asleep, recover, deadline)
                for k, asleep, recover in rounds
            ]
        finally:
            ack.close()
    return {"total": total, "rounds": results}


# ---- producer killed ----------------------------------------------------------------------


def endless_producer(conn: Connection, name: str, first: int, last: int) -> None:
    """Push [first, last) (last < 0: forever, until killed) in mixed batches."""

    def work() -> dict[str, Any]:
        with SharedRing.attach(name) as shared:
            ring, seq = shared.ring, first
            while last < 0 or seq < last:
                end = seq + 1 + seq % 13 if last < 0 else min(seq + 1 + seq % 13, last)
                n = ring.push_many([payload(s) for s in range(seq, end)])
                if n == 0 and not ring.wait_writable(payload_size(seq), timeout=WAIT):
                    return {"error": "wait_writable timed out", "sent": seq}
                seq += n
            return {"sent": seq}

    child_report(conn, work)


def scenario_producer_kill(
    deadline: float, total: int = 30_000, capacity: int = 1024
) -> dict[str, Any]:
    """A producer SIGKILLed mid-push leaves only whole records visible; a new
    producer attaches and the stream continues with no gap and no tear."""
    rounds = []
    with shared_rings(1, capacity) as (shared,):
        ring, expected, torn, disorder = shared.ring, 0, 0, 0
        for kill_at in (3000, 9000, 17000):
            victim, conn = spawn(endless_producer, shared.name, expected, -1)
            while expected < kill_at:
                for item in ring.pop_many(64, timeout=WAIT):
                    seq, _ = parse(item)
                    disorder += seq != expected
                    expected = seq + 1
                if time.monotonic() > deadline:
                    raise Deadlock("producer stalled before it was killed")
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(WAIT)
            conn.close()
            visible = 0
            while items := ring.pop_many(256, timeout=0):
                for item in items:
                    try:
                        seq, _ = parse(item)
                    except ValueError:
                        torn += 1
                        continue
                    disorder += seq != expected
                    expected = seq + 1
                    visible += 1
            rounds.append(
                {
                    "killed_at": expected,
                    "drained_after_kill": visible,
                    "signal": -(victim.exitcode or 0),
                }
            )
        heir, conn = spawn(endless_producer, shared.name, expected, total)
        while expected < total and time.monotonic() < deadline:
            for item in ring.pop_many(64, timeout=1.0):
                seq, _ = parse(item)
                disorder += seq != expected
                expected = seq + 1
        heir_report = collect([(heir, conn)], deadline)[0]
    return {
        "total": total,
        "received": expected,
        "torn": torn,
        "disorder": disorder,
        "rounds": rounds,
        "heir": heir_report,
    }


# ---- (d) wake-ups --------------------------------------------------------------------------


def nappy_producer(conn: Connection, name: str, items: int) -> None:
    def work() -> dict[str, Any]:
        with SharedRing.attach(name, spin=0) as shared:  # every wait sleeps
            ring = shared.ring
            for seq in range(items):
                if seq % 97 == 0:
                    time.sleep(0.0005)  # let the consumer go to sleep on empty
                if not ring.push(seq.to_bytes(8, "little") * 2, timeout=WAIT):
                    return {"sent": seq, "lost_wakeup": True}
            return {"sent": items, "lost_wakeup": False}

    child_report(conn, work)


def nappy_consumer(conn: Connection, name: str, items: int) -> None:
    def work() -> dict[str, Any]:
        with SharedRing.attach(name, spin=0) as shared:  # every wait sleeps
            ring, disorder = shared.ring, 0
            for seq in range(items):
                if seq % 89 == 0:
                    time.sleep(0.0005)  # let the producer go to sleep on full
                item = ring.pop(timeout=WAIT)
                if item is None:
                    return {"received": seq, "lost_wakeup": True}
                disorder += item != seq.to_bytes(8, "little") * 2
            stats = ring.stats()
            return {
                "received": items,
                "lost_wakeup": False,
                "disorder": disorder,
                "producer_sleeps": stats["producer_sleeps"],
                "consumer_sleeps": stats["consumer_sleeps"],
            }

    child_report(conn, work)


def scenario_wakeups(deadline: float, items: int = 20_000, capacity: int = 64) -> dict[str, Any]:
    """(d) A ring that holds two records: both sides block over and over,
    and no wake-up may be lost (any wait reaching WAIT seconds fails)."""
    with shared_rings(1, capacity) as (shared,):
        children = [
            spawn(nappy_consumer, shared.name, items),
            spawn(nappy_producer, shared.name, items),
        ]
        cons, prod = collect(children, deadline)
    return {"items": items, "capacity": capacity, "producer": prod, "consumer": cons}


# ---- main ------------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[float], dict[str, Any]]] = {
    "spsc": scenario_spsc,
    "mesh": scenario_mesh,
    "consumer-kill": scenario_consumer_kill,
    "producer-kill": scenario_producer_kill,
    "wakeups": scenario_wakeups,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--deadline", type=float, default=40.0, help="seconds for the scenario")
    args = parser.parse_args()
    start = time.monotonic()
    try:
        facts = SCENARIOS[args.scenario](start + args.deadline)
        code = 0
    except Deadlock as exc:
        facts, code = {"deadlock": str(exc)}, 3
    facts["scenario"] = args.scenario
    facts["elapsed_s"] = round(time.monotonic() - start, 2)
    print(json.dumps(facts), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
