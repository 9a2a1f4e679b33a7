"""In-process tests of the native ring and its facade (fastext.backend.ring)."""

from __future__ import annotations

import mmap
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import posix_ipc
import pytest

from fastext.backend.ring import (
    HEADER_SIZE,
    MAX_CAPACITY,
    MIN_CAPACITY,
    RecordTooLarge,
    Ring,
    RingCorrupt,
    RingError,
    RingPair,
    SharedRing,
    required_size,
)
from fastext.backend.segments import segment_name
from fastext.errors import FastextError
from tests.helpers import subprocess_env

# Header layout (ring.c): magic u32 @0, capacity u32 @8, tail u64 @128,
# head u64 @256; data area at HEADER_SIZE.  Records: {u32 len, u32 kind}.
MAGIC_OFF, CAPACITY_OFF, TAIL_OFF, HEAD_OFF = 0, 8, 128, 256
REC_HDR = 8


def record_bytes(payload_len: int) -> int:
    return REC_HDR + (payload_len + 7) // 8 * 8


def own_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"fastext_{os.getpid()}_")}


@pytest.fixture(autouse=True)
def no_leftover_segments() -> Iterator[None]:
    before = own_segments()
    yield
    assert own_segments() == before, "a test left a shared-memory segment behind"


@pytest.fixture
def make_ring() -> Iterator[Callable[..., tuple[Ring, mmap.mmap]]]:
    """Format rings in anonymous mappings; close everything afterwards."""
    made: list[tuple[Ring, mmap.mmap]] = []

    def make(capacity: int = 1024) -> tuple[Ring, mmap.mmap]:
        mem = mmap.mmap(-1, required_size(capacity))
        ring = Ring.init(mem, capacity)
        made.append((ring, mem))
        return ring, mem

    yield make
    for ring, mem in made:
        ring.close()
        mem.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition that has no event to await (a flag in shared memory)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


# ---- basics ------------------------------------------------------------------


def test_native_extension_is_built_from_current_sources() -> None:
    """An in-place build goes stale silently; every other test would then
    test old code.  Applies only to a source checkout."""
    from fastext._native import _ring

    built = Path(_ring.__file__)
    if not (built.parents[3] / "setup.py").exists():
        pytest.skip("not a source checkout")
    sources = [built.parent / n for n in ("ring.c", "ring.h", "_ringmodule.c")]
    newer = [s.name for s in sources if s.stat().st_mtime > built.stat().st_mtime]
    assert not newer, f"{newer} changed after {built.name} was built: run setup.py build_ext"


def test_required_size_is_header_plus_capacity() -> None:
    assert required_size(MIN_CAPACITY) == HEADER_SIZE + MIN_CAPACITY
    assert required_size(1 << 20) == HEADER_SIZE + (1 << 20)
    for bad in (0, 63, 100, MAX_CAPACITY * 2, -64):
        with pytest.raises(ValueError):
            required_size(bad)


def test_ring_round_trips_every_bytes_like(make_ring) -> None:
    ring, _ = make_ring()
    items = [b"hello", bytearray(b"ba"), memoryview(b"mv-data"), b"", b"\x00" * 100]
    for item in items:
        assert ring.try_push(item) is True
    for item in items:
        assert ring.try_pop() == bytes(item)
    assert ring.try_pop() is None
    assert (ring.pushed, ring.popped) == (len(items), len(items))


def test_ring_preserves_order_across_push_and_pop_variants(make_ring) -> None:
    ring, _ = make_ring(4096)
    expected = [i.to_bytes(4, "little") * (i % 7) for i in range(60)]
    assert ring.push_many(expected[:20]) == 20
    for item in expected[20:40]:
        assert ring.push(item, timeout=0)
    assert ring.push_many(expected[40:]) == 20
    got = ring.pop_many(25, timeout=0) + [ring.pop(timeout=0) for _ in range(5)]
    got += ring.pop_many(100, timeout=0)
    assert got == expected


def test_ring_full_then_empty(make_ring) -> None:
    ring, _ = make_ring(1024)
    payload = b"x" * 24  # 32 bytes per record
    count = 0
    while ring.try_push(payload):
        count += 1
    assert count == 1024 // record_bytes(24)
    assert ring.free_bytes == 0 and ring.used_bytes == 1024
    assert ring.push(payload, timeout=0) is False
    assert ring.push_many([payload, payload]) == 0
    assert [ring.try_pop() for _ in range(count)] == [payload] * count
    assert ring.try_pop() is None and ring.pop_many(8, timeout=0) == []
    assert ring.used_bytes == 0


