"""Trivial children for tests/backend/test_supervisor.py: what a Supervisor runs there instead of
fastext's worker.  A module of its own (not a test module, not helpers: a spawned child
imports it, so it imports nothing but the standard library and fastext.backend.doorbell).

Every child ends within ``LIFETIME_S`` whatever happens, and with an exit code that
says how: 0 when asked to stop, ``CRASH_CODE`` when it crashes on purpose,
``EXPIRED_CODE`` when its lifetime ran out (a test that sees it has a bug).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from fastext.backend.doorbell import Ringer

LIFETIME_S = 30.0
CRASH_CODE = 3
EXPIRED_CODE = 4
_TICK_S = 0.02


@dataclass(frozen=True)
class ChildSpec:
    """``behaviour``: "ring" (ring ``rings`` times, beat until told to stop), "crash" (ring
    once, exit with CRASH_CODE), "hang" (no beat, no ring for ``quiet_s``: still
    starting; then ring once and never beat again), "stubborn" (ring, beat, ignore stop)."""

    behaviour: str
    ringer: Ringer
    heartbeat: Any  # the slot's RawValue('d')
    stop: Any  # a multiprocessing Event: the test's per-process resource
    rings: int = 1
    quiet_s: float = 0.0


def child(spec: ChildSpec) -> None:
    end = time.monotonic() + LIFETIME_S
    if spec.behaviour == "hang":
        time.sleep(spec.quiet_s)  # starting up: neither ready nor beating
        spec.ringer.ring()  # "ready" (the test marks the slot so on a wake)
        time.sleep(max(0.0, end - time.monotonic()))  # hung: no beat from here on
        sys.exit(EXPIRED_CODE)
    spec.heartbeat.value = time.monotonic()
    for _ in range(spec.rings):
        spec.ringer.ring()
    if spec.behaviour == "crash":
        sys.exit(CRASH_CODE)
    while time.monotonic() < end:
        spec.heartbeat.value = time.monotonic()
        if spec.stop.wait(_TICK_S) and spec.behaviour != "stubborn":
            return
    sys.exit(EXPIRED_CODE)


def ring_times(ringer: Ringer, times: int) -> None:
    """Ring ``times`` times and exit (tests/backend/test_doorbell.py: a ringer sent to a child)."""
    for _ in range(times):
        ringer.ring()
