"""camseg.core.settings: one settings tree, read from CAMSEG_ variables when built,
unknown names refused, and the README's table written from it."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from camseg.core.limits import DEFAULT_MAX_PIXELS
from camseg.core.settings import SECTIONS, Settings, SettingsError, unknown_variables
from camseg.core.settings_doc import BEGIN, END, markdown_table, with_table
from camseg.io.inputs import decode_pixels

ROOT = Path(__file__).resolve().parents[1]


def test_environment_is_read_when_built_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMSEG_TORCH_THREADS", "3")
    monkeypatch.setenv("CAMSEG_ORT_PROVIDERS", "CPUExecutionProvider")
    s = Settings()
    assert s.torch_threads == 3 and s.ort_providers == "CPUExecutionProvider"
    monkeypatch.setenv("CAMSEG_TORCH_THREADS", "-1")
    with pytest.raises(ValidationError):
        Settings()


def test_every_field_is_declared_in_exactly_one_section() -> None:
    declared = [name for cls in SECTIONS.values() for name in cls.model_fields]
    assert len(declared) == len(set(declared)), sorted(n for n in declared if declared.count(n) > 1)
    assert set(declared) == set(Settings.model_fields)  # nothing on the root outside a section


def test_a_misspelt_variable_is_refused_with_the_closest_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMSEG_WORKER_METRIC_PORT", "9101")
    with pytest.raises(SettingsError) as err:
        Settings.load()
    assert err.value.message == ("CAMSEG_WORKER_METRIC_PORT names no setting "
                                 "(did you mean CAMSEG_WORKER_METRICS_PORT?)")
    # any case, as the fields themselves are read; names without the prefix are not ours
    assert unknown_variables(["camseg_modelrepo", "CAMSEGX", "REDIS_HOST", "CAMSEG_MODEL_REPO"]) == [
        "camseg_modelrepo names no setting (did you mean CAMSEG_MODEL_REPO?)"]
    assert unknown_variables(["CAMSEG_ZZZZZZZZ"]) == [
        "CAMSEG_ZZZZZZZZ names no setting (see the settings table in README.md)"]


def test_an_unknown_variable_stops_the_command_at_start() -> None:
    """A real ``camseg`` process: one line naming the variable and its closest field, exit 2."""
    r = subprocess.run([sys.executable, "-m", "camseg", "health"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CAMSEG_GRACE_SECOND": "30"})
    assert r.returncode == 2
    assert r.stderr.strip() == ("camseg: error: CAMSEG_GRACE_SECOND names no setting "
                                "(did you mean CAMSEG_GRACE_SECONDS?)"), r.stderr


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMSEG_RETRAIN_CRON", "0 3 * *")
    with pytest.raises(SettingsError, match=r"^retrain_cron \(CAMSEG_RETRAIN_CRON\): .*five fields"):
        Settings.load()
    with pytest.raises(ValidationError, match="prot"):
        Settings(prot=1)  # type: ignore[call-arg]  # a keyword that names no field is refused too


def test_flags_are_validated_and_the_environment_is_not_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMSEG_PORT", "6000")
    s = Settings.load()
    monkeypatch.setenv("CAMSEG_PORT", "7000")
    assert s.updated(host="0.0.0.0").port == 6000 and s.updated(port=0).port == 0
    with pytest.raises(SettingsError, match=r"^dicom_destination \(CAMSEG_DICOM_DESTINATION\): .*AE@host:port"):
        s.updated(dicom_destination="PACS@nowhere")


def test_none_turns_an_optional_port_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.load().metrics_port == 9100
    monkeypatch.setenv("CAMSEG_METRICS_PORT", "none")
    assert Settings.load().metrics_port is None


def test_the_pixel_limit_is_the_guards_constant() -> None:
    assert Settings.model_fields["max_pixels"].default == DEFAULT_MAX_PIXELS
    assert inspect.signature(decode_pixels).parameters["max_pixels"].default == DEFAULT_MAX_PIXELS


def test_the_readme_table_is_the_classes_output() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert with_table(text) == text, "README.md is stale: run python -m camseg.core.settings_doc README.md"
    table = markdown_table()
    for name in Settings.model_fields:
        assert f"`CAMSEG_{name.upper()}`" in table
    with pytest.raises(ValueError, match="settings table"):
        with_table(text.replace(BEGIN, ""))
    assert with_table(f"a\n{BEGIN}\nold\n{END}\nb") == f"a\n{BEGIN}\n{table}\n{END}\nb"


def test_every_variable_the_documents_name_is_a_setting() -> None:
    named = set()
    for doc in ("README.md", "SECURITY.md", "deploy/README.md"):
        # CAMSEG_* and CAMSEG_DICOM_* in prose stand for many
        named |= set(re.findall(r"CAMSEG_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_]*\*)", (ROOT / doc).read_text()))
    assert named and not unknown_variables(named)