def test_push_many_pushes_the_prefix_that_fits(make_ring) -> None:
    ring, _ = make_ring(256)
    items = [bytes([i]) * 40 for i in range(10)]  # 48 bytes each: 5 fit
    assert ring.push_many(items) == 5
    assert ring.pop_many(10, timeout=0) == items[:5]


def test_ring_wraps_thousands_of_times_with_varying_sizes(make_ring) -> None:
    capacity = 256
    ring, _ = make_ring(capacity)
    rng = random.Random(1234)
    sent = received = record_total = 0
    pending: list[bytes] = []
    while ring.tail < 2000 * capacity:
        for _ in range(rng.randint(1, 6)):
            size = rng.randint(0, ring.max_record)
            item = bytes([sent % 251]) * size + sent.to_bytes(4, "little")[: min(4, size)]
            item = item[:size]
            if not ring.try_push(item):
                break
            pending.append(item)
            record_total += record_bytes(size)
            sent += 1
        for item in ring.pop_many(rng.randint(1, 6), timeout=0):
            assert item == pending.pop(0)
            received += 1
    pending_out = ring.pop_many(1000, timeout=0)
    assert pending_out == pending
    received += len(pending_out)
    assert received == sent == ring.pushed == ring.popped
    # Records that would straddle the end were preceded by a pad: the ring
    # moved further than the records themselves account for.
    assert ring.tail > record_total
    assert ring.head == ring.tail


def test_max_record_fits_at_every_offset(make_ring) -> None:
    capacity = 512
    ring, _ = make_ring(capacity)
    assert ring.max_record == capacity // 2 - 8
    big = bytes(range(256)) * 2
    big = big[: ring.max_record]
    for offset in range(0, capacity, 8):
        # Step the write position to `offset` with empty (8-byte) records.
        while ring.tail % capacity != offset:
            assert ring.try_push(b"") and ring.try_pop() == b""
        assert ring.try_push(big), f"max record did not fit at offset {offset}"
        assert ring.try_pop() == big


def test_too_large_record_is_rejected_without_side_effects(make_ring) -> None:
    ring, _ = make_ring(256)
    with pytest.raises(RecordTooLarge):
        ring.try_push(b"x" * (ring.max_record + 1))
    with pytest.raises(RecordTooLarge):
        ring.push(b"x" * 10_000, timeout=1.0)
    with pytest.raises(ValueError):  # RecordTooLarge is also a ValueError
        ring.push_many([b"ok", b"x" * (ring.max_record + 1)])
    with pytest.raises(TypeError):
        ring.push_many([b"ok", 12])
    assert ring.pushed == 0 and ring.try_pop() is None
    assert issubclass(RecordTooLarge, RingError) and issubclass(RingError, FastextError)


# ---- attach validation and corruption ------------------------------------------


def test_attach_sees_what_init_formatted(make_ring) -> None:
    ring, mem = make_ring(2048)
    ring.try_push(b"abc")
    with Ring(mem) as peer:
        assert peer.capacity == 2048
        assert peer.try_pop() == b"abc"


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda m: struct.pack_into("<I", m, MAGIC_OFF, 0xDEADBEEF), id="magic"),
        pytest.param(lambda m: struct.pack_into("<I", m, CAPACITY_OFF, 1000), id="capacity"),
        pytest.param(lambda m: struct.pack_into("<I", m, CAPACITY_OFF, 1 << 20), id="too-big"),
        pytest.param(lambda m: struct.pack_into("<Q", m, HEAD_OFF, 64), id="head>tail"),
        pytest.param(lambda m: struct.pack_into("<Q", m, TAIL_OFF, 4096), id="tail-far"),
        pytest.param(lambda m: struct.pack_into("<Q", m, TAIL_OFF, 12), id="tail-odd"),
    ],
)
def test_attach_rejects_corrupt_header(make_ring, corrupt: Callable[[mmap.mmap], None]) -> None:
    ring, mem = make_ring(1024)
    corrupt(mem)
    with pytest.raises(RingCorrupt):
        Ring(mem)


