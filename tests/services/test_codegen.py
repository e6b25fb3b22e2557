"""The generated code in services/gen matches protos/ (run `make protos` after editing a proto)."""

from __future__ import annotations

from services.codegen import differences


def test_generated_code_is_up_to_date() -> None:
    assert differences() == []
