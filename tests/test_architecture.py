"""docs/architecture.md's "lines never crossed", and the tests' own layout, as tests.

Most rules are read from the source (an AST scan, so an import inside a function
counts as much as one at the top); where a rule is about what a running process
loads, a subprocess or a real worker says it too. Each static test also shows that
its scanner sees the thing it looks for where it is allowed (ring.py and wire.py
importing _native, config.py reading os.environ, ...), so a scanner that finds nothing
cannot pass by accident.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions
from fastext.client.synthetic import encode, scenes, to_pixel_format
from tests.helpers import run_stream, start_server, stop_server

# portable: the rules of the source tree, read as text (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "fastext"
NATIVE = PACKAGE / "_native"

# -- reading imports ---------------------------------------------------------------------


def module_name(path: Path, root: Path) -> str:
    """``src/fastext/client/run.py`` -> ``fastext.client.run`` (``root`` holds the top package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str | None, level: int, package: str) -> str:
    if level == 0:
        return module or ""
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(path: Path, root: Path) -> Iterator[tuple[str, int]]:
    """Every module ``path`` may import, with its line: ``import a.b`` gives a.b;
    ``from a import b`` gives a and a.b (b may be a submodule); relative imports are
    resolved; ``importlib.import_module("x")`` and ``__import__("x")`` give x."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, package)
            yield base, node.lineno
            for alias in node.names:
                if alias.name != "*":
                    yield f"{base}.{alias.name}", node.lineno
        elif isinstance(node, ast.Call) and _call_name(node.func) in (
            "import_module",
            "__import__",
        ):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield first.value, node.lineno


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def package_modules() -> dict[str, Path]:
    """Every module of src/fastext by name (generated _proto modules included)."""
    return {module_name(p, SRC): p for p in sorted(PACKAGE.rglob("*.py"))}


def closure(start: Iterable[str]) -> set[str]:
    """The fastext modules that importing ``start`` can run: the modules themselves,
    their parent packages (whose ``__init__`` runs first), and everything they import
    inside fastext, transitively."""
    modules = package_modules()
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        todo += [name.rpartition(".")[0]] if "." in name else []
        todo += [m for m, _ in imports_of(modules[name], SRC)]
    return seen


def is_grpc(module: str) -> bool:
    top = module.partition(".")[0]
    return top == "grpc" or top.startswith("grpc_")


# -- only ring.py and wire.py import _native, each its own module ------------------------

# Each native module has one Python front; the front imports that module and no other.
NATIVE_FRONTS = {
    "fastext/backend/ring.py": "fastext._native._ring",
    "fastext/contract/wire.py": "fastext._native._wire",
}


def native_importers() -> dict[str, set[str]]:
    """Which modules of fastext._native each package module (outside it) imports
    (``from fastext._native._ring import Ring`` counts as fastext._native._ring)."""
    found: dict[str, set[str]] = {}
    for name, path in package_modules().items():
        if name.startswith("fastext._native"):
            continue
        for module, _ in imports_of(path, SRC):
            if module == "fastext._native" or module.startswith("fastext._native."):
                found.setdefault(str(path.relative_to(SRC)), set()).add(
                    ".".join(module.split(".")[:3])
                )
    return found


def test_architecture_only_ring_and_wire_import_native_each_its_own() -> None:
    # ``from fastext._native import _x`` names the package too: that alone is not a
    # second module. A bare ``import fastext._native`` elsewhere still shows up (as set()).
    found = {path: modules - {"fastext._native"} for path, modules in native_importers().items()}
    assert found == {path: {module} for path, module in NATIVE_FRONTS.items()}


# -- the C core never includes Python.h --------------------------------------------------

_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def includes(source: Path) -> set[str]:
    """Headers ``source`` includes, following its quoted includes found next to it."""
    seen: set[str] = set()
    todo = [source]
    while todo:
        for kind, header in _INCLUDE.findall(todo.pop().read_text()):
            local = NATIVE / header
            if header not in seen and kind == '"' and local.is_file():
                todo.append(local)
            seen.add(header)
    return seen


def python_headers(headers: set[str]) -> set[str]:
    include_dir = Path(sysconfig.get_paths()["include"])
    return {h for h in headers if h == "Python.h" or (include_dir / h).is_file()}


def test_architecture_c_core_never_includes_python_h() -> None:
    for binding in ("_ringmodule.c", "_wiremodule.c"):
        assert "Python.h" in python_headers(includes(NATIVE / binding))  # the bindings do
    for core in ("ring.c", "ring.h", "wire.c", "wire.h"):
        assert python_headers(includes(NATIVE / core)) == set(), core


# -- only config.py reads the environment ------------------------------------------------

# What counts as reading the environment: the mapping itself, its accessors, and the
# calls that expand variables or $HOME from it. Library code that consults it on
# its own (tempfile's TMPDIR, locale) is not fastext reading it.
_ENV_NAMES = {
    "os": {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"},
    "posix": {"environ", "putenv", "unsetenv"},
    "os.path": {"expandvars", "expanduser"},
    "posixpath": {"expandvars", "expanduser"},
}
_ENV_METHODS = {"expandvars", "expanduser"}  # also pathlib's Path.expanduser()


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """Local names bound to os, posix, os.path or posixpath."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in _ENV_NAMES:
                    aliases[a.asname or a.name.partition(".")[0]] = (
                        a.name if a.asname else a.name.partition(".")[0]
                    )
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and node.level == 0:
            for a in node.names:
                if a.name == "path":
                    aliases[a.asname or "path"] = "os.path"
    return aliases


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and _dotted(node.value, aliases) == "os"
    ):
        return "os.path"
    return None


def environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that read (or change) the process environment."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = _module_aliases(tree)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in _ENV_NAMES and node.level == 0:
            if any(a.name == "*" or a.name in _ENV_NAMES[node.module] for a in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.Attribute):
            owner = _dotted(node.value, aliases)
            if (owner is not None and node.attr in _ENV_NAMES[owner]) or node.attr in _ENV_METHODS:
                lines.append(node.lineno)
            elif (
                node.attr == "home" and isinstance(node.value, ast.Name) and node.value.id == "Path"
            ):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and _call_name(node.func) == "getattr" and node.args:
            owner = _dotted(node.args[0], aliases)
            name = node.args[1] if len(node.args) > 1 else None
            if (
                owner is not None
                and isinstance(name, ast.Constant)
                and name.value in _ENV_NAMES[owner]
            ):
                lines.append(node.lineno)
    return sorted(lines)


def test_architecture_only_config_reads_the_environment() -> None:
    found = {str(p.relative_to(SRC)): environment_reads(p) for p in package_modules().values()}
    assert found.pop("fastext/config.py")  # the scanner sees config's os.environ
    assert {path: lines for path, lines in found.items() if lines} == {}


def test_architecture_environment_scanner_sees_every_spelling(tmp_path: Path) -> None:
    spellings = [
        "import os\nos.environ['X']",
        "import os\nos.getenv('X')",
        "import os as o\no.environb",
        "from os import environ",
        "from os import getenv as g",
        "from os import *",
        "import os\nos.putenv('X', '1')",
        "import posix\nposix.environ",
        "import os.path\nos.path.expandvars('$X')",
        "from os import path\npath.expanduser('~')",
        "import posixpath as pp\npp.expanduser('~')",
        "from pathlib import Path\nPath.home()",
        "from pathlib import Path\nPath('~').expanduser()",
        "import os\ngetattr(os, 'environ')",
    ]
    for i, code in enumerate(spellings):
        source = tmp_path / f"m{i}.py"
        source.write_text(code + "\n")
        assert environment_reads(source), code
    clean = tmp_path / "clean.py"
    clean.write_text(
        "import os\nos.getpid()\nos.path.join('a', 'b')\nenviron = {}\nenviron.get('x')\n"
    )
    assert environment_reads(clean) == []


# -- a worker never imports grpc -----------------------------------------------------------


