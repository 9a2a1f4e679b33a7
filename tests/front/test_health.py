"""grpc.health.v1: NOT_SERVING until warm, SERVING after, NOT_SERVING while draining."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fastext.backend.pipeline import InlineBackend
from fastext.config import Config
from fastext.front.server import SERVICE_NAME, ExtensionServer
from tests.helpers import start_server


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
            health_pb2.HealthCheckRequest(service=service), timeout=5)
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
    assert asyncio.run(_transitions()) == ["NOT_SERVING", "NOT_SERVING", "SERVING", "SERVING",
                                           "NOT_SERVING"]


def test_health_command_exit_codes():
    proc, port = start_server("--workers", "1", "--auth-username", "lva",
                              env={"FASTEXT_AUTH_PASSWORD": "x"})
    try:
        ok = subprocess.run([sys.executable, "-m", "fastext", "health", "--target",
                             f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"  # exempt from auth
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    gone = subprocess.run([sys.executable, "-m", "fastext", "health", "--target",
                           f"127.0.0.1:{port}", "--timeout", "1"], capture_output=True, text=True,
                          timeout=60)
    assert gone.returncode == 1 and gone.stdout.startswith("UNREACHABLE")
