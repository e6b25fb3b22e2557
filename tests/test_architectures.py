"""Every architecture of the registry, the same checks: it learns a small synthetic set
above chance, declares its Grad-CAM layer at 1/16 of the input, and exports to ONNX
with parity."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from camseg.data.synth import SynthConfig, synthesize
from camseg.models import ARCHITECTURES, PAPER_NAMES
from camseg.models.export import export_model
from camseg.models.modeldir import load_model
from camseg.models.training import TrainConfig, train_from_folder

SIZE = 64


def test_the_registry_holds_the_papers_six_families() -> None:
    assert set(PAPER_NAMES.values()) == {"Xception", "InceptionV3", "DenseNet121", "ResNet50V2", "NASNetMobile",
                                         "MobileNetV2"}
    assert set(ARCHITECTURES) == set(PAPER_NAMES)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 high-contrast 64-px ROIs (46 in the test split)."""
    cfg = SynthConfig(n=300, size=SIZE, seed=5, contrast_range=(0.3, 0.5), subtle_fraction=0.0)
    return synthesize(tmp_path_factory.mktemp("archs") / "data", cfg)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def trained(request: pytest.FixtureRequest, data_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, dict[str, Any]]:
    arch = str(request.param)
    out = tmp_path_factory.mktemp(f"{arch}-model") / "m"
    meta = train_from_folder(data_dir, arch, out, TrainConfig(epochs=6, batch_size=16, seed=0, patience=6),
                             input_size=SIZE, width=8)
    return arch, out, meta


def test_trains_above_chance(trained: tuple[str, Path, dict[str, Any]]) -> None:
    arch, _, meta = trained
    test = meta["metrics"]["test"]
    assert test["accuracy"] > 0.6 and test["auc"] > 0.75, f"{arch}: {test}"


def test_gradcam_layer_is_declared_at_one_sixteenth(trained: tuple[str, Path, dict[str, Any]]) -> None:
    arch, model_dir, _ = trained
    model, meta = load_model(model_dir)
    assert meta["gradcam_layer"] == model.cam_layer
    with torch.inference_mode():
        acts = model.run_until(torch.rand(2, 1, SIZE, SIZE), model.check_layer(model.cam_layer))
    assert acts.shape[-2:] == (SIZE // 16, SIZE // 16), arch


def test_onnx_export_parity(trained: tuple[str, Path, dict[str, Any]], tmp_path: Path) -> None:
    arch, model_dir, _ = trained
    copy = tmp_path / arch
    shutil.copytree(model_dir, copy)
    meta = export_model(copy, n_images=16, providers="CPUExecutionProvider")
    parity = meta["onnx"]["parity"]
    assert parity["max_abs_diff_probabilities"] <= 1e-4, arch
    assert parity["max_abs_diff_probabilities_batch1"] <= 1e-4, arch
    assert parity["max_abs_diff_activations"] <= 1e-3, arch
    assert meta["onnx"]["one_pass_cam"]["layer"] == meta["gradcam_layer"]