def test_attach_rejects_foreign_and_short_buffers(make_ring) -> None:
    with pytest.raises(RingCorrupt):
        Ring(bytearray(HEADER_SIZE + 1024))  # zeros: no magic
    with pytest.raises(RingCorrupt):
        Ring(bytearray(16))  # smaller than a header
    ring, mem = make_ring(1024)
    with pytest.raises(RingCorrupt):
        Ring(memoryview(mem)[: HEADER_SIZE + 512])  # cut short of its data area
    with pytest.raises(ValueError):
        Ring(memoryview(mem)[1:])  # misaligned
    with pytest.raises((BufferError, TypeError)):
        Ring(bytes(required_size(1024)))  # read-only
    with pytest.raises(ValueError):
        Ring.init(bytearray(required_size(1024)), 1000)  # not a power of two
    with pytest.raises(ValueError):
        Ring.init(bytearray(required_size(1024) - 1), 1024)  # too small


@pytest.mark.parametrize(
    "word",
    [
        pytest.param((0, 0x7FFF_FFFF), id="huge-length"),
        pytest.param((0, 700), id="length-past-end"),
        pytest.param((4, 0x1234), id="unknown-kind"),
    ],
)
def test_pop_reports_corrupt_record_instead_of_reading_out_of_bounds(
    make_ring, word: tuple[int, int]
) -> None:
    ring, mem = make_ring(1024)
    assert ring.try_push(b"payload")
    offset, value = word
    struct.pack_into("<I", mem, HEADER_SIZE + offset, value)
    with pytest.raises(RingCorrupt):
        ring.try_pop()
    with pytest.raises(RingCorrupt):
        ring.pop_many(4, timeout=0)


def test_pop_reports_corrupt_pad_record(make_ring) -> None:
    ring, mem = make_ring(256)
    assert ring.try_push(b"a" * 100)  # 112 bytes
    assert ring.try_pop()
    assert ring.try_push(b"b" * 100)  # ends at 224
    assert ring.try_pop()
    assert ring.try_push(b"c" * 100)  # pad at 224, record at 0
    struct.pack_into("<I", mem, HEADER_SIZE + 224, 8)  # pad that stops short
    with pytest.raises(RingCorrupt):
        ring.try_pop()


def test_scribbled_unaligned_positions_are_reported_not_followed(make_ring) -> None:
    ring, mem = make_ring(1024)
    assert ring.try_push(b"x" * 100) and ring.try_push(b"y")
    assert ring.try_pop() == b"x" * 100  # the consumer now has tail cached
    struct.pack_into("<Q", mem, HEAD_OFF, 1020)  # 4 bytes before the end
    with pytest.raises(RingCorrupt):
        ring.try_pop()
    struct.pack_into("<Q", mem, HEAD_OFF, 0)
    struct.pack_into("<Q", mem, TAIL_OFF, 1020)
    with pytest.raises(RingCorrupt):
        ring.try_push(b"z")


def test_pop_reports_tail_beyond_capacity(make_ring) -> None:
    ring, mem = make_ring(1024)
    ring.try_push(b"x")
    struct.pack_into("<Q", mem, TAIL_OFF, 1024 * 3)
    with pytest.raises(RingCorrupt):
        ring.try_pop()
    with pytest.raises(RingCorrupt):
        ring.wait_readable(timeout=0.01)


# ---- timeouts and the GIL --------------------------------------------------------


@pytest.mark.parametrize("timeout", [0.0, 0.05, 0.2])
def test_waits_time_out_within_bounds(make_ring, timeout: float) -> None:
    ring, _ = make_ring(256)
    calls: list[Callable[[], object]] = [
        lambda: ring.pop(timeout=timeout),
        lambda: ring.pop_many(4, timeout=timeout),
        lambda: ring.wait_readable(timeout=timeout),
    ]
    for call in calls:
        start = time.monotonic()
        assert call() in (None, [], False)
        elapsed = time.monotonic() - start
        assert timeout <= elapsed < timeout + 0.5
    while ring.try_push(b"f" * 50):
        pass
    for call in (
        lambda: ring.push(b"f" * 50, timeout=timeout),
        lambda: ring.wait_writable(50, timeout=timeout),
    ):
        start = time.monotonic()
        assert call() is False
        elapsed = time.monotonic() - start
        assert timeout <= elapsed < timeout + 0.5


def test_invalid_timeouts_are_rejected(make_ring) -> None:
    ring, _ = make_ring()
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError):
            ring.pop(timeout=bad)
    with pytest.raises(TypeError):
        ring.pop(timeout="1")
    with pytest.raises(ValueError):
        ring.pop_many(0)


