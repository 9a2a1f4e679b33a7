"""What backing a segment at creation costs: ``Arena.create`` with ``posix_fallocate``
(what fastext does) and without (the sparse file it made before), alternated.

    python bench/shm_reserve.py                 # the 64 MiB default arena, 15 runs each
    python bench/shm_reserve.py --mb 256 --runs 9

Prints, per variant, the median of: creating the arena (``Arena.create``), then writing
one byte in each of its 4 KiB pages (the first touch: what a sparse arena pays later,
frame by frame, and what can SIGBUS on a full ``/dev/shm``), and the ``Shmem`` the
creation added (from /proc/meminfo: memory held from the start rather than on use).
For huge pages, run it where ``/dev/shm`` is a tmpfs mounted with ``huge=always``
(``unshare -m`` then ``mount -t tmpfs -o size=512m,huge=always none /dev/shm``, as root).
"""

from __future__ import annotations

import argparse
import statistics
import time

from fastext.backend import segments
from fastext.backend.segments import segment_name
from fastext.backend.shm import Arena

PAGE = 4096


def _shmem_kib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    return 0


def once(size: int, reserve: bool) -> tuple[float, float, float]:
    """(create s, first touch s, MiB of Shmem added by create) for one arena."""
    saved = segments._reserve
    if not reserve:
        segments._reserve = lambda fd, size: None  # the sparse file of before
    try:
        before = _shmem_kib()
        started = time.perf_counter()
        arena = Arena.create(segment_name("bench"), size)
        created = time.perf_counter() - started
        added = (_shmem_kib() - before) / 1024
    finally:
        segments._reserve = saved
    try:
        writable = memoryview(arena._map)  # the front's write path, one byte a page
        started = time.perf_counter()
        for offset in range(0, size, PAGE):
            writable[offset] = 1
        touched = time.perf_counter() - started
        del writable
    finally:
        arena.close()
    return created, touched, added


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="arena size (MiB)")
    parser.add_argument("--runs", type=int, default=15, help="runs of each variant")
    args = parser.parse_args()
    size = args.mb << 20
    results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for _ in range(args.runs):  # alternated: both see the same machine
        for reserve in (True, False):
            results[reserve].append(once(size, reserve))
    for reserve, runs in results.items():
        create, touch, added = (statistics.median(r[i] for r in runs) for i in range(3))
        name = "posix_fallocate" if reserve else "sparse (before)"
        print(
            f"{name:16s} {args.mb} MiB arena: create {create * 1e3:7.2f} ms, then first "
            f"touch of every page {touch * 1e3:7.2f} ms; Shmem +{added:.0f} MiB at create "
            f"(median of {args.runs})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
