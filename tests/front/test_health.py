"""grpc.health.v1: NOT_SERVING until warm, SERVING after, NOT_SERVING while draining;
on the main port, and on the plaintext health port whatever TLS the main port has."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fastext import METHOD_PATH
from fastext.backend.pipeline import InlineBackend
from fastext.config import Config, load, parse_bind
from fastext.errors import ConfigError
from fastext.front.server import SERVICE_NAME, ExtensionServer
from tests.helpers import (
    free_port,
    private_network,
    read_image,
    start_server,
    stop_server,
)

pytest.importorskip("cryptography")
from tests.certs import make_ca, make_leaf  # noqa: E402

# portable: the health service's states (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "Dockerfile.amd64", ROOT / "Dockerfile.arm64"]


class SlowBackend(InlineBackend):
    """Warms only when told to, so the NOT_SERVING window can be observed."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def start(self) -> None:
        await self.release.wait()
        await super().start()


async def status(port: int, service: str = "") -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def _transitions() -> list[str]:
    backend = SlowBackend()
    server = ExtensionServer(Config(bind="127.0.0.1:0", workers=0), backend=backend)
    starting = asyncio.create_task(server.start())
    seen = []
    while not server.port:  # bound, not yet warm
        await asyncio.sleep(0.01)
    for _ in range(500):
        try:
            seen.append(await status(server.port))
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.01)
    seen.append(await status(server.port, SERVICE_NAME))
    backend.release.set()
    await starting
    seen.append(await status(server.port))
    seen.append(await status(server.port, SERVICE_NAME))
    grpc_stop = server._server.stop

    async def look_then_stop(grace: float) -> None:  # drain is over, the port still answers
        seen.append(await status(server.port))
        await grpc_stop(grace)

    server._server.stop = look_then_stop  # type: ignore[method-assign]
    await server.stop(drain_s=1.0)
    return seen


def test_health_transitions():
    assert asyncio.run(_transitions()) == [
        "NOT_SERVING",
        "NOT_SERVING",
        "SERVING",
        "SERVING",
        "NOT_SERVING",
    ]


