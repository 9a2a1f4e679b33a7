"""Every fastext error derives from :class:`FastextError`."""

from __future__ import annotations


class FastextError(Exception):
    """Base of every fastext error."""


class ConfigError(FastextError):
    """Configuration that cannot be used; the message is one line a user can act on."""


class FrameError(FastextError):
    """A frame cannot be read or decoded; the message says why (used in logs)."""


class DescriptorError(FastextError):
    """A media stream descriptor the server cannot serve.

    ``code`` is the name of the gRPC status code that fits (``INVALID_ARGUMENT``,
    ``OUT_OF_RANGE`` or ``FAILED_PRECONDITION``); this module does not import grpc.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SampleError(FastextError):
    """A media sample that cannot be served: it is acknowledged with no inference."""


class ProtocolViolation(FastextError):
    """A message that breaks the session rules; the call ends with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ShmFullError(FastextError):
    """``/dev/shm`` has no room to back a shared-memory segment fastext creates.

    Every segment is backed (``posix_fallocate``) when it is made, so a full ``/dev/shm``
    is this error there and then, never a SIGBUS later on a page first touched.
    ``need`` and ``free`` are bytes; the message is one line a user can act on.
    """

    def __init__(self, message: str, need: int, free: int) -> None:
        super().__init__(message)
        self.need = need
        self.free = free
