"""fastext.backend.doorbell: a child's one-way wake-up of the event loop (a non-blocking pipe)."""

from __future__ import annotations

import fcntl
import multiprocessing
import pickle
import select
import time

import pytest

from fastext.backend.doorbell import Doorbell
from tests.supervised import ring_times

CTX = multiprocessing.get_context("spawn")


def readable(doorbell: Doorbell) -> bool:
    return bool(select.select([doorbell.fileno()], [], [], 0)[0])


def test_doorbell_clear_takes_every_ring_and_an_empty_clear_is_zero() -> None:
    bell = Doorbell()
    try:
        assert bell.clear() == 0 and not readable(bell)  # empty: no EAGAIN escapes
        for _ in range(5):
            bell.ringer.ring()
        assert readable(bell)
        assert bell.clear() == 5
        assert not readable(bell) and bell.clear() == 0
    finally:
        bell.close()


@pytest.mark.timeout(30)
def test_doorbell_ringing_a_full_pipe_never_blocks() -> None:
    bell = Doorbell()
    try:
        capacity = fcntl.fcntl(bell.fileno(), fcntl.F_GETPIPE_SZ)
        started = time.monotonic()
        for _ in range(capacity + 10_000):  # past full: the extra rings are dropped
            bell.ringer.ring()
        assert time.monotonic() - started < 20
        assert bell.clear() == capacity
        assert bell.clear() == 0 and not readable(bell)
        bell.ringer.ring()  # rings again once cleared
        assert bell.clear() == 1
    finally:
        bell.close()


def test_doorbell_close_is_idempotent_and_closes_both_ends() -> None:
    bell = Doorbell()
    bell.ringer.ring()
    bell.close()
    assert bell.closed and bell.ringer.closed and bell.fileno() == -1
    assert bell.clear() == 0  # a late wake-up on a closed bell: nothing, no error
    bell.close()
    bell.ringer.close()


def test_doorbell_stays_in_its_process_and_a_closed_ringer_cannot_travel() -> None:
    bell = Doorbell()
    try:
        with pytest.raises(TypeError):
            pickle.dumps(bell)
        bell.ringer.close()
        with pytest.raises(ValueError):
            pickle.dumps(bell.ringer)
    finally:
        bell.close()


@pytest.mark.timeout(60)
def test_doorbell_ringer_rings_from_a_spawned_child() -> None:
    bell = Doorbell()
    try:
        child = CTX.Process(target=ring_times, args=(bell.ringer, 3), daemon=True)
        child.start()
        bell.ringer.close()  # the parent's copy: the child holds its own
        child.join(45)
        assert child.exitcode == 0
        assert bell.clear() == 3
        assert bell.clear() == 0  # every ringer closed: end of file reads as empty
    finally:
        bell.close()
