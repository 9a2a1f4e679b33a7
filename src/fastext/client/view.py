"""``--view HOST:PORT``: one small page that shows each stream live while the run lasts.

The standard library's ``ThreadingHTTPServer`` on its own daemon threads serves:

- ``/`` — the page: per stream, its latest annotated frame as MJPEG in an ``<img>``
  (browsers play ``multipart/x-mixed-replace`` natively; no script needed for the
  video) and its figures, rendered into the page and refreshed once a second by a
  few lines of script from ``/stats.json``.  A browser opens at most 6 connections
  to one server and an MJPEG response holds one for good, so with more than
  ``MJPEG_STREAMS`` streams the page instead shows stills that its script reloads;
- ``/stream/K.mjpg`` — stream K's frames as MJPEG (also for ffplay, VLC, ...);
- ``/frame/K.jpg`` — stream K's latest frame, once;
- ``/stats.json`` — every stream's figures.

It listens on loopback unless told otherwise, and closes when the run ends: open
MJPEG responses are told to stop, and no thread of it keeps the process alive.
"""

from __future__ import annotations

import html
import io
import ipaddress
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, ImageDraw

from fastext.client.figures import StreamFigures

__all__ = ["LiveView", "ViewError", "parse_address"]

log = logging.getLogger("fastext.client")

_BOUNDARY = "fastextframe"
#: Up to this many streams the page plays MJPEG; beyond, it reloads stills (see above).
MJPEG_STREAMS = 4
#: How often the page reloads a still, in milliseconds.
_STILL_MS = 100
#: How long an MJPEG response waits for a new frame before it checks the view is still open.
_POLL_S = 0.5


class ViewError(Exception):
    """The view cannot listen where asked; the message says why."""


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[V6]:PORT`` → (host, port); host defaults
    to 127.0.0.1, so the view is reachable from this machine only unless asked."""
    match = re.fullmatch(r"(?:(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):)?(\d+)", text.strip())
    if match is None:
        raise ValueError(f"--view takes [HOST:]PORT, got {text!r}")
    host = match.group(1) or match.group(2) or "127.0.0.1"
    port = int(match.group(3))
    if port > 65535:
        raise ValueError(f"--view port out of range: {port}")
    return host, port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _placeholder() -> bytes:
    """The frame shown before a stream's first acknowledged frame is drawn."""
    image = Image.new("RGB", (320, 180), (40, 40, 40))
    ImageDraw.Draw(image).text(
        (12, 80), "waiting for the first acknowledged frame", fill=(220, 220, 220)
    )
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return buf.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a browser still connected never keeps the client alive
    block_on_close = False
    view: LiveView

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that leaves mid-response is normal; socketserver would print a traceback.
        log.debug("view: request from %s ended early", client_address, exc_info=True)


