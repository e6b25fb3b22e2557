"""camseg.core.settings: one settings object, read from CAMSEG_ variables when built."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from camseg.core.settings import Settings


def test_environment_is_read_when_built_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMSEG_TORCH_THREADS", "3")
    monkeypatch.setenv("CAMSEG_ORT_PROVIDERS", "CPUExecutionProvider")
    s = Settings()
    assert s.torch_threads == 3 and s.ort_providers == "CPUExecutionProvider"
    monkeypatch.setenv("CAMSEG_TORCH_THREADS", "-1")
    with pytest.raises(ValidationError):
        Settings()