def test_architecture_worker_import_closure_has_no_grpc() -> None:
    modules = package_modules()
    worker_side = closure(["fastext.backend.worker"])
    # What runs per frame in a worker is in the closure (kernels and the processors too).
    assert {
        "fastext.backend.execute",
        "fastext.vision.frames",
        "fastext.vision.kernels",
        "fastext.vision.kernels.common",
        "fastext.vision.kernels.luma",
        "fastext.vision.kernels.rgb",
        "fastext.vision.kernels.yuv",
        "fastext.vision.kernels.motion",
        "fastext.vision.warmup",
        "fastext.backend.shm",
        "fastext.processors.motion",
        "fastext.backend.ring",
        "fastext.backend.records",
    } <= worker_side
    assert any(
        is_grpc(m) for m, _ in imports_of(modules["fastext.front.server"], SRC)
    )  # seen when there
    offenders = {
        name: sorted({m for m, _ in imports_of(modules[name], SRC) if is_grpc(m)})
        for name in sorted(worker_side)
    }
    assert {name: found for name, found in offenders.items() if found} == {}


_WORKER_START = """
import sys
import numpy as np
import fastext.backend.worker
from fastext import logs, processors
from fastext.vision import warmup
from fastext.backend.execute import FrameFormat, run_batch
from fastext.vision.frames import Encoding, PixelFormat

logs.setup("INFO", "json", worker=0)
warmup.warm()
fmt = FrameFormat(Encoding.RAW, PixelFormat.RGB24, 8, 8, 0)
frame = np.full(8 * 8 * 3, 200, np.uint8).tobytes()
ran = []
for name in sorted(processors.available()):
    try:
        processor = processors.create(name, {})
    except ValueError:  # a plug-in that needs parameters: imported all the same
        continue
    outcomes = run_batch(processor, fmt, [frame, frame])
    assert len(outcomes) == 2 and not any(isinstance(o, str) for o in outcomes), (name, outcomes)
    ran.append(name)
assert {"brightness", "motion"} <= set(ran), ran
bad = sorted(m for m in sys.modules if m.partition(".")[0] == "grpc" or m.startswith("grpc_"))
print("grpc modules:", bad)
sys.exit(1 if bad else 0)
"""


def test_architecture_worker_start_never_imports_grpc() -> None:
    # What a worker does before and while serving, short of its rings: import
    # fastext.backend.worker, set up logging, warm the kernels, and run one batch through every
    # processor (plug-ins included).
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER_START], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(c) for c in fh.read().split()]


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as fh:
        return fh.read()


def test_architecture_running_worker_never_loads_grpc() -> None:
    # A worker started by a real server (spawned, as in production) after shared-memory,
    # embedded and JPEG sessions: grpc's C core is not in its memory maps, though it is
    # in the front's. numba's llvmlite in the worker's maps shows it is the worker.
    proc, port = start_server("--workers", "1")
    try:
        target = f"127.0.0.1:{port}"
        frames = [to_pixel_format(rgb, VF.RGB24) for rgb, _ in scenes(64, 48, 4, period=2)]
        for shm in (True, False):
            opts = StreamOptions(target=target, width=64, height=48, shm=shm)
            assert run_stream(opts, frames).acked == len(frames)
        jpeg = StreamOptions(
            target=target, width=64, height=48, encoding=VF.JPG, pixel_format=VF.NONE
        )
        assert run_stream(jpeg, [encode(rgb, VF.JPG) for rgb, _ in scenes(64, 48, 2)]).acked == 2
        workers = [maps for maps in map(_maps, _children(proc.pid)) if "llvmlite" in maps]
        assert len(workers) == 1
        front_has_grpc, worker_has_grpc = "cygrpc" in _maps(proc.pid), "cygrpc" in workers[0]
        assert (front_has_grpc, worker_has_grpc) == (True, False)
    finally:
        stop_server(proc)


# -- packages by concern, every import running downward ----------------------------------

