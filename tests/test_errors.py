"""camseg.core.errors: every error names the status code an adapter maps it to."""

from __future__ import annotations

import grpc  # the dev extra installs it; a missing one fails here, it does not skip
import pytest

from camseg.core import errors


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.CamsegError, "INTERNAL"),
        (errors.InvalidInputError, "INVALID_ARGUMENT"),
        (errors.NotFoundError, "NOT_FOUND"),
        (errors.UnsupportedError, "FAILED_PRECONDITION"),
        (errors.UnavailableError, "UNAVAILABLE"),
        (errors.CancelledError, "CANCELLED"),
    ],
)
def test_codes_and_messages(cls: type[errors.CamsegError], code: str) -> None:
    err = cls("bad thing")
    assert err.code.value == code and err.message == "bad thing" and str(err) == "bad thing"
    assert isinstance(err, errors.CamsegError)


def test_code_names_are_grpc_names() -> None:
    for code in errors.StatusCode:
        assert grpc.StatusCode[code.value].name == code.value