class LiveView:
    """The page and its feeds.  ``publish`` is called from drawing threads, ``figures``
    are recorded on the event loop; both are safe from any thread."""

    def __init__(self, host: str, port: int, streams: int, title: str = "fastext stream") -> None:
        self.host, self.title = host, title
        self.figures = [StreamFigures() for _ in range(streams)]
        self.sizes: list[tuple[int, int] | None] = [None] * streams
        self._frames: list[bytes] = [_placeholder()] * streams
        self._versions = [0] * streams
        self._changed = threading.Condition()
        self._closed = False
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (_Server,), {"address_family": family})
        try:
            self._server: _Server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ViewError(
                f"--view {host}:{port}: cannot listen ({exc.strerror or exc})"
            ) from None
        self._server.view = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="fastext-view",
            daemon=True,
        )
        self._thread.start()
        if not _is_loopback(host):
            log.warning("the live view listens on %s: anyone who can reach it can watch", host)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, stream: int, jpeg: bytes, size: tuple[int, int]) -> None:
        """Stream ``stream``'s newest annotated frame (JPEG bytes, (width, height))."""
        with self._changed:
            self._frames[stream] = jpeg
            self.sizes[stream] = size
            self._versions[stream] += 1
            self._changed.notify_all()

    def latest(self, stream: int) -> tuple[bytes, int]:
        with self._changed:
            return self._frames[stream], self._versions[stream]

    def next_frame(self, stream: int, seen: int) -> tuple[bytes, int] | None:
        """The frame after version ``seen``, waiting up to a moment; None once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._versions[stream] != seen, _POLL_S)
            if self._closed:
                return None
            return self._frames[stream], self._versions[stream]

    def stats(self) -> dict[str, Any]:
        return {"streams": [f.snapshot() for f in self.figures]}

    def close(self) -> None:
        """Stop serving: open feeds end, the listening socket closes (idempotent)."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        self._server.shutdown()  # returns once serve_forever has seen it (<= poll_interval)
        self._server.server_close()
        self._thread.join(2.0)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one response per connection: nothing lingers at close
    timeout = 10  # a browser that stops reading frees its thread

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("view: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        view = self.server.view
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, "text/html; charset=utf-8", _page(view).encode())
        elif path == "/stats.json":
            self._send(200, "application/json", json.dumps(view.stats()).encode())
        elif (k := _stream_of(path, "/frame/", ".jpg", len(view.figures))) is not None:
            self._send(200, "image/jpeg", view.latest(k)[0])
        elif (k := _stream_of(path, "/stream/", ".mjpg", len(view.figures))) is not None:
            self._feed(view, k)
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _feed(self, view: LiveView, stream: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        frame, seen = view.latest(stream)
        try:
            while True:  # ends when the view closes or the browser goes
                self._part(frame)
                while (news := view.next_frame(stream, seen)) is not None and news[1] == seen:
                    pass
                if news is None:
                    return
                frame, seen = news
        except OSError:  # the browser closed the page
            return

    def _part(self, jpeg: bytes) -> None:
        head = (
            f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
        ).encode()
        self.wfile.write(head + jpeg + b"\r\n")
        self.wfile.flush()


def _stream_of(path: str, prefix: str, suffix: str, streams: int) -> int | None:
    if not (path.startswith(prefix) and path.endswith(suffix)):
        return None
    middle = path[len(prefix) : len(path) - len(suffix)]
    return int(middle) if middle.isdigit() and int(middle) < streams else None


# The streams in a grid: as many columns of at least 440 px as the window holds (four on a
# 1920 px wide screen), one on a narrow one; each frame scaled to its column's width, but
# never so tall that its figures leave the window (letterboxed instead).
_STYLE = """
body { background: #111; color: #eee; font: 14px system-ui, sans-serif; margin: 12px; }
h1 { font-size: 18px; margin: 0 0 10px; }
.grid { display: grid; gap: 12px;
        grid-template-columns: repeat(auto-fill, minmax(min(100%, 440px), 1fr)); }
.card { background: #1b1b1b; padding: 8px; border-radius: 6px; min-width: 0; }
.card img { display: block; width: 100%; height: auto; max-height: calc(100vh - 180px);
            object-fit: contain; background: #282828; }
.figs { background: #16324f; color: #fff; padding: 6px 8px; margin-top: 6px; }
.figs td { padding: 1px 10px 1px 0; }
"""

_SCRIPT = """
const fmt = (v) => v === null || v === undefined ? "–" : String(v);
async function refresh() {
  try {
    const r = await fetch("stats.json", {cache: "no-store"});
    const s = await r.json();
    s.streams.forEach((f, k) => {
      const set = (name, v) => { const e = document.getElementById(name + k); if (e) e.textContent = v; };
      set("fps", fmt(f.fps));
      set("lat", fmt(f.latency_ms.p50) + " / " + fmt(f.latency_ms.p99));
      set("inf", Object.entries(f.inferences_per_s).map(([t, n]) => t + " " + n).join(", ") || "–");
      set("acked", fmt(f.acked));
    });
  } catch (e) { /* the run has ended: the page keeps its last figures */ }
}
setInterval(refresh, 1000);
document.querySelectorAll("img[data-still]").forEach((img) => {
  const next = () => {
    const fresh = new Image();
    fresh.onload = () => { img.src = fresh.src; setTimeout(next, STILL_MS); };
    fresh.onerror = () => setTimeout(next, 1000);
    fresh.src = img.dataset.still + "?t=" + Date.now();
  };
  setTimeout(next, STILL_MS);
});
"""


def _figures_rows(k: int, f: dict[str, Any]) -> str:
    def fmt(v: object) -> str:
        return "–" if v is None else html.escape(str(v))

    lat = f["latency_ms"]
    inf = ", ".join(f"{t} {n}" for t, n in f["inferences_per_s"].items()) or "–"
    rows = [
        ("frames/s", "fps", fmt(f["fps"])),
        ("ack latency p50 / p99 ms", "lat", f"{fmt(lat['p50'])} / {fmt(lat['p99'])}"),
        ("inferences/s", "inf", html.escape(inf)),
        ("frames acked", "acked", fmt(f["acked"])),
    ]
    return "".join(
        f'<tr><td>{name}</td><td id="{key}{k}">{value}</td></tr>' for name, key, value in rows
    )


def _page(view: LiveView) -> str:
    cards = []
    mjpeg = len(view.figures) <= MJPEG_STREAMS
    for k, fig in enumerate(view.figures):
        size = view.sizes[k]
        dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
        source = (
            f'src="stream/{k}.mjpg"' if mjpeg else f'src="frame/{k}.jpg" data-still="frame/{k}.jpg"'
        )
        cards.append(
            f'<div class="card"><div>stream {k}</div>'
            f'<img {source} alt="stream {k}"{dims}>'
            f'<table class="figs">{_figures_rows(k, fig.snapshot())}</table></div>'
        )
    title = html.escape(view.title)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>"
        f"<div class='grid'>{''.join(cards)}</div>"
        f"<script>const STILL_MS = {_STILL_MS};{_SCRIPT}</script></body></html>"
    )
