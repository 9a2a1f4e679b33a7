"""`fastext stream --view`: the live page, in a real headless Chromium, and its end with the run."""

from __future__ import annotations

import io
import itertools
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from PIL import Image

from fastext.client.draw import label_color
from fastext.client.view import MJPEG_STREAMS, LiveView, parse_address
from tests.minimal_server import MinimalServer

# portable: the live view's page and feeds (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

CHROMIUM = shutil.which("chromium")
FIGURES_BG = (0x16, 0x32, 0x4F)  # the figures table's background in the page's style
SKY = (150, 200, 250)  # synthetic:scene's sky (tests/../client/synthetic.py)


@contextmanager
def viewed_stream(
    target: str, *args: str
) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """``fastext stream synthetic:scene --view 127.0.0.1:0`` running; yields it, the page's URL
    and the lines of its stderr (complete once the context has exited)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastext",
            "stream",
            "synthetic:scene",
            "--target",
            target,
            "--width",
            "320",
            "--height",
            "240",
            "--view",
            "127.0.0.1:0",
            "--quiet",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=_pump, args=(proc.stderr, lines, seen), daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=60)
        assert first.startswith("live view: http://127.0.0.1:"), first
        yield proc, first.split()[2], seen
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        reader.join(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _pump(stream: IO[str], into: queue.Queue[str], seen: list[str]) -> None:
    for line in stream:
        into.put(line)
        seen.append(line)


def mjpeg_parts(response: object) -> Iterator[bytes]:
    """The JPEGs of a multipart/x-mixed-replace response, as they arrive (ends at EOF)."""
    fp = response  # an http.client.HTTPResponse
    while True:
        line = fp.readline()  # type: ignore[attr-defined]
        if not line:
            return
        if not line.startswith(b"--"):
            continue
        headers = {}
        while header := fp.readline().strip():  # type: ignore[attr-defined]
            name, _, value = header.decode().partition(":")
            headers[name.lower()] = value.strip()
        yield fp.read(int(headers["content-length"]))  # type: ignore[attr-defined]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def screenshot(url: str, out: Path, profile: Path, size: tuple[int, int] = (800, 650)) -> None:
    assert CHROMIUM is not None
    args = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--screenshot={out}",
        f"--window-size={size[0]},{size[1]}",
        # The page's <img> is an endless MJPEG response; Chromium counts the page loaded
        # once the first part is shown and shoots then. --timeout only caps the wait.
        "--timeout=15000",
        url,
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )  # its renderer and zygote die with it
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0 and out.is_file(), output.decode(errors="replace")[-2000:]


def near(pixels: np.ndarray, color: tuple[int, int, int], tolerance: float) -> np.ndarray:
    return np.linalg.norm(pixels.astype(np.int32) - np.array(color), axis=-1) <= tolerance


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (CI installs it "
    "when it runs as root: apt-get install chromium)",
)
def test_view_page_in_headless_chromium_shows_the_frame_and_the_figures(tmp_path):
    shot = tmp_path / "view.png"
    with (
        MinimalServer() as srv,
        viewed_stream(srv.target, "--fps", "30", "--max-frames", "9000") as (proc, url, err),
    ):
        with urllib.request.urlopen(url + "stream/0.mjpg", timeout=30) as feed:
            parts = mjpeg_parts(feed)
            next(parts)  # the placeholder, or a frame
            next(parts)  # a frame drawn after the page was opened: the stream runs
        page = fetch(url).decode()
        screenshot(url, shot, tmp_path / "profile")
        stats = json.loads(fetch(url + "stats.json"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 1  # interrupted: frames were still to come
    assert not [line for line in err if "Traceback" in line]  # Chromium left mid-feed: no noise
    for figure in ("frames/s", "ack latency p50 / p99 ms", "inferences/s"):
        assert figure in page
    (fig,) = stats["streams"]
    assert fig["acked"] > 0 and fig["fps"] > 0 and fig["latency_ms"]["p99"] is not None
    assert fig["inferences_per_s"]["entity"] > 0  # the minimal server's one entity per frame
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (650, 800, 3)
    # The frame: the scene's sky, and the entity's box and tab in the label's color.
    assert near(pixels, SKY, 40).sum() > 20_000
    assert near(pixels, label_color("thing"), 60).sum() > 300
    # The figures: their table's background, with light text on it.
    table = near(pixels, FIGURES_BG, 3)
    assert table.sum() > 5_000
    rows, cols = np.nonzero(table)
    inside = pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert (inside.min(axis=-1) > 180).sum() > 200


def solid_jpeg(color: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def frame_boxes(shot: Path, colors: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Where each solid-colored frame landed in a screenshot: (left, top, right, bottom)."""
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    boxes = []
    for color in colors:
        rows, cols = np.nonzero(near(pixels, color, 30))
        assert rows.size > 10_000, f"frame {color} not on the page"
        boxes.append((int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))
    return boxes


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (CI installs it "
    "when it runs as root: apt-get install chromium)",
)
def test_view_lays_streams_out_in_a_grid_that_uses_a_wide_screen(tmp_path):
    colors = [(220, 40, 40), (40, 200, 40), (40, 80, 230), (230, 200, 30)]
    frames = [solid_jpeg(color) for color in colors]
    view = LiveView("127.0.0.1", 0, streams=len(colors))
    done = threading.Event()

    def play() -> None:  # frames keep coming, as in a run (Chromium shows an MJPEG part late)
        while not done.wait(0.05):
            for k, jpeg in enumerate(frames):
                view.publish(k, jpeg, (320, 240))

    player = threading.Thread(target=play, daemon=True)
    player.start()
    try:
        screenshot(view.url, tmp_path / "wide.png", tmp_path / "profile", size=(1920, 1080))
        screenshot(view.url, tmp_path / "narrow.png", tmp_path / "profile", size=(600, 3000))
    finally:
        done.set()
        player.join(5)
        view.close()
    # 1920 px wide: the streams side by side, each frame scaled up past its own 320 px to
    # fill a column, the columns together spanning most of the screen.
    wide = frame_boxes(tmp_path / "wide.png", colors)
    rows = {top for _, top, _, _ in wide}
    assert len(rows) < len(wide), wide  # at least two panels share a row
    assert all(right - left >= 400 for left, _, right, _ in wide), wide
    assert max(b[2] for b in wide) - min(b[0] for b in wide) >= 0.9 * 1920, wide
    # 600 px wide: one column, one stream under the other, each frame as wide as the page.
    narrow = frame_boxes(tmp_path / "narrow.png", colors)
    assert all(a[3] <= b[1] for a, b in itertools.pairwise(narrow)), narrow
    assert all(right - left >= 540 for left, _, right, _ in narrow), narrow


