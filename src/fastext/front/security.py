"""Who may call: ``x-ms-authentication`` Basic credentials and TLS.

LVA/AVA send ``x-ms-authentication: Basic base64(user:password)`` from the
topology's credentials; samples send dummy ones, so checking is on only when
the server is configured with a user name and password.  The comparison is
constant-time, a failure ends the call with UNAUTHENTICATED before any frame is
processed, and the secret never reaches a log line.  A refused call's first message
(the descriptor) is taken and dropped unread first, waiting at most REJECT_WAIT_S:
ending the call while the client is still writing it makes a grpc.aio client report
INTERNAL instead of this status.  So a refused caller can make the server receive
one message (at most --max-message-mb) before the call ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from fastext.config import Config, read_file

__all__ = ["AUTH_HEADER", "BasicAuth", "server_credentials"]

log = logging.getLogger("fastext.front.security")
AUTH_HEADER = "x-ms-authentication"
REJECT_WAIT_S = 1.0  # longest a refused call waits for the first message it discards


class BasicAuth(grpc.aio.ServerInterceptor):
    """Admits a call only with the configured Basic credentials."""

    def __init__(
        self,
        username: str,
        password: str,
        exempt: tuple[str, ...] = (),
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._expected = f"Basic {token}".encode()
        self._exempt = exempt  # method path prefixes open to all (health checks)
        self.failures = 0
        self._on_failure = on_failure
        self._deny = grpc.stream_stream_rpc_method_handler(self._reject)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(self._exempt):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        value = metadata.get(AUTH_HEADER, "")
        given = value.encode() if isinstance(value, str) else bytes(value)
        if hmac.compare_digest(given, self._expected):
            return await continuation(details)
        self.failures += 1
        self._on_failure()
        log.warning(
            "call to %s refused: %s x-ms-authentication header",
            details.method,
            "wrong" if given else "no",
        )
        return self._deny

    @staticmethod
    async def _reject(requests: Any, context: grpc.aio.ServicerContext) -> None:
        # Wait (briefly) for the client's first message and discard it unread.  Ending the
        # call while that write is still in the client's grpc core makes a grpc.aio client
        # see INTERNAL "Internal error from Core" instead of this status (its failed send
        # overrides the status that follows): 7 calls in 300 on loopback.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(anext(aiter(requests), None), REJECT_WAIT_S)
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, "missing or invalid x-ms-authentication credentials"
        )


def interceptors(
    config: Config, exempt: tuple[str, ...] = (), on_failure: Callable[[], None] = lambda: None
) -> list[grpc.aio.ServerInterceptor]:
    if not config.auth_username:
        return []
    return [BasicAuth(config.auth_username, config.auth_password, exempt, on_failure)]


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured (mutual TLS with a client CA)."""
    if not config.tls_cert:
        return None
    cert = read_file(config.tls_cert, "--tls-cert")
    key = read_file(config.tls_key, "--tls-key")
    client_ca = read_file(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
