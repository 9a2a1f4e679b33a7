"""A stand-in for fastext's worker, for tests/backend/test_worker_backend.py: what a
WorkerBackend's supervisor spawns there instead, to drive the backend's wiring (rings,
doorbell, READY, DONE, deaths, re-runs, STOP) without processors, frames or numba.  A
module of its own (not a test module, not helpers: a spawned child imports it, so it
imports nothing but the standard library and the backend's ring, records and doorbell).

Each process of the backend's one slot takes the next number in ``Plan.directory``; the
first ``Plan.deaths`` of them die (exit ``CRASH_CODE``) on the first batch they take,
without a DONE; the others answer every batch with one outcome per frame,
``b"<pid>:<offset>"``.  Every process ends within ``LIFETIME_S`` whatever happens: 0 on
STOP, ``EXPIRED_CODE`` when its lifetime ran out (a test that sees it has a bug).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from fastext.backend import records
from fastext.backend.ring import RingPair

LIFETIME_S = 60.0
CRASH_CODE = 3
EXPIRED_CODE = 4
_TICK_S = 0.02


@dataclass(frozen=True)
class Plan:
    directory: str  # one file per process started: its number in the slot
    deaths: int  # how many processes die on their first batch


def fake_worker(plan: Plan, spec: Any) -> None:
    """``spec``: the backend's WorkerSpec (rings, doorbell, heartbeat)."""
    end = time.monotonic() + LIFETIME_S
    number = len(os.listdir(plan.directory))  # one slot: its processes start one at a time
    with open(os.path.join(plan.directory, str(number)), "x"):
        pass
    dies = number < plan.deaths
    rings = RingPair.attach(spec.rings)
    submit, completion = rings.submit.ring, rings.completion.ring
    spec.heartbeat.value = time.monotonic()
    completion.push(records.pack_ready(os.getpid()), 5.0)
    spec.doorbell.ring()
    while time.monotonic() < end:
        spec.heartbeat.value = time.monotonic()
        for record in submit.pop_many(64, _TICK_S):
            if record[0] == records.STOP:
                return
            if record[0] != records.BATCH:
                continue  # OPEN, CLOSE: nothing to hold
            if dies:
                os._exit(CRASH_CODE)  # holding the batch, as a crash does
            _, batch_id, refs = records.unpack_batch(record)
            outcomes = [f"{os.getpid()}:{offset}".encode() for _, offset, _ in refs]
            completion.push(records.pack_done(batch_id, outcomes), 5.0)
            spec.doorbell.ring()
    sys.exit(EXPIRED_CODE)
