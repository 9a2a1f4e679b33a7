"""fastext: a fast gRPC inference extension for the LVA/AVA MediaGraphExtension contract."""

from __future__ import annotations

__version__ = "0.1.0"

#: The one method of the contract, as it travels on the wire.
METHOD_PATH = (
    "/microsoft.azure.media.live_video_analytics.extensibility.grpc.v1"
    ".MediaGraphExtension/ProcessMediaStream"
)

#: Initial-metadata key under which a fastext server names itself on every call
#: (``--instance``; default host:pid), so a client behind a proxy knows who served it.
INSTANCE_HEADER = "x-fastext-instance"

__all__ = ["INSTANCE_HEADER", "METHOD_PATH", "__version__"]