def test_blocked_pop_releases_the_gil_and_wakes_on_push(make_ring) -> None:
    ring, _ = make_ring()
    got: list[bytes | None] = []
    consumer = threading.Thread(target=lambda: got.append(ring.pop(timeout=10.0)))
    start = time.monotonic()
    consumer.start()
    wait_until(lambda: ring.stats()["consumer_waiting"] == 1)
    # The consumer sleeps in the futex: this thread must still run Python.
    spins = 0
    busy_until = time.monotonic() + 0.05
    while time.monotonic() < busy_until:
        spins += 1
    assert spins > 1000
    with pytest.raises(RingError):  # one consumer per ring, even across threads
        ring.try_pop()
    with pytest.raises(RingError):  # and no closing under a sleeper's feet
        ring.close()
    assert ring.try_push(b"wake")
    consumer.join(timeout=5.0)
    assert not consumer.is_alive()
    assert got == [b"wake"]
    assert time.monotonic() - start < 5.0


def test_blocked_pop_without_timeout_is_interrupted_by_sigint() -> None:
    script = (
        # A job started in the background inherits SIGINT as ignored (CI may run us so):
        # install Python's handler explicitly, which is what this test is about.
        "import signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from fastext.backend.ring import SharedRing\n"
        "with SharedRing.create(256, tag='sigint') as owner:\n"
        "    print(owner.name, flush=True)\n"
        "    owner.ring.pop()\n"
    )
    env = subprocess_env()
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        name = child.stdout.readline().strip()
        with SharedRing.attach(name) as peer:
            wait_until(lambda: peer.ring.stats()["consumer_waiting"] == 1)
            child.send_signal(signal.SIGINT)
            _, err = child.communicate(timeout=10)
    finally:
        child.kill()
        child.wait(timeout=10)
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
    assert "KeyboardInterrupt" in err
    assert not os.path.exists("/dev/shm" + name)  # the owner still cleaned up


def test_blocked_push_wakes_when_space_is_freed(make_ring) -> None:
    ring, _ = make_ring(256)
    while ring.try_push(b"z" * 56):
        pass
    results: list[bool] = []
    producer = threading.Thread(target=lambda: results.append(ring.push(b"late", timeout=10.0)))
    producer.start()
    wait_until(lambda: ring.stats()["producer_waiting"] == 1)
    assert ring.try_pop() == b"z" * 56
    producer.join(timeout=5.0)
    assert results == [True]
    assert ring.stats()["producer_sleeps"] >= 1


# A publish that rings no bell: the peer's counter moved in shared memory (here written
# by hand, as a peer killed between its publish and its wake-up would leave it).  The
# 100 ms cap on every futex sleep (FX_RING_MAX_SLEEP_NS) must find it long before the
# caller's 10 s timeout, and count it as an unsignalled wake-up.
REC_DATA = 0x31434552  # "REC1"
MAX_SLEEP_S = 0.1


def test_consumer_finds_an_unsignalled_record_within_the_sleep_cap(make_ring) -> None:
    ring, mem = make_ring(256)
    got: list[bytes | None] = []
    consumer = threading.Thread(target=lambda: got.append(ring.pop(timeout=10.0)))
    consumer.start()
    wait_until(lambda: ring.stats()["consumer_sleeps"] >= 1)
    struct.pack_into("<II4s", mem, HEADER_SIZE, 4, REC_DATA, b"lost")
    struct.pack_into("<Q", mem, TAIL_OFF, record_bytes(4))  # no bell: nobody is woken
    published = time.monotonic()
    consumer.join(timeout=10.0)
    waited = time.monotonic() - published
    assert got == [b"lost"]
    assert waited < 10 * MAX_SLEEP_S, f"an unsignalled record waited {waited:.2f} s"
    assert ring.stats()["consumer_unsignalled"] == 1


