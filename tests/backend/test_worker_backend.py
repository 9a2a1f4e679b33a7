"""WorkerBackend through its seams: its supervisor spawns tests/fake_worker.py instead of
fastext's worker, so the wiring itself (each process's rings and doorbell, READY, DONE,
readiness, a death, the re-run of what the dead process held, STOP, cleanup) runs with
real processes and shared memory, and nothing else.

Every scenario runs under a hard timeout (pytest-timeout, and asyncio.wait_for inside),
every wait is bounded, and the backend is always closed (then aborted, a no-op once
closed), so no child outlives its test and no /dev/shm name is left behind.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastext.backend.execute import FrameFormat
from fastext.backend.pipeline import LaneSpec, Result, WorkerBackend
from fastext.backend.placement import MAX_RUNS
from fastext.backend.shm import ShmRef
from fastext.config import Config
from fastext.outcomes import Outcome, Unprocessed
from fastext.vision.frames import Encoding, PixelFormat
from tests.fake_worker import Plan, fake_worker
from tests.helpers import owned_segments

# portable: the backend with a fake worker (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

SCENARIO_S = 120.0  # spawns on a busy 2-core machine take a second or two each
WAIT_S = 60.0
SPEC = LaneSpec(
    FrameFormat(Encoding.RAW, PixelFormat.RGB24, 4, 4, 12), "brightness", {}, "client-file", 1 << 20
)


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


class Run:
    """One WorkerBackend of one worker slot, whose processes follow ``plan``; what it
    delivers and each readiness change, recorded."""

    def __init__(self, plan: Plan) -> None:
        config = Config(workers=1, shm_size_mb=1, drain_s=5.0)
        self.backend = WorkerBackend(config, target=functools.partial(fake_worker, plan))
        self.readiness: list[bool] = []
        self.backend.on_readiness(self.readiness.append)
        self.delivered: list[tuple[int, list[Result]]] = []

    def deliver(self, token: int, results: Any) -> None:
        self.delivered.append((token, list(results)))


def scenario(tmp_path: Path, deaths: int, body: Callable[[Run, Any], Any]) -> None:
    async def main() -> None:
        segments = owned_segments(os.getpid())
        run = Run(Plan(str(tmp_path), deaths))
        try:
            await run.backend.start()
            lane = run.backend.open(SPEC, None, run.deliver)
            await body(run, lane)
            lane.close()
        finally:
            await run.backend.close()
            run.backend.abort()
        assert owned_segments(os.getpid()) == segments  # arena and every ring removed

    asyncio.run(asyncio.wait_for(main(), SCENARIO_S))


@pytest.mark.timeout(180)
def test_worker_backend_reruns_a_dead_workers_batch_on_its_successor(tmp_path: Path) -> None:
    async def body(run: Run, lane: Any) -> None:
        (first,) = run.backend.worker_pids()
        lane.submit(1, [ShmRef(100, 10)])  # the first process dies holding it
        await until(lambda: len(run.delivered) == 1)
        (second,) = run.backend.worker_pids()
        assert second != first
        assert run.delivered == [(1, [f"{second}:100".encode()])]  # run again, once
        assert run.backend.retried == 1 and run.backend.abandoned == 0
        lane.submit(2, [ShmRef(200, 10), ShmRef(300, 10)])  # the successor serves on
        await until(lambda: len(run.delivered) == 2)
        assert run.delivered[1] == (2, [f"{second}:200".encode(), f"{second}:300".encode()])
        assert run.readiness == [True, False, True]  # up, its death, its successor up
        assert run.backend.queued() == 0
        assert sorted(os.listdir(tmp_path)) == ["0", "1"]

    scenario(tmp_path, 1, body)


@pytest.mark.timeout(180)
def test_worker_backend_acks_lost_a_batch_whose_workers_all_died(tmp_path: Path) -> None:
    async def body(run: Run, lane: Any) -> None:
        lane.submit(1, [ShmRef(100, 10)])  # each of MAX_RUNS processes dies holding it
        await until(lambda: len(run.delivered) == 1)
        ((token, (lost,)),) = run.delivered
        assert token == 1 and isinstance(lost, Unprocessed) and lost.kind == Outcome.LOST
        assert run.backend.retried == MAX_RUNS - 1 and run.backend.abandoned == 1
        await until(lambda: len(run.readiness) == 2 * MAX_RUNS + 1)  # the last one is up
        (last,) = run.backend.worker_pids()
        lane.submit(2, [ShmRef(200, 10)])
        await until(lambda: len(run.delivered) == 2)
        assert run.delivered[1] == (2, [f"{last}:200".encode()])
        assert run.readiness == [True, False] * MAX_RUNS + [True]
        assert sorted(os.listdir(tmp_path)) == [str(n) for n in range(MAX_RUNS + 1)]

    scenario(tmp_path, MAX_RUNS, body)
