"""fastext.backend.supervisor driven with trivial children (tests/supervised.py), not fastext's
worker: real spawned processes, their doorbells, crashes, hangs, stop and kill.

Every scenario runs under a hard timeout (pytest-timeout, and asyncio.wait_for inside),
every wait is bounded, and a supervisor is always killed at the end (a no-op once it
stopped), so no child outlives its test.
"""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from fastext.backend.supervisor import Slot, Supervisor
from tests.supervised import CRASH_CODE, ChildSpec, child

# portable: restart and backoff logic (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

CTX = multiprocessing.get_context("spawn")
SCENARIO_S = 90.0  # a spawn on a busy 2-core machine can take a second or two
WAIT_S = 60.0
KILLED = -signal.SIGKILL

#: plan(slot index, generation): ChildSpec's behaviour and options for that process
Plan = Callable[[int, int], dict[str, Any]]


class Harness:
    """The caller's side of a Supervisor: launch, callbacks and release, all recorded.

    Each process of a slot is a *generation* (0, 1, ...).  ``events`` holds
    (what, slot, generation, time) in the order the callbacks ran.
    """

    def __init__(self, count: int, plan: Plan, own_flag: bool = False) -> None:
        self.plan = plan
        # own_flag: readiness kept here (the supervisor asks serving()), not on the slot
        self.own_flag = own_flag
        self.up: set[int] = set()
        self.events: list[tuple[str, int, int, float]] = []
        self.launches = [0] * count
        self.rang: dict[tuple[int, int], int] = {}
        self.exit_codes: dict[tuple[int, int], int | None] = {}
        self.stops: list[Any] = [None] * count  # the per-process resource: a stop Event
        self.aborted: list[tuple[int, int]] = []
        self.exit_saw_live_slot: list[bool] = []

    def gen(self, slot: Slot) -> int:
        return self.launches[slot.index] - 1

    def _note(self, what: str, slot: Slot) -> None:
        self.events.append((what, slot.index, self.gen(slot), time.monotonic()))

    def launch(self, slot: Slot) -> ChildSpec:
        gen = self.launches[slot.index]
        self.launches[slot.index] += 1
        self._note("launch", slot)
        assert slot.doorbell is not None and self.stops[slot.index] is None
        plan = self.plan(slot.index, gen)
        if plan.get("behaviour") == "no-launch":  # raises having set up nothing
            raise OSError(errno.EMFILE, "Too many open files")
        stop = self.stops[slot.index] = CTX.Event()
        self.rang[(slot.index, gen)] = 0
        return ChildSpec(ringer=slot.doorbell.ringer, heartbeat=slot.heartbeat, stop=stop, **plan)

    def on_launch_failure(self, slot: Slot, exc: Exception) -> None:
        self._note("launch-failure", slot)
        assert isinstance(exc, OSError) and exc.errno == errno.EMFILE
        assert slot.process is None and slot.doorbell is None and not slot.ready

    def _take(self, slot: Slot) -> None:
        assert slot.doorbell is not None
        self.rang[(slot.index, self.gen(slot))] += slot.doorbell.clear()

    def on_wake(self, slot: Slot) -> None:
        self._take(slot)
        if self.own_flag:
            self.up.add(slot.index)
        else:
            slot.ready = True  # the child rings once it has started: "ready"

    def serving(self, slot: Slot) -> bool:
        return slot.index in self.up

    def on_exit(self, slot: Slot) -> None:
        self._note("exit", slot)
        # Before the slot is recycled: the process is reaped, and its doorbell and this
        # caller's resource are still there (what it rang before dying is taken now).
        self.exit_saw_live_slot.append(
            slot.process is not None
            and slot.doorbell is not None
            and self.stops[slot.index] is not None
        )
        self.exit_codes[(slot.index, self.gen(slot))] = slot.process.exitcode
        self._take(slot)
        self.up.discard(slot.index)

    def release(self, slot: Slot, aborting: bool) -> None:
        self._note("abort-release" if aborting else "release", slot)
        assert self.stops[slot.index] is not None
        self.stops[slot.index] = None
        if aborting:
            self.aborted.append((slot.index, self.gen(slot)))

    def send_stop(self, slot: Slot) -> None:
        self._note("stop", slot)
        self.stops[slot.index].set()

    def of(self, slot: int) -> list[tuple[str, int]]:
        """(what, generation) of one slot's events, in order."""
        return [(what, gen) for what, index, gen, _ in self.events if index == slot]

    def at(self, what: str, slot: int, gen: int) -> float:
        (t,) = [t for w, i, g, t in self.events if (w, i, g) == (what, slot, gen)]
        return t

    def supervisor(self, count: int, **options: Any) -> Supervisor:
        return Supervisor(
            count,
            self.launch,
            child,
            self.on_wake,
            self.on_exit,
            self.release,
            name="test-child",
            on_launch_failure=self.on_launch_failure,
            **options,
        )


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_S))


