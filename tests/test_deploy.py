"""The shipping files: both Dockerfiles, the IoT Edge manifests and the topologies.

No Docker engine runs here, so the Dockerfiles are parsed (by scripts/dockerfile.py,
the same reader scripts/arm64-check uses to run their steps) and their instructions
checked; the deploy/ JSON files are checked against the code they configure.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from fastext import processors
from fastext.config import OPTIONS, Config, parse_bind

# portable: the deployment files' contents (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [ROOT / "Dockerfile.amd64", ROOT / "Dockerfile.arm64"]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(DEPLOY.glob("deployment*.template.json"))
TOPOLOGIES = sorted(DEPLOY.glob("topology.*.json"))
OPTION_BY_ENV = {opt.env: opt for opt in OPTIONS}
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY|_KEY\b", re.I)
# Options an image must not fix: credentials, TLS material (deployment-specific files).
SECRET_OPTIONS = {o.field for o in OPTIONS if o.field.startswith(("auth_", "tls_"))}
# Off by default and turned on per deployment (the port is EXPOSEd already); the
# instance name is per container (an image-wide name would make every replica alike);
# the models are the deployment's own files.
DEPLOYMENT_OPTIONS = {"metrics_port", "instance", "models"}


def _load_reader() -> Any:
    spec = importlib.util.spec_from_file_location(
        "fastext_dockerfile", ROOT / "scripts/dockerfile.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


reader = _load_reader()


def default_port() -> int:
    return parse_bind(Config().bind)[1]


# ----------------------------------------------------------------------- the parser


def test_parser_joins_continuations_and_drops_comments() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11-slim AS build\n"
        "RUN apt-get update \\\n"
        "    # a comment inside a continuation is dropped\n"
        "\n"
        " && apt-get install -y gcc\n"
        "ENV A=1 \\\n"
        '    B="two words"\n'
        'ENTRYPOINT ["fastext", "serve"]\n'
    )
    ins = reader.parse(text)
    assert [i.keyword for i in ins] == ["FROM", "RUN", "ENV", "ENTRYPOINT"]
    assert ins[1].args == "apt-get update && apt-get install -y gcc"
    assert ins[1].line == 3
    assert reader.env_pairs(ins[2].args) == [("A", "1"), ("B", "two words")]
    assert reader.exec_form(ins[3].args) == ["fastext", "serve"]
    assert reader.exec_form("fastext serve") is None
    stage = reader.stages(ins)[0]
    assert (stage.image, stage.name) == ("python:3.11-slim", "build")


def test_parser_rejects_a_dangling_continuation() -> None:
    with pytest.raises(ValueError, match="continuation"):
        reader.parse("FROM x\nRUN a \\\n")


def test_parser_reads_legacy_env_and_platform() -> None:
    ins = reader.parse("FROM --platform=linux/arm64 python:3.11-slim\nENV NAME a value\n")
    stage = reader.stages(ins)[0]
    assert stage.platform == "linux/arm64"
    assert reader.env_pairs(stage.instructions[0].args) == [("NAME", "a value")]


def test_dockerignore_rules_keep_sources_and_drop_builds() -> None:
    patterns = reader._dockerignore(ROOT)
    assert reader._ignored("src/fastext/__pycache__/kernels.nbi", patterns)
    assert reader._ignored("src/fastext/_native/_ring.cpython-311-x86_64-linux-gnu.so", patterns)
    assert reader._ignored(".git/HEAD", patterns)
    assert reader._ignored("src/fastext/_proto/extension_pb2.py", patterns)
    assert not reader._ignored("src/fastext/_native/ring.c", patterns)
    assert not reader._ignored("src/fastext/_proto/__init__.py", patterns)
    assert not reader._ignored("tests/backend/test_ring_stress.py", patterns)
    assert not reader._ignored("README.md", patterns)  # the package's readme


# ------------------------------------------------------------------- the Dockerfiles


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request: pytest.FixtureRequest) -> list[Any]:
    return reader.stages(reader.parse_file(request.param))


def _final(stages: list[Any]) -> Any:
    return stages[-1]


def _env(stage: Any) -> dict[str, str]:
    return {k: v for ins in stage.all("ENV") for k, v in reader.env_pairs(ins.args)}


def test_dockerfile_has_a_build_and_a_runtime_stage(dockerfile: list[Any]) -> None:
    assert [s.name for s in dockerfile] == ["build", "runtime"]
    build, runtime = dockerfile
    build_runs = " ".join(i.args for i in build.all("RUN"))
    assert "gcc" in build_runs and "pip wheel" in build_runs
    copies = [i.args for i in runtime.all("COPY")]
    assert copies and all(c.startswith("--from=build ") for c in copies), copies
    runtime_runs = " ".join(i.args for i in runtime.all("RUN"))
    assert "--no-index" in runtime_runs  # only the build stage's wheels, offline
    assert "gcc" not in runtime_runs


def test_dockerfile_base_images_are_pinned_by_tag(dockerfile: list[Any]) -> None:
    for stage in dockerfile:
        name, sep, tag = stage.image.rpartition(":")
        assert sep and "/" not in tag, f"{stage.image}: no explicit tag"
        assert tag != "latest"
        assert re.match(r"\d+\.\d+", tag), f"{stage.image}: tag does not pin Python"
        assert "bookworm" in tag  # the Debian release scripts/arm64-check reproduces


def test_dockerfile_arm64_targets_arm64() -> None:
    stages = reader.stages(reader.parse_file(ROOT / "Dockerfile.arm64"))
    for stage in stages:
        assert stage.image.startswith("arm64v8/") or stage.platform == "linux/arm64"


def test_dockerfile_runs_as_a_non_root_user(dockerfile: list[Any]) -> None:
    users = _final(dockerfile).all("USER")
    assert users, "the runtime stage never leaves root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")


def test_dockerfile_warms_the_numba_cache_as_that_user(dockerfile: list[Any]) -> None:
    runtime = _final(dockerfile)
    env = _env(runtime)
    assert env.get("NUMBA_CACHE_DIR", "").startswith("/var/cache/")
    order = [(i.keyword, i.args) for i in runtime.instructions]
    user_at = max(n for n, (kw, _) in enumerate(order) if kw == "USER")
    warm = [n for n, (kw, args) in enumerate(order) if kw == "RUN" and "fastext warm" in args]
    assert warm and warm[0] > user_at, "kernels must be warmed by the user that serves"
    chown = [args for kw, args in order[:user_at] if kw == "RUN" and "chown" in args]
    assert any(env["NUMBA_CACHE_DIR"].rsplit("/", 1)[0] in c for c in chown)


def test_dockerfile_health_entrypoint_and_ports(dockerfile: list[Any]) -> None:
    runtime = _final(dockerfile)
    (health,) = runtime.all("HEALTHCHECK")
    flags, rest = reader.split_flags(health.args)
    assert rest.startswith("CMD ")
    port = default_port()
    env = _env(runtime)
    # The check asks the plaintext health port on loopback, which answers whatever TLS the
    # deployment puts on the main port (test_health.py runs it in each setting).
    health_port = int(env["FASTEXT_HEALTH_PORT"])
    assert env["FASTEXT_HEALTH_HOST"] == "127.0.0.1"
    assert health_port and health_port != port
    assert reader.exec_form(rest[4:]) == [
        "fastext",
        "health",
        "--target",
        f"127.0.0.1:{health_port}",
    ]
    (entry,) = runtime.all("ENTRYPOINT")
    assert reader.exec_form(entry.args) == ["fastext", "serve"]
    exposed = {p for i in runtime.all("EXPOSE") for p in i.args.split()}
    assert str(port) in exposed
    assert str(parse_bind(env["FASTEXT_BIND"])[1]) in exposed
    assert str(health_port) not in exposed  # loopback only: nothing to publish


def test_dockerfile_env_names_are_fastext_options(dockerfile: list[Any]) -> None:
    env = _env(_final(dockerfile))
    fastext_env = {k: v for k, v in env.items() if k.startswith("FASTEXT_")}
    for name, value in fastext_env.items():
        assert name in OPTION_BY_ENV, f"{name} is not a fastext option"
        OPTION_BY_ENV[name].convert(value)  # a value the server accepts
    # Every option with a default the image can state is stated (so a new option
    # shows up here), apart from secrets/TLS files and per-deployment switches.
    wanted = {o.env for o in OPTIONS if o.field not in SECRET_OPTIONS | DEPLOYMENT_OPTIONS}
    assert wanted <= set(fastext_env), f"missing ENV: {sorted(wanted - set(fastext_env))}"
    assert int(fastext_env["FASTEXT_WORKERS"]) == 2


def test_dockerfile_env_matches_fastext_defaults(dockerfile: list[Any]) -> None:
    env = _env(_final(dockerfile))
    defaults = Config()
    for opt in OPTIONS:
        # workers: 2, chosen for edge devices; health_port: off in fastext, on in the image
        if opt.env in env and opt.field not in ("workers", "health_port"):
            assert opt.convert(env[opt.env]) == getattr(defaults, opt.field), opt.env


def test_dockerfile_has_no_secrets_or_remote_adds(dockerfile: list[Any]) -> None:
    for stage in dockerfile:
        assert not stage.all("ADD"), "ADD (remote URLs, auto-extraction): use COPY"
        for name in _env(stage):
            assert not SECRET_WORDS.search(name), f"secret-looking ENV {name}"
        for ins in stage.all("ARG"):
            assert not SECRET_WORDS.search(ins.args), f"secret-looking ARG {ins.args}"
        for ins in stage.all("RUN"):
            assert "--mount=type=secret" not in ins.args


def test_dockerfiles_differ_only_in_base_and_cpu_target() -> None:
    # The arm64 file is the one scripts/arm64-check runs; the amd64 one must do the same.
    def steps(path: Path) -> list[tuple[str, str]]:
        out = []
        for stage in reader.stages(reader.parse_file(path)):
            out.append(("FROM", stage.name))
            for ins in stage.instructions:
                if ins.keyword == "ENV":
                    pairs = [p for p in reader.env_pairs(ins.args) if p[0] != "NUMBA_CPU_NAME"]
                    out.append(("ENV", repr(pairs)))
                else:
                    out.append((ins.keyword, ins.args))
        return out

    assert steps(ROOT / "Dockerfile.amd64") == steps(ROOT / "Dockerfile.arm64")


# ------------------------------------------------------------------- deploy/ manifests


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _modules(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]


def _host_config(module: dict[str, Any]) -> dict[str, Any]:
    return module["settings"]["createOptions"].get("HostConfig", {})


def test_deploy_files_exist_and_parse() -> None:
    names = {p.name for p in DEPLOY.glob("*.json")}
    assert {"deployment.template.json", "deployment.host.template.json"} <= names
    assert any("lva2" in n and "sharedmemory" in n for n in names)
    assert any("ava." in n and "sharedmemory" in n for n in names)
    assert any("embedded" in n for n in names)
    for path in DEPLOY.glob("*.json"):
        _json(path)


@pytest.fixture(params=MANIFESTS, ids=lambda p: p.name)
def manifest(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _json(request.param)


def test_manifest_ipc_wiring_is_consistent(manifest: dict[str, Any]) -> None:
    modules = _modules(manifest)
    fastext = modules["fastext"]
    ipc = _host_config(fastext)["IpcMode"]
    if ipc == "host":
        # Both on the host's IPC namespace (and its /dev/shm).
        video = [m for n, m in modules.items() if n != "fastext"]
        assert video and all(_host_config(m).get("IpcMode") == "host" for m in video)
        return
    kind, _, target = ipc.partition(":")
    assert kind == "container" and target in modules, f"IpcMode {ipc}: no module {target!r}"
    video = modules[target]
    assert _host_config(video)["IpcMode"] == "shareable"
    # fastext joins the video module's namespace, so it must start after it.
    assert fastext["startupOrder"] > video["startupOrder"]
    # The shared /dev/shm is the video module's: room for a 75 MiB node and fastext's
    # arena, well above Docker's 64 MiB default.
    arena = int(fastext["env"]["FASTEXT_SHM_SIZE_MB"]["value"])
    assert _host_config(video)["ShmSize"] >= (75 + arena) * 1024 * 1024
    assert "ShmSize" not in _host_config(fastext)  # ignored in a joined namespace


def test_manifest_env_and_restart_policy(manifest: dict[str, Any]) -> None:
    modules = _modules(manifest)
    fastext = modules["fastext"]
    env = {k: v["value"] for k, v in fastext["env"].items()}
    assert {"FASTEXT_WORKERS", "FASTEXT_SHM_SIZE_MB"} <= set(env)
    for name, value in env.items():
        assert name in OPTION_BY_ENV, f"{name} is not a fastext option"
        assert isinstance(value, str)  # IoT Edge env values are strings
        OPTION_BY_ENV[name].convert(value)
        assert name not in {o.env for o in OPTIONS if o.field in SECRET_OPTIONS}
    for module in modules.values():
        assert module["restartPolicy"] == "always"
        assert module["status"] == "running"


def test_manifest_holds_no_secrets(manifest: dict[str, Any]) -> None:
    # Credentials in a template are $PLACEHOLDERS filled from .env at deployment.
    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and SECRET_WORDS.search(key):
            assert node.startswith("$"), f"{key} holds a literal value"

    walk(manifest)


# ------------------------------------------------------------------- topologies


def _resolve(value: str, params: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: params[m.group(1)], value)


@pytest.fixture(params=TOPOLOGIES, ids=lambda p: p.name)
def topology(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param.name, _json(request.param)


def test_topology_grpc_node_points_at_fastext(topology: tuple[str, dict[str, Any]]) -> None:
    name, topo = topology
    props = topo["properties"]
    params = {p["name"]: p.get("default", "") for p in props["parameters"]}
    prefix = "#Microsoft.Media.MediaGraph" if ".lva2." in name else "#Microsoft.VideoAnalyzer."
    assert topo["@apiVersion"] == ("2.0" if ".lva2." in name else "1.1")

    def types(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["@type"]] if "@type" in node else []
            return found + [t for v in node.values() for t in types(v)]
        if isinstance(node, list):
            return [t for v in node for t in types(v)]
        return []

    assert all(t.startswith(prefix) for t in types(props)), name
    (grpc,) = [p for p in props["processors"] if p["@type"] == prefix + "GrpcExtension"]
    url = _resolve(grpc["endpoint"]["url"], params)
    host, port = parse_bind(url)
    assert port == default_port()
    module_names = {n for m in MANIFESTS for n in _modules(_json(m))}
    assert host in module_names  # IoT Edge module names are the containers' DNS names
    # Every ${parameter} used is declared.
    used = set(re.findall(r"\$\{(\w+)\}", json.dumps(props)))
    assert used <= set(params)
    node_names = {n["name"] for group in ("sources", "processors", "sinks") for n in props[group]}
    for group in ("processors", "sinks"):
        for node in props[group]:
            assert {i["nodeName"] for i in node["inputs"]} <= node_names


def test_topology_transfer_and_extension_configuration(
    topology: tuple[str, dict[str, Any]],
) -> None:
    name, topo = topology
    props = topo["properties"]
    params = {p["name"]: p.get("default", "") for p in props["parameters"]}
    (grpc,) = [p for p in props["processors"] if p["@type"].endswith("GrpcExtension")]
    transfer = grpc["dataTransfer"]
    if "sharedmemory" in name:
        assert transfer == {"mode": "sharedMemory", "SharedMemorySizeMiB": "75"}
        assert grpc["image"]["format"]["@type"].endswith("ImageFormatRaw")
    else:
        assert transfer == {"mode": "embedded"}
    config = _resolve(grpc["extensionConfiguration"], params)
    proc_name, proc_params = processors.from_configuration(config, Config().processor)
    assert proc_name in processors.available()
    assert proc_params == {"threshold": 100}
    processors.create(proc_name, proc_params)  # the parameters are accepted
