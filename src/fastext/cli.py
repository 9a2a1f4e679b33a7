"""The ``fastext`` command: ``serve``, ``demo``, ``stream``, ``health``, ``warm`` and
``model inspect``."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from fastext import __version__, logs
from fastext.config import Config, add_arguments, from_args
from fastext.errors import ConfigError, ShmFullError

__all__ = ["main"]


def _cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from fastext.front.server import serve

    serve(config)
    return 0


def _cmd_demo(config: Config, args: argparse.Namespace) -> int:
    from fastext.demo import run_demo

    return run_demo(config, frames=args.frames, show=args.show)


def _cmd_stream(config: Config | None, args: argparse.Namespace) -> int:
    from fastext.client.imagenode import ENCODINGS, PIXEL_FORMATS, ImageNode
    from fastext.client.run import StreamCommand, run_stream_command

    node = ImageNode(
        width=args.width,
        height=args.height,
        scale=args.scale,
        encoding=ENCODINGS[args.encoding],
        pixel_format=PIXEL_FORMATS[args.pixel_format],
        jpeg_quality=args.jpeg_quality,
    )
    cmd = StreamCommand(
        source=args.source,
        target=args.target,
        node=node,
        streams=args.streams,
        shm=args.shm,
        shm_size_mb=args.shm_size_mb,
        window=args.window,
        fps=args.fps,
        loop=args.loop,
        max_frames=args.max_frames,
        ext_config=args.ext_config,
        auth=args.auth,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        output=args.output,
        summary_json=args.summary_json,
        ack_timeout_s=args.ack_timeout,
        graph_instance=args.graph_instance,
        reconnect=args.reconnect,
        progress=False if args.quiet else None,
        annotate=args.annotate,
        view=args.view,
    )
    return run_stream_command(cmd)


def _cmd_health(config: Config | None, args: argparse.Namespace) -> int:
    from fastext.client.health import check

    status = check(args.target, args.service, args.timeout, args.tls_ca)
    print(status)
    return 0 if status == "SERVING" else 1


def _add_health(sub: Any) -> None:
    p = sub.add_parser(
        "health",
        help="ask a server's grpc.health.v1 service; exit 0 when SERVING "
        "(for container health checks)",
    )
    p.add_argument("--target", default="127.0.0.1:5001", help="HOST:PORT")
    p.add_argument("--service", default="", help="service name ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    p.add_argument("--tls-ca", default="", metavar="FILE", help="CA bundle: connect with TLS")
    p.set_defaults(run=_cmd_health, needs_config=False)


def _positive(kind: type) -> Any:
    def convert(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text}")
        return value

    return convert


def _frame_rate(text: str) -> float:
    """--fps: any positive, finite number of frames per second (29.97, or 30000/1001)."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number of frames per second: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"must be a positive, finite number of frames per second: {text!r}"
        )
    return value


