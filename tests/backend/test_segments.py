"""The server's shared-memory segments (fastext.backend.segments): names, create and attach,
unlink, and the removal of a dead server's leftovers."""

from __future__ import annotations

import os
import subprocess
import sys

import posix_ipc
import pytest

from fastext.backend.segments import SEGMENT_PREFIX, Segment, cleanup_stale_segments, segment_name


def test_segment_names_carry_the_owner_pid_and_refuse_odd_tags() -> None:
    name = segment_name("arena")
    assert name.startswith(f"/{SEGMENT_PREFIX}{os.getpid()}_arena_")
    assert segment_name("x", pid=42).startswith(f"/{SEGMENT_PREFIX}42_x_")
    assert segment_name("arena") != name  # a random suffix: never reused
    for bad in ("", "a/b", "a b", "x" * 65):
        with pytest.raises(ValueError):
            segment_name(bad)


def test_segment_owner_creates_and_unlinks_and_a_peer_attaches() -> None:
    owner = Segment.create(segment_name("segtest"), 4096)
    try:
        owner.mapping[:5] = b"hello"
        peer = Segment.attach(owner.name, at_least=4096, read_only=True)
        assert bytes(peer.mapping[:5]) == b"hello" and not peer.owner
        with pytest.raises(TypeError):  # read-only mapping
            peer.mapping[0] = 1  # type: ignore[index]
        with pytest.raises(ValueError, match="fewer than"):
            Segment.attach(owner.name, at_least=8192)
        peer.close()
        assert os.path.exists("/dev/shm" + owner.name)  # a peer never unlinks
    finally:
        owner.close()
    assert not os.path.exists("/dev/shm" + owner.name)
    owner.close()  # idempotent
    with pytest.raises(posix_ipc.ExistentialError):
        Segment.attach(owner.name)


def test_cleanup_removes_only_segments_of_dead_pids() -> None:
    # A private prefix keeps this test away from other live fastext segments.
    prefix = "fastext-ringtest-"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    stale = f"/{prefix}{dead.pid}_stale"
    live = f"/{prefix}{os.getpid()}_live"
    for name in (stale, live):
        posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=64).close_fd()
    try:
        removed = cleanup_stale_segments(prefix)
        assert removed == [stale[1:]]
        assert os.path.exists("/dev/shm" + live)
    finally:
        for name in (stale, live):
            try:
                posix_ipc.unlink_shared_memory(name)
            except posix_ipc.ExistentialError:
                pass
