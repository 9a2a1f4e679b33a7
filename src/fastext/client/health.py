"""``fastext health``: one grpc.health.v1 check, for container health checks."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check"]


def check(target: str, service: str = "", timeout: float = 3.0, tls_ca: str = "") -> str:
    """The serving status name, or ``UNREACHABLE: …`` when no answer came in time."""
    if tls_ca:
        with open(tls_ca, "rb") as fh:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(fh.read()))
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"UNREACHABLE: {exc.code().name} {exc.details() or ''}".rstrip()
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