# The tree is the architecture: each area of fastext (a package, or a top-level module)
# has a rank, and a module imports only areas of a lower rank, or its own. So the front
# may use the backend but never the reverse, pixels (vision) know nothing of processes,
# and no circle can form between areas.
RANKS = {
    "_native": 0,
    "_proto": 0,
    "fastext": 0,
    "errors": 0,
    "outcomes": 0,
    "malloc": 0,
    "logs": 0,
    "config": 1,
    "contract": 1,
    "vision": 1,
    "metrics": 1,
    "models": 2,
    "client": 2,
    "processors": 3,
    "backend": 4,
    "front": 5,
    "demo": 6,
    "cli": 7,
    "__main__": 8,
}


def area(module: str) -> str:
    """``fastext.front.session`` -> ``front``; ``fastext.config`` -> ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(modules: dict[str, Path], root: Path = SRC) -> list[tuple[str, int, str]]:
    """(module, line, imported) for every import of an area ranked at or above the
    importer's own (other than itself)."""
    found = []
    for name, path in modules.items():
        mine = area(name)
        for imported, line in imports_of(path, root):
            if imported in modules and area(imported) != mine:
                if RANKS[area(imported)] >= RANKS[mine]:
                    found.append((name, line, imported))
    return found


def test_architecture_every_area_has_a_rank() -> None:
    assert {area(m) for m in package_modules()} <= set(RANKS)


def test_architecture_packages_import_only_downward() -> None:
    modules = package_modules()
    # The scanner sees the downward imports that exist (front -> backend -> processors -> vision).
    seen = {
        (area(n), area(i))
        for n, p in modules.items()
        for i, _ in imports_of(p, SRC)
        if i in modules
    }
    assert {("front", "backend"), ("backend", "processors"), ("processors", "vision")} <= seen
    assert upward_imports(modules) == []


def test_architecture_upward_import_is_seen(tmp_path: Path) -> None:
    pkg = tmp_path / "fastext"
    (pkg / "vision").mkdir(parents=True)
    (pkg / "front").mkdir()
    for init in (
        pkg / "__init__.py",
        pkg / "vision" / "__init__.py",
        pkg / "front" / "__init__.py",
    ):
        init.write_text("")
    (pkg / "front" / "server.py").write_text("")
    (pkg / "vision" / "frames.py").write_text("def f():\n    from fastext.front import server\n")
    fake = {module_name(p, tmp_path): p for p in pkg.rglob("*.py")}
    found = upward_imports(fake, tmp_path)
    assert ("fastext.vision.frames", 2, "fastext.front.server") in found


# -- the supervisor knows nothing of what its processes run -------------------------------

# What a worker runs and how the front talks to it: the caller's (pipeline.py's) to wire.
SUPERVISOR_MUST_NOT_REACH = {
    "fastext.backend.worker",
    "fastext.backend.ring",
    "fastext.backend.records",
    "fastext.backend.pipeline",
}


def test_architecture_supervisor_imports_no_worker_ring_records_or_pipeline() -> None:
    modules = package_modules()
    assert SUPERVISOR_MUST_NOT_REACH <= set(modules)  # the names are real modules
    # The scanner sees these imports where they are (the pipeline wires workers and rings).
    assert {
        "fastext.backend.worker",
        "fastext.backend.ring",
        "fastext.backend.records",
        "fastext.backend.supervisor",
    } <= {m for m, _ in imports_of(modules["fastext.backend.pipeline"], SRC)}
    direct = {m for m, _ in imports_of(modules["fastext.backend.supervisor"], SRC)}
    assert "fastext.backend.doorbell" in direct
    # Nor through another module: everything importing the supervisor can run.
    assert sorted(closure(["fastext.backend.supervisor"]) & SUPERVISOR_MUST_NOT_REACH) == []


# -- the client imports nothing of the server --------------------------------------------

# The contract (the package root's METHOD_PATH and the generated _proto messages),
# the two modules client and server share (wire: the per-frame messages, with its
# native codec; metadata: the inference JSON form), and the client-side allocator
# setting (malloc).
CLIENT_MAY_IMPORT = {
    "fastext",
    "fastext.contract",
    "fastext.contract.wire",
    "fastext._native",
    "fastext._native._wire",
    "fastext.contract.metadata",
    "fastext.malloc",
}


