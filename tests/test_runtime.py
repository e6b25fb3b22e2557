"""camseg.models.runtime: ONNX Runtime providers chosen quietly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from camseg.models.runtime import CPU, CUDA, cuda_available, make_session, select_providers


def test_auto_picks_what_onnx_runtime_really_runs_and_quietly(
    exported: tuple[Path, dict[str, Any]], capfd: pytest.CaptureFixture[str]
) -> None:
    """``auto`` names exactly the providers that a session asked for CUDA then CPU really
    gets (ONNX Runtime's own verdict: CPU alone where CUDA does not load), and finding
    that out prints nothing: no ONNX Runtime error about a CUDA provider that failed."""
    model = exported[0] / "model.onnx"
    cuda_available.cache_clear()  # the probe itself must be quiet, not only its cached answer
    capfd.readouterr()
    auto = make_session(model, "auto", threads=1)
    assert "onnxruntime" not in capfd.readouterr().err
    listed = ort.get_available_providers()
    really = ort.InferenceSession(str(model), providers=[p for p in (CUDA, CPU) if p in listed])
    assert select_providers("auto") == auto.get_providers() == really.get_providers()
    assert really.get_providers()[-1] == CPU


def test_explicit_and_unknown_providers() -> None:
    assert select_providers("CPUExecutionProvider") == [CPU]
    with pytest.raises(ValueError, match="unknown ONNX Runtime providers"):
        select_providers("NoSuchExecutionProvider")


def test_session_runs_on_the_chosen_provider(exported: tuple[Path, dict[str, Any]]) -> None:
    session = make_session(exported[0] / "model.onnx", "CPUExecutionProvider", threads=1)
    assert session.get_providers() == [CPU]
    assert isinstance(session, ort.InferenceSession)


def test_spinning_off_reaches_the_session(exported: tuple[Path, dict[str, Any]]) -> None:
    """Served sessions stop ONNX Runtime's threads from spin-waiting between runs."""
    off = make_session(exported[0] / "model.onnx", "CPUExecutionProvider", threads=2, spinning=False)
    on = make_session(exported[0] / "model.onnx", "CPUExecutionProvider", threads=2)
    key = "session.intra_op.allow_spinning"
    assert off.get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ONNX Runtime's default: spin
        on.get_session_options().get_session_config_entry(key)
