"""camseg.models.export: ONNX with a dynamic batch, parity recorded, one-pass heatmaps,
and nothing left behind when parity fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from camseg.core.errors import InvalidInputError
from camseg.heat.cam import cam_from_activations, compute_cam
from camseg.models import Classifier
from camseg.models.export import PARITY_TOLERANCE, ExportParityError, export_model
from camseg.models.modeldir import load_model
from camseg.models.runtime import make_session

SIZE = 32


@pytest.fixture(scope="module")
def model(exported: tuple[Path, dict[str, Any]]) -> Classifier:
    return load_model(exported[0])[0]


def leftovers(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name.startswith("."))


def test_export_writes_onnx_and_parity(
    exported: tuple[Path, dict[str, Any]], model: Classifier
) -> None:
    model_dir, meta = exported
    assert (model_dir / "model.onnx").is_file()
    assert leftovers(model_dir) == []
    onnx = meta["onnx"]
    assert onnx["file"] == "model.onnx" and onnx["dynamic_batch"] is True
    assert onnx["outputs"] == ["probabilities", "activations"]
    assert onnx["tolerance"] == PARITY_TOLERANCE
    parity = onnx["parity"]
    test_ids = [
        line
        for line in (Path(meta["data"]["path"]) / "labels.csv").read_text().splitlines()
        if line.endswith(",test")
    ]
    assert parity["images"] == min(8, len(test_ids)) > 0  # the parity set is the test split
    assert parity["max_abs_diff_probabilities"] <= 1e-4
    assert parity["max_abs_diff_probabilities_batch1"] <= 1e-4
    assert parity["max_abs_diff_activations"] <= 1e-3
    assert onnx["one_pass_cam"]["layer"] == "stage4"
    np.testing.assert_allclose(
        np.array(onnx["one_pass_cam"]["head_weight"]),
        model.fc.weight.detach().numpy(),
        rtol=0,
        atol=1e-7,
    )
    on_disk = json.loads((model_dir / "metadata.json").read_text())
    assert on_disk["onnx"]["parity"] == parity
    assert on_disk["architecture"] == "densenet"  # the rest of the metadata survives


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_dynamic_batch(
    exported: tuple[Path, dict[str, Any]], model: Classifier, batch: int
) -> None:
    session = make_session(exported[0] / "model.onnx", "CPUExecutionProvider")
    x = torch.rand(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    probs, acts = session.run(["probabilities", "activations"], {"input": x.numpy()})
    assert probs.shape == (batch, 2) and acts.shape == (
        batch,
        model.fc.in_features,
        SIZE // 16,
        SIZE // 16,
    )
    with torch.inference_mode():
        expected = F.softmax(model(x), dim=1).numpy()
        expected_acts = model.run_until(x, len(model.layer_names) - 1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(acts, expected_acts, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam"])
def test_one_pass_heatmaps_match_compute_cam(
    exported: tuple[Path, dict[str, Any]], model: Classifier, method: str
) -> None:
    model_dir, meta = exported
    session = make_session(model_dir / "model.onnx", "CPUExecutionProvider")
    x = torch.rand(5, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 0, 1, 1, 0])
    (acts,) = session.run(["activations"], {"input": x.numpy()})
    weight = torch.tensor(meta["onnx"]["one_pass_cam"]["head_weight"], dtype=torch.float32)
    maps = cam_from_activations(
        torch.from_numpy(acts), weight, targets, method=method, size=(SIZE, SIZE)
    )
    expected = compute_cam(model, x, method=method, targets=targets).heatmaps
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)


def test_parity_failure_leaves_nothing(trained_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(trained_dir, model_dir)
    before = (model_dir / "metadata.json").read_bytes()
    with pytest.raises(ExportParityError, match="differ from torch"):
        export_model(model_dir, n_images=4, tolerance=-1.0, providers="CPUExecutionProvider")
    assert not (model_dir / "model.onnx").exists()
    assert leftovers(model_dir) == []  # no .model.onnx.candidate nor its temp files
    assert sorted(p.name for p in model_dir.iterdir()) == ["metadata.json", "model.pt"]
    assert (model_dir / "metadata.json").read_bytes() == before


def test_parity_failure_keeps_a_previous_export(
    exported: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(exported[0], model_dir)
    onnx_before = (model_dir / "model.onnx").read_bytes()
    meta_before = (model_dir / "metadata.json").read_bytes()
    with pytest.raises(ExportParityError):
        export_model(model_dir, n_images=4, tolerance=-1.0, providers="CPUExecutionProvider")
    assert (model_dir / "model.onnx").read_bytes() == onnx_before
    assert (model_dir / "metadata.json").read_bytes() == meta_before
    assert leftovers(model_dir) == []


def test_export_needs_parity_data(trained_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(trained_dir, model_dir)
    meta = json.loads((model_dir / "metadata.json").read_text())
    meta["data"]["path"] = str(tmp_path / "gone")
    (model_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match="no data set for the parity check"):
        export_model(model_dir, providers="CPUExecutionProvider")
    assert sorted(p.name for p in model_dir.iterdir()) == ["metadata.json", "model.pt"]
