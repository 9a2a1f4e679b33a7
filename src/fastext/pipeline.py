"""Where batches run: the front's view of the processing backend.

``InlineBackend`` runs batches on a thread pool inside the server process
(``--workers 0``): numba kernels release the GIL, so streams still run in
parallel.  The worker-process backend (shared-memory rings) plugs in behind
the same two calls.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from fastext.config import Config
from fastext.errors import ConfigError
from fastext.execute import FrameFormat, Outcome, run_batch
from fastext.processors.base import Processor

__all__ = ["Backend", "InlineBackend", "make_backend"]


class Backend(Protocol):
    def submit(
        self, processor: Processor, fmt: FrameFormat, payloads: Sequence[np.ndarray | bytes]
    ) -> asyncio.Future[list[Outcome]]:
        """Start a batch; the future holds one outcome per payload once every frame is done."""

    async def close(self) -> None:
        """Finish or abandon running batches and release resources."""


class InlineBackend:
    """Runs batches on a thread pool of the server process."""

    def __init__(self, threads: int | None = None) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 1, thread_name_prefix="fastext-batch"
        )

    def submit(
        self, processor: Processor, fmt: FrameFormat, payloads: Sequence[np.ndarray | bytes]
    ) -> asyncio.Future[list[Outcome]]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._pool, run_batch, processor, fmt, payloads)

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)


def make_backend(config: Config) -> Backend:
    """The backend ``config.workers`` asks for."""
    if config.workers == 0:
        return InlineBackend()
    raise ConfigError(f"--workers {config.workers}: worker processes are not available in this "
                      "build yet; use --workers 0 (frames are processed in the server process)")