def _add_stream(sub: Any) -> None:
    from fastext.client.imagenode import ENCODINGS, PIXEL_FORMATS, SCALE_MODES

    p = sub.add_parser(
        "stream",
        help="stream a video, images or a synthetic pattern to any "
        "MediaGraphExtension server, as LVA/AVA would",
    )
    p.add_argument(
        "source",
        help="video file or URL, image file, folder of images, or "
        "synthetic:dark-light|gradient|noise|scene",
    )
    p.add_argument(
        "--target",
        default="127.0.0.1:5001",
        help="extension address, HOST:PORT (default: a local `fastext serve`)",
    )
    node = p.add_argument_group("image node (what LVA did before the extension)")
    node.add_argument("--width", type=_positive(int), default=0, help="output width (0: source's)")
    node.add_argument(
        "--height", type=_positive(int), default=0, help="output height (0: source's)"
    )
    node.add_argument("--scale", choices=SCALE_MODES, default="pad", help="how to fit the size")
    node.add_argument("--encoding", choices=sorted(ENCODINGS), default="raw")
    node.add_argument(
        "--pixel-format", choices=sorted(PIXEL_FORMATS), default="rgb24", help="RAW pixel format"
    )
    node.add_argument(
        "--jpeg-quality", type=int, default=90, choices=range(1, 101), metavar="1..100"
    )
    play = p.add_argument_group("playback")
    play.add_argument(
        "--fps",
        type=_frame_rate,
        default=None,
        metavar="RATE",
        help="real-time pacing in frames/s, any positive number (29.97, "
        "30000/1001); unset: as fast as acks allow, or with --view the source's "
        "own rate (30 for synthetic). Images and synthetic frames are stamped "
        "at this rate (30 when unset); a video's frames carry their own times",
    )
    play.add_argument(
        "--loop", type=_positive(int), default=1, help="play the source N times (0: forever)"
    )
    play.add_argument(
        "--max-frames", type=_positive(int), default=0, help="frames per stream (0: all)"
    )
    play.add_argument(
        "--streams",
        type=int,
        default=1,
        choices=range(1, 1025),
        metavar="N",
        help="parallel sessions, each its own graph instance",
    )
    play.add_argument(
        "--window",
        type=int,
        default=16,
        choices=range(1, 65537),
        metavar="N",
        help="frames in flight per stream",
    )
    play.add_argument("--graph-instance", default="fastext-stream", help="graph instance name")
    play.add_argument("--ext-config", default="", help="extension_configuration (JSON) per session")
    play.add_argument(
        "--reconnect",
        type=_positive(int),
        default=0,
        metavar="N",
        help="per stream, up to N new calls after a call ends UNAVAILABLE or loses "
        "its connection: a fresh descriptor, then the unacknowledged frames again",
    )
    transfer = p.add_argument_group("transfer")
    transfer.add_argument("--shm", action="store_true", help="frames by shared memory in /dev/shm")
    transfer.add_argument(
        "--shm-size-mb",
        type=int,
        default=64,
        help="shared memory per stream for encoded images (RAW uses exactly one frame per slot)",
    )
    security = p.add_argument_group("security")
    security.add_argument(
        "--auth", default="", metavar="USER:PASSWORD", help="send x-ms-authentication: Basic ..."
    )
    security.add_argument("--tls-ca", default="", metavar="FILE", help="CA bundle: use TLS")
    security.add_argument(
        "--tls-cert", default="", metavar="FILE", help="client certificate (mTLS)"
    )
    security.add_argument("--tls-key", default="", metavar="FILE", help="client key (mTLS)")
    security.add_argument("--tls-server-name", default="", help="expected server certificate name")
    output = p.add_argument_group("output")
    output.add_argument(
        "--output", default="", metavar="FILE.jsonl", help="one JSON line per frame"
    )
    output.add_argument("--summary-json", default="", metavar="FILE", help="the summary as JSON")
    output.add_argument(
        "--ack-timeout",
        type=float,
        default=30.0,
        help="fail when no ack arrives for this many seconds",
    )
    output.add_argument("--quiet", action="store_true", help="no progress line")
    output.add_argument(
        "--annotate",
        default="",
        metavar="FILE.mp4|FOLDER",
        help="write every acknowledged frame with its inferences drawn: a video "
        "(.mp4/.mkv, PyAV) or one PNG per frame in a folder; -K added per stream "
        "when there are several",
    )
    output.add_argument(
        "--view",
        default="",
        metavar="[HOST:]PORT",
        help="serve a live page of the annotated streams and their figures while "
        "the run lasts (host 127.0.0.1 unless given)",
    )
    p.set_defaults(run=_cmd_stream, needs_config=False)


def _cmd_warm(config: Config | None, args: argparse.Namespace) -> int:
    """Fill numba's cache with every kernel, the compile work split over ``--jobs``
    processes (each function compiled by one of them: fastext.vision.warmup), so that the
    image's or the device's first start loads instead of compiling."""
    import json
    import os
    import time

    from fastext.vision.warmup import run_children, warm_child

    if args.child:
        if not args.models:
            return warm_child()
        from fastext.models import engine

        return warm_child({"models": engine.warm_shared})
    jobs = args.jobs or os.cpu_count() or 1
    start = time.monotonic()
    child = [sys.executable, "-m", "fastext", "warm", "--child", *(["--models"] * args.models)]
    compiled: list[list[str]] = []
    ready: set[str] = set()
    errors: list[str] = []
    cache = None
    # All children's output read at once: they wait on each other's locks (fastext.vision.warmup).
    for number, done in enumerate(run_children([child] * jobs), 1):
        try:
            report = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            report = {"error": f"exited with status {done.returncode}: {tail[0]}"}
        if "error" in report:
            errors.append(f"process {number}: {report['error']}")
            continue
        compiled.append(report["compiled"])
        ready.update(report["functions"])
        cache = report["cache"]
    took = time.monotonic() - start
    for error in errors:
        print(f"fastext warm: {error}", file=sys.stderr)
    if errors:
        return 1
    if cache is None:
        print(
            "fastext warm: numba found no writable cache directory, so nothing was kept: "
            "set NUMBA_CACHE_DIR to one",
            file=sys.stderr,
        )
        return 1
    split = " + ".join(str(len(c)) for c in compiled)
    print(
        f"fastext warm: {len(ready)} functions ready in {took:.1f} s with {jobs} "
        f"process(es); compiled {split}, the rest loaded from the cache; cache: {cache}"
    )
    return 0


