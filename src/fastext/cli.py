"""The ``fastext`` command: ``serve`` and ``demo``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fastext import __version__
from fastext.config import Config, add_arguments, from_args
from fastext.errors import ConfigError

__all__ = ["main"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from fastext.server import serve

    serve(config)
    return 0


def _cmd_demo(config: Config, args: argparse.Namespace) -> int:
    from fastext.demo import run_demo

    return run_demo(config, frames=args.frames, show=args.show)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastext", description="A fast gRPC inference extension "
                                     "for the LVA/AVA MediaGraphExtension contract.")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = from_args(args)
    except ConfigError as exc:
        print(f"fastext: error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.log_level if args.command == "serve" else "WARNING")
    try:
        return int(args.run(config, args))
    except ConfigError as exc:
        print(f"fastext: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
