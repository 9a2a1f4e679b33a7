"""Shared fixtures: a real fastext server on 127.0.0.1:0 in a background thread.

Plain helpers live in tests/helpers.py; nothing imports this module."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import RunningServer, inline_and_workers, running_server


@pytest.fixture(scope="module", params=inline_and_workers())
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """One server per module and mode: frames in the server process, or in 2 workers."""
    with running_server(workers=request.param) as srv:
        yield srv


@pytest.fixture
def make_server() -> Iterator[Callable[..., RunningServer]]:
    started: list[Any] = []

    def make(**changes: Any) -> RunningServer:
        cm = running_server(**changes)
        started.append(cm)
        return cm.__enter__()

    yield make
    for cm in reversed(started):
        cm.__exit__(None, None, None)


@pytest.fixture
def shm_file() -> Iterator[Callable[[int], tuple[str, str]]]:
    """Create /dev/shm files for a test; each is removed afterwards."""
    made: list[str] = []

    def create(size: int, data: bytes | None = None) -> tuple[str, str]:
        name = f"fastext_test_{os.getpid()}_{len(made)}_{threading.get_ident() % 10000}"
        path = os.path.join("/dev/shm", name)
        with open(path, "wb") as fh:
            fh.truncate(size)
            if data:
                fh.write(data)
        made.append(path)
        return name, path

    yield create
    for path in made:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
