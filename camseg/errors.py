"""The error hierarchy of camseg.

Every error carries the name of the gRPC status code it maps to, so the transport
adapters (``services/``, ``jobs/``) translate errors in one place without the core
importing grpc.
"""

from __future__ import annotations

from enum import StrEnum


class StatusCode(StrEnum):
    """gRPC status code names (``grpc.StatusCode[name]`` in the adapters)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


class CamsegError(Exception):
    """Base error: a plain one-line message safe to show a caller."""

    code: StatusCode = StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(CamsegError):
    """Bad image, bad data set, bad parameter."""

    code = StatusCode.INVALID_ARGUMENT


class NotFoundError(CamsegError):
    """Unknown model, version, layer, file or job."""

    code = StatusCode.NOT_FOUND


class UnsupportedError(CamsegError):
    """Valid request, but not supported for this model."""

    code = StatusCode.FAILED_PRECONDITION


class UnavailableError(CamsegError):
    """Not loaded yet, or draining."""

    code = StatusCode.UNAVAILABLE


class CancelledError(CamsegError):
    """The caller asked a long-running call to stop (``should_stop``)."""

    code = StatusCode.CANCELLED


class ResourceExhaustedError(CamsegError):
    """A budget (pixels per request, calls in flight, queue length, reply size) is spent."""

    code = StatusCode.RESOURCE_EXHAUSTED
