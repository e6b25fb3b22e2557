"""camseg.models.modeldir: atomic writes, metadata and checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.models import Classifier
from camseg.models.modeldir import METADATA_FILE, MODEL_FILE, atomic_write_bytes, load_model, read_metadata, save_model


def test_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a" / "f.bin", b"one")
    atomic_write_bytes(tmp_path / "a" / "f.bin", b"two")
    assert (tmp_path / "a" / "f.bin").read_bytes() == b"two"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.bin"]


def test_save_and_load_round_trip(tiny_model: Classifier, tmp_path: Path) -> None:
    save_model(tmp_path / "m", tiny_model, {"classes": ["normal", "tumor"]})
    model, meta = load_model(tmp_path / "m")
    assert meta == {"classes": ["normal", "tumor"]} and not model.training
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tiny_model(x))


def test_errors_name_the_file(trained_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not a model directory"):
        read_metadata(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(trained_dir, bad)
    (bad / METADATA_FILE).write_text("{")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        read_metadata(bad)
    (bad / METADATA_FILE).write_text(json.dumps({"classes": ["a", "b"]}))
    (bad / MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(InvalidInputError, match="unreadable checkpoint"):
        load_model(bad)
