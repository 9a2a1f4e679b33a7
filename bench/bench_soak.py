"""Soak: a real ``fastext serve --workers 2`` through rounds of load and disturbance.

Each round, 16 streams of 416x416 RGB24 (14 by shared memory, 2 embedded) send N
frames each, day and night scenes whose tag is known.  Meanwhile one worker is
SIGKILLed (the server restarts it with backoff and runs its frames again elsewhere),
one call is cancelled and one client process is SIGKILLed while their frames are in
flight.  Every round checks that each of the 16 streams got every frame acked once
with the right tag, and that the vanished sessions were cleaned up: the server ended
them, no process of the server maps a client file any more, and its metrics show no
stream, frame or mapped byte left.

Before and after each round: RSS, PSS, open fds and mappings of the front and of
each worker slot, and the files in /dev/shm.  After round 1 (the warm-up) memory
stays within 10 % of round 1's and fds, mappings and files do not grow.  At the end
SIGTERM must stop the server cleanly, leaving no ``fastext_<pid>_*`` segment.

Run: ``pytest --benchmark -k soak`` (full: 5 rounds of 16 x 2,000 frames, a few
minutes); ``pytest --benchmark --benchmark-disable`` runs the short form (rounds of
16 x 1,000, 200 and 200 frames, with every disturbance and every check, in ~30 s).
``extra_info["rounds"]`` holds each round's figures: frames, seconds, frames/s, what
was killed or cancelled, and the ``before``/``after`` snapshots of the front and each
worker (RSS, peak RSS, anonymous and shared RSS, PSS, fds, mappings, threads) and of
/dev/shm.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

import pytest

from bench.conftest import HERE, ServerProcess, fastext_server, free_port, launch
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions, StreamResult, stream_frames
from fastext.client.synthetic import scenes, to_pixel_format

# rounds, frames per stream in round 1 and in the others.  Round 1 must warm the front:
# its heap grows over the first ~16,000 frames (RSS 74 MB after 1,600, then ~100-106 MB
# from 16,000 on, flat to 32,000: bench_soak's rounds of 16 x 100, measured).
SIZES = {"full": (5, 2000, 2000), "smoke": (3, 1000, 200)}
STREAMS, EMBEDDED = 16, 2  # the last EMBEDDED of the STREAMS send embedded frames
SIDE, WINDOW = 416, 16
VANISH_AFTER = 20  # acks a vanishing client gets before it goes
MEMORY_GROWTH = 0.10  # allowed over round 1's RSS: the front's, and the workers' sum
# The front's heap the allocator may keep or return at any moment: --malloc-keep-mb (8)
# in each of its 2 arenas.  Measured at round ends: anonymous RSS 39-62 MB over 8 rounds
# with no trend, a swing wider than 10 % of the front's ~100 MB.
FRONT_KEPT_HEAP_KB = 2 * 8 * 1024
# Every round SIGKILLs slot 0's worker: slot 1's lives through the whole soak (the one
# measured round over round), slot 0 restarts each round (backoff grows: 0.1, 0.2, 0.5 s).
KILLED_SLOT = 0
ANON_MAPS_SPREAD = 3  # anonymous mappings above round 1's that heap layout alone explains
SETTLE_S = 5.0  # for a count above round 1's to come back (a connection still closing)
DEADLINE_S = 120.0  # for any one wait: a restart, a session's end, a vanishing client
ROUND_DEADLINE_S = 900.0  # for a round's 16 streams
SHM = "/dev/shm"


# ---- what /proc says --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    pid: int
    rss_kb: int
    peak_rss_kb: int  # VmHWM: the highest RSS of the process's life so far
    rss_anon_kb: int  # private memory: heap, stacks (where a leak shows)
    rss_shmem_kb: int  # touched pages of shared memory: the arena, rings, client files
    pss_kb: int
    fds: int
    maps: int
    maps_file: int  # mappings of files: libraries, the arena, rings, clients' files
    threads: int


def usage(pid: int) -> Usage:
    sizes = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            name, *rest = line.split()
            if name == "Pss:":
                sizes[name] = int(rest[0])
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, *rest = line.split()
            if name in ("VmRSS:", "VmHWM:", "RssAnon:", "RssShmem:", "Threads:"):
                sizes[name] = int(rest[0])
    with open(f"/proc/{pid}/maps") as fh:
        lines = fh.readlines()
    files = sum(
        1 for line in lines if len(fields := line.split(None, 5)) > 5 and fields[5].startswith("/")
    )
    return Usage(
        pid,
        sizes["VmRSS:"],
        sizes["VmHWM:"],
        sizes["RssAnon:"],
        sizes["RssShmem:"],
        sizes["Pss:"],
        len(os.listdir(f"/proc/{pid}/fd")),
        len(lines),
        files,
        sizes["Threads:"],
    )


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(c) for c in fh.read().split()]
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return found


def open_files(pid: int) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed meanwhile
            continue
    return targets


def workers(server_pid: int) -> dict[int, int]:
    """Slot -> pid of the server's live workers: the children holding slot N's submit ring
    (the front's other child, multiprocessing's resource tracker, holds none)."""
    ring = re.compile(rf"^{SHM}/fastext_{server_pid}_w(\d+)-sub_")
    slots = {}
    for child in children(server_pid):
        try:
            files = open_files(child)
        except FileNotFoundError:  # exited meanwhile
            continue
        for target in files:
            if match := ring.match(target):
                slots[int(match.group(1))] = child
    return slots


def shm_files(server_pid: int, client_pids: list[int]) -> dict[str, int]:
    """/dev/shm: every file (other engineers' too: recorded, never asserted), the
    server's segments, and the files of this run's clients."""
    names = os.listdir(SHM)
    clients = tuple(f"fastext_client_{pid}_" for pid in client_pids)
    return {
        "total": len(names),
        "server": sum(n.startswith(f"fastext_{server_pid}_") for n in names),
        "client": sum(n.startswith(clients) for n in names),
    }


def mapped_client_files(pids: list[int]) -> dict[int, list[str]]:
    """pid -> client files (``fastext_client_*``) it still maps or holds open."""
    found: dict[int, list[str]] = {}
    for pid in pids:
        with open(f"/proc/{pid}/maps") as fh:
            held = {line.split(None, 5)[5].strip() for line in fh if "/fastext_client_" in line}
        held |= {t for t in open_files(pid) if "/fastext_client_" in t}
        if held:
            found[pid] = sorted(held)
    return found


def metrics(port: int) -> dict[str, float]:
    """The server's Prometheus samples by name (labels included), loopback only."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


# ---- the server's log ---------------------------------------------------------------


class ServerLog:
    """The server's output lines, waited on with a deadline (never slept on)."""

    def __init__(self, server: ServerProcess) -> None:
        self._lines = server.lines
        self._ended = False
        self.seen: list[str] = []

    def mark(self) -> int:
        """Take in what has arrived; the index the next line will have."""
        while not self._lines.empty():
            self.seen.append(self._lines.get_nowait())
        return len(self.seen)

    def wait(
        self, pattern: str, since: int, count: int = 1, timeout: float = DEADLINE_S
    ) -> list[re.Match[str]]:
        """The first ``count`` lines from index ``since`` on that match ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        scanned, found = since, []
        while True:
            found += [m for line in self.seen[scanned:] if (m := regex.search(line))]
            scanned = len(self.seen)
            if len(found) >= count:
                return found[:count]
            if not (line := self._next(deadline)):
                raise AssertionError(
                    f"{len(found)} of {count} lines matching {pattern!r} "
                    f"(in {timeout:.0f} s or before the output ended); "
                    f"last lines: {''.join(self.seen[-15:])}"
                )
            self.seen.append(line)

    def wait_end(self, timeout: float = DEADLINE_S) -> None:
        """Take in every line up to the end of the output (the pipe is closed then)."""
        deadline = time.monotonic() + timeout
        while line := self._next(deadline):
            self.seen.append(line)
        assert self._ended, f"the output did not end in {timeout:.0f} s"

    def _next(self, deadline: float) -> str:
        """The next line; "" at the end of the output or at the deadline."""
        try:
            line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            return ""
        self._ended = self._ended or not line
        return line


# ---- the soak -------------------------------------------------------------------------


class Soak:
    """One server, its rounds and their figures."""

    def __init__(self, server: ServerProcess, metrics_port: int, sizes: tuple[int, int]) -> None:
        self.server = server
        self.pid = server.proc.pid
        self.metrics_port = metrics_port
        self.sizes = sizes  # frames per stream: round 1, the others
        self.per_stream = sizes[0]  # this round's
        self.log = ServerLog(server)
        made = list(scenes(SIDE, SIDE, 8, period=2))
        self.frames = [to_pixel_format(rgb, VF.RGB24) for rgb, _ in made]
        self.tags = ["light" if light else "dark" for _, light in made]
        self.client_pids = [os.getpid()]
        self.rounds: list[dict[str, Any]] = []
        self.kills = 0

    def snapshot(self) -> dict[str, Any]:
        slots = workers(self.pid)
        return {
            "front": asdict(usage(self.pid)),
            "workers": [{"slot": s, **asdict(usage(p))} for s, p in sorted(slots.items())],
            "shm": shm_files(self.pid, self.client_pids),
        }

    def one_round(self) -> None:
        number = len(self.rounds) + 1
        self.per_stream = self.sizes[0 if number == 1 else 1]
        since = self.log.mark()
        before = self.snapshot()
        started = time.perf_counter()
        results, killed, vanished = asyncio.run(self._round(number))
        seconds = time.perf_counter() - started
        self._check_counts(results)
        killed.update(self._settle(since, killed["slot"]))
        vanished = [v | self._vanished_session(v, since) for v in vanished]
        removed = self._check_clean()
        after, settle_s = self._settled_snapshot()
        frames = STREAMS * self.per_stream
        self.rounds.append(
            {
                "round": number,
                "frames": frames,
                "seconds": round(seconds, 2),
                "fps": round(frames / seconds, 1),
                "killed_worker": killed,
                "vanished": vanished,
                "client_files_removed": removed,
                "before": before,
                "after": after,
                "settle_s": settle_s,
            }
        )
        self._check_growth()

    async def _round(
        self, number: int
    ) -> tuple[list[StreamResult], dict[str, Any], list[dict[str, Any]]]:
        third = asyncio.Event()
        acked = 0

        def on_ack(seq: int, sample: object) -> None:
            nonlocal acked
            acked += 1
            if acked == STREAMS * self.per_stream // 3:
                third.set()

        counted = [
            asyncio.create_task(
                stream_frames(self._options(number, k, on_ack), self._source(self.per_stream))
            )
            for k in range(STREAMS)
        ]
        disturbers = asyncio.gather(
            self._kill_worker(third, KILLED_SLOT),
            self._cancel_call(number),
            self._kill_client(number),
        )
        try:
            results = await asyncio.wait_for(asyncio.gather(*counted), ROUND_DEADLINE_S)
            killed, *vanished = await asyncio.wait_for(disturbers, DEADLINE_S)
        finally:
            disturbers.cancel()  # after a failure: no client process outlives the round
            await asyncio.gather(disturbers, return_exceptions=True)
        return results, killed, vanished

    def _options(self, number: int, k: int, on_ack: Any = None, name: str = "") -> StreamOptions:
        return StreamOptions(
            target=self.server.target,
            width=SIDE,
            height=SIDE,
            shm=k < STREAMS - EMBEDDED,
            window=WINDOW,
            graph_instance=name or f"soak-{number}-{k}",
            on_ack=on_ack,
        )

    def _source(self, count: int):  # -> Iterator[bytes]: frame i is self.frames[i % 8]
        return (self.frames[i % len(self.frames)] for i in range(count))

    async def _kill_worker(self, third: asyncio.Event, slot: int) -> dict[str, Any]:
        """SIGKILL slot's worker once a third of the round's frames are acked."""
        await third.wait()
        pid = workers(self.pid)[slot]
        os.kill(pid, signal.SIGKILL)
        self.kills += 1
        return {"slot": slot, "pid": pid}

    async def _cancel_call(self, number: int) -> dict[str, Any]:
        """A call cancelled with frames in flight (the channel closes: the client is gone)."""
        result, enough = StreamResult(), asyncio.Event()

        def on_ack(seq: int, sample: object) -> None:
            if result.acked >= VANISH_AFTER:
                enough.set()

        name = f"soak-{number}-cancelled"
        call = asyncio.create_task(
            stream_frames(
                self._options(number, 0, on_ack, name=name),
                self._source(10 * VANISH_AFTER * WINDOW),
                result,
            )
        )
        try:
            await asyncio.wait_for(enough.wait(), DEADLINE_S)
            # A window's acks can land in one burst, before the sender refills it (seen
            # once in CI's smoke: 22 sent, 22 acked): cancel once frames are out again.
            async with asyncio.timeout(DEADLINE_S):
                while result.sent == result.acked and not call.done():
                    await asyncio.sleep(0.001)
            acked, in_flight = result.acked, result.sent - result.acked
        finally:
            cancels = await _cancel(call)
        assert in_flight > 0, f"{name}: nothing in flight when cancelled ({result.sent} sent)"
        return {
            "how": "call cancelled",
            "stream": name,
            "client_acked": acked,
            "client_in_flight": in_flight,
            "cancels": cancels,
            "acked_after_cancel": result.acked - acked,
        }

    async def _kill_client(self, number: int) -> dict[str, Any]:
        """A client process SIGKILLed with frames in flight: its file stays in /dev/shm."""
        name = f"soak-{number}-killed"
        argv = [
            sys.executable,
            str(HERE / "_vanish_client.py"),
            self.server.target,
            name,
            str(VANISH_AFTER),
        ]
        proc, match, _ = await asyncio.to_thread(
            launch, "vanishing client", argv, r"acked (\d+) sent (\d+)", DEADLINE_S
        )
        try:
            self.client_pids.append(proc.pid)
            acked, sent = int(match.group(1)), int(match.group(2))
            assert sent > acked, f"{name}: nothing in flight ({sent} sent, {acked} acked)"
        finally:
            proc.kill()  # its output pipe is closed by launch()'s reader at its end
            await asyncio.to_thread(proc.wait, DEADLINE_S)
        return {
            "how": "client process SIGKILLed",
            "stream": name,
            "pid": proc.pid,
            "client_acked": acked,
            "client_in_flight": sent - acked,
        }

    def _check_counts(self, results: list[StreamResult]) -> None:
        """Every frame of every counted stream acked once, with its frame's tag."""
        expected = list(range(2, self.per_stream + 2))  # sequence 1 is the descriptor
        for k, result in enumerate(results):
            assert (result.sent, result.acked) == (self.per_stream, self.per_stream), k
            assert sorted(result.samples) == expected, f"stream {k}: acks missing or unknown"
            wrong = [
                seq
                for seq, sample in result.samples.items()
                if [i.classification.tag.value for i in sample.inferences]
                != [self.tags[(seq - 2) % len(self.tags)]]
            ]
            assert not wrong, f"stream {k}: {len(wrong)} wrong tags, first at {wrong[:5]}"

    def _settle(self, since: int, slot: int) -> dict[str, Any]:
        """Wait for the round's sessions to end and the killed slot's new worker to be
        ready; returns what the server said about the death."""
        self.log.wait(r"session end ", since, count=STREAMS + 2)
        self.log.wait(rf"worker {slot} \(pid \d+\) exited with code -9", since)
        backoff = self.log.wait(rf"restarting worker {slot} in ([\d.]+) s", since)[0]
        ready = self.log.wait(rf"worker {slot} ready \(pid (\d+)\)", since)[0]
        new_pid = int(ready.group(1))
        assert workers(self.pid).get(slot) == new_pid, f"slot {slot}: {workers(self.pid)}"
        # logged right after the exit, if the worker held any batches
        held = [
            m
            for line in self.log.seen[since:]
            if (m := re.search(rf"worker {slot} died holding (\d+) batches", line))
        ]
        return {
            "batches_rerun": int(held[0].group(1)) if held else 0,
            "new_pid": new_pid,
            "restart_backoff_s": float(backoff.group(1)),
        }

    def _vanished_session(self, vanished: dict[str, Any], since: int) -> dict[str, Any]:
        """What the server logged about a vanished stream: its file, frames read, reason."""
        stream = re.escape(vanished["stream"])
        start = self.log.wait(
            rf"session start .* stream={stream}/\S+ .*shared memory (\S+)", since
        )[0]
        end = self.log.wait(
            rf"session end .* stream={stream}/\S+ frames=(\d+) .* reason=(.*)", since
        )[0]
        # The reason varies: a reset connection can reach the session as the end of the
        # request stream ("client closed the stream") rather than as a cancelled call.
        assert int(end.group(1)) >= vanished["client_acked"], end.group(0)
        return {
            "file": start.group(1),
            "server_frames_read": int(end.group(1)),
            "server_reason": end.group(2).strip(),
        }

    def _check_clean(self) -> list[str]:
        """No session left: nothing maps a client file, the metrics are back to 0, and the
        killed client's file (which only it could unlink) is removed here (its name
        returned)."""
        pids = [self.pid, *workers(self.pid).values()]
        assert mapped_client_files(pids) == {}
        samples = metrics(self.metrics_port)
        for name in (
            "fastext_streams_active",
            "fastext_frames_in_flight",
            "fastext_queue_depth",
            "fastext_shared_memory_mapped_bytes",
        ):
            assert samples[name] == 0, (name, samples[name])
        assert samples["fastext_worker_restarts_total"] == self.kills
        left = [
            n
            for n in os.listdir(SHM)
            if n.startswith(tuple(f"fastext_client_{p}_" for p in self.client_pids[1:]))
        ]
        assert len(left) == 1, left  # this round's killed client's, and only it
        os.unlink(os.path.join(SHM, left[0]))
        return left

    def _settled_snapshot(self) -> tuple[dict[str, Any], float]:
        """The snapshot after a round, and how long its counts took to come back to round
        1's: the server closes a finished call's socket a moment after the client sees
        the call end, and nothing outside the server can await that, so a count above
        round 1's is read again (bounded by SETTLE_S).  A leak never comes back."""
        started = time.monotonic()
        while True:
            now = self.snapshot()
            waited = time.monotonic() - started
            if not self.rounds or not self._grown(self.rounds[0]["after"], now):
                return now, round(waited, 2)
            if waited > SETTLE_S:
                return now, round(waited, 2)  # _check_growth says what grew
            time.sleep(0.1)

    def _grown(self, first: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
        """What grew since round 1's snapshot ``first``: {what: (round 1, now)}.

        Memory: the front's RSS by more than MEMORY_GROWTH plus the heap its allocator
        may keep (FRONT_KEPT_HEAP_KB); the workers' RSS summed, not per slot: a worker's
        private memory is flat (64 MB) but the arena pages it has touched (1-16 MB)
        depend on where embedded frames landed, and the killed slot's new worker starts
        with none.  Peak RSS is recorded, not compared: the highest of more rounds is
        higher by chance alone.  Counts, for the front and each worker slot (the killed
        slot's new worker against its round 1 predecessor, which shows whether the front
        hands each new worker more than the last): fds, threads and mappings of files
        not at all.  Anonymous mappings, the front's and the long-lived worker's, by at
        most ANON_MAPS_SPREAD (heap layout: the front gained 1-2 in 20 rounds, then
        stayed).  The new worker's are not compared: workers start with different counts
        (85 and 87 at ready in one start) and add an allocator region or two in their
        first frames (78-92 seen after a round), and a fresh process carries nothing
        over from the last one.
        """
        grown: dict[str, Any] = {}
        front_a, front_b = first["front"], now["front"]
        if front_b["rss_kb"] > front_a["rss_kb"] * (1 + MEMORY_GROWTH) + FRONT_KEPT_HEAP_KB:
            grown["front rss_kb"] = front_a["rss_kb"], front_b["rss_kb"]
        rss_a, rss_b = (sum(w["rss_kb"] for w in s["workers"]) for s in (first, now))
        if rss_b > rss_a * (1 + MEMORY_GROWTH):
            grown["workers' rss_kb"] = rss_a, rss_b
        pairs = [("front", front_a, front_b)]
        pairs += [
            (f"worker {a['slot']}", a, b)
            for a, b in zip(first["workers"], now["workers"], strict=True)
        ]
        for who, a, b in pairs:
            for key in ("fds", "threads", "maps_file"):
                if b[key] > a[key]:
                    grown[f"{who} {key}"] = a[key], b[key]
            if who == f"worker {KILLED_SLOT}":
                continue
            if b["maps"] - b["maps_file"] > a["maps"] - a["maps_file"] + ANON_MAPS_SPREAD:
                grown[f"{who} anonymous maps"] = (
                    a["maps"] - a["maps_file"],
                    b["maps"] - b["maps_file"],
                )
        return grown

    def _check_growth(self) -> None:
        """This round's figures after it against round 1's (the warm-up)."""
        first, now = self.rounds[0]["after"], self.rounds[-1]["after"]
        assert first["shm"]["server"] == now["shm"]["server"] == 5  # arena, 2 rings x 2 workers
        assert now["shm"]["client"] == 0
        pids = {w["slot"]: w["pid"] for w in now["workers"]}
        assert sorted(pids) == [0, 1]
        assert pids[1 - KILLED_SLOT] == first["workers"][1 - KILLED_SLOT]["pid"]  # long-lived
        grown = self._grown(first, now)
        assert not grown, f"round {len(self.rounds)}: (round 1, now) {grown}"

    def stop(self) -> dict[str, Any]:
        """SIGTERM: the server must exit 0 within its drain and stop deadlines, its workers
        stopped (not killed) and every segment it owned unlinked."""
        since = self.log.mark()
        pids = list(workers(self.pid).values())
        started = time.perf_counter()
        self.server.proc.send_signal(signal.SIGTERM)
        code = self.server.proc.wait(timeout=DEADLINE_S)
        seconds = time.perf_counter() - started
        assert code == 0
        self.log.wait(r"fastext stopped", since)
        self.log.wait_end()
        assert not [line for line in self.log.seen[since:] if "killing it" in line]
        assert [n for n in os.listdir(SHM) if n.startswith(f"fastext_{self.pid}_")] == []
        assert [p for p in pids if _alive(p)] == []
        return {"exit_code": code, "seconds": round(seconds, 2)}


async def _cancel(task: asyncio.Task[Any], deadline_s: float = 5.0) -> int:
    """Cancel ``task`` once; it must end within ``deadline_s``.  Returns 1 (the cancels it
    took, kept in ``extra_info``).

    One cancel is enough since the client waits for acks under ``asyncio.timeout``: with
    Python 3.11's ``asyncio.wait_for`` a cancel landing as the read completed was lost now
    and then, and the stream ran on to its end (2-4 cancels were needed in the first soaks).
    """
    task.cancel()
    await asyncio.wait({task}, timeout=deadline_s)
    assert task.done(), f"a cancelled client stream still runs after {deadline_s:g} s"
    return 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(1800)
def bench_soak(benchmark):
    """16 streams in rounds, a worker SIGKILLed and two clients vanishing in each."""
    benchmark.group = "soak: 16 streams 416x416 RGB24, workers killed, clients vanishing"
    rounds, *sizes = SIZES["smoke" if benchmark.disabled else "full"]
    port = free_port()
    server = fastext_server("--workers", "2", "--metrics-port", str(port))
    soak = Soak(server, port, (sizes[0], sizes[1]))
    try:
        assert sorted(workers(soak.pid)) == [0, 1]
        if benchmark.disabled:  # --benchmark-disable: pedantic runs its target once
            benchmark.pedantic(lambda: [soak.one_round() for _ in range(rounds)])
        else:
            benchmark.pedantic(soak.one_round, rounds=rounds, iterations=1)
        assert len(soak.rounds) == rounds
        # the kills landed while the worker held frames, which then ran elsewhere
        assert sum(r["killed_worker"]["batches_rerun"] for r in soak.rounds) > 0
        shutdown = soak.stop()
    finally:
        if server.proc.poll() is None:
            server.stop()
        for name in os.listdir(SHM):  # a failed round's killed client leaves its file
            if name.startswith(tuple(f"fastext_client_{p}_" for p in soak.client_pids[1:])):
                os.unlink(os.path.join(SHM, name))
    benchmark.extra_info.update(
        {
            "streams": STREAMS,
            "embedded": EMBEDDED,
            "frames_per_stream": sizes,
            "shutdown": shutdown,
            "rounds": soak.rounds,
        }
    )