def client_may_import(module: str) -> bool:
    return (
        module in CLIENT_MAY_IMPORT
        or module.startswith(("fastext._proto.", "fastext.client."))
        or module in ("fastext._proto", "fastext.client")
    )


def client_modules() -> list[str]:
    return [
        m for m in package_modules() if m == "fastext.client" or m.startswith("fastext.client.")
    ]


def test_architecture_client_imports_only_the_contract_and_shared_modules() -> None:
    reach = closure(client_modules())
    assert {
        "fastext.contract.wire",
        "fastext.contract.metadata",
        "fastext.malloc",
        "fastext._proto.extension_pb2",
    } <= reach
    assert sorted(m for m in reach if not client_may_import(m)) == []


def test_architecture_client_loads_only_the_contract_and_shared_modules() -> None:
    code = (
        f"import sys\nfor m in {client_modules()!r}: __import__(m)\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('fastext'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.split()
    assert "fastext.client.run" in loaded
    assert [m for m in loaded if not client_may_import(m)] == []


# -- tests import helpers, never each other; benchmarks never import tests ---------------


def _sources(directory: str) -> list[Path]:
    return sorted((ROOT / directory).rglob("*.py"))


def _is_test_module(module: str) -> bool:
    parts = module.split(".")
    if parts[0] == "tests":
        parts = parts[1:]
    return bool(parts) and (parts[0] == "conftest" or parts[0].startswith("test_"))


def test_architecture_tests_import_no_test_module_or_conftest() -> None:
    found = {
        str(p.relative_to(ROOT)): sorted({m for m, _ in imports_of(p, ROOT) if _is_test_module(m)})
        for p in _sources("tests")
    }
    assert "tests/helpers.py" in found and "tests/test_architecture.py" in found
    assert {path: mods for path, mods in found.items() if mods} == {}


def test_architecture_benchmarks_import_no_tests() -> None:
    found = {
        str(p.relative_to(ROOT)): sorted(
            {m for m, _ in imports_of(p, ROOT) if m.partition(".")[0] == "tests"}
        )
        for p in _sources("bench")
    }
    assert "bench/bench_motion.py" in found
    assert {path: mods for path, mods in found.items() if mods} == {}


def test_architecture_import_scanner_resolves_every_form(tmp_path: Path) -> None:
    pkg = tmp_path / "tests"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text(
        "import tests.test_a\nfrom tests.test_b import x\nfrom . import test_c\nfrom .conftest import y\n"
        "from tests import conftest\nimport importlib\nimportlib.import_module('tests.test_d')\n"
        "def f():\n    from .test_e import z\n"
    )
    found = {m for m, _ in imports_of(pkg / "m.py", tmp_path) if _is_test_module(m)}
    assert {
        "tests.test_a",
        "tests.test_b",
        "tests.test_c",
        "tests.conftest",
        "tests.test_d",
        "tests.test_e",
    } <= found
    assert not any(_is_test_module(m) for m in ("tests.helpers", "tests.conformance", "testing"))


def test_architecture_tests_import_no_benchmarks() -> None:
    found = {
        str(p.relative_to(ROOT)): sorted(
            {m for m, _ in imports_of(p, ROOT) if m.partition(".")[0] == "bench"}
        )
        for p in _sources("tests")
    }
    assert "tests/processors/test_motion.py" in found
    assert {path: mods for path, mods in found.items() if mods} == {}


def test_architecture_server_errors_form_one_tree() -> None:
    """Every exception the server's packages define is a FastextError (one ``except``
    catches them all); the client's errors are its own."""
    import importlib
    import inspect
    import pkgutil

    from fastext.errors import FastextError

    strays, seen = [], 0
    for package in ("front", "backend", "contract", "vision", "processors"):
        path = ROOT / "src" / "fastext" / package
        for info in pkgutil.iter_modules([str(path)]):
            module = importlib.import_module(f"fastext.{package}.{info.name}")
            for name, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                    seen += 1
                    if not issubclass(cls, FastextError):
                        strays.append(f"{module.__name__}.{name}")
    assert seen >= 1 and strays == []
