"""Shared fixtures: a real fastext server on 127.0.0.1:0 in a background thread.

Plain helpers live in tests/helpers.py; nothing imports this module."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from fastext.config import Config
from fastext.server import ExtensionServer


class RunningServer:
    """A server on its own event loop thread; ``port`` is where it listens."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server: ExtensionServer | None = None
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> RunningServer:
        self._thread.start()
        self.server = self.call(self._make())
        self.port = self.call(self.server.start())
        return self

    async def _make(self) -> ExtensionServer:
        return ExtensionServer(self.config)

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self.server is not None:
            self.call(self.server.stop(drain_s=2.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sessions(self) -> int:
        assert self.server is not None
        return self.server.active_sessions


@contextmanager
def running_server(**changes: Any) -> Iterator[RunningServer]:
    config = Config(bind="127.0.0.1:0", log_level="DEBUG", workers=0).replace(**changes)
    srv = RunningServer(config).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module", params=[0, 2], ids=["inline", "workers"])
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
