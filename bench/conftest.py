"""Benchmark fixtures: servers in their own processes, on 127.0.0.1, stopped at the end.

Every figure is measured side by side in one run against its baseline; results
carry host, arch, commit and date through pytest-benchmark's own JSON
(``--benchmark-json FILE`` or ``--benchmark-autosave``).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fastext.malloc import KEEP_MB, keep_freed_memory

HERE = Path(__file__).resolve().parent
# The benchmarks' client runs in this process: the allocator setting `fastext stream`
# has (the same client for every server measured).
keep_freed_memory(KEEP_MB)


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen
    port: int
    #: the server's output after the port line, a line at a time ("" when it ends)
    lines: queue.Queue[str] = field(default_factory=queue.Queue)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU of the server's own (front) process so far."""
        return _cpu(self.proc.pid)

    def children_cpu_seconds(self) -> float:
        """User + system CPU of the server's live child processes (its workers)."""
        total = 0.0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                            total += _cpu(int(entry))
                except (OSError, ValueError, IndexError):
                    continue
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def free_port() -> int:
    """A loopback port free right now (for servers that take a fixed port, like metrics)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def launch(
    name: str,
    argv: list[str],
    pattern: str,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, re.Match[str], queue.Queue[str]]:
    """Start a process and wait (bounded) for the first line matching ``pattern``;
    ``env`` replaces the environment it inherits.

    Returns the process, the match, and a queue that keeps receiving its later
    output a line at a time ("" once the output ends).
    """
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:  # keeps draining, so the process never blocks on a full pipe
        assert proc.stdout is not None
        with proc.stdout:  # the reader closes the pipe: no other thread races it
            for line in proc.stdout:
                lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            return proc, match, lines
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{name} did not start: {''.join(seen[-20:])}")


def start(
    name: str,
    argv: list[str],
    pattern: str,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start a server and wait (bounded) for the line that names its port."""
    proc, match, lines = launch(name, argv, pattern, timeout, env)
    return ServerProcess(name, proc, int(match.group(1)), lines)


def fastext_server(*args: str) -> ServerProcess:
    return start(
        "fastext " + " ".join(args),
        [
            sys.executable,
            "-m",
            "fastext",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--log-level",
            "INFO",
            *args,
        ],
        r"fastext serving on \S+ \(port (\d+)",
    )


def naive_server() -> ServerProcess:
    return start(
        "naive single-process", [sys.executable, str(HERE / "naive_server.py")], r"port (\d+)"
    )


def bare_server() -> ServerProcess:
    return start("bare grpc.aio", [sys.executable, str(HERE / "bare_server.py")], r"port (\d+)")


@pytest.fixture(scope="module")
def servers(request: pytest.FixtureRequest) -> Iterator[dict[str, ServerProcess]]:
    """The servers a module names in ``SERVERS = {key: (factory, args)}``."""
    wanted = request.module.SERVERS
    started: dict[str, ServerProcess] = {}
    try:
        for key, (factory, args) in wanted.items():
            started[key] = factory(*args)
        yield started
    finally:
        for server in started.values():
            server.stop()
