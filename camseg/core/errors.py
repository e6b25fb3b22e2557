"""The error hierarchy of camseg.

Every error carries the name of the gRPC status code it maps to, so the transport
adapters (``services/``, ``jobs/``) translate errors in one place without the core
importing grpc.
"""

from __future__ import annotations

from enum import StrEnum

SHOWN = 64  # characters of a caller's string echoed in a message


def shown(text: object, limit: int = SHOWN, *, quoted: bool = True) -> str:
    """A caller's string for a message: control characters escaped (``repr``), cut to
    ``limit`` characters, so messages and logs never echo unbounded or forged input."""
    s = str(text)
    cut = s if len(s) <= limit else s[:limit]
    out = repr(cut) if quoted else repr(cut)[1:-1]
    return out if len(s) <= limit else out + f"... ({len(s)} characters)"


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
