"""camseg.models.inference: ONNX Runtime classification and one-pass heatmaps."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from camseg.core.errors import InvalidInputError, UnsupportedError
from camseg.heat.cam import compute_cam
from camseg.models.inference import OnnxModel
from camseg.models.modeldir import load_model


@pytest.fixture(scope="module")
def onnx_model(exported: tuple[Path, dict[str, Any]]) -> OnnxModel:
    return OnnxModel(exported[0], providers="CPUExecutionProvider")


def test_classify_matches_torch(onnx_model: OnnxModel, exported: tuple[Path, dict[str, Any]]) -> None:
    model, _ = load_model(exported[0])
    x = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    probs = onnx_model.classify(x.numpy())
    np.testing.assert_allclose(probs, compute_cam(model, x).probabilities.numpy(), atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert onnx_model.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam"])
def test_one_pass_heatmaps_equal_the_torch_path(
    onnx_model: OnnxModel, exported: tuple[Path, dict[str, Any]], method: str
) -> None:
    model, _ = load_model(exported[0])
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    for target in (0, 1):
        got = onnx_model.explain(x.numpy(), method=method, targets=target)
        want = compute_cam(model, x, method=method, targets=target)
        torch.testing.assert_close(got.heatmaps, want.heatmaps, atol=1e-5, rtol=0)
        assert got.targets.tolist() == [target] * 4


def test_errors(onnx_model: OnnxModel, trained_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="fused"):
        onnx_model.explain(np.zeros((1, 1, 32, 32), np.float32), method="fused")
    with pytest.raises(InvalidInputError, match="shaped"):
        onnx_model.classify(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InvalidInputError, match="out of range"):
        onnx_model.explain(np.zeros((1, 1, 32, 32), np.float32), targets=5)
    shutil.copytree(trained_dir, tmp_path / "m")
    with pytest.raises(UnsupportedError, match="camseg export"):
        OnnxModel(tmp_path / "m")