async def supervised(sup: Supervisor, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    sup.start()
    try:
        await body()
    finally:
        sup.kill(deadline_s=5.0)  # after stop(): nothing left to kill


@pytest.mark.timeout(120)
def test_supervisor_children_ring_their_doorbells_then_stop_when_asked() -> None:
    rings = {0: 5, 1: 7}
    h = Harness(2, lambda slot, gen: {"behaviour": "ring", "rings": rings[slot]})
    sup = h.supervisor(2)

    async def body() -> None:
        await until(lambda: h.rang.get((0, 0)) == 5 and h.rang.get((1, 0)) == 7)
        await asyncio.sleep(0.2)
        assert h.rang == {(0, 0): 5, (1, 0): 7}  # each ring counted once, none invented
        started = time.monotonic()
        await sup.stop(h.send_stop, deadline_s=30.0)
        assert time.monotonic() - started < 30.0  # they stopped: nothing waited out
        assert sup.stopping

    run(lambda: supervised(sup, body))
    for slot in (0, 1):
        assert h.of(slot) == [("launch", 0), ("stop", 0), ("exit", 0), ("release", 0)]
        assert sup.slots[slot].restarts == 0
        assert sup.slots[slot].process is None and sup.slots[slot].doorbell is None
    assert h.exit_codes == {(0, 0): 0, (1, 0): 0}
    assert h.exit_saw_live_slot == [True, True]
    assert h.aborted == []


@pytest.mark.timeout(120)
def test_supervisor_restarts_a_crashing_child_with_growing_backoff() -> None:
    backoff = (0.05, 0.3, 0.6)
    crashes = 3
    h = Harness(1, lambda slot, gen: {"behaviour": "crash" if gen < crashes else "ring"})
    sup = h.supervisor(1, backoff_s=backoff)

    async def body() -> None:
        await until(lambda: h.rang.get((0, crashes)) == 1)
        await sup.stop(h.send_stop, deadline_s=30.0)

    run(lambda: supervised(sup, body))
    expected = []
    for gen in range(crashes):
        expected += [("launch", gen), ("exit", gen), ("release", gen)]
    expected += [("launch", crashes), ("stop", crashes), ("exit", crashes), ("release", crashes)]
    assert h.of(0) == expected  # each exit handled, then released, before the next launch
    assert sup.slots[0].restarts == crashes
    assert h.exit_codes == {**{(0, g): CRASH_CODE for g in range(crashes)}, (0, crashes): 0}
    assert h.rang == {(0, g): 1 for g in range(crashes + 1)}  # a crasher's ring is still taken
    assert h.exit_saw_live_slot == [True] * (crashes + 1)
    for gen in range(crashes):  # the n-th exit within a minute waits backoff[n]
        waited = h.at("launch", 0, gen + 1) - h.at("exit", 0, gen)
        assert waited >= backoff[gen] - 0.01, (gen, waited)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flag", ["slot.ready", "serving"])
def test_supervisor_kills_a_ready_child_whose_heartbeat_stalls(flag: str) -> None:
    quiet_s, hang_s = 0.8, 0.3
    h = Harness(
        1,
        lambda slot, gen: (
            {"behaviour": "hang", "quiet_s": quiet_s} if gen == 0 else {"behaviour": "ring"}
        ),
        own_flag=flag == "serving",
    )
    options: dict[str, Any] = {"serving": h.serving} if h.own_flag else {}
    sup = h.supervisor(1, hang_s=hang_s, watch_s=0.05, backoff_s=(0.05,), **options)

    async def body() -> None:
        await until(lambda: h.rang.get((0, 1)) == 1)
        await sup.stop(h.send_stop, deadline_s=30.0)

    run(lambda: supervised(sup, body))
    assert h.of(0) == [
        ("launch", 0),
        ("exit", 0),
        ("release", 0),
        ("launch", 1),
        ("stop", 1),
        ("exit", 1),
        ("release", 1),
    ]
    assert h.exit_codes == {(0, 0): KILLED, (0, 1): 0}
    assert sup.slots[0].restarts == 1
    assert h.rang == {(0, 0): 1, (0, 1): 1}
    # Not ready, it was left alone though it never beat: killed only after it rang.
    assert h.at("exit", 0, 0) - h.at("launch", 0, 0) >= quiet_s


@pytest.mark.timeout(120)
def test_supervisor_stop_kills_a_child_that_outlives_the_deadline() -> None:
    h = Harness(2, lambda slot, gen: {"behaviour": "ring" if slot == 0 else "stubborn"})
    sup = h.supervisor(2)
    deadline_s = 0.5

    async def body() -> None:
        await until(lambda: h.rang.get((0, 0)) == 1 and h.rang.get((1, 0)) == 1)
        started = time.monotonic()
        await sup.stop(h.send_stop, deadline_s=deadline_s)
        assert deadline_s <= time.monotonic() - started < deadline_s + 10.0

    run(lambda: supervised(sup, body))
    for slot in (0, 1):
        assert h.of(slot) == [("launch", 0), ("stop", 0), ("exit", 0), ("release", 0)]
        assert sup.slots[slot].restarts == 0 and sup.slots[slot].process is None
    assert h.exit_codes == {(0, 0): 0, (1, 0): KILLED}
    assert h.exit_saw_live_slot == [True, True]


@pytest.mark.timeout(120)
def test_supervisor_kill_ends_every_child_at_once_and_releases_for_abort() -> None:
    h = Harness(2, lambda slot, gen: {"behaviour": "ring"})
    sup = h.supervisor(2, backoff_s=(0.05,))

    async def body() -> None:
        await until(lambda: h.rang.get((0, 0)) == 1 and h.rang.get((1, 0)) == 1)
        processes = [s.process for s in sup.slots]
        assert sup.kill(deadline_s=10.0) == 2
        assert [p.exitcode for p in processes] == [KILLED, KILLED]
        await asyncio.sleep(0.5)  # the loop runs on: no exit callback, no restart
        assert sup.kill() == 0

    run(lambda: supervised(sup, body))
    for slot in (0, 1):
        assert h.of(slot) == [("launch", 0), ("abort-release", 0)]
        assert sup.slots[slot].process is None and sup.slots[slot].doorbell is None
        assert sup.slots[slot].restarts == 0
    assert sorted(h.aborted) == [(0, 0), (1, 0)]
    assert h.exit_codes == {}


@pytest.mark.timeout(120)
def test_supervisor_retries_a_launch_that_raises_with_the_crash_backoff() -> None:
    backoff = (0.05, 0.1, 0.2, 0.4)
    fails = 3  # generations 1..3: launch raises (no fds, /dev/shm full, fork refused)
    h = Harness(
        1,
        lambda slot, gen: {
            "behaviour": "crash" if gen == 0 else "no-launch" if gen <= fails else "ring"
        },
    )
    sup = h.supervisor(1, backoff_s=backoff)

    async def body() -> None:
        await until(lambda: h.rang.get((0, fails + 1)) == 1)
        await sup.stop(h.send_stop, deadline_s=30.0)

    run(lambda: supervised(sup, body))
    expected = [("launch", 0), ("exit", 0), ("release", 0)]
    for gen in range(1, fails + 1):  # nothing to release: the launch raised
        expected += [("launch", gen), ("launch-failure", gen)]
    expected += [
        ("launch", fails + 1),
        ("stop", fails + 1),
        ("exit", fails + 1),
        ("release", fails + 1),
    ]
    assert h.of(0) == expected
    assert sup.slots[0].restarts == 1 and sup.slots[0].launch_failures == fails
    assert h.exit_codes == {(0, 0): CRASH_CODE, (0, fails + 1): 0}
    assert h.rang == {(0, 0): 1, (0, fails + 1): 1}
    # Each failure earns the next delay, as an exit does: exit, then 3 failed launches.
    assert h.at("launch", 0, 1) - h.at("exit", 0, 0) >= backoff[0] - 0.01
    for gen in range(1, fails + 1):
        waited = h.at("launch", 0, gen + 1) - h.at("launch-failure", 0, gen)
        assert waited >= backoff[gen] - 0.01, (gen, waited)


@pytest.mark.timeout(120)
def test_supervisor_start_raises_when_a_first_launch_fails() -> None:
    # At start a launch that raises is the caller's to report (fastext serve exits 2 on
    # a full /dev/shm): start() raises; the slots already started stop as usual.
    h = Harness(2, lambda slot, gen: {"behaviour": "ring" if slot == 0 else "no-launch"})
    sup = h.supervisor(2, backoff_s=(0.05,))

    async def scenario() -> None:
        with pytest.raises(OSError, match="Too many open files"):
            sup.start()
        try:
            await until(lambda: h.rang.get((0, 0)) == 1)
            await asyncio.sleep(0.3)  # nothing retries slot 1
            await sup.stop(h.send_stop, deadline_s=30.0)
        finally:
            sup.kill(deadline_s=5.0)

    run(scenario)
    assert h.of(0) == [("launch", 0), ("stop", 0), ("exit", 0), ("release", 0)]
    assert h.of(1) == [("launch", 0)]
    assert sup.slots[1].launch_failures == 0 and sup.slots[1].process is None