def test_producer_finds_unsignalled_space_within_the_sleep_cap(make_ring) -> None:
    ring, mem = make_ring(256)
    while ring.try_push(b"z" * 56):
        pass
    tail = ring.stats()["tail"]
    results: list[bool] = []
    producer = threading.Thread(target=lambda: results.append(ring.push(b"late", timeout=10.0)))
    producer.start()
    wait_until(lambda: ring.stats()["producer_sleeps"] >= 1)
    struct.pack_into("<Q", mem, HEAD_OFF, tail)  # everything consumed, nobody woken
    freed = time.monotonic()
    producer.join(timeout=10.0)
    waited = time.monotonic() - freed
    assert results == [True]
    assert waited < 10 * MAX_SLEEP_S, f"unsignalled space waited {waited:.2f} s"
    stats = ring.stats()
    assert stats["producer_unsignalled"] == 1 and stats["consumer_unsignalled"] == 0


def test_signalled_wakeups_are_not_counted_as_unsignalled(make_ring) -> None:
    ring, _ = make_ring(256)
    got: list[bytes | None] = []
    for _ in range(10):
        got.clear()
        target = ring.stats()["consumer_sleeps"] + 2
        consumer = threading.Thread(target=lambda: got.append(ring.pop(timeout=10.0)))
        consumer.start()
        # A second sleep means the first one ran out at the cap and found nothing;
        # then a real, signalled publish.
        wait_until(lambda t=target: ring.stats()["consumer_sleeps"] >= t)
        assert ring.try_push(b"rung")
        consumer.join(timeout=10.0)
        assert got == [b"rung"]
    stats = ring.stats()
    assert stats["consumer_sleeps"] >= 20
    assert stats["consumer_unsignalled"] == 0 and stats["producer_unsignalled"] == 0


# ---- reset, close, pickling ----------------------------------------------------------


def test_reset_empties_the_ring_and_invalidates_other_handles(make_ring) -> None:
    ring, mem = make_ring()
    peer = Ring(mem)
    for i in range(5):
        ring.try_push(bytes([i]) * 10)
    assert peer.try_pop() == bytes(10)
    generation = ring.stats()["generation"]
    ring.reset()
    stats = ring.stats()
    assert (stats["head"], stats["tail"], stats["pushed"], stats["popped"]) == (0, 0, 0, 0)
    assert stats["generation"] == generation + 1
    assert ring.try_pop() is None
    with pytest.raises(RingError, match="reset"):
        peer.try_pop()
    peer.close()
    ring.try_push(b"after")
    with Ring(mem) as fresh:
        assert fresh.try_pop() == b"after"


def test_close_releases_the_buffer(make_ring) -> None:
    mem = mmap.mmap(-1, required_size(256))
    ring = Ring.init(mem, 256)
    with pytest.raises(BufferError):
        mem.close()  # the ring holds the buffer
    ring.close()
    ring.close()  # idempotent
    assert ring.closed
    with pytest.raises(ValueError):
        ring.try_push(b"x")
    with pytest.raises(ValueError):
        _ = ring.used_bytes
    mem.close()


def test_ring_cannot_be_pickled(make_ring) -> None:
    ring, _ = make_ring()
    with pytest.raises(TypeError):
        pickle.dumps(ring)


def test_spin_is_bounded(make_ring) -> None:
    ring, _ = make_ring()
    ring.spin = 100
    assert ring.spin == 100
    with pytest.raises(ValueError):
        ring.spin = 10**9


# ---- shared-memory facade -----------------------------------------------------------


def test_shared_ring_attaches_by_name_and_owner_unlinks() -> None:
    with SharedRing.create(1024, tag="t") as owner:
        assert owner.owner and owner.name.startswith(f"/fastext_{os.getpid()}_t_")
        with SharedRing.attach(owner.name) as peer:
            assert not peer.owner
            owner.ring.try_push(b"across")
            assert peer.ring.try_pop() == b"across"
        assert own_segments()  # the owner still holds the name
        with pytest.raises(TypeError):
            pickle.dumps(owner)
    assert not own_segments()
    with pytest.raises(posix_ipc.ExistentialError):
        SharedRing.attach(owner.name)


def test_shared_ring_attach_rejects_a_non_ring_segment() -> None:
    name = segment_name("junk")
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=4096)
    shm.close_fd()
    try:
        with pytest.raises(RingCorrupt):
            SharedRing.attach(name)
    finally:
        shm.unlink()


def test_ring_pair_names_round_trip() -> None:
    with RingPair.create(512, tag="w0") as front, RingPair.attach(front.names) as worker:
        front.submit.ring.try_push(b"frame")
        assert worker.submit.ring.try_pop() == b"frame"
        worker.completion.ring.try_push(b"done")
        assert front.completion.ring.try_pop() == b"done"
