"""fastext.backend.shm's arena allocator: placement, reuse in any free order, pages touched."""

from __future__ import annotations

import random

import pytest

from fastext.backend.shm import ArenaAllocator


def test_arena_allocator_reuses_space_in_any_free_order() -> None:
    alloc = ArenaAllocator(1024)
    a, b, c = alloc.alloc(300), alloc.alloc(300), alloc.alloc(300)
    assert a and b and c and [a[0], b[0], c[0]] == [0, 320, 640]  # 64-byte aligned
    assert alloc.alloc(300) is None  # 64 bytes left at the end
    alloc.free(b)
    d = alloc.alloc(300)
    assert d is not None and d[0] == 320  # b's space at once, though a is older
    alloc.free(a)
    alloc.free(c)  # free: 0..320 and 640..1024, not adjacent
    assert alloc.alloc(400) is None and alloc.used == 320
    e = alloc.alloc(384)
    assert e is not None and e[0] == 640  # c's space merged with the tail
    alloc.free(d)
    alloc.free(e)
    whole = alloc.alloc(1024)  # every neighbour merged back into one stretch
    assert whole is not None and whole[0] == 0 and alloc.used == 1024
    alloc.free(whole)
    with pytest.raises(ValueError, match="freed twice"):
        alloc.free(whole)
    assert alloc.alloc(2048) is None


@pytest.mark.parametrize("workers", [1, 2])
def test_arena_allocator_touches_little_more_than_the_bytes_in_flight(workers: int) -> None:
    # 16 JPEG-sized frames in flight through a 64 MiB arena, 5,000 times, finished in
    # order per worker and by the workers in any interleaving: the pages ever written
    # stay near twice the in-flight bytes, not the whole arena.
    rng = random.Random(3)
    alloc = ArenaAllocator(64 << 20)
    frame, in_flight = 270_000, 16
    queues: list[list[list[int]]] = [[] for _ in range(workers)]
    for n in range(5000):
        block = alloc.alloc(frame)
        assert block is not None
        queues[n % workers].append(block)
        if sum(map(len, queues)) == in_flight:
            alloc.free(rng.choice([q for q in queues if q]).pop(0))
    assert alloc.high_water <= 2 * (in_flight + 1) * (frame + ArenaAllocator.ALIGN)
    for block in (b for q in queues for b in q):
        alloc.free(block)
    assert alloc.used == 0


def test_arena_allocator_random_order_never_overlaps() -> None:
    rng = random.Random(7)
    alloc = ArenaAllocator(1 << 16)
    live: list[list[int]] = []
    for _ in range(20000):
        if live and rng.random() < 0.5:
            alloc.free(live.pop(rng.randrange(len(live))))
            continue
        block = alloc.alloc(rng.randrange(0, 5000))
        if block is not None:
            live.append(block)
        spans = sorted((b[0], b[0] + b[1]) for b in live)
        assert all(x[1] <= y[0] for x, y in zip(spans, spans[1:], strict=False))
        assert all(0 <= s and e <= alloc.size for s, e in spans)
        assert alloc.used == sum(b[1] for b in live)
    for block in live:
        alloc.free(block)
    whole = alloc.alloc(alloc.size)  # everything merged back
    assert whole is not None and whole[0] == 0
