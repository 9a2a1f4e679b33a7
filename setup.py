"""Build script for fastext.

Two build steps beyond plain setuptools:

* ``build_py`` compiles ``proto/*.proto`` into ``src/fastext/_proto`` with
  grpcio-tools and rewrites the generated imports to be absolute
  (``from fastext._proto import media_pb2``), so a fresh ``pip install .``
  always ships modules that match ``proto/``.
* ``fastext._native._ring`` (the record ring) and ``fastext._native._wire`` (the
  per-frame sample parser and ack encoder) are compiled from ``src/fastext/_native``
  with the same flags.  ``FASTEXT_SANITIZE=address`` or ``thread`` builds them with
  that sanitizer;
  ``FASTEXT_DEBUG=1`` builds without optimisation and with assertions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"
PROTO_OUT = ROOT / "src" / "fastext" / "_proto"
PROTO_FILES = ("media.proto", "inferencing.proto", "extension.proto")
_IMPORT_RE = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generate_protos() -> None:
    """Run protoc (from grpcio-tools) over proto/ into the package."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    PROTO_OUT.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={PROTO_OUT}",
        f"--pyi_out={PROTO_OUT}",
    ]
    args += [str(PROTO_DIR / name) for name in PROTO_FILES]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on proto/*.proto")
    for name in PROTO_FILES:
        for suffix in ("_pb2.py", "_pb2.pyi"):
            out = PROTO_OUT / name.replace(".proto", suffix)
            text = _IMPORT_RE.sub(r"from fastext._proto import \1 as \2", out.read_text())
            out.write_text(text)
    init = PROTO_OUT / "__init__.py"
    if not init.exists():
        init.write_text('"""Modules generated from proto/ at build time (do not edit)."""\n')


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


def native_extensions() -> list[Extension]:
    sanitize = os.environ.get("FASTEXT_SANITIZE", "").strip()
    if sanitize not in ("", "address", "thread", "undefined"):
        raise SystemExit(f"FASTEXT_SANITIZE must be address, thread or undefined, not {sanitize!r}")
    debug = os.environ.get("FASTEXT_DEBUG", "") not in ("", "0")
    cflags = ["-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
    ldflags: list[str] = []
    macros: list[tuple[str, str | None]] = [("_GNU_SOURCE", None)]
    if debug or sanitize:
        cflags += ["-O1", "-g", "-fno-omit-frame-pointer", "-UNDEBUG"]
    else:
        cflags += ["-O2"]
        macros.append(("NDEBUG", "1"))
    if sanitize:
        cflags.append(f"-fsanitize={sanitize}")
        ldflags.append(f"-fsanitize={sanitize}")
    native = Path("src") / "fastext" / "_native"
    return [
        Extension(
            f"fastext._native._{core}",
            sources=[str(native / f"{core}.c"), str(native / f"_{core}module.c")],
            depends=[str(native / f"{core}.h")],
            include_dirs=[str(native)],
            define_macros=macros,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
        for core in ("ring", "wire")
    ]


setup(
    ext_modules=native_extensions(),
    cmdclass={"build_py": BuildPyWithProtos},
)