def test_view_ends_with_the_run_while_a_feed_is_open():
    with (
        MinimalServer() as srv,
        viewed_stream(srv.target, "--fps", "30", "--max-frames", "45") as (proc, url, err),
    ):
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        with urllib.request.urlopen(url + "stream/0.mjpg", timeout=30) as feed:
            parts = mjpeg_parts(feed)
            assert next(parts)[:2] == b"\xff\xd8"
            assert proc.wait(60) == 0  # the run ended although a browser is still watching
            rest = list(parts)  # the feed ends (EOF) instead of hanging
        assert all(p[:2] == b"\xff\xd8" for p in rest)
        out = proc.stdout.read() if proc.stdout else ""
    assert "sent 45, acked 45" in out
    assert not [line for line in err if "Traceback" in line]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # nothing listens any more


def test_view_listens_on_loopback_unless_told():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address(":0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError, match="HOST:]PORT"):
        parse_address("localhost")
    view = LiveView(*parse_address("0"), streams=2)
    try:
        assert view._server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(view.url + "frame/1.jpg", timeout=10) as r:
            assert r.read(2) == b"\xff\xd8"  # the placeholder until a frame is drawn
        with pytest.raises(urllib.error.HTTPError, match="404") as missing:
            fetch(view.url + "frame/2.jpg")
        missing.value.close()
    finally:
        view.close()


@pytest.mark.parametrize(("streams", "mjpeg"), [(MJPEG_STREAMS, True), (MJPEG_STREAMS + 2, False)])
def test_view_page_plays_mjpeg_within_the_browsers_connection_limit(streams, mjpeg):
    view = LiveView("127.0.0.1", 0, streams=streams)
    try:
        page = fetch(view.url).decode()
    finally:
        view.close()
    # A browser holds one of its 6 connections per server for each MJPEG image: beyond a
    # few streams the page reloads stills instead, leaving room for the figures.
    assert page.count('.mjpg"') == (streams if mjpeg else 0)
    assert page.count("data-still=") == (0 if mjpeg else streams)
    assert all(f'id="fps{k}"' in page for k in range(streams))


def test_view_is_quiet_when_a_browser_leaves_mid_response(capsys):
    view = LiveView("127.0.0.1", 0, streams=1)
    try:
        try:
            raise BrokenPipeError(32, "Broken pipe")  # what writing to a closed page raises
        except BrokenPipeError:
            view._server.handle_error(None, ("127.0.0.1", 9))
    finally:
        view.close()
    assert capsys.readouterr().err == ""  # socketserver's default prints a traceback here


def test_view_plays_the_source_in_real_time_unless_told():
    from fastext.client.run import StreamCommand, _playback_fps

    def fps(**changes: object) -> float:
        return _playback_fps(StreamCommand(source="synthetic:scene", target="-", **changes))

    assert fps() == 0.0  # no view: as fast as acks allow, as before
    assert fps(view="8080") == 30.0  # a view: boxes move as the objects would
    assert fps(view="8080", fps=0.0) == 0.0 and fps(fps=12.5) == 12.5


def test_sigterm_mid_run_still_finishes_the_annotated_video(tmp_path):
    av = pytest.importorskip("av")
    video, out = tmp_path / "a.mp4", tmp_path / "r.jsonl"
    with (
        MinimalServer() as srv,
        viewed_stream(
            srv.target,
            "--fps",
            "30",
            "--max-frames",
            "9000",
            "--annotate",
            str(video),
            "--output",
            str(out),
        ) as (proc, url, err),
    ):
        with urllib.request.urlopen(url + "stream/0.mjpg", timeout=30) as feed:
            parts = mjpeg_parts(feed)
            next(parts)
            next(parts)  # frames are being drawn: the video has begun
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 1
    assert any("interrupted" in line for line in err)
    acked = len(out.read_text().splitlines())
    with av.open(str(video)) as container:  # a truncated MP4 (no index) would not open
        frames = sum(1 for _ in container.decode(container.streams.video[0]))
    assert frames == acked > 0