def test_health_command_exit_codes():
    proc, port = start_server(
        "--workers", "1", "--auth-username", "lva", env={"FASTEXT_AUTH_PASSWORD": "x"}
    )
    try:
        ok = subprocess.run(
            [sys.executable, "-m", "fastext", "health", "--target", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"  # exempt from auth
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    gone = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastext",
            "health",
            "--target",
            f"127.0.0.1:{port}",
            "--timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 1 and gone.stdout.startswith("UNREACHABLE")


# -- the plaintext health port (--health-port) ------------------------------------------


def _tls_env(setting: str, directory: Path) -> dict[str, str]:
    """FASTEXT_TLS_* for a deployment: none, TLS, or mutual TLS with a client CA that did
    not sign the server's own certificate (the usual case)."""
    if setting == "plaintext":
        return {}
    ca = make_ca(directory, "server-ca")
    cert, key = make_leaf(directory, ca, "localhost", server=True)
    env = {"FASTEXT_TLS_CERT": str(cert), "FASTEXT_TLS_KEY": str(key)}
    if setting == "mutual-tls":
        env["FASTEXT_TLS_CLIENT_CA"] = str(make_ca(directory, "client-ca")[2])
    return env


@pytest.mark.parametrize("setting", ["plaintext", "tls", "mutual-tls"])
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_health_check_passes_in_every_security_setting(
    dockerfile: Path, setting: str, tmp_path: Path
) -> None:
    # The image as its Dockerfile states it: its ENV (ports 5001 and 5002 included, in a
    # network namespace of the test's own), its entry point and its HEALTHCHECK's command
    # line, word for word; TLS turned on the way docs/deploy.md says, with FASTEXT_TLS_*.
    image = read_image(dockerfile)
    assert image.entrypoint == ["fastext", "serve"] and image.healthcheck[0] == "fastext"
    fastext = [sys.executable, "-m", "fastext"]  # the image's `fastext` script
    env = {k: v for k, v in image.env.items() if k.startswith("FASTEXT_")}
    env.update(_tls_env(setting, tmp_path), FASTEXT_WORKERS="0")  # frames in the front: cheaper
    with private_network() as netns:
        proc, port = start_server(env=env, bind=None, prefix=netns)
        try:
            check = subprocess.run(
                [*netns, *fastext, *image.healthcheck[1:]],
                capture_output=True,
                text=True,
                timeout=60,
            )
            main = subprocess.run(
                [*netns, *fastext, "health", "--target", f"127.0.0.1:{port}", "--timeout", "2"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            log = stop_server(proc)
    assert port == parse_bind(env["FASTEXT_BIND"])[1]
    assert (check.returncode, check.stdout.strip()) == (0, "SERVING"), (check.stderr, log)
    # A plaintext check of the main port itself, what the image ran before: it can only
    # pass without TLS (the reason for the health port).
    if setting == "plaintext":
        assert (main.returncode, main.stdout.strip()) == (0, "SERVING")
    else:
        assert main.returncode == 1 and main.stdout.startswith("UNREACHABLE"), main.stdout


async def _on_health_port(directory: Path) -> dict[str, object]:
    seen: dict[str, object] = {}
    cert, key = make_leaf(directory, make_ca(directory, "ca"), "localhost", server=True)
    backend = SlowBackend()
    config = Config(
        bind="127.0.0.1:0",
        workers=0,
        health_port=free_port(),
        tls_cert=str(cert),
        tls_key=str(key),
        tls_client_ca=str(make_ca(directory, "clients")[2]),
    )
    server = ExtensionServer(config, backend=backend)
    starting = asyncio.create_task(server.start())
    for _ in range(500):  # bound, not yet warm
        if server.health_port:
            try:
                seen["warming"] = await status(server.health_port)
                break
            except grpc.aio.AioRpcError:
                pass
        await asyncio.sleep(0.01)
    backend.release.set()
    await starting
    seen["serving"] = (
        await status(server.health_port),
        await status(server.health_port, SERVICE_NAME),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        # Nothing written: the answer needs only the call's headers, and a message
        # written while the server's trailers are on their way can end the call
        # INTERNAL instead (seen once under qemu), which would hide the answer.
        call = channel.stream_stream(METHOD_PATH)(metadata=None)
        seen["media"] = (await call.code()).name
    grpc_stop = server._server.stop

    async def look_then_stop(grace: float) -> None:  # drained: the health port still answers
        seen["draining"] = await status(server.health_port)
        await grpc_stop(grace)

    server._server.stop = look_then_stop  # type: ignore[method-assign]
    await server.stop(drain_s=1.0)
    try:
        seen["stopped"] = await status(server.health_port)
    except grpc.aio.AioRpcError as exc:
        seen["stopped"] = exc.code().name
    return seen


def test_health_port_is_plaintext_health_only_and_follows_the_server(tmp_path: Path) -> None:
    seen = asyncio.run(_on_health_port(tmp_path))
    assert seen == {
        "warming": "NOT_SERVING",
        "serving": ("SERVING", "SERVING"),
        "media": "UNIMPLEMENTED",  # the extension never without the main port's TLS
        "draining": "NOT_SERVING",
        "stopped": "UNAVAILABLE",
    }


def test_health_port_must_differ_from_the_bind_port_and_be_free() -> None:
    with pytest.raises(ConfigError, match="health-port 5001 is the --bind port"):
        load({"bind": "127.0.0.1:5001", "health_port": "5001"}, {})
    assert load({}, {"FASTEXT_HEALTH_PORT": "5002"}).health_port == 5002
    assert load({}, {}).health_port == 0 and load({}, {}).health_host == "127.0.0.1"

    async def taken() -> str:
        first = ExtensionServer(Config(bind="127.0.0.1:0", workers=0, health_port=free_port()))
        await first.start()
        second = ExtensionServer(
            Config(bind="127.0.0.1:0", workers=0, health_port=first.health_port)
        )
        try:
            await second.start()
        except ConfigError as exc:
            return str(exc)
        finally:
            await second.stop(drain_s=0.0)
            await first.stop(drain_s=0.0)
        return "started"

    assert asyncio.run(taken()).startswith("cannot listen on health port 127.0.0.1:")
