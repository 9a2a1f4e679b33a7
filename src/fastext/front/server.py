"""The gRPC server: the MediaGraphExtension service and its lifecycle.

Start: bind (message limits lifted, no stream cap, no SO_REUSEPORT so a taken
port is an error), then serve.  Stop (SIGTERM/SIGINT): refuse new calls, let
every session finish and acknowledge what it has read within ``drain_s``, then
stop the gRPC server and the backend, each step with a deadline.  A second
SIGTERM/SIGINT while draining stops at once: workers are killed, the server's
shared memory is unlinked and the process exits with status 128 + that signal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fastext import INSTANCE_HEADER, METHOD_PATH, malloc
from fastext.backend.pipeline import Backend, make_backend
from fastext.config import Config
from fastext.errors import ConfigError
from fastext.front import security
from fastext.front.session import Session, SessionEnd
from fastext.metrics import MetricsSink, make_metrics
from fastext.models import repository
from fastext.processors import builtin_names

__all__ = ["ExtensionServer", "SERVICE_NAME", "serve"]

log = logging.getLogger("fastext.front.server")
SERVICE_NAME, _, METHOD_NAME = METHOD_PATH.strip("/").partition("/")
_STOP_GRACE_S = 1.0
HEALTH_PREFIX = "/grpc.health.v1.Health/"


class ExtensionServer:
    """The MediaGraphExtension service on a grpc.aio server."""

    def __init__(
        self, config: Config, backend: Backend | None = None, metrics: MetricsSink | None = None
    ) -> None:
        self.config = config
        if metrics is None:
            metrics = make_metrics(config.metrics_port, host=config.metrics_host)
        self.metrics = metrics
        self.backend: Backend = backend or make_backend(config, self.metrics)
        self.port = 0
        self._sessions: set[Session] = set()
        self._draining = False
        self._started = False  # the backend's start() returned: health follows its readiness
        self._backend_ready = True  # until the backend says otherwise (on_readiness)
        self._health_lock = asyncio.Lock()
        self._health_updates: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.instance = config.instance or f"{socket.gethostname()}:{os.getpid()}"
        self._instance_metadata = ((INSTANCE_HEADER, self.instance),)
        limit = config.max_message_mb * 1024 * 1024
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=None,
            interceptors=security.interceptors(
                config, exempt=(HEALTH_PREFIX,), on_failure=self.metrics.auth_failed
            ),
        )
        # grpc.health.v1 on the same port: NOT_SERVING until the backend is warm,
        # SERVING after, NOT_SERVING while the backend has no worker up (a crash, a
        # restart that cannot start one yet), and again while draining.
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        # --health-port: the same health service, and no other, on a second plaintext
        # server (its own, so MediaGraphExtension is never reachable without the main
        # port's TLS): a container's HEALTHCHECK and probes reach it whatever that TLS is.
        self.health_port = 0
        self._health_server: grpc.aio.Server | None = None
        if config.health_port:
            self._health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        handler = grpc.stream_stream_rpc_method_handler(
            self._process_media_stream,
            # Raw bytes both ways: the session parses samples natively (protobuf only
            # for the descriptor and anything unusual) and hands over serialized acks.
            request_deserializer=None,
            response_serializer=None,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: handler}),)
        )

    async def start(self) -> int:
        """Bind, warm the backend, then serve; returns the port (useful with port 0).

        Binding comes first so a taken port fails at once, before any worker starts.
        """
        credentials = security.server_credentials(self.config)
        try:
            if credentials is not None:
                self.port = self._server.add_secure_port(self.config.address, credentials)
            else:
                self.port = self._server.add_insecure_port(self.config.address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {self.config.bind}: {exc}") from None
        if not self.port:
            raise ConfigError(f"cannot listen on {self.config.bind}")
        if self._health_server is not None:
            self.health_port = self._bind_health(self._health_server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        if self._health_server is not None:
            await self._health_server.start()
        self.backend.on_readiness(self._on_backend_readiness)
        # The models' facts (kind, input, labels) read in a child process: the runtime never
        # loads here, and a model that cannot be served stops the start with its reason.
        if self.config.models:
            repository.install(
                await asyncio.to_thread(repository.load_infos, self.config.models, builtin_names())
            )
        await self.backend.start()  # sessions arriving meanwhile wait for the workers
        self._started = True
        await self._update_health()
        log.info(
            "fastext serving on %s (port %d, instance %s, workers=%d, batch_size=%d, "
            "models=%s, tls=%s, auth=%s, health port %s)",
            self.config.bind,
            self.port,
            self.instance,
            self.config.workers,
            self.config.batch_size,
            ",".join(repository.names()) or "none",
            "mutual" if self.config.tls_client_ca else "on" if self.config.tls_cert else "off",
            "on" if self.config.auth_username else "off",
            f"{self.config.health_host}:{self.health_port}" if self.health_port else "off",
        )
        return self.port

    def _bind_health(self, server: grpc.aio.Server) -> int:
        host, port = self.config.health_host, self.config.health_port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on health port {address}: {exc}") from None
        if not bound:
            raise ConfigError(f"cannot listen on health port {address}")
        return bound

    async def stop(self, drain_s: float | None = None) -> None:
        """Drain sessions within ``drain_s`` seconds, then stop everything."""
        drain = self.config.drain_s if drain_s is None else drain_s
        self._draining = True
        await self._update_health()
        for session in list(self._sessions):
            session.drain()
        if self._sessions:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=drain)
            except TimeoutError:
                log.warning(
                    "%d sessions still open after draining %.1f s", len(self._sessions), drain
                )
        await self._server.stop(grace=_STOP_GRACE_S)
        if self._health_server is not None:
            await self._health_server.stop(grace=None)
        await self.backend.close()
        self.metrics.close()
        log.info("fastext stopped")

    def _on_backend_readiness(self, ready: bool) -> None:
        """The backend lost its last worker (``False``) or has one ready again: health
        follows (on the loop; the update is a task, as setting health is a coroutine)."""
        self._backend_ready = ready
        if self._started and not self._draining:
            log.log(
                logging.INFO if ready else logging.WARNING,
                "health: %s (%s)",
                "SERVING" if ready else "NOT_SERVING",
                "a worker is ready again" if ready else "no worker is up; frames wait",
            )
        task = asyncio.ensure_future(self._update_health())
        self._health_updates.add(task)  # (held: a task only weakly referenced may vanish)
        task.add_done_callback(self._health_updates.discard)

    async def _update_health(self) -> None:
        """Set health from what holds when the lock is ours: of updates racing each
        other, the last one written is the latest state."""
        async with self._health_lock:
            serving = self._started and self._backend_ready and not self._draining
            await self._set_health(
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):  # "" is the server as a whole
            await self.health.set(name, status)

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    @property
    def unacknowledged(self) -> int:
        """Frames read by open sessions whose acks have not been written."""
        return sum(session.unacknowledged for session in self._sessions)

    def abort(self) -> None:
        """For a process about to exit: kill the backend's workers and unlink its shared
        memory now, abandoning every frame in flight."""
        self.backend.abort()

    async def _process_media_stream(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> None:
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        # Registered before any await, so a drain that starts meanwhile sees this call.
        session = Session(self.config, self.backend, peer=context.peer(), metrics=self.metrics)
        self._sessions.add(session)
        self._idle.clear()
        try:
            # Once per call, ahead of the descriptor reply (which would carry headers
            # anyway): who served this call, for clients behind a proxy.
            await context.send_initial_metadata(self._instance_metadata)
            await session.serve(requests, context.write)
        except SessionEnd as end:
            await context.abort(grpc.StatusCode[end.code], str(end))
        finally:
            self._sessions.discard(session)
            if not self._sessions:
                self._idle.set()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed, else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _serve(config: Config, on_ready: Callable[[int], None] | None) -> None:
    # Handlers first: a SIGTERM during start-up must still drain and unlink, not kill.
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    server = ExtensionServer(config)
    try:
        port = await server.start()
    except BaseException:
        await server.stop(drain_s=0.0)
        raise
    if on_ready is not None:
        on_ready(port)
    first = await signals.get()
    log.info(
        "%s received: draining (up to %.1f s; a second signal stops at once)",
        first.name,
        config.drain_s,
    )
    stopping = asyncio.ensure_future(server.stop())
    second = asyncio.ensure_future(signals.get())
    await asyncio.wait((stopping, second), return_when=asyncio.FIRST_COMPLETED)
    if stopping.done():  # drained (a signal arriving with the end changes nothing)
        second.cancel()
        return stopping.result()
    log.warning(
        "second signal (%s): stopping now, %d frames not acknowledged",
        second.result().name,
        server.unacknowledged,
    )
    server.abort()
    _exit_now(128 + second.result())


def _exit_now(status: int) -> NoReturn:
    """Exit without waiting for anything: not for the gRPC server's threads, nor for a
    batch still running in a thread (its frames are abandoned)."""
    logging.shutdown()  # flush every handler first
    os._exit(status)


def serve(config: Config, on_ready: Callable[[int], None] | None = None) -> None:
    """Run the server until SIGTERM or SIGINT, then drain and stop.

    A second SIGTERM or SIGINT while draining ends the process at once (``os._exit``,
    status 128 + the signal's number), after killing the workers and unlinking the
    server's shared memory.
    """
    malloc.keep_freed_memory(config.malloc_keep_mb)  # this process only, before grpc starts
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_serve(config, on_ready))