def _add_warm(sub: Any) -> None:
    p = sub.add_parser(
        "warm",
        help="compile every kernel into numba's cache now (an image "
        "build, a device's first boot), split over several processes",
    )
    p.add_argument(
        "--jobs",
        type=_positive(int),
        default=0,
        metavar="N",
        help="processes compiling at once (0, the default: one per CPU)",
    )
    p.add_argument(
        "--models",
        action="store_true",
        help="the model kernels too (preprocessing, box decoding: what a server "
        "with --model runs; about 40 s more CPU on an empty cache on x86-64)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one of them
    p.set_defaults(run=_cmd_warm, needs_config=False)


def _cmd_model_inspect(config: Config | None, args: argparse.Namespace) -> int:
    """Whether a model file can be served, and what fastext would make of it: exit 0
    when it can, 2 (with the reason) when it cannot."""
    from fastext.models.inspect import inspect_model, parse_settings

    try:
        report = inspect_model(
            args.path,
            name=args.name,
            settings=parse_settings(args.settings),
            batch=args.batch,
            runs=args.runs,
        )
    except ValueError as exc:
        print(f"fastext model inspect: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines))
    return report.status


def _add_model(sub: Any) -> None:
    p = sub.add_parser("model", help="work with model files (fastext serve --model)")
    actions = p.add_subparsers(dest="action", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="say whether fastext can serve an ONNX model, what it would feed it, and "
        "how long a batch takes; exit 0 when it can, 2 when not",
    )
    inspect.add_argument("path", metavar="PATH.onnx", help="the model file")
    inspect.add_argument(
        "--name", default="", help="the model's name in messages (default: the file's name)"
    )
    inspect.add_argument(
        "--settings",
        default="",
        metavar="JSON",
        help="the model's settings as in the --config file's models object, "
        'e.g. \'{"labels": ["cat", "dog"], "resize": "stretch"}\'',
    )
    inspect.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="frames in the timed batch of zeros (default 1)",
    )
    inspect.add_argument(
        "--runs",
        type=int,
        default=10,
        metavar="N",
        help="timed runs; the median is shown (default 10)",
    )
    inspect.set_defaults(run=_cmd_model_inspect, needs_config=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastext",
        description="A fast gRPC inference extension for the LVA/AVA MediaGraphExtension contract.",
    )
    parser.add_argument("--version", action="version", version=f"fastext {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the extension server")
    add_arguments(serve)
    serve.set_defaults(run=_cmd_serve)
    demo = sub.add_parser("demo", help="start a server and stream real-looking frames through it")
    add_arguments(demo)
    demo.add_argument("--frames", type=int, default=200, help="frames per stream and pass")
    demo.add_argument("--show", type=int, default=3, help="inferences printed per pass")
    demo.set_defaults(run=_cmd_demo)
    _add_stream(sub)
    _add_health(sub)
    _add_warm(sub)
    _add_model(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = None
    if getattr(args, "needs_config", True):
        try:
            config = from_args(args)
        except ConfigError as exc:
            print(f"fastext: error: {exc}", file=sys.stderr)
            return 2
    if config is not None and args.command == "serve":
        logs.setup(config.log_level, config.log_format)
    else:
        logs.setup("WARNING")
    try:
        return int(args.run(config, args))
    except (ConfigError, ShmFullError) as exc:
        print(f"fastext: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
