"""`fastext stream`: the LVA-side client, against fastext and against an independent server."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client.imagenode import ImageNode
from fastext.client.sources import SourceError, frames_from
from fastext.client.stream import StreamError, StreamOptions, stream_frames
from fastext.client.synthetic import scene
from tests.helpers import expected_dark_light
from tests.minimal_server import MinimalServer

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "inference_metadata.schema.json").read_text()
)


def stream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``fastext stream`` run to the end (bounded); ``.pid`` is the process it ran as."""
    with subprocess.Popen(
        [sys.executable, "-m", "fastext", "stream", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid  # type: ignore[attr-defined]
    return done


def client_segments(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """Shared memory that client process left behind (another run's are not ours)."""
    prefix = f"fastext_client_{proc.pid}_"  # type: ignore[attr-defined]
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def frame_index(line: dict) -> int:
    return line["timestamp"] * 30 // 90000  # the client stamps frames at 30 fps, 90 kHz


# Marked portable: the CLI's streaming, exit statuses and stamps are Python. Left to the ARM64
# stage: shared-memory slots written and cleaned up, and video decoded (PyAV's aarch64 build).
@pytest.mark.portable
@pytest.mark.parametrize("shm", [True, False], ids=["shm", "embedded"])
def test_stream_synthetic_dark_light_every_frame_tagged(make_server, tmp_path, shm):
    srv = make_server(workers=2)
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    args = [
        "synthetic:dark-light",
        "--target",
        srv.target,
        "--streams",
        "4",
        "--max-frames",
        "60",
        "--width",
        "320",
        "--height",
        "240",
        "--output",
        str(out),
        "--summary-json",
        str(summary),
    ]
    proc = stream(*args, *(["--shm"] if shm else []))
    assert proc.returncode == 0, proc.stderr
    got = lines(out)
    assert len(got) == 240
    per_stream: dict[int, list[int]] = {}
    for line in got:
        per_stream.setdefault(line["stream"], []).append(frame_index(line))
        tags = [i["classification"]["tag"]["value"] for i in line["inferences"]]
        assert tags == [expected_dark_light(frame_index(line))]
    assert {k: sorted(v) for k, v in per_stream.items()} == {k: list(range(60)) for k in range(4)}
    report = json.loads(summary.read_text())
    assert report["sent"] == report["acked"] == 240 and report["errors"] == []
    assert report["ack_latency_ms"]["p50"] is not None
    assert client_segments(proc) == []


@pytest.mark.portable
def test_output_lines_match_the_metadata_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    out = tmp_path / "r.jsonl"
    with MinimalServer() as srv:
        proc = stream(
            "synthetic:noise", "--target", srv.target, "--max-frames", "5", "--output", str(out)
        )
    assert proc.returncode == 0, proc.stderr
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for line in lines(out):
        validator.validate(line)
        assert line["inferences"][0]["entity"]["box"] == {
            "l": pytest.approx(0.1),
            "t": pytest.approx(0.2),
            "w": pytest.approx(0.3),
            "h": pytest.approx(0.4),
        }
    bad = {"timestamp": 1, "inferences": [{"type": "entity", "entity": {"tag": {"value": "x"}}}]}
    assert not validator.is_valid(bad)  # an entity needs a box: the schema has teeth
    assert not validator.is_valid({"timestamp": 1, "inferences": []})


@pytest.mark.portable
def test_stream_against_an_independent_server_with_auth(tmp_path):
    with MinimalServer() as srv:
        proc = stream(
            "synthetic:gradient",
            "--target",
            srv.target,
            "--max-frames",
            "20",
            "--encoding",
            "jpg",
            "--width",
            "160",
            "--height",
            "120",
            "--shm",
            "--auth",
            "lva:s3cret",
            "--summary-json",
            str(tmp_path / "s.json"),
        )
        assert proc.returncode == 0, proc.stderr
        assert srv.samples == 20
        token = base64.b64encode(b"lva:s3cret").decode()
        assert srv.metadata[0]["x-ms-authentication"] == f"Basic {token}"
    assert "sent 20, acked 20" in proc.stdout


@pytest.mark.portable
def test_exit_status_when_the_server_ends_the_call():
    with MinimalServer(abort_after=5) as srv:
        proc = stream(
            "synthetic:noise", "--target", srv.target, "--max-frames", "50", "--window", "1"
        )
    assert proc.returncode == 1
    assert "ABORTED: minimal server: enough frames" in proc.stderr


@pytest.mark.portable
def test_an_immediate_refusal_is_reported_with_its_own_status():
    # A server that ends the call before reading races the client's first write; grpc.aio
    # then replaces the status with INTERNAL "Internal error from Core" (42 calls in 300
    # here before the client kept the first status it saw).
    async def many(target: str) -> collections.Counter:
        seen: collections.Counter = collections.Counter()
        for _ in range(200):
            try:
                await stream_frames(StreamOptions(target=target, width=4, height=4), [bytes(48)])
            except StreamError as exc:
                seen[str(exc)] += 1
        return seen

    with MinimalServer(refuse=True) as srv:
        seen = asyncio.run(many(srv.target))
    assert seen == {"server ended the call: UNAUTHENTICATED: minimal server: refused": 200}


@pytest.mark.portable
@pytest.mark.parametrize("window", ["1", "8"])
def test_exit_status_when_the_server_ends_the_call_early_with_ok(window):
    with MinimalServer(end_after=5) as srv:
        proc = stream(
            "synthetic:noise", "--target", srv.target, "--max-frames", "50", "--window", window
        )
    assert proc.returncode == 1
    assert (
        "never acknowledged" in proc.stderr
        or "before the client had sent them all" in proc.stderr
        or "ended the call while frame" in proc.stderr
    ), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.portable
def test_exit_status_when_acks_stop():
    with MinimalServer(stall_after=3) as srv:
        started = time.monotonic()
        proc = stream(
            "synthetic:noise",
            "--target",
            srv.target,
            "--max-frames",
            "20",
            "--ack-timeout",
            "1.5",
            "--shm",
        )
        took = time.monotonic() - started
    assert proc.returncode == 1
    assert "no message from the server for 1.5 s" in proc.stderr
    assert took < 30
    assert client_segments(proc) == []


def test_sigterm_unlinks_the_shared_memory_file():
    with MinimalServer(stall_after=2) as srv:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastext",
                "stream",
                "synthetic:noise",
                "--target",
                srv.target,
                "--shm",
                "--ack-timeout",
                "60",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        mine = f"fastext_client_{proc.pid}_"
        while time.monotonic() < deadline and not any(
            n.startswith(mine) for n in os.listdir("/dev/shm")
        ):
            time.sleep(0.05)
        assert any(n.startswith(mine) for n in os.listdir("/dev/shm"))
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "interrupted" in err
    assert not any(n.startswith(mine) for n in os.listdir("/dev/shm"))


def test_stream_a_real_video_file(make_server, tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(
                scene(320, 240, i, light=(i // 10) % 2 == 0), "rgb24"
            )
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    srv = make_server(workers=1)
    out = tmp_path / "r.jsonl"
    proc = stream(str(path), "--target", srv.target, "--output", str(out), "--shm", "--quiet")
    assert proc.returncode == 0, proc.stderr
    got = lines(out)
    assert len(got) == 40
    for line in got:
        tag = line["inferences"][0]["classification"]["tag"]["value"]
        assert tag == expected_dark_light(frame_index(line))


@pytest.mark.parametrize(
    ("scale", "size"),
    [("pad", (416, 416)), ("stretch", (416, 416)), ("preserveAspectRatio", (416, 312))],
)
def test_image_node_scale_modes(scale, size):
    node = ImageNode(width=416, height=416, scale=scale)
    rgb = np.full((480, 640, 3), 200, np.uint8)
    assert node.output_size(640, 480) == size
    out = node.scale_frame(rgb)
    assert out.shape == (size[1], size[0], 3)
    if scale == "pad":  # letterbox: black bars above and below, picture in the middle
        assert out[0].max() == 0 and out[-1].max() == 0 and out[208].min() == 200
    else:
        assert out.min() == 200


def test_image_node_encodings_and_one_sided_size():
    rgb = scene(64, 48, 0, light=True)
    assert ImageNode(width=32).output_size(64, 48) == (32, 24)
    assert (
        len(ImageNode(width=32, height=24, pixel_format=VF.BGRA).encode_frame(rgb)) == 32 * 24 * 4
    )
    assert ImageNode(encoding=VF.JPG).encode_frame(rgb)[:2] == b"\xff\xd8"
    assert ImageNode(encoding=VF.PNG).encode_frame(rgb)[:4] == b"\x89PNG"


def test_sources(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(scene(32, 24, i, light=True)).save(tmp_path / f"{i}.png")
    assert len(list(frames_from(str(tmp_path), loop=2))) == 6
    assert next(frames_from(str(tmp_path / "0.png"))).shape == (24, 32, 3)
    with pytest.raises(SourceError, match="unknown pattern"):
        frames_from("synthetic:plaid")
    with pytest.raises(SourceError, match="no such file"):
        frames_from(str(tmp_path / "missing.mp4"))
    noise = frames_from("synthetic:noise")
    assert next(noise).shape == (480, 640, 3)


@pytest.mark.portable
def test_progress_line_on_a_terminal_only():
    import pty

    with MinimalServer() as srv:
        args = [
            sys.executable,
            "-m",
            "fastext",
            "stream",
            "synthetic:noise",
            "--target",
            srv.target,
            "--max-frames",
            "300",
            "--fps",
            "300",
        ]
        piped = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert piped.returncode == 0 and "in flight" not in piped.stderr
        main, sub = pty.openpty()
        try:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=sub, text=True)
            os.close(sub)
            out, _ = proc.communicate(timeout=120)
            chunks = []
            while True:
                try:
                    data = os.read(main, 65536)
                except OSError:  # EIO: the terminal's other side closed
                    break
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(main)
    shown = b"".join(chunks).decode()
    assert proc.returncode == 0 and "sent 300" in out
    assert "fps" in shown and "in flight" in shown and "frames 300" in shown


def _numbered_frames(count: int) -> list[bytes]:
    """4x4 RGB24 frames, each unlike the others (its index in the first bytes)."""
    return [i.to_bytes(4, "little") + bytes(44) for i in range(count)]


@pytest.mark.parametrize("shm", [True, False], ids=["shm", "embedded"])
def test_reconnect_resends_unacked_frames_once(shm):
    frames = _numbered_frames(40)
    acks: collections.Counter = collections.Counter()
    opts = StreamOptions(
        target="",
        width=4,
        height=4,
        shm=shm,
        window=16,
        reconnect=2,
        reconnect_backoff_s=0.01,
        on_ack=lambda key, _: acks.update([key]),
    )
    with MinimalServer(lose_calls=2, lose_after=10) as srv:
        opts.target = srv.target
        result = asyncio.run(stream_frames(opts, frames))
    assert (result.sent, result.acked, result.reconnects) == (40, 40, 2)
    assert acks == {key: 1 for key in range(2, 42)}  # every frame reported once
    # Both lost calls ended as lost (UNAVAILABLE, or grpc's INTERNAL stand-in for it).
    assert [c.status == "OK" for c in result.calls] == [False, False, True]
    assert [c.acked for c in result.calls[:2]] <= [5, 5] and sum(
        c.acked for c in result.calls
    ) == 40
    # The server saw every frame; an ack it sent as the call died may never have
    # arrived, so that frame came again: at-least-once processing, acked once.
    acked = {ts for call in srv.acked for ts in call}
    assert acked == {i * 3000 for i in range(40)}
    first_payload: dict[int, bytes] = {}
    for call in srv.calls:
        assert [m.sequence_number for m in call] == list(range(1, len(call) + 1))  # restart at 1
        assert call[0].HasField("media_stream_descriptor")
        for m in call[1:]:
            sample = m.media_sample
            payload = (
                sample.content_reference.SerializeToString() if shm else sample.content_bytes.bytes
            )
            assert first_payload.setdefault(sample.timestamp, payload) == payload  # same bytes/slot
    # A new call starts with the frames left unacknowledged, in order, then new ones.
    for k in (1, 2):
        stamps = [m.media_sample.timestamp for m in srv.calls[k][1:]]
        head, rest = stamps[: result.calls[k].resent], stamps[result.calls[k].resent :]
        before = {m.media_sample.timestamp for call in srv.calls[:k] for m in call[1:]}
        # (a resent frame may be new to the server: written to a call that died unread)
        assert head == sorted(head) and not set(rest) & before
        assert not head or not rest or max(head) < min(rest)
        read_not_acked = {m.media_sample.timestamp for m in srv.calls[k - 1][1:]} - set(
            srv.acked[k - 1]
        )
        assert read_not_acked <= set(head) or len(head) == len(stamps)
    assert result.resent >= 10 and result.resent == sum(c.resent for c in result.calls)
    if shm:  # the same file on every call, unlinked at the end
        names = {
            c[0].media_stream_descriptor.shared_memory_buffer_transfer_properties.handle_name
            for c in srv.calls
        }
        assert len(names) == 1 and not os.path.exists(f"/dev/shm/{names.pop()}")


@pytest.mark.portable
def test_reconnect_exit_status_when_the_reconnects_run_out(tmp_path):
    summary = tmp_path / "s.json"
    with MinimalServer(lose_calls=9, lose_after=4) as srv:
        proc = stream(
            "synthetic:noise",
            "--target",
            srv.target,
            "--max-frames",
            "30",
            "--width",
            "8",
            "--height",
            "8",
            "--reconnect",
            "2",
            "--summary-json",
            str(summary),
        )
        calls = len(srv.calls)
        # Frames the server read on more than one call: resent ones, as the server saw them.
        # Each lost call read 4 samples and acked 2, so the next call starts with those 2.
        stamps = [
            [m.media_sample.timestamp for m in call if m.HasField("media_sample")]
            for call in srv.calls
        ]
        again = sum(map(len, stamps)) - len({s for call in stamps for s in call})
    assert proc.returncode == 1
    # the last call's status: the server's, or grpc.aio's stand-in when a write raced it
    assert re.search(
        r"(UNAVAILABLE: minimal server: going away|INTERNAL: Internal error from "
        r"Core) \(no reconnect left of 2; \d+ frames unacknowledged\)",
        proc.stderr,
    )
    report = json.loads(summary.read_text())
    assert calls == 3 and report["reconnects"] == 2
    # The server read each lost call's 2 unacked frames again on the next call. The client
    # counts a frame as resent when its earlier write succeeded; the write of the sample
    # that made a call end can fail in the client after the server read it (the abort
    # races the write's completion, as under qemu), and that frame then counts as sent
    # the first time on the next call: at most one such frame per lost call.
    assert again >= 4 and report["resent"] >= again - 2
    assert [len(s["calls"]) for s in report["per_stream"]] == [3]
    assert "reconnects 2, frames resent" in proc.stdout


def test_slot_writer_reuse_writes_a_repeated_frame_once():
    from fastext.client.shm import SlotWriter

    frames = [bytes([k]) * 10 for k in range(3)]
    with SlotWriter(16, 4, reuse=True) as writer:
        with open(writer.path, "rb", buffering=0) as fh:

            def slot_holds(offset: int, data: bytes) -> bool:
                return os.pread(fh.fileno(), len(data), offset) == data

            held: list[tuple[int, int]] = []
            for i in range(40):  # 3 frames cycling, at most 3 in flight
                data = frames[i % 3]
                slot, offset = writer.write(data)
                assert slot_holds(offset, data)
                held.append((slot, offset))
                if len(held) == 3:
                    writer.release(held.pop(0)[0])
            assert writer.copies == 3  # each frame written once, then sent from its slot
            # A different object with equal bytes is copied: identity, not equality.
            writer.write(bytes(frames[0][:1]) * 10)
            assert writer.copies == 4
            # A mutable buffer is never taken as already written.
            buf = bytearray(b"\x07" * 10)
            writer.release(held.pop(0)[0])
            writer.write(buf)
            writer.release(held.pop(0)[0])
            buf[:] = b"\x08" * 10
            slot, offset = writer.write(buf)
            assert writer.copies == 6 and slot_holds(offset, bytes(buf))
    with SlotWriter(16, 4) as plain:  # without reuse every frame is copied
        for _ in range(3):
            plain.release(plain.write(frames[0])[0])
        assert plain.copies == 3


def test_stream_shm_reuse_sends_repeated_frames_without_copying():
    frames = _numbered_frames(8)
    opts = StreamOptions(target="", width=4, height=4, shm=True, shm_reuse=True, window=16)
    with MinimalServer() as srv:
        opts.target = srv.target
        result = asyncio.run(stream_frames(opts, (frames[i % 8] for i in range(200))))
    assert (result.sent, result.acked) == (200, 200)
    assert 8 <= result.shm_copies <= 16  # at most one copy per slot
    refs = {}
    for m in srv.calls[0][1:]:  # each frame always from one of its slots
        ref = m.media_sample.content_reference
        refs.setdefault(ref.address_offset, set()).add(m.media_sample.timestamp // 3000 % 8)
    assert all(len(kinds) == 1 for kinds in refs.values())


# -- timestamps: the descriptor's timescale, at any frame rate or a video's own times ----


def _sent_stamps(srv: MinimalServer) -> list[int]:
    return [m.media_sample.timestamp for call in srv.calls for m in call[1:]]


@pytest.mark.portable
def test_frames_are_stamped_at_fractional_rates_exactly():
    # 29.97 frames/s at 90 kHz: frame 1772 is at 1772 / 29.97 s = 59.1258 s
    opts = StreamOptions(target="", width=4, height=4, window=64, stamp_rate=29.97)
    with MinimalServer() as srv:
        opts.target = srv.target
        result = asyncio.run(stream_frames(opts, [bytes(48)] * 1773))
    stamps = _sent_stamps(srv)
    assert (result.acked, len(stamps)) == (1773, 1773)
    assert stamps[1772] == 5_321_321
    assert stamps[:4] == [0, 3003, 6006, 9009]  # 3003.003 a frame, never drifting
    assert stamps == [round(i * 9_000_000 / 2997) for i in range(1773)]


@pytest.mark.parametrize(
    "fps, stamps",
    [("29.97", [0, 3003, 6006]), ("30000/1001", [0, 3003, 6006]), ("0.5", [0, 180_000])],
)
@pytest.mark.portable
def test_stream_command_stamps_at_its_fps(fps, stamps):
    with MinimalServer() as srv:
        done = stream(
            "synthetic:gradient",
            "--target",
            srv.target,
            "--fps",
            fps,
            "--max-frames",
            str(len(stamps)),
            "--width",
            "8",
            "--height",
            "8",
            "--ack-timeout",
            "20",
        )
        sent = _sent_stamps(srv)
    assert done.returncode == 0, done.stderr
    assert sent == stamps


@pytest.mark.parametrize("fps", ["0", "-1", "nan", "inf", "-inf", "fast", "1/0"])
def test_stream_command_refuses_a_rate_that_is_not_positive(fps, capsys):
    from fastext.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["stream", "synthetic:noise", "--fps", fps])
    assert exit_.value.code == 2
    assert "argument --fps:" in capsys.readouterr().err


def _video(path: Path, frames: int, rate: int, start: int = 0) -> Path:
    """A small MPEG-4 video at ``rate`` frames/s, its first frame at ``start`` periods."""
    import av

    with av.open(str(path), "w") as container:
        out = container.add_stream("mpeg4", rate=rate)
        out.width, out.height, out.pix_fmt = 32, 24, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(scene(32, 24, i, light=True), format="rgb24")
            frame.pts = start + i
            container.mux(out.encode(frame))
        container.mux(out.encode())
    return path


def test_video_frames_carry_their_own_presentation_times(tmp_path):
    pytest.importorskip("av")
    video = _video(tmp_path / "25fps.mp4", 10, 25)
    with MinimalServer() as srv:  # no --fps: 30 would stamp 3000 ticks a frame
        done = stream(str(video), "--target", srv.target, "--loop", "2", "--shm")
        sent = _sent_stamps(srv)
    assert done.returncode == 0, done.stderr
    # 3600 ticks a frame at 25 frames/s; the second pass goes on after the first
    assert sent == [i * 3600 for i in range(20)]


def test_a_video_starting_late_keeps_its_times(tmp_path):
    pytest.importorskip("av")
    from fastext.client.sources import timed_frames_from

    video = _video(tmp_path / "late.mp4", 4, 25, start=50)
    times = [t for _, t in timed_frames_from(str(video), loop=2)]
    assert times == [2 + Fraction(i, 25) for i in range(8)]  # from 2 s, 1/25 s apart


# -- a sender that fails ends the stream with its error, at once ---------------------------


def test_a_failing_source_ends_the_stream_with_its_error():
    def source():
        for _ in range(5):
            yield bytes(48)
        raise RuntimeError("camera unplugged")

    opts = StreamOptions(target="", width=4, height=4, window=16, ack_timeout_s=30.0)
    with MinimalServer() as srv:
        opts.target = srv.target
        with pytest.raises(StreamError) as failed:
            asyncio.run(stream_frames(opts, source()))
    assert str(failed.value) == "sending stopped after 5 frames: RuntimeError: camera unplugged"


@pytest.mark.portable
@pytest.mark.parametrize("shm", [False, True], ids=["embedded", "shm"])
def test_stream_command_reports_a_source_failing_mid_stream(tmp_path, shm):
    from PIL import Image

    for i in range(3):
        Image.fromarray(scene(32, 24, i, light=True)).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"not a png")  # read after three frames were sent
    with MinimalServer() as srv:
        done = stream(str(tmp_path), "--target", srv.target, *(["--shm"] if shm else []))
    assert done.returncode == 1
    assert "fastext stream: error: sending stopped after 3 frames: SourceError: " in done.stderr
    assert "3.png: cannot read image" in done.stderr
    assert "no message from the server" not in done.stderr
    assert re.search(r"^sent 3, acked [0-3] ", done.stdout, re.M)  # acks in flight not awaited
    assert client_segments(done) == []
